//! The facade served on a loopback port, over a real apiserver.

use imagejob_operator::{
    facade::{
        self, Auth, CreateQuota, FacadeMetrics, FacadeState, JobCache, Limits, QuotaSettings,
    },
    shutdown::{Shutdown, ShutdownTrigger},
    temporal::{client::TemporalGateway, connection::TemporalSettings},
};
use kube::{Api, Client};
use std::{sync::Arc, time::Duration};

/// The token the test facades accept.
pub const TOKEN: &str = "test-token-0123456789";

/// A running facade.
pub struct TestFacade {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// `http://127.0.0.1:<port>` of its admin port (probes and `/metrics`).
    pub admin: String,
    /// A client sending the accepted token.
    pub http: reqwest::Client,
    _stop: ShutdownTrigger,
    /// The folder of its token file (`tokens`, holding [`TOKEN`]).
    pub tokens: tempfile::TempDir,
}

impl TestFacade {
    /// Serves the facade for namespace `ns`, with token auth, once its cache is filled.
    pub async fn start(client: &Client, ns: &str, settings: &TemporalSettings) -> Self {
        Self::start_with(
            client,
            ns,
            settings,
            None,
            Limits::default(),
            QuotaSettings::default(),
        )
        .await
    }

    /// The same, giving the jobs it creates this TTL after finishing.
    pub async fn start_with_ttl(
        client: &Client,
        ns: &str,
        settings: &TemporalSettings,
        job_ttl: Option<u32>,
    ) -> Self {
        Self::start_with(
            client,
            ns,
            settings,
            job_ttl,
            Limits::default(),
            QuotaSettings::default(),
        )
        .await
    }

    /// The same, with a job TTL and caps of its own.
    pub async fn start_with(
        client: &Client,
        ns: &str,
        settings: &TemporalSettings,
        job_ttl: Option<u32>,
        limits: Limits,
        quota: QuotaSettings,
    ) -> Self {
        let tokens = tempfile::tempdir().unwrap();
        let path = tokens.path().join("tokens");
        std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        let auth = Auth::from_file(path).unwrap();
        let api: Api<imagejob_operator::crd::ImageJob> = Api::namespaced(client.clone(), ns);
        let (cache, driver) = JobCache::start(api.clone(), ns.to_owned());
        tokio::spawn(driver);
        crate::eventually(
            "the facade cache to fill",
            std::time::Duration::from_secs(20),
            || async { cache.is_ready().then_some(()) },
        )
        .await;
        let (drain_start, draining) = facade::Draining::new();
        let state = Arc::new(FacadeState {
            api,
            namespace: ns.to_owned(),
            cache,
            gateway: Arc::new(TemporalGateway::new(settings.clone())),
            similarity_default: false,
            job_ttl,
            metrics: Arc::new(FacadeMetrics::new()),
            temporal_ui_url: Some("http://temporal-ui.invalid:8233".into()),
            temporal_namespace: settings.namespace.clone(),
            codec: None,
            draining,
            limits,
            quota: CreateQuota::new(quota),
        });
        let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", api_listener.local_addr().unwrap());
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = format!("http://{}", admin_listener.local_addr().unwrap());
        let (stop, shutdown) = Shutdown::triggered();
        tokio::spawn(facade::serve(
            state,
            auth,
            facade::Ports {
                api: api_listener,
                admin: admin_listener,
            },
            facade::Drain {
                start: drain_start,
                period: Duration::ZERO,
            },
            shutdown,
        ));
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {TOKEN}").parse().unwrap(),
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap();
        Self {
            base,
            admin,
            http,
            _stop: stop,
            tokens,
        }
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path` with the accepted token, as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        response.json().await.expect("a JSON body")
    }

    /// The replica's metrics, from its admin port.
    pub async fn metrics(&self) -> String {
        let response = reqwest::get(format!("{}/metrics", self.admin))
            .await
            .expect("GET /metrics");
        response.text().await.expect("a text body")
    }
}
