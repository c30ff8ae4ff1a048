//! The ImageJob CRD: the committed YAML is the generated one, and the real apiserver enforces
//! its schema and shows its printer columns.

use imagejob_testkit as support;

use imagejob_operator::crd::{ImageJob, ImageJobSpec, crd_yaml};
use kube::{Api, Client, api::PostParams};
use serde_json::json;

#[test]
fn committed_crd_matches_the_rust_types() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/imagejob.yaml"))
            .unwrap();
    assert!(
        committed == crd_yaml().unwrap(),
        "crds/imagejob.yaml is stale: run `cargo run -- crd > crds/imagejob.yaml`"
    );
}

async fn namespace(client: &Client) -> String {
    let name = support::unique("crd");
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    name
}

async fn create_raw(api: &Api<ImageJob>, spec: serde_json::Value) -> Result<(), kube::Error> {
    let job: ImageJob = serde_json::from_value(json!({
        "apiVersion": "imagejob.dev/v1alpha1", "kind": "ImageJob",
        "metadata": {"generateName": "job-"}, "spec": spec,
    }))
    .map_err(kube::Error::SerdeError)?;
    api.create(&PostParams::default(), &job).await.map(|_| ())
}

/// Sends a raw object through kubectl, bypassing our Rust types (which could not express it).
fn kubectl_create(namespace: &str, spec: serde_json::Value) -> (bool, String) {
    let object = json!({"apiVersion": "imagejob.dev/v1alpha1", "kind": "ImageJob",
        "metadata": {"generateName": "raw-"}, "spec": spec});
    let args = ["create", "--validate=false", "-n", namespace, "-f", "-"];
    match support::try_kubectl(&args, Some(&object.to_string()), &[]) {
        Ok(_) => (true, String::new()),
        Err(stderr) => (false, stderr),
    }
}

#[tokio::test]
async fn the_apiserver_accepts_a_valid_job_and_rejects_invalid_ones_naming_the_field() {
    support::init();
    let client = Client::try_default()
        .await
        .expect("kubeconfig from scripts/test.sh");
    let ns = namespace(&client).await;
    let api: Api<ImageJob> = Api::namespaced(client, &ns);
    create_raw(
        &api,
        json!({"url": "https://example.com/a.jpg", "title": "t", "tags": ["shirt"]}),
    )
    .await
    .expect("valid job accepted");

    let long_url = format!("https://example.com/{}", "a".repeat(2030));
    let cases = [
        (json!({"url": "ftp://example.com/a.jpg"}), "spec.url"),
        (
            json!({"url": "https://e.com/a", "tags": vec!["t"; 33]}),
            "spec.tags",
        ),
        (
            json!({"url": "https://e.com/a", "tags": ["x".repeat(65)]}),
            "spec.tags",
        ),
        (json!({"url": long_url}), "spec.url"),
        (
            json!({"url": "https://e.com/a", "title": "t".repeat(257)}),
            "spec.title",
        ),
        (
            json!({"url": "https://e.com/a", "ttlSecondsAfterFinished": -1}),
            "spec.ttlSecondsAfterFinished",
        ),
    ];
    for (spec, field) in cases {
        let err = create_raw(&api, spec.clone())
            .await
            .expect_err("invalid job rejected");
        match err {
            kube::Error::Api(status) => {
                assert_eq!(status.code, 422, "{spec}: {}", status.message);
                assert!(
                    status.message.contains(field),
                    "{spec}: message {:?} does not name {field}",
                    status.message
                );
            }
            other => panic!("{spec}: expected a 422 from the apiserver, got {other}"),
        }
    }
    // A missing url cannot even be built from our types: send it raw.
    let (ok, stderr) = kubectl_create(&ns, json!({"title": "no url"}));
    assert!(!ok, "a job without url was accepted");
    assert!(stderr.contains("spec.url"), "{stderr}");
}

#[tokio::test]
async fn kubectl_get_shows_the_printer_columns() {
    support::init();
    let client = Client::try_default().await.unwrap();
    let ns = namespace(&client).await;
    let api: Api<ImageJob> = Api::namespaced(client, &ns);
    let job = ImageJob::new(
        "shown",
        ImageJobSpec {
            url: "https://example.com/a.jpg".into(),
            ..Default::default()
        },
    );
    api.create(&PostParams::default(), &job).await.unwrap();
    let printed = support::kubectl(&["get", "ij", "-n", &ns, "-o", "wide"]);
    let header = printed.lines().next().unwrap_or_default().to_owned();
    let columns: Vec<_> = header.split_whitespace().collect();
    assert_eq!(
        columns,
        [
            "NAME",
            "PHASE",
            "IMAGE",
            "ID",
            "SIMILARITY",
            "AGE",
            "WORKFLOW"
        ]
    );
    assert!(printed.contains("shown"));
}
