//! The chart installed for real on a single-node cluster (`scripts/stack.sh up DIR --cluster`,
//! started by `scripts/test.sh`): the image built here, pods running with the chart's security
//! settings, jobs through kubectl and through the facade Service, leader failover by deleting
//! the leader pod, the embedded store surviving a worker restart, `helm upgrade` rolling the
//! pods with jobs in flight, and `helm uninstall` leaving nothing stuck.

use imagejob_testkit as support;

use imagejob_operator::store::{EmbeddedStore, MetadataStore};
use serde_json::{Value, json};
use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

const TOKEN: &str = "cluster-test-token-0123456789";
const WAIT: Duration = Duration::from_secs(240);

/// The cluster stack's environment (its `env` file), or why the test cannot run.
struct Cluster {
    env: BTreeMap<String, String>,
}

impl Cluster {
    fn from_env() -> Option<Self> {
        let path = std::env::var("IJ_CLUSTER_ENV").ok()?;
        let text = std::fs::read_to_string(&path).expect("the cluster stack's env file");
        let env = text
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Some(Self { env })
    }

    fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from the cluster env"))
    }

    fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_stdin(args, None)
    }

    fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        self.try_kubectl(args, stdin)
            .unwrap_or_else(|error| panic!("kubectl {args:?}: {error}"))
    }

    /// Runs kubectl against the cluster; its stdout, or its stderr when it fails.
    fn try_kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let kubeconfig = self.var("KUBECONFIG");
        support::try_kubectl(args, stdin, &[("KUBECONFIG", kubeconfig)])
    }

    /// Runs a kubectl wait; when it fails, panics with what the node and the namespace's pods
    /// and events say (a wait that times out says nothing of why).
    fn wait(&self, ns: &str, args: &[&str]) {
        if let Err(error) = self.try_kubectl(args, None) {
            let report: Vec<String> = [
                &["get", "nodes", "-o", "custom-columns=NODE:.metadata.name,TAINTS:.spec.taints[*].key,CONDITIONS:.status.conditions[?(@.status==\"True\")].type"][..],
                &["get", "pods", "-n", ns, "-o", "wide"],
                &["get", "events", "-n", ns, "--sort-by=.lastTimestamp"],
            ]
            .iter()
            .map(|what| {
                let answer = self.try_kubectl(what, None).unwrap_or_else(|e| e);
                format!("$ kubectl {}\n{answer}", what.join(" "))
            })
            .collect();
            panic!("kubectl {args:?}: {error}\n{}", report.join("\n"));
        }
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all)).expect("kubectl JSON")
    }

    fn chart(&self, args: &[&str]) {
        let out = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/chart.py"))
            .args(args)
            .env("KUBECONFIG", self.var("KUBECONFIG"))
            .output()
            .expect("chart.py runs");
        assert!(
            out.status.success(),
            "chart.py {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn temporal_address(&self) -> String {
        format!(
            "{}:{}",
            self.var("TEMPORAL_HOST"),
            self.var("TEMPORAL_PORT")
        )
    }
}

/// Polls `check` until it returns Some, or panics naming `what`.
fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn pods(c: &Cluster, ns: &str, role: &str) -> Vec<Value> {
    let list = c.json(&[
        "get",
        "pods",
        "-n",
        ns,
        "-l",
        &format!("app.kubernetes.io/component={role}"),
    ]);
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .cloned()
        .collect()
}

fn ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn wait_available(c: &Cluster, ns: &str) {
    c.wait(
        ns,
        &[
            "wait",
            "-n",
            ns,
            "--for=condition=Available",
            "deployment",
            "--all",
            "--timeout=240s",
        ],
    );
    // A rollout is over when only the new pods remain, all Ready.
    for deployment in c.json(&["get", "deployments", "-n", ns])["items"]
        .as_array()
        .unwrap()
    {
        let name = deployment["metadata"]["name"].as_str().unwrap();
        c.wait(
            ns,
            &[
                "rollout",
                "status",
                "-n",
                ns,
                "deployment",
                name,
                "--timeout=240s",
            ],
        );
    }
}

fn leader(c: &Cluster, ns: &str, lease: &str) -> Option<String> {
    let lease = c.json(&["get", "lease", "-n", ns, lease]);
    lease["spec"]["holderIdentity"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
}

fn apply_jobs(c: &Cluster, ns: &str, names: &[String]) {
    let docs: Vec<String> = names
        .iter()
        .map(|name| {
            format!(
                "apiVersion: imagejob.dev/v1alpha1\nkind: ImageJob\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{url: 'https://example.com/{name}.jpg', title: {name}, tags: [shirt]}}\n"
            )
        })
        .collect();
    c.kubectl_stdin(&["apply", "-f", "-"], Some(&docs.join("---\n")));
}

fn wait_completed(c: &Cluster, ns: &str, names: &[String]) {
    for name in names {
        c.wait(
            ns,
            &[
                "wait",
                "-n",
                ns,
                "--for=condition=Succeeded",
                &format!("imagejob/{name}"),
                "--timeout=240s",
            ],
        );
    }
}

fn workflow_identities(c: &Cluster, workflow_id: &str) -> String {
    support::cli_history(&c.temporal_address(), workflow_id).to_string()
}

struct Facade {
    base: String,
    http: reqwest::blocking::Client,
}

impl Facade {
    fn post(&self, url: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/images/process", self.base))
            .bearer_auth(TOKEN)
            .json(&json!({"url": url, "title": "Through the Service", "tags": ["shirt"]}))
            .send()
            .expect("POST through the Service");
        (r.status().as_u16(), r.json().unwrap_or(Value::Null))
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .expect("GET through the Service");
        (r.status().as_u16(), r.json().unwrap_or(Value::Null))
    }
}

#[test]
fn the_chart_runs_in_pods_and_survives_failover_restart_upgrade_and_uninstall() {
    let Some(c) = Cluster::from_env() else {
        eprintln!(
            "SKIPPED: IJ_CLUSTER_ENV is not set; scripts/test.sh starts a cluster stack (scripts/stack.sh up DIR --cluster) and sets it"
        );
        return;
    };
    let ns = support::unique("cluster");
    // Cluster-scoped objects (ClusterRoles) carry the release name: one of its own per run.
    let release_name = support::unique("ij");
    let release = release_name.as_str();
    let prefix = format!("{release}-imagejob-operator");
    let lease = format!("{prefix}-controller");
    c.kubectl(&["create", "namespace", &ns]);
    c.kubectl(&[
        "create",
        "secret",
        "generic",
        "-n",
        &ns,
        "imagejob-facade-tokens",
        &format!("--from-literal=tokens={TOKEN}"),
    ]);
    // The embedded store's volume: a hostPath PersistentVolume on the node.
    let data = PathBuf::from(c.var("IJ_STACK_DIR"))
        .join("volumes")
        .join(&ns);
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(65532), Some(65532)).unwrap();
    let class = format!("local-{ns}");
    c.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {ns}-data}}\nspec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  persistentVolumeReclaimPolicy: Retain\n  storageClassName: {class}\n  hostPath: {{path: {}, type: Directory}}\n",
            data.display()
        )),
    );
    let mut values = json!({
        "temporal": {
            "host": c.var("TEMPORAL_HOST"),
            "port": c.var("TEMPORAL_PORT").parse::<u16>().unwrap(),
            "taskQueue": support::unique("cluster-queue"),
        },
        "logFormat": "text",
        "controller": {
            "watchNamespaces": [ns],
            "leaderElection": {"leaseDurationSeconds": 6, "renewDeadlineSeconds": 4, "retryPeriodSeconds": 1},
        },
        "worker": {
            "replicas": 1,
            "metadataStore": {"backend": "embedded", "embedded": {"persistence": {"storageClassName": class}}},
        },
        "podDisruptionBudget": {"enabled": true},
    });

    // helm install: every Deployment Available, every probe passing, the chart's security.
    let installed = Instant::now();
    let file = support::values_file(&values);
    c.chart(&["install", release, &ns, file.path().to_str().unwrap()]);
    wait_available(&c, &ns);
    eprintln!(
        "figure: helm install -> all Deployments Available in {:?}",
        installed.elapsed()
    );
    for (role, replicas) in [("controller", 2), ("facade", 2), ("worker", 1)] {
        let running = pods(&c, &ns, role);
        assert_eq!(running.len(), replicas, "{role} pods");
        for pod in &running {
            assert!(ready(pod), "{role} pod ready: {}", pod["metadata"]["name"]);
            let spec = &pod["spec"];
            assert_eq!(spec["securityContext"]["runAsUser"], 65532);
            assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
            let container = &spec["containers"][0];
            assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
            assert_eq!(
                container["securityContext"]["allowPrivilegeEscalation"],
                false
            );
            assert_eq!(container["image"], c.var("IJ_IMAGE"));
            assert_eq!(
                pod["status"]["containerStatuses"][0]["restartCount"], 0,
                "{role} restarts"
            );
        }
    }
    // The disruption budgets cover each role's pods (the cluster's disruption controller says
    // so): a drain may take one of each, never more.
    for (role, replicas) in [("controller", 2), ("facade", 2), ("worker", 1)] {
        let name = format!("{release}-imagejob-operator-{role}");
        let budget = until(
            &format!("the {role} disruption budget to count its pods"),
            || {
                let budget = c.json(&["get", "pdb", "-n", &ns, &name]);
                (budget["status"]["expectedPods"] == replicas).then_some(budget)
            },
        );
        assert_eq!(budget["status"]["currentHealthy"], replicas, "{budget}");
        assert_eq!(budget["status"]["disruptionsAllowed"], 1, "{budget}");
    }
    let worker_pod = pods(&c, &ns, "worker")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();

    // kubectl apply -> Completed: run by the worker pod, written by the leader controller pod.
    let first = vec!["first-shirt".to_owned()];
    apply_jobs(&c, &ns, &first);
    wait_completed(&c, &ns, &first);
    let leading = until("a leader", || leader(&c, &ns, &lease));
    let job = c.json(&["get", "imagejob", "-n", &ns, "first-shirt"]);
    let workflow_id = job["status"]["workflowId"].as_str().unwrap().to_owned();
    assert!(
        workflow_identities(&c, &workflow_id).contains(&worker_pod),
        "the workflow's tasks were run by the worker pod {worker_pod}"
    );
    let events = c.json(&["get", "events.events.k8s.io", "-n", &ns]);
    let writers: BTreeSet<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["regarding"]["name"] == "first-shirt")
        .filter_map(|e| e["reportingInstance"].as_str())
        .collect();
    assert_eq!(
        writers,
        BTreeSet::from([leading.as_str()]),
        "events come from the leader pod"
    );

    // The facade through its Service (two replicas behind it): 202, then status and result.
    let cluster_ip = c.kubectl(&[
        "get",
        "service",
        "-n",
        &ns,
        &format!("{prefix}-facade"),
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let facade = Facade {
        base: format!("http://{cluster_ip}:80"),
        http: reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(90))
            .build()
            .unwrap(),
    };
    for i in 0..6 {
        let (code, body) = facade.post(&format!("https://example.com/service-{i}.jpg"));
        assert_eq!(code, 202, "{body}");
        let id = body["workflow_id"].as_str().unwrap().to_owned();
        let (code, status) = facade.get(&format!("/images/workflow/{id}/status"));
        assert_eq!(code, 200, "{status}");
        let (code, result) = facade.get(&format!("/images/workflow/{id}/result?timeout=60"));
        assert_eq!(code, 200, "{result}");
        assert_eq!(result["state"]["status"], "completed", "{result}");
    }

    // Delete the leader pod while jobs run: the other replica finishes them, one workflow each.
    let batch: Vec<String> = (0..12).map(|i| format!("failover-{i}")).collect();
    apply_jobs(&c, &ns, &batch);
    c.kubectl(&["delete", "pod", "-n", &ns, &leading, "--wait=false"]);
    wait_completed(&c, &ns, &batch);
    let next = until("a new leader", || {
        leader(&c, &ns, &lease).filter(|l| *l != leading)
    });
    assert_ne!(next, leading);
    let mut image_ids = Vec::new();
    for name in batch.iter().chain(&first) {
        let job = c.json(&["get", "imagejob", "-n", &ns, name]);
        let id = job["status"]["workflowId"].as_str().unwrap().to_owned();
        let count = until("the workflow to be visible", || {
            Some(support::executions(&c.temporal_address(), &id)).filter(|n| *n > 0)
        });
        assert_eq!(count, 1, "{name} has exactly one workflow");
        image_ids.push(job["status"]["imageId"].as_str().unwrap().to_owned());
    }

    // The embedded store survives a worker restart: a new pod, then the documents read back.
    c.kubectl(&["delete", "pod", "-n", &ns, &worker_pod]);
    wait_available(&c, &ns);
    let after_restart = vec!["after-restart".to_owned()];
    apply_jobs(&c, &ns, &after_restart);
    wait_completed(&c, &ns, &after_restart);
    let worker = format!("{prefix}-worker");
    c.kubectl(&["scale", "deployment", "-n", &ns, &worker, "--replicas=0"]);
    until("the worker pod to stop", || {
        pods(&c, &ns, "worker").is_empty().then_some(())
    });
    {
        // The pod object goes before its process has let go of the file: wait for the lock.
        let store = until("the stopped worker to release the store file", || {
            EmbeddedStore::open(&data.join("metadata.redb")).ok()
        });
        let runtime = tokio::runtime::Runtime::new().unwrap();
        for id in &image_ids {
            let doc = runtime.block_on(store.get(id)).expect("read the store");
            assert!(
                doc.is_some(),
                "document {id} written before the restart is still there"
            );
        }
    }
    c.kubectl(&["scale", "deployment", "-n", &ns, &worker, "--replicas=1"]);
    wait_available(&c, &ns);

    // helm upgrade changing a value rolls every pod; jobs in flight still complete.
    let before: BTreeSet<String> = ["controller", "facade", "worker"]
        .iter()
        .flat_map(|r| pods(&c, &ns, r))
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    let in_flight: Vec<String> = (0..8).map(|i| format!("upgrade-{i}")).collect();
    apply_jobs(&c, &ns, &in_flight);
    // Clients of the facade's Service keep asking all through the rollout; the replicas that
    // stop drain first, so not one request fails.
    let rolling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let asking = std::thread::spawn({
        let (rolling, base, http) = (rolling.clone(), facade.base.clone(), facade.http.clone());
        move || {
            let mut answers: BTreeMap<String, usize> = BTreeMap::new();
            while rolling.load(std::sync::atomic::Ordering::Relaxed) {
                let answer = http
                    .get(format!("{base}/images/workflows?limit=1"))
                    .bearer_auth(TOKEN)
                    .send()
                    .map_or_else(|e| format!("error: {e}"), |r| r.status().to_string());
                *answers.entry(answer).or_default() += 1;
            }
            answers
        }
    });
    values["podAnnotations"] = json!({"example.com/rollout": "2"});
    let file = support::values_file(&values);
    c.chart(&["upgrade", release, &ns, file.path().to_str().unwrap()]);
    wait_available(&c, &ns);
    rolling.store(false, std::sync::atomic::Ordering::Relaxed);
    let answers = asking.join().expect("the asking thread");
    eprintln!("figure: facade answers through the rollout: {answers:?}");
    assert_eq!(
        answers.keys().collect::<Vec<_>>(),
        ["200 OK"],
        "requests failed while the facade rolled: {answers:?}"
    );
    wait_completed(&c, &ns, &in_flight);
    let after: Vec<Value> = ["controller", "facade", "worker"]
        .iter()
        .flat_map(|r| pods(&c, &ns, r))
        .collect();
    for pod in &after {
        let name = pod["metadata"]["name"].as_str().unwrap();
        assert!(!before.contains(name), "pod {name} was not rolled");
        assert_eq!(pod["metadata"]["annotations"]["example.com/rollout"], "2");
    }

    // Jobs deleted while the controller runs lose their finalizer; then helm uninstall leaves no
    // pod and no Lease behind.
    c.kubectl(&["delete", "imagejobs", "-n", &ns, "--all", "--timeout=120s"]);
    c.chart(&["uninstall", release, &ns]);
    for kind in ["pods", "leases"] {
        until(&format!("no {kind} left"), || {
            let left = c.json(&["get", kind, "-n", &ns]);
            left["items"].as_array().unwrap().is_empty().then_some(())
        });
    }
    let jobs = c.json(&["get", "imagejobs", "-n", &ns]);
    assert!(jobs["items"].as_array().unwrap().is_empty());

    c.kubectl(&["delete", "namespace", &ns, "--wait=false"]);
    c.kubectl(&["delete", "pv", &format!("{ns}-data"), "--wait=false"]);
}
