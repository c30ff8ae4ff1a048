//! Payload encryption on the real stack: with the codec on, Temporal's history (read raw through
//! the Temporal CLI) holds no image URL or title, jobs still complete and show their state, a
//! key rotation mid-run lets old and new workflows finish, and the facade's remote codec
//! endpoint (the Temporal UI's protocol) decodes what the history holds, behind the API's auth
//! and with CORS for the UI's origin.

use imagejob_testkit as support;

use base64::{Engine, engine::general_purpose::STANDARD};
use imagejob_operator::{
    crd::Phase,
    temporal::{
        client::WorkflowGateway,
        contract::IMAGE_ID_ATTRIBUTE,
        worker::{IMAGE_ID_PATCH, SIMILARITY_QUEUE_PATCH},
    },
};
use kube::Api;
use serde_json::{Value, json};
use std::{path::Path, process::Command, time::Duration};
use support::{
    ChildGuard,
    kube_env::{self, Setup, create, wait_job},
    lykdat::{FakeLykdat, Reply},
};

const JOB_WAIT: Duration = Duration::from_secs(90);
const TOKEN: &str = "codec-test-token";
const UI_ORIGIN: &str = "http://temporal-ui.example:8233";

/// The Lykdat API key the operator runs with (a canary: it must never be seen again).
const LYKDAT_CANARY: &str = "lykdat-canary-7f3a9c1e5b";
/// The Couchbase password the operator runs with (unused by the embedded store; a canary).
const COUCHBASE_CANARY: &str = "couchbase-canary-2d8e4b6f0a";

/// `imagejob-operator run` with payload encryption under `key_id`, its log in a file.
struct Operator {
    _child: ChildGuard,
    facade: String,
    log: std::path::PathBuf,
}

impl Operator {
    fn start(s: &Setup, keys: &Path, key_id: &str, lykdat: &str, dir: &Path) -> Self {
        let facade_port = support::free_port();
        let tokens = dir.join("tokens");
        std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
        let log = dir.join(format!("operator-{key_id}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let child = ChildGuard::spawn(
            Command::new(support::operator_bin())
                .arg("run")
                .env("PAYLOAD_ENCRYPTION_KEYS_DIR", keys)
                .env("PAYLOAD_ENCRYPTION_KEY_ID", key_id)
                .env("TEMPORAL_TASK_QUEUE", &s.settings.task_queue)
                .env("WATCH_NAMESPACES", &s.ns)
                .env("FACADE_NAMESPACE", &s.ns)
                .env("FACADE_ADDR", format!("127.0.0.1:{facade_port}"))
                .env("FACADE_TOKENS_FILE", &tokens)
                .env(
                    "FACADE_ADMIN_ADDR",
                    format!("127.0.0.1:{}", support::free_port()),
                )
                .env("FACADE_TEMPORAL_UI_URL", UI_ORIGIN)
                .env(
                    "CONTROLLER_METRICS_ADDR",
                    format!("127.0.0.1:{}", support::free_port()),
                )
                .env("METADATA_STORE", "embedded")
                .env(
                    "EMBEDDED_STORE_PATH",
                    dir.join(format!("meta-{key_id}.redb")),
                )
                .env("LYKDAT_BASE_URL", lykdat)
                .env("LYKDAT_API_KEY", LYKDAT_CANARY)
                .env("COUCHBASE_PASSWORD", COUCHBASE_CANARY)
                .env("RUST_LOG", "info,imagejob_operator=debug")
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file),
        );
        Self {
            _child: child,
            facade: format!("http://127.0.0.1:{facade_port}"),
            log,
        }
    }
}

fn add_key(keys: &Path, id: &str, byte: u8) {
    std::fs::write(keys.join(id), STANDARD.encode([byte; 32])).unwrap();
}

/// The patches the workflow records.
const PATCH_IDS: [&str; 2] = [SIMILARITY_QUEUE_PATCH, IMAGE_ID_PATCH];

/// A payload's data, decoded from base64 and parsed as JSON.
fn json_data(payload: &Value) -> Value {
    let data = STANDARD
        .decode(payload["data"].as_str().unwrap_or(""))
        .unwrap_or_default();
    serde_json::from_slice(&data).unwrap_or(Value::Null)
}

/// Every payload in a history: (encoding, decoded data, the payload as printed). What Temporal
/// must read is left out, as it stays outside the codec (a search attribute must stay readable
/// to be indexed): the patch marker and `TemporalChangeVersion` the SDK's core writes, which
/// hold only patch ids, and `ImageJobImageId`, which holds only the id the workflow gave the
/// stored document (empty until then); all checked below.
fn payloads(value: &Value, found: &mut Vec<(String, String, Value)>) {
    let readable = ["TemporalChangeVersion", IMAGE_ID_ATTRIBUTE.name()];
    match value {
        Value::Object(map) if readable.iter().any(|k| map.contains_key(*k)) => {
            if let Some(change) = map.get("TemporalChangeVersion") {
                let ids = json_data(change);
                let ids: Vec<&str> = ids
                    .as_array()
                    .map(|ids| ids.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                assert!(
                    !ids.is_empty() && ids.iter().all(|id| PATCH_IDS.contains(id)),
                    "the change version holds patch ids only: {change}"
                );
            }
            if let Some(image_id) = map.get(IMAGE_ID_ATTRIBUTE.name()) {
                let id = json_data(image_id);
                let id = id.as_str().unwrap_or("not a string");
                assert!(
                    id.is_empty() || uuid::Uuid::parse_str(id).is_ok(),
                    "the image id attribute holds an id only: {image_id}"
                );
            }
            map.iter()
                .filter(|(k, _)| !readable.contains(&k.as_str()))
                .for_each(|(_, v)| payloads(v, found));
        }
        Value::Object(map) if map.get("markerName") == Some(&json!("core_patch")) => {
            let patch = json_data(&map["details"]["patch-data"]["payloads"][0]);
            let id = patch["id"].as_str().unwrap_or_default();
            assert!(
                PATCH_IDS.contains(&id) && patch == json!({"id": id, "deprecated": false}),
                "a patch marker holds its id only: {}",
                map["details"]
            );
        }
        Value::Object(map) => {
            if let (Some(Value::String(data)), Some(metadata)) =
                (map.get("data"), map.get("metadata"))
            {
                let decode = |v: &str| {
                    String::from_utf8_lossy(&STANDARD.decode(v).unwrap_or_default()).into_owned()
                };
                let encoding = metadata["encoding"]
                    .as_str()
                    .map(decode)
                    .unwrap_or_default();
                found.push((encoding, decode(data), value.clone()));
            }
            map.values().for_each(|v| payloads(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| payloads(v, found)),
        _ => {}
    }
}

fn history_payloads(s: &Setup, workflow_id: &str) -> (String, Vec<(String, String, Value)>) {
    let history = support::cli_history(&s.settings.address(), workflow_id);
    let mut found = Vec::new();
    payloads(&history, &mut found);
    (history.to_string(), found)
}

fn secret_spec(n: u32, similarity_search: bool) -> imagejob_operator::crd::ImageJobSpec {
    imagejob_operator::crd::ImageJobSpec {
        url: format!("https://private-bucket.example/shoot-{n}.jpg"),
        title: Some(format!("Unreleased Jacket {n}")),
        ..kube_env::spec(similarity_search)
    }
}

async fn completed(api: &Api<imagejob_operator::crd::ImageJob>, name: &str) -> String {
    let job = wait_job(api, name, &format!("{name} Completed"), JOB_WAIT, |j| {
        j.phase() == Phase::Completed
    })
    .await;
    let status = job.status.expect("status");
    assert!(status.metadata_stored, "the job shows its state");
    status.workflow_id.expect("workflow id")
}

#[tokio::test]
async fn temporal_holds_no_clear_text_and_the_codec_endpoint_decodes_what_it_holds() {
    let s = Setup::new("codec").await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    add_key(&keys, "k1", 1);
    let fake = FakeLykdat::start(vec![Reply::ok(&[("Lookalike Jacket", 0.9)])]).await;
    let operator = Operator::start(&s, &keys, "k1", &fake.base_url, dir.path());

    create(&s.api, "sealed", secret_spec(1, true)).await;
    let workflow_id = completed(&s.api, "sealed").await;
    let (raw, found) = history_payloads(&s, &workflow_id);
    assert!(
        found.len() >= 4,
        "input, activity inputs and results, result: {found:?}"
    );
    for (encoding, data, _) in &found {
        assert_eq!(
            encoding, "binary/encrypted",
            "every payload is encrypted: {data}"
        );
        for secret in [
            "private-bucket.example",
            "Unreleased Jacket",
            "Lookalike Jacket",
        ] {
            assert!(!data.contains(secret), "{secret} in a payload");
        }
    }
    for secret in [
        "private-bucket.example",
        "Unreleased Jacket",
        "Lookalike Jacket",
    ] {
        assert!(!raw.contains(secret), "{secret} in the raw history");
    }

    // The same check sees clear text when there is some: a workflow started without the codec.
    let plain_id = support::unique("plain");
    support::gateway(&s.settings)
        .start(
            &plain_id,
            imagejob_operator::controller::status::workflow_input(&secret_spec(2, false)),
        )
        .await
        .unwrap();
    let (_, plain) = history_payloads(&s, &plain_id);
    assert!(
        plain
            .iter()
            .any(|(_, data, _)| data.contains("private-bucket.example/shoot-2")),
        "{plain:?}"
    );

    // The remote codec decodes the history's payloads, for token holders only.
    let http = reqwest::Client::new();
    let printed: Vec<Value> = found.iter().map(|(_, _, p)| p.clone()).collect();
    let decode = |token: Option<&str>| {
        let mut request = http
            .post(format!("{}/codec/decode", operator.facade))
            .header("x-namespace", "default")
            .json(&json!({"payloads": printed}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(decode(None).await.unwrap().status(), 401);
    let decoded: Value = decode(Some(TOKEN)).await.unwrap().json().await.unwrap();
    let texts: Vec<String> = decoded["payloads"]
        .as_array()
        .expect("payloads")
        .iter()
        .map(|p| {
            String::from_utf8_lossy(&STANDARD.decode(p["data"].as_str().unwrap_or("")).unwrap())
                .into_owned()
        })
        .collect();
    assert_eq!(texts.len(), found.len());
    assert!(
        texts
            .iter()
            .any(|t| t.contains("https://private-bucket.example/shoot-1.jpg")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("Lookalike Jacket")),
        "{texts:?}"
    );

    let encoded = support::json_of(
        http.post(format!("{}/codec/encode", operator.facade))
            .bearer_auth(TOKEN)
            .json(
                &json!({"payloads": [{"metadata": {"encoding": STANDARD.encode("json/plain")},
                                        "data": STANDARD.encode("\"hello\"")}]}),
            ),
    )
    .await;
    assert_eq!(
        encoded["payloads"][0]["metadata"]["encoding"],
        STANDARD.encode("binary/encrypted")
    );
    let bad = http
        .post(format!("{}/codec/decode", operator.facade))
        .bearer_auth(TOKEN)
        .json(&json!({"payloads": [{"metadata": {}, "data": "%%%"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["field"], "payloads[0].data", "{body}");

    // The Temporal UI's preflight, from its origin, without a token.
    let preflight = http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/codec/decode", operator.facade),
        )
        .header("origin", UI_ORIGIN)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,x-namespace",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        UI_ORIGIN
    );
    let other = http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/codec/decode", operator.facade),
        )
        .header("origin", "https://elsewhere.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn a_key_rotated_mid_run_lets_old_and_new_workflows_finish() {
    let s = Setup::new("codec-rotate").await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    add_key(&keys, "2026-01", 3);
    // The first job's search is still running when the operator is restarted with a new key.
    let fake = FakeLykdat::start(vec![
        Reply::ok(&[("Before Rotation", 0.8)]).after(Duration::from_secs(6)),
        Reply::ok(&[("After Rotation", 0.7)]),
    ])
    .await;
    let first = Operator::start(&s, &keys, "2026-01", &fake.base_url, dir.path());
    create(&s.api, "old-key", secret_spec(3, true)).await;
    support::eventually("the first search to start", JOB_WAIT, || async {
        (!fake.requests().is_empty()).then_some(())
    })
    .await;
    drop(first);

    add_key(&keys, "2026-02", 4);
    let _second = Operator::start(&s, &keys, "2026-02", &fake.base_url, dir.path());
    create(&s.api, "new-key", secret_spec(4, true)).await;
    let old_id = completed(&s.api, "old-key").await;
    let new_id = completed(&s.api, "new-key").await;

    let key_ids = |id: &str| -> Vec<String> {
        let (_, found) = history_payloads(&s, id);
        found
            .iter()
            .map(|(_, _, p)| {
                let id = p["metadata"]["encryption-key-id"].as_str().unwrap_or("");
                String::from_utf8_lossy(&STANDARD.decode(id).unwrap_or_default()).into_owned()
            })
            .collect()
    };
    let old = key_ids(&old_id);
    assert!(
        old.contains(&"2026-01".to_owned()) && old.contains(&"2026-02".to_owned()),
        "{old:?}"
    );
    assert!(key_ids(&new_id).iter().all(|k| k == "2026-02"));
}

#[tokio::test]
async fn no_secret_reaches_a_log_a_status_an_event_or_an_answer() {
    let s = Setup::new("secrets").await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    add_key(&keys, "k1", 7);
    let payload_key = STANDARD.encode([7u8; 32]);
    // Lykdat first refuses the key, echoing it (as some APIs do), then answers.
    let fake = FakeLykdat::start(vec![
        Reply::error(401, &format!("invalid api key {LYKDAT_CANARY}")),
        Reply::ok(&[("Lookalike Jacket", 0.9)]),
    ])
    .await;
    let operator = Operator::start(&s, &keys, "k1", &fake.base_url, dir.path());

    create(&s.api, "refused", secret_spec(1, true)).await;
    let refused = wait_job(&s.api, "refused", "refused Failed", JOB_WAIT, |j| {
        j.phase() == Phase::Failed
    })
    .await;
    let error = refused.status.unwrap().error.unwrap_or_default();
    assert!(
        error.contains("invalid api key"),
        "the refusal is told: {error}"
    );
    create(&s.api, "found", secret_spec(2, true)).await;
    let found_id = completed(&s.api, "found").await;

    let http = reqwest::Client::new();
    let mut answers = String::new();
    let answer = |request: reqwest::RequestBuilder| {
        let request = request.build().unwrap();
        let http = http.clone();
        async move {
            let response = http.execute(request).await.unwrap();
            let headers = format!("{:?}", response.headers());
            format!("{headers}\n{}\n", response.text().await.unwrap())
        }
    };
    let base = &operator.facade;
    let accepted = answer(
        http.post(format!("{base}/images/process"))
            .bearer_auth(TOKEN)
            .json(&json!({"url": "https://example.com/a.jpg", "similarity_search": true})),
    )
    .await;
    answers.push_str(&accepted);
    for path in [
        format!("/images/workflow/{found_id}/status"),
        format!("/images/workflow/{found_id}/result"),
        format!("/images/workflow/{found_id}/timeline"),
        "/images/workflows".to_owned(),
        "/ui/config.json".to_owned(),
        "/openapi.json".to_owned(),
    ] {
        answers.push_str(&answer(http.get(format!("{base}{path}")).bearer_auth(TOKEN)).await);
    }
    answers.push_str(
        &answer(
            http.get(format!("{base}/images/workflows"))
                .bearer_auth("wrong"),
        )
        .await,
    );
    answers.push_str(
        &answer(
            http.post(format!("{base}/codec/decode"))
                .bearer_auth(TOKEN)
                .json(&json!({"payloads": [{"metadata": {"encoding": STANDARD.encode("binary/encrypted"), "encryption-key-id": STANDARD.encode("k9")}, "data": STANDARD.encode("x")}]})),
        )
        .await,
    );
    assert!(
        answers.contains("workflow_id"),
        "the answers were collected: {answers}"
    );

    let statuses = support::kubectl(&["get", "imagejobs", "-n", &s.ns, "-o", "yaml"]);
    let events = support::kubectl(&["get", "events", "-n", &s.ns, "-o", "yaml"]);
    assert!(
        events.contains("Completed") && events.contains("Failed"),
        "{events}"
    );
    let log = std::fs::read_to_string(&operator.log).unwrap();
    assert!(
        log.contains("workflow started"),
        "the log was captured: {log}"
    );
    for (secret, name) in [
        (LYKDAT_CANARY, "the Lykdat API key"),
        (COUCHBASE_CANARY, "the Couchbase password"),
        (TOKEN, "the facade token"),
        (payload_key.as_str(), "the payload key"),
    ] {
        for (text, place) in [
            (&log, "the operator's log"),
            (&statuses, "a status"),
            (&events, "an event"),
            (&answers, "an API answer"),
        ] {
            assert!(!text.contains(secret), "{name} in {place}");
        }
    }
}
