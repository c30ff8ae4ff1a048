//! The Helm chart (through Helm's own Go SDK from PyPI, `scripts/chart.py`) and the plain
//! manifests: lint, render, schema, drift, install into the real apiserver, and least-privilege
//! RBAC proven end to end with the roles running as the chart's ServiceAccounts.

use imagejob_testkit as support;

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

/// Renders the chart: every object, keyed by "Kind/name".
fn render(values: &Value) -> BTreeMap<String, Value> {
    let file = support::values_file(values);
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
            "Deployment",
            "Lease",
            "NetworkPolicy",
            "NetworkPolicy",
            "NetworkPolicy",
            "PersistentVolumeClaim",
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
        // Replicas spread over nodes, as a preference only.
        let spread = &pod["topologySpreadConstraints"][0];
        assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
        assert_eq!(spread["whenUnsatisfiable"], "ScheduleAnyway");
        assert_eq!(
            spread["labelSelector"]["matchLabels"],
            deployment["spec"]["selector"]["matchLabels"]
        );
        if role == "facade" {
            assert_eq!(env["FACADE_ADMIN_ADDR"]["value"], "0.0.0.0:9091");
            assert_eq!(container["readinessProbe"]["httpGet"]["port"], "admin");
            assert_eq!(env["FACADE_DRAIN_SECS"]["value"], "5");
            assert_eq!(pod["terminationGracePeriodSeconds"], 30);
        }
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

/// The ports a NetworkPolicy admits to, with who may reach each (`None`: anyone).
fn admitted(policy: &Value) -> BTreeMap<String, Option<Value>> {
    policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| {
            let ports = rule["ports"].as_array().unwrap();
            assert_eq!(ports.len(), 1, "{rule}");
            (
                ports[0]["port"].as_str().unwrap().to_owned(),
                rule.get("from").cloned(),
            )
        })
        .collect()
}

#[test]
fn network_policies_admit_each_role_only_what_it_serves_and_metrics_stay_off_the_service() {
    let objects = render(
        &json!({"facade": {"ingress": {"enabled": true}}, "serviceMonitor": {"enabled": true}}),
    );
    let monitoring = json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]);
    for (role, port) in [("controller", "metrics"), ("worker", "health")] {
        let policy = &objects[&format!("NetworkPolicy/imagejob-operator-{role}")];
        assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
        assert_eq!(
            admitted(policy),
            BTreeMap::from([(port.to_owned(), Some(monitoring.clone()))]),
            "{role}"
        );
    }
    let worker_pods = &objects["NetworkPolicy/imagejob-operator-worker"]["spec"]["podSelector"];
    assert_eq!(
        worker_pods["matchExpressions"][0]["values"],
        json!(["worker", "worker-similarity"]),
        "every worker Deployment"
    );
    let facade = &objects["NetworkPolicy/imagejob-operator-facade"];
    assert_eq!(
        admitted(facade),
        BTreeMap::from([
            ("http".to_owned(), None),
            ("admin".to_owned(), Some(monitoring.clone())),
        ])
    );
    // Neither the Service nor the Ingress publishes the admin port; a PodMonitor scrapes it.
    let service_ports: Vec<_> = objects["Service/imagejob-operator-facade"]["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["targetPort"].clone())
        .collect();
    assert_eq!(service_ports, [json!("http")]);
    let ingress = &objects["Ingress/imagejob-operator-facade"];
    assert_eq!(
        ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"]["name"],
        "http"
    );
    assert_eq!(
        objects["PodMonitor/imagejob-operator-facade"]["spec"]["podMetricsEndpoints"][0]["port"],
        "admin"
    );
    // Turned off, or opened to everyone.
    let off = render(&json!({"networkPolicy": {"enabled": false}}));
    assert!(!kinds(&off).contains(&"NetworkPolicy"));
    let open = render(&json!({"networkPolicy": {"metricsFrom": []}}));
    assert_eq!(
        admitted(&open["NetworkPolicy/imagejob-operator-controller"]),
        BTreeMap::from([("metrics".to_owned(), None)])
    );
}

#[test]
fn the_plain_manifests_namespace_enforces_the_restricted_pod_security_standard() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/manifests/imagejob-operator.yaml"
    ))
    .unwrap();
    let namespace: Value = serde_yaml::from_str(text.split("\n---\n").next().unwrap()).unwrap();
    assert_eq!(namespace["kind"], "Namespace");
    let labels = &namespace["metadata"]["labels"];
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
    // What "restricted" asks of every container the chart runs.
    let objects = render(&json!({}));
    for (name, object) in objects.iter().filter(|(n, _)| n.starts_with("Deployment/")) {
        let pod = &object["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{name}"
        );
        for container in pod["containers"].as_array().unwrap() {
            let security = &container["securityContext"];
            assert_eq!(security["capabilities"]["drop"], json!(["ALL"]), "{name}");
            assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
        }
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
    }
}

#[test]
fn every_optional_part_renders() {
    let objects = render(&json!({
        "controller": {"watchNamespaces": ["team-a", "team-b"],
                       "fairnessWeights": {"team-a": 2, "team-b": 0.5},
                       "notifications": {"sinkUrl": "https://ops.example/hook",
                                         "allowedHosts": ["hooks.example", "*.team.example"],
                                         "signingKeySecret": "notify"}},
        "worker": {"autoscaling": {"enabled": true}, "lykdat": {"existingSecret": "lykdat"},
                   "metadataStore": {"backend": "couchbase"},
                   "similarity": {"searchesPerSecond": 5}},
        "facade": {"ingress": {"enabled": true, "className": "nginx", "tls": [{"hosts": ["imagejobs.example.com"], "secretName": "tls"}]},
                   "jobNamespace": "jobs"},
        "serviceMonitor": {"enabled": true},
        "nodeSelector": {"pool": "ops"}, "tolerations": [{"key": "ops", "operator": "Exists"}],
        "podDisruptionBudget": {"enabled": true},
    }));
    let controller = env_of(&objects, "controller");
    assert_eq!(
        controller["FAIRNESS_WEIGHTS"]["value"],
        "team-a=2,team-b=0.5"
    );
    assert_eq!(
        controller["NOTIFY_SINK_URL"]["value"],
        "https://ops.example/hook"
    );
    assert_eq!(
        controller["NOTIFY_ALLOWED_HOSTS"]["value"],
        "hooks.example,*.team.example"
    );
    assert_eq!(
        controller["NOTIFY_SIGNING_KEY"]["valueFrom"]["secretKeyRef"],
        json!({"name": "notify", "key": "signing-key"}),
        "the key comes from the Secret, never a value"
    );
    let worker = env_of(&objects, "worker");
    assert_eq!(worker["SIMILARITY_SEARCHES_PER_SECOND"]["value"], "5");
    // One budget per role, over exactly that role's pods.
    for role in ["controller", "facade", "worker"] {
        let budget = &objects[&format!("PodDisruptionBudget/imagejob-operator-{role}")];
        let deployment = &objects[&format!("Deployment/imagejob-operator-{role}")];
        assert_eq!(budget["spec"]["maxUnavailable"], 1);
        assert_eq!(
            budget["spec"]["selector"]["matchLabels"],
            deployment["spec"]["selector"]["matchLabels"]
        );
    }
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
    let (ok, out) = chart(&[
        "validate",
        support::values_file(&json!({})).path().to_str().unwrap(),
    ]);
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
        json!({"podDisruptionBudget": {"maxUnavailable": 0}}),
        json!({"facade": {"drainSeconds": -1}}),
    ] {
        let (ok, out) = chart(&[
            "validate",
            support::values_file(&bad).path().to_str().unwrap(),
        ]);
        assert!(!ok, "{bad} was accepted: {out}");
        assert!(out.contains("rejected"), "{out}");
    }
}

/// The worker Deployments' `WORKER_QUEUES`, by name.
fn worker_queues(objects: &BTreeMap<String, Value>) -> BTreeMap<String, String> {
    objects
        .iter()
        .filter(|(k, _)| k.starts_with("Deployment/imagejob-operator-worker"))
        .map(|(k, v)| {
            let env = v["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array()
                .unwrap();
            let queues = env.iter().find(|e| e["name"] == "WORKER_QUEUES").unwrap();
            (k.clone(), queues["value"].as_str().unwrap().to_owned())
        })
        .collect()
}

#[test]
fn with_couchbase_the_catalog_has_one_owner_beside_the_workers() {
    let objects = render(&json!({"worker": {"replicas": 3}}));
    assert_eq!(
        worker_queues(&objects),
        BTreeMap::from([
            (
                "Deployment/imagejob-operator-worker".into(),
                "workflows".into()
            ),
            (
                "Deployment/imagejob-operator-worker-similarity".into(),
                "similarity".into()
            ),
        ])
    );
    let workers = &objects["Deployment/imagejob-operator-worker"]["spec"];
    assert_eq!(workers["replicas"], 3);
    assert!(
        !workers.to_string().contains("CATALOG_PATH"),
        "the workflows' workers open no catalog"
    );
    let owner = &objects["Deployment/imagejob-operator-worker-similarity"]["spec"];
    assert_eq!(owner["replicas"], 1);
    assert_eq!(owner["strategy"]["type"], "Recreate");
    assert_eq!(
        owner["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "worker-similarity"
    );
    assert_eq!(
        owner["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "imagejob-operator-worker-catalog"
    );
    assert_eq!(
        objects["PersistentVolumeClaim/imagejob-operator-worker-catalog"]["spec"]["resources"]["requests"]
            ["storage"],
        "2Gi"
    );

    // Lykdat (a key configured) needs no owner: every worker searches.
    let lykdat = render(&json!({"worker": {"lykdat": {"existingSecret": "lykdat"}}}));
    assert_eq!(
        worker_queues(&lykdat),
        BTreeMap::from([("Deployment/imagejob-operator-worker".into(), "all".into())])
    );
    assert!(!lykdat.contains_key("PersistentVolumeClaim/imagejob-operator-worker-catalog"));
    // The embedded store: one worker, both queues, the catalog in its volume.
    let embedded =
        render(&json!({"worker": {"replicas": 1, "metadataStore": {"backend": "embedded"}}}));
    assert_eq!(
        worker_queues(&embedded),
        BTreeMap::from([("Deployment/imagejob-operator-worker".into(), "all".into())])
    );
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
        let (ok, out) = chart(&[
            "render",
            support::values_file(&bad).path().to_str().unwrap(),
        ]);
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
    support::json_of(request.bearer_auth("rbac-token")).await
}

/// Whether `user` may `verb` `resource` in `ns`; `resource` may name a subresource
/// (`imagejobs/status`), which kubectl would otherwise read as an object's name.
fn can_i(user: &str, ns: &str, verb: &str, resource: &str) -> bool {
    can_i_on(user, ns, verb, resource, None)
}

/// The same for one object by name (`name`), or any when `None`.
fn can_i_on(user: &str, ns: &str, verb: &str, resource: &str, name: Option<&str>) -> bool {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let mut kubectl = Command::new("kubectl");
    let target = name.map_or_else(|| resource.to_owned(), |n| format!("{resource}/{n}"));
    kubectl.args(["auth", "can-i", verb, &target, "-n", ns, "--as", user]);
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
        "podDisruptionBudget": {"enabled": true},
    });
    let file = support::values_file(&values);
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
        .env(
            "FACADE_ADMIN_ADDR",
            format!("127.0.0.1:{}", support::free_port()),
        )
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
    let lease = format!("{release}-imagejob-operator-controller");
    for verb in ["get", "watch", "update"] {
        assert!(can_i_on(
            &sa("controller"),
            &ns,
            verb,
            "leases",
            Some(&lease)
        ));
        assert!(
            !can_i_on(
                &sa("controller"),
                &ns,
                verb,
                "leases",
                Some("another-lease")
            ),
            "the Role names its one Lease"
        );
    }
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

/// A container's environment as name -> entry.
fn env_of(objects: &BTreeMap<String, Value>, role: &str) -> BTreeMap<String, Value> {
    objects[&format!("Deployment/imagejob-operator-{role}")]["spec"]["template"]["spec"]
        ["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().unwrap_or("").to_owned(), e.clone()))
        .collect()
}

fn secured_temporal() -> Value {
    json!({
        "address": "ns.a1b2c.tmprl.cloud:7233",
        "tls": {"enabled": true, "serverName": "ns.a1b2c.tmprl.cloud", "existingSecret": "temporal-tls",
                "clientCertificate": true},
        "apiKey": {"existingSecret": "temporal-api-key"},
        "payloadEncryption": {"enabled": true, "existingSecret": "payload-keys", "currentKeyId": "2026-11"},
    })
}

#[test]
fn a_secured_temporal_is_configured_by_temporals_variables_from_mounted_secrets() {
    let plain = render(&json!({}));
    for role in ["controller", "worker", "facade"] {
        let env = env_of(&plain, role);
        assert!(
            !env.keys()
                .any(|k| k.starts_with("TEMPORAL_TLS") || k == "TEMPORAL_ADDRESS"),
            "{role}: {env:?}"
        );
    }

    let objects = render(&json!({"temporal": secured_temporal(),
                                 "worker": {"metadataStore": {"backend": "couchbase"}}}));
    for role in ["controller", "worker", "facade"] {
        let env = env_of(&objects, role);
        let value = |name: &str| env[name]["value"].as_str().unwrap_or("").to_owned();
        assert_eq!(value("TEMPORAL_ADDRESS"), "ns.a1b2c.tmprl.cloud:7233");
        assert_eq!(value("TEMPORAL_TLS"), "true");
        assert_eq!(value("TEMPORAL_TLS_SERVER_NAME"), "ns.a1b2c.tmprl.cloud");
        assert_eq!(
            value("TEMPORAL_TLS_SERVER_CA_CERT_PATH"),
            "/etc/temporal/tls/ca.crt"
        );
        assert_eq!(
            value("TEMPORAL_TLS_CLIENT_CERT_PATH"),
            "/etc/temporal/tls/tls.crt"
        );
        assert_eq!(
            value("TEMPORAL_TLS_CLIENT_KEY_PATH"),
            "/etc/temporal/tls/tls.key"
        );
        assert_eq!(
            value("TEMPORAL_API_KEY_FILE"),
            "/etc/temporal/api-key/api-key"
        );
        assert!(
            !env.contains_key("TEMPORAL_API_KEY"),
            "no key value in the pod spec"
        );

        let pod =
            &objects[&format!("Deployment/imagejob-operator-{role}")]["spec"]["template"]["spec"];
        let mounts = pod["containers"][0]["volumeMounts"]
            .as_array()
            .expect("mounts");
        for (volume, path) in [
            ("temporal-tls", "/etc/temporal/tls"),
            ("temporal-api-key", "/etc/temporal/api-key"),
        ] {
            let mount = mounts.iter().find(|m| m["name"] == volume).expect(volume);
            assert_eq!(mount["mountPath"], path, "{role}");
            assert!(
                mount.get("subPath").is_none(),
                "subPath mounts never see a rotation"
            );
        }
        let volumes = pod["volumes"].as_array().expect("volumes");
        let tls = volumes
            .iter()
            .find(|v| v["name"] == "temporal-tls")
            .expect("tls volume");
        assert_eq!(tls["secret"]["secretName"], "temporal-tls");
        assert_eq!(
            tls["secret"]["items"],
            json!([{"key": "ca.crt", "path": "ca.crt"}, {"key": "tls.crt", "path": "tls.crt"},
                   {"key": "tls.key", "path": "tls.key"}])
        );
    }
}

#[test]
fn keda_scales_the_worker_on_the_task_queue_backlog_with_the_same_credentials() {
    let values = json!({"temporal": secured_temporal(),
                        "worker": {"metadataStore": {"backend": "couchbase"},
                                   "autoscaling": {"keda": {"enabled": true, "targetQueueSize": 7}}}});
    let objects = render(&values);
    assert!(!objects.contains_key("HorizontalPodAutoscaler/imagejob-operator-worker"));
    assert!(
        objects["Deployment/imagejob-operator-worker"]["spec"]
            .get("replicas")
            .is_none(),
        "KEDA owns the replica count"
    );
    let scaled = &objects["ScaledObject/imagejob-operator-worker"]["spec"];
    assert_eq!(scaled["scaleTargetRef"]["name"], "imagejob-operator-worker");
    let trigger = &scaled["triggers"][0];
    assert_eq!(trigger["type"], "temporal");
    assert_eq!(
        trigger["metadata"],
        json!({"endpoint": "ns.a1b2c.tmprl.cloud:7233", "namespace": "default",
               "taskQueue": "main-task-queue", "targetQueueSize": "7",
               "activationTargetQueueSize": "0", "enableTLS": "true",
               "tlsServerName": "ns.a1b2c.tmprl.cloud"})
    );
    assert_eq!(
        trigger["authenticationRef"]["name"],
        "imagejob-operator-worker-temporal"
    );
    let parameters: Vec<&str> = objects["TriggerAuthentication/imagejob-operator-worker-temporal"]
        ["spec"]["secretTargetRef"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["parameter"].as_str())
        .collect();
    assert_eq!(parameters, ["apiKey", "ca", "cert", "key"]);

    let mut both = values.clone();
    both["worker"]["autoscaling"]["enabled"] = json!(true);
    let (ok, out) = chart(&[
        "render",
        support::values_file(&both).path().to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("enable one"), "{out}");
}

#[test]
fn worker_versioning_names_the_deployment_and_the_build_after_the_image() {
    let objects = render(&json!({"worker": {"versioning": {"enabled": true}}}));
    let env = env_of(&objects, "worker");
    assert_eq!(
        env["WORKER_DEPLOYMENT_NAME"]["value"],
        "imagejob-operator-worker"
    );
    assert_eq!(
        env["WORKER_BUILD_ID"]["value"], "0.1.0",
        "the chart's appVersion"
    );
    assert_eq!(env["WORKER_VERSIONING_BEHAVIOR"]["value"], "auto-upgrade");
    let objects = render(&json!({"image": {"tag": "2026.11.2"},
                                 "worker": {"versioning": {"enabled": true, "behavior": "pinned"}}}));
    let env = env_of(&objects, "worker");
    assert_eq!(env["WORKER_BUILD_ID"]["value"], "2026.11.2");
    assert_eq!(env["WORKER_VERSIONING_BEHAVIOR"]["value"], "pinned");
    assert!(!env_of(&render(&json!({})), "worker").contains_key("WORKER_DEPLOYMENT_NAME"));
}

#[test]
fn worker_tuning_reaches_the_worker() {
    let objects = render(
        &json!({"worker": {"tuning": {"maxConcurrentActivities": 7, "workflowPollers": 3}}}),
    );
    let env = env_of(&objects, "worker");
    assert_eq!(env["WORKER_MAX_CONCURRENT_ACTIVITIES"]["value"], "7");
    assert_eq!(env["WORKER_WORKFLOW_POLLERS"]["value"], "3");
    assert_eq!(env["WORKER_MAX_CACHED_WORKFLOWS"]["value"], "1000");
    let (ok, out) = chart(&[
        "validate",
        support::values_file(&json!({"worker": {"tuning": {"workflowPollers": 1}}}))
            .path()
            .to_str()
            .unwrap(),
    ]);
    assert!(
        !ok,
        "one workflow poller with the sticky cache is refused: {out}"
    );
}

/// Every metric name a PromQL expression reads (ours and the SDK's: `imagejob_*`, `temporal_*`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        let word_len = rest[at..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len() - at);
        let word = &rest[at..at + word_len];
        let preceded = at > 0 && rest.as_bytes()[at - 1].is_ascii_alphanumeric();
        if !preceded && (word.starts_with("imagejob_") || word.starts_with("temporal_")) {
            names.push(word.to_owned());
        }
        rest = &rest[at + word_len..];
    }
    names
}

/// The dashboard's and the alerts' expressions, as the chart renders them.
fn monitoring_expressions() -> Vec<String> {
    let objects = render(
        &json!({"monitoring": {"grafanaDashboard": {"enabled": true},
                                                "prometheusRule": {"enabled": true}}}),
    );
    let dashboard = &objects["ConfigMap/imagejob-operator-dashboard"];
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: Value = serde_json::from_str(
        dashboard["data"]["imagejob-operator.json"]
            .as_str()
            .expect("dashboard json"),
    )
    .expect("the dashboard is JSON");
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    let rules = &objects["PrometheusRule/imagejob-operator"]["spec"]["groups"][0]["rules"];
    let alerts: Vec<&str> = rules
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert_eq!(
        alerts,
        [
            "ImageJobsFailing",
            "ImageJobScheduleToStartHigh",
            "ImageJobTemporalUnreachable",
            "ImageJobControllerNotLeading",
            "ImageJobWatchFailing"
        ]
    );
    exprs.extend(
        rules
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["expr"].as_str().map(str::to_owned)),
    );
    exprs
}

/// A TCP relay to Temporal whose connections can be cut, so the worker's polls fail for real.
struct Relay {
    address: String,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Relay {
    async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (target, mut cuts) = (target.clone(), cuts.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Self { address, cut }
    }

    /// Drops every open connection (new ones still pass).
    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

/// The metric names (samples' names) in a text exposition.
fn exported(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn the_dashboard_and_alerts_read_only_metrics_the_processes_export() {
    let wanted: std::collections::BTreeSet<String> = monitoring_expressions()
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    assert!(wanted.len() >= 10, "{wanted:?}");

    let s = kube_env::Setup::new("metrics").await;
    let relay = Relay::start(s.settings.address()).await;
    let dir = tempfile::tempdir().unwrap();
    let (worker_port, controller_port) = (support::free_port(), support::free_port());
    let _worker = ChildGuard::spawn(
        Command::new(support::operator_bin())
            .arg("worker")
            .env("TEMPORAL_ADDRESS", &relay.address)
            .env("TEMPORAL_TASK_QUEUE", &s.settings.task_queue)
            .env("EMBEDDED_STORE_PATH", dir.path().join("meta.redb"))
            .env("WORKER_HEALTH_ADDR", format!("127.0.0.1:{worker_port}"))
            .env("RUST_LOG", "warn"),
    );
    let _controller = ChildGuard::spawn(
        Command::new(support::operator_bin())
            .arg("controller")
            .env("TEMPORAL_TASK_QUEUE", &s.settings.task_queue)
            .env("WATCH_NAMESPACES", &s.ns)
            .env(
                "CONTROLLER_METRICS_ADDR",
                format!("127.0.0.1:{controller_port}"),
            )
            .env("RUST_LOG", "warn"),
    );
    kube_env::create(&s.api, "measured", kube_env::spec(false)).await;
    kube_env::wait_job(
        &s.api,
        "measured",
        "measured Completed",
        Duration::from_secs(90),
        |j| j.phase() == Phase::Completed,
    )
    .await;
    // Cut the worker's connections mid-poll: its poll failures are counted from then on.
    relay.cut();

    let http = reqwest::Client::new();
    let scrape = |port: u16| {
        let http = http.clone();
        async move {
            let response = http
                .get(format!("http://127.0.0.1:{port}/metrics"))
                .send()
                .await
                .ok()?;
            response.text().await.ok()
        }
    };
    let missing = eventually(
        "every metric the dashboard and alerts read",
        Duration::from_secs(60),
        || async {
            let mut have = exported(&scrape(worker_port).await?);
            have.extend(exported(&scrape(controller_port).await?));
            let missing: Vec<&String> = wanted
                .iter()
                .filter(|name| {
                    !["", "_bucket", "_total"]
                        .iter()
                        .any(|suffix| have.contains(&format!("{name}{suffix}")))
                })
                .collect();
            // A name still missing after the poll failures were counted is a real gap.
            (missing.is_empty() || have.contains("temporal_long_request_failure_total"))
                .then(|| missing.into_iter().cloned().collect::<Vec<_>>())
        },
    )
    .await;
    assert!(missing.is_empty(), "read but not exported: {missing:?}");
}

#[test]
fn the_similarity_backend_and_its_fetch_limits_reach_the_worker_and_its_catalog_is_writable() {
    let objects = render(&json!({}));
    // Couchbase (the default store): the catalog's owner searches, with its catalog on a claim.
    let env = env_of(&objects, "worker-similarity");
    assert_eq!(env["SIMILARITY_BACKEND"]["value"], "auto");
    assert_eq!(env["CATALOG_PATH"]["value"], "/catalog/catalog.redb");
    assert_eq!(env["IMAGE_FETCH_MAX_BYTES"]["value"], "20971520");
    assert!(
        !env.contains_key("IMAGE_FETCH_ALLOW_CIDRS"),
        "public addresses only by default"
    );
    let objects = render(&json!({"worker": {"replicas": 1,
        "metadataStore": {"backend": "embedded"},
        "similarity": {"backend": "catalog", "imageFetch": {"allowCidrs": ["10.0.0.0/8", "fd00::/8"],
            "maxBytes": 1024, "timeoutSeconds": 5, "maxPixels": 100}}}}));
    let env = env_of(&objects, "worker");
    assert_eq!(env["SIMILARITY_BACKEND"]["value"], "catalog");
    assert_eq!(env["CATALOG_PATH"]["value"], "/data/catalog.redb");
    assert_eq!(
        env["IMAGE_FETCH_ALLOW_CIDRS"]["value"],
        "10.0.0.0/8,fd00::/8"
    );
    assert_eq!(env["IMAGE_MAX_PIXELS"]["value"], "100");
    let (ok, out) = chart(&[
        "validate",
        support::values_file(&json!({"worker": {"similarity": {"backend": "clip"}}}))
            .path()
            .to_str()
            .unwrap(),
    ]);
    assert!(!ok, "an unknown backend is refused: {out}");
}
