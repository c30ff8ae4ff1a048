//! The Helm chart (through Helm's own Go SDK from PyPI, `scripts/chart.py`) and the plain
//! manifests: lint, render, schema, drift, install into the real apiserver, and least-privilege
//! RBAC proven end to end with the roles running as the chart's ServiceAccounts.

mod support;

use imagejob_operator::crd::{ImageJob, Phase};
use kube::Api;
use serde_json::{Value, json};
use std::{collections::BTreeMap, process::Command, time::Duration};
use support::{ChildGuard, TestWorker, eventually, kube_env};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/chart.py");

fn chart(args: &[&str]) -> (bool, String) {
    let out = Command::new("python3")
        .arg(SCRIPT)
        .args(args)
        .output()
        .expect("python3 scripts/chart.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn values_file(values: &Value) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), values.to_string()).unwrap();
    file
}

/// Renders the chart: every object, keyed by "Kind/name".
fn render(values: &Value) -> BTreeMap<String, Value> {
    let file = values_file(values);
    let (ok, out) = chart(&["render", file.path().to_str().unwrap()]);
    assert!(ok, "render failed: {out}");
    let templates: BTreeMap<String, String> = serde_json::from_str(&out).expect("render output");
    let mut objects = BTreeMap::new();
    for (path, text) in templates.iter().filter(|(p, _)| !p.ends_with("NOTES.txt")) {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = <Value as serde::Deserialize>::deserialize(doc).unwrap_or(Value::Null);
            if value.is_null() {
                continue;
            }
            let mut key = format!(
                "{}/{}",
                value["kind"].as_str().unwrap_or("?"),
                value["metadata"]["name"].as_str().unwrap_or("?")
            );
            if objects.contains_key(&key) {
                // The same name in another namespace (per-namespace bindings).
                key = format!(
                    "{key}@{}",
                    value["metadata"]["namespace"].as_str().unwrap_or("")
                );
            }
            assert!(
                objects.insert(key.clone(), value).is_none(),
                "{key} rendered twice ({path})"
            );
        }
    }
    objects
}

fn kinds(objects: &BTreeMap<String, Value>) -> Vec<&str> {
    objects
        .keys()
        .map(|k| k.split('/').next().unwrap())
        .collect()
}

#[test]
fn the_chart_lints_clean() {
    let (ok, out) = chart(&["lint"]);
    assert!(ok, "lint: {out}");
}

#[test]
fn default_values_render_three_roles_with_hardened_pods_and_no_secret_values() {
    let objects = render(&json!({}));
    let mut k = kinds(&objects);
    k.sort();
    assert_eq!(
        k,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Deployment",
            "Deployment",
            "Lease",
            "Role",
            "Role",
            "RoleBinding",
            "RoleBinding",
            "Service",
            "Service",
            "ServiceAccount",
            "ServiceAccount",
            "ServiceAccount"
        ]
    );
    for role in ["controller", "worker", "facade"] {
        let deployment = &objects[&format!("Deployment/imagejob-operator-{role}")];
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(
            pod["serviceAccountName"],
            format!("imagejob-operator-{role}")
        );
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        let container = &pod["containers"][0];
        assert_eq!(container["args"][0], role);
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            container["securityContext"]["allowPrivilegeEscalation"],
            false
        );
        let env: BTreeMap<_, _> = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), e.clone()))
            .collect();
        assert_eq!(env["TEMPORAL_TASK_QUEUE"]["value"], "main-task-queue");
        assert_eq!(env["TEMPORAL_PORT"]["value"], "7233");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        if role == "worker" {
            assert_eq!(
                env["COUCHBASE_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"],
                "couchbase-credentials"
            );
            assert!(
                !env.contains_key("LYKDAT_API_KEY"),
                "no Lykdat secret configured by default"
            );
        }
    }
    let rules = objects["ClusterRole/imagejob-operator-controller"]["rules"]
        .as_array()
        .unwrap();
    let on_jobs = rules
        .iter()
        .find(|r| r["resources"] == json!(["imagejobs"]))
        .unwrap();
    assert_eq!(
        on_jobs["verbs"],
        json!(["get", "list", "watch", "patch", "delete"])
    );
    assert!(
        objects["ServiceAccount/imagejob-operator-worker"]["automountServiceAccountToken"] == false
    );
}

#[test]
fn every_optional_part_renders() {
    let objects = render(&json!({
        "controller": {"watchNamespaces": ["team-a", "team-b"]},
        "worker": {"autoscaling": {"enabled": true}, "lykdat": {"existingSecret": "lykdat"},
                   "metadataStore": {"backend": "couchbase"}},
        "facade": {"ingress": {"enabled": true, "className": "nginx", "tls": [{"hosts": ["imagejobs.example.com"], "secretName": "tls"}]},
                   "jobNamespace": "jobs"},
        "serviceMonitor": {"enabled": true},
        "nodeSelector": {"pool": "ops"}, "tolerations": [{"key": "ops", "operator": "Exists"}],
    }));
    for key in [
        "HorizontalPodAutoscaler/imagejob-operator-worker",
        "Ingress/imagejob-operator-facade",
        "ServiceMonitor/imagejob-operator",
    ] {
        assert!(
            objects.contains_key(key),
            "{key} missing: {:?}",
            objects.keys()
        );
    }
    assert!(
        !objects.contains_key("ClusterRoleBinding/imagejob-operator-controller"),
        "bound per namespace instead"
    );
    let bindings: Vec<_> = objects
        .values()
        .filter(|o| {
            o["kind"] == "RoleBinding" && o["metadata"]["name"] == "imagejob-operator-controller"
        })
        .map(|o| o["metadata"]["namespace"].clone())
        .collect();
    assert_eq!(bindings, [json!("team-a"), json!("team-b")]);
    assert_eq!(
        objects["Role/imagejob-operator-facade"]["metadata"]["namespace"],
        "jobs"
    );
    let worker = &objects["Deployment/imagejob-operator-worker"]["spec"];
    assert!(
        worker.get("replicas").is_none(),
        "the HPA owns the replica count"
    );
    assert_eq!(worker["template"]["spec"]["nodeSelector"]["pool"], "ops");
    let env = worker["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    let key = env
        .iter()
        .find(|e| e["name"] == "LYKDAT_API_KEY")
        .expect("LYKDAT_API_KEY from the secret");
    assert_eq!(
        key["valueFrom"]["secretKeyRef"],
        json!({"name": "lykdat", "key": "api-key"})
    );
}

#[test]
fn values_that_break_the_schema_are_rejected() {
    let (ok, out) = chart(&["validate", values_file(&json!({})).path().to_str().unwrap()]);
    assert!(ok, "defaults must validate: {out}");
    for bad in [
        json!({"temporal": {"port": "7233"}}),
        json!({"temporal": {"port": 70000}}),
        json!({"worker": {"metadataStore": {"backend": "mysql"}}}),
        json!({"controller": {"replicas": -1}}),
        json!({"facade": {"service": {"type": "Headless"}}}),
        json!({"logFormat": "xml"}),
        json!({"controller": {"leaderElection": {"enabled": "yes"}}}),
        json!({"unknownTopLevel": 1}),
    ] {
        let (ok, out) = chart(&["validate", values_file(&bad).path().to_str().unwrap()]);
        assert!(!ok, "{bad} was accepted: {out}");
        assert!(out.contains("rejected"), "{out}");
    }
}

#[test]
fn an_embedded_store_with_several_workers_is_refused_at_render_time() {
    for (bad, says) in [
        (
            json!({"worker": {"replicas": 2, "metadataStore": {"backend": "embedded"}}}),
            "worker.replicas must be 1",
        ),
        (
            json!({"worker": {"replicas": 1, "autoscaling": {"enabled": true},
                              "metadataStore": {"backend": "embedded"}}}),
            "worker.autoscaling.enabled cannot be used",
        ),
    ] {
        let (ok, out) = chart(&["render", values_file(&bad).path().to_str().unwrap()]);
        assert!(!ok, "{bad} rendered");
        assert!(out.contains(says), "{bad}: {out}");
        assert!(
            out.contains("one file owned by one worker process"),
            "{out}"
        );
    }
    let objects =
        render(&json!({"worker": {"replicas": 1, "metadataStore": {"backend": "embedded"}}}));
    let worker = &objects["Deployment/imagejob-operator-worker"]["spec"];
    assert_eq!(worker["strategy"]["type"], "Recreate");
    assert_eq!(
        worker["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "imagejob-operator-worker-data"
    );
    let claim = &objects["PersistentVolumeClaim/imagejob-operator-worker-data"];
    assert_eq!(
        claim["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
}

#[test]
fn manifests_are_generated_from_the_chart() {
    let (ok, out) = chart(&["manifests", "--check"]);
    assert!(ok, "{out}");
    let crd = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/imagejob.yaml"))
        .unwrap();
    let chart_crd = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/imagejob-operator/crds/imagejob.yaml"
    ))
    .unwrap();
    assert!(
        crd == chart_crd,
        "charts/imagejob-operator/crds/imagejob.yaml differs from crds/imagejob.yaml: copy it"
    );
}

#[test]
fn plain_manifests_are_accepted_by_the_apiserver() {
    support::stack_env("KUBECONFIG");
    let out = Command::new("kubectl")
        .args(["apply", "--dry-run=server", "-f"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/manifests/imagejob-operator.yaml"
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The namespace does not exist in a dry run, so only "namespace not found" may fail.
    let real_errors: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("Error") && !l.contains("namespaces \"imagejob-system\" not found"))
        .collect();
    assert!(real_errors.is_empty(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("clusterrole.rbac.authorization.k8s.io/imagejob-operator-controller created (server dry run)"));
}

/// A kubeconfig that acts as `user` through impersonation.
fn impersonating_kubeconfig(dir: &std::path::Path, user: &str) -> std::path::PathBuf {
    let base = std::fs::read_to_string(support::stack_env("KUBECONFIG")).unwrap();
    let path = dir.join(user.replace(':', "_"));
    std::fs::write(
        &path,
        base.replace("    token: ", &format!("    as: {user}\n    token: ")),
    )
    .unwrap();
    path
}

/// Sends a request with the test token and reads the JSON answer.
async fn json_of(request: reqwest::RequestBuilder) -> Value {
    let response = request
        .bearer_auth("rbac-token")
        .send()
        .await
        .expect("request");
    response.json().await.expect("a JSON body")
}

/// Whether `user` may `verb` `resource` in `ns`; `resource` may name a subresource
/// (`imagejobs/status`), which kubectl would otherwise read as an object's name.
fn can_i(user: &str, ns: &str, verb: &str, resource: &str) -> bool {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let mut kubectl = Command::new("kubectl");
    kubectl.args(["auth", "can-i", verb, resource, "-n", ns, "--as", user]);
    if !subresource.is_empty() {
        kubectl.arg(format!("--subresource={subresource}"));
    }
    let out = kubectl.output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[tokio::test]
async fn the_release_installs_and_its_rbac_is_sufficient_and_minimal() {
    let client = kube_env::client().await;
    let ns = support::unique("release");
    let release_name = support::unique("ij");
    let release = release_name.as_str();
    let settings = support::temporal(&support::unique("helm-queue"));
    let values = json!({
        "controller": {"watchNamespaces": [ns], "replicas": 1},
        "worker": {"replicas": 1, "metadataStore": {"backend": "embedded"}},
        "facade": {"ingress": {"enabled": true}},
    });
    let file = values_file(&values);
    let (ok, out) = tokio::task::spawn_blocking({
        let (ns, path, release) = (
            ns.clone(),
            file.path().to_str().unwrap().to_owned(),
            release_name.clone(),
        );
        move || chart(&["install", &release, &ns, &path])
    })
    .await
    .unwrap();
    assert!(ok, "helm install: {out}");

    let sa = |role: &str| format!("system:serviceaccount:{ns}:{release}-imagejob-operator-{role}");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = |role: &str| impersonating_kubeconfig(dir.path(), &sa(role));
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "rbac-token\n").unwrap();
    let temporal_env = |cmd: &mut Command| {
        cmd.env("TEMPORAL_HOST", &settings.host)
            .env("TEMPORAL_PORT", settings.port.to_string())
            .env("TEMPORAL_TASK_QUEUE", &settings.task_queue)
            .env("RUST_LOG", "warn");
    };
    let mut controller = Command::new(support::operator_bin());
    controller
        .arg("controller")
        .env("KUBECONFIG", kubeconfig("controller"))
        .env("WATCH_NAMESPACES", &ns)
        .env(
            "CONTROLLER_METRICS_ADDR",
            format!("127.0.0.1:{}", support::free_port()),
        )
        .env("LEADER_ELECTION", "true")
        .env("LEASE_NAMESPACE", &ns)
        .env(
            "LEASE_NAME",
            format!("{release}-imagejob-operator-controller"),
        );
    temporal_env(&mut controller);
    let _controller = ChildGuard::spawn(&mut controller);
    let facade_port = support::free_port();
    let mut facade = Command::new(support::operator_bin());
    facade
        .arg("facade")
        .env("KUBECONFIG", kubeconfig("facade"))
        .env("FACADE_NAMESPACE", &ns)
        .env("FACADE_ADDR", format!("127.0.0.1:{facade_port}"))
        .env("FACADE_TOKENS_FILE", &tokens);
    temporal_env(&mut facade);
    let _facade = ChildGuard::spawn(&mut facade);
    let _worker = TestWorker::plain(&settings);

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{facade_port}");
    eventually(
        "the facade to be ready",
        Duration::from_secs(30),
        || async {
            (http
                .get(format!("{base}/readyz"))
                .send()
                .await
                .ok()?
                .status()
                == 200)
                .then_some(())
        },
    )
    .await;
    let accepted = json_of(
        http.post(format!("{base}/images/process"))
            .json(&json!({"url": "https://example.com/image.jpg", "tags": ["shirt"]})),
    )
    .await;
    let workflow_id = accepted["workflow_id"]
        .as_str()
        .expect("accepted")
        .to_owned();
    let result = json_of(http.get(format!(
        "{base}/images/workflow/{workflow_id}/result?timeout=60"
    )))
    .await;
    assert_eq!(result["state"]["status"], "completed", "{result}");
    let jobs: Api<ImageJob> = Api::namespaced(client, &ns);
    assert_eq!(
        jobs.list(&Default::default()).await.unwrap().items[0].phase(),
        Phase::Completed
    );

    // Granted, and nothing more.
    assert!(can_i(&sa("controller"), &ns, "patch", "imagejobs/status"));
    assert!(can_i(&sa("controller"), &ns, "update", "leases"));
    assert!(can_i(&sa("facade"), &ns, "create", "imagejobs"));
    assert!(
        can_i(&sa("facade"), &ns, "patch", "imagejobs"),
        "the cancel endpoint patches spec.status"
    );
    for (role, verb, resource) in [
        ("controller", "create", "imagejobs"),
        ("controller", "get", "secrets"),
        ("facade", "patch", "imagejobs/status"),
        ("facade", "update", "imagejobs/status"),
        ("facade", "update", "imagejobs"),
        ("facade", "list", "secrets"),
        ("worker", "list", "imagejobs"),
        ("worker", "get", "secrets"),
    ] {
        assert!(
            !can_i(&sa(role), &ns, verb, resource),
            "{role} may {verb} {resource}"
        );
    }
    assert!(
        !can_i(&sa("controller"), "default", "list", "imagejobs"),
        "controller bound only in its watched namespace"
    );
    assert!(
        !can_i(&sa("facade"), "default", "create", "imagejobs"),
        "facade bound only in its job namespace"
    );
}
