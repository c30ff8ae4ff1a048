//! The sinks: which a job's notification goes to, whether a job's own sink is allowed, and one
//! delivery attempt (a signed POST with a deadline, no redirects followed).

use crate::{
    crd::{ImageJob, NotificationSink},
    digest::hmac_sha256_hex,
};
use reqwest::{StatusCode, Url, header};
use std::time::Duration;

/// Header carrying the signature of a notification: `sha256=<hex HMAC-SHA256 of the body>`,
/// keyed with `NOTIFY_SIGNING_KEY`. Absent when no key is configured.
pub const SIGNATURE_HEADER: &str = "X-ImageJob-Signature";
/// Content type of a structured CloudEvent.
const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";
/// Longest wait a sink's `Retry-After` may ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Where and how notifications are sent.
#[derive(Clone, Default)]
pub struct NotifySettings {
    /// The operator's sink, for every job (`NOTIFY_SINK_URL`).
    pub operator_sink: Option<Url>,
    /// Hosts a job's own sink may name: exact names (or IP addresses), or `*.example.com` for
    /// any subdomain (`NOTIFY_ALLOWED_HOSTS`). Empty: no job sink is allowed.
    pub allowed_hosts: Vec<String>,
    /// Key of the HMAC signature (`NOTIFY_SIGNING_KEY`, from a Secret).
    pub signing_key: Option<Vec<u8>>,
    /// Deadline of one delivery attempt.
    pub timeout: Duration,
    /// Failed attempts after which a delivery is given up.
    pub max_failures: u32,
}

impl std::fmt::Debug for NotifySettings {
    // The sink's URL may carry a token, and the key is a secret: neither is printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifySettings")
            .field(
                "operator_sink",
                &self.operator_sink.as_ref().map(|_| "<set>"),
            )
            .field("allowed_hosts", &self.allowed_hosts)
            .field("signing_key", &self.signing_key.as_ref().map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .field("max_failures", &self.max_failures)
            .finish()
    }
}

/// Why a notification cannot go to a sink at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The job's sink is not an http(s) URL.
    #[error("the job's sink is not an http or https URL")]
    Invalid,
    /// The job's sink names a host the allow-list does not permit.
    #[error("the job's sink host {0:?} is not on the operator's allow-list (NOTIFY_ALLOWED_HOSTS)")]
    NotAllowed(String),
    /// The sink is not configured (any more).
    #[error("no such sink is configured")]
    Unconfigured,
}

/// How one delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth trying again (no answer, a timeout, 408, 429, 5xx), after `retry_after` when the
    /// sink said.
    #[error("{message}")]
    Retryable {
        /// What happened.
        message: String,
        /// The sink's `Retry-After`, capped at 5 minutes.
        retry_after: Option<Duration>,
    },
    /// The sink refused it for good (any other 4xx).
    #[error("{0}")]
    Rejected(String),
}

/// Sends notifications.
pub struct Notifier {
    settings: NotifySettings,
    http: reqwest::Client,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.settings.fmt(f)
    }
}

impl Notifier {
    /// A notifier with `settings`; its HTTP client follows no redirect (a sink that redirects
    /// could point anywhere).
    pub fn new(settings: NotifySettings) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .user_agent(concat!("imagejob-operator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { settings, http })
    }

    /// Its settings.
    pub fn settings(&self) -> &NotifySettings {
        &self.settings
    }

    /// The sinks `job`'s end is notified to.
    pub fn sinks(&self, job: &ImageJob) -> Vec<NotificationSink> {
        let operator = self.settings.operator_sink.is_some();
        let own = job.spec.notify.is_some();
        [
            operator.then_some(NotificationSink::Operator),
            own.then_some(NotificationSink::Job),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The URL of `sink` for `job`: the job's own only when the allow-list permits its host.
    pub fn url(&self, sink: NotificationSink, job: &ImageJob) -> Result<Url, SinkError> {
        match sink {
            NotificationSink::Operator => {
                (self.settings.operator_sink.clone()).ok_or(SinkError::Unconfigured)
            }
            NotificationSink::Job => {
                let text = job.spec.notify.as_ref().ok_or(SinkError::Unconfigured)?;
                let url = Url::parse(&text.sink).map_err(|_| SinkError::Invalid)?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(SinkError::Invalid);
                }
                let host = url
                    .host_str()
                    .ok_or(SinkError::Invalid)?
                    .to_ascii_lowercase();
                if !self.allows(&host) {
                    return Err(SinkError::NotAllowed(host));
                }
                Ok(url)
            }
        }
    }

    /// Whether the allow-list permits `host` (lowercase).
    fn allows(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.settings.allowed_hosts.iter().any(|allowed| {
            let allowed = allowed.to_ascii_lowercase();
            match allowed.strip_prefix("*.") {
                Some(domain) => host
                    .strip_suffix(domain)
                    .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
                None => host == allowed,
            }
        })
    }

    /// One delivery attempt of `body` (the event's JSON) to `url`, signed when a key is set.
    pub async fn deliver(&self, url: &Url, body: Vec<u8>) -> Result<(), DeliveryError> {
        let mut request = self
            .http
            .post(url.clone())
            .header(header::CONTENT_TYPE, CLOUDEVENTS_JSON);
        if let Some(key) = &self.settings.signing_key {
            let signature = format!("sha256={}", hmac_sha256_hex(key, &body));
            request = request.header(SIGNATURE_HEADER, signature);
        }
        let response = request.body(body).send().await.map_err(|e| {
            // Without the URL: the operator's may carry a token.
            DeliveryError::Retryable {
                message: format!("the sink did not answer: {}", e.without_url()),
                retry_after: None,
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let message = format!("the sink answered HTTP {}", status.as_u16());
        let retryable = status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT;
        if !retryable {
            return Err(DeliveryError::Rejected(message));
        }
        let retry_after = (response.headers().get(header::RETRY_AFTER))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
        Err(DeliveryError::Retryable {
            message,
            retry_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ImageJobSpec, NotifySpec};

    fn notifier(allowed: &[&str]) -> Notifier {
        Notifier::new(NotifySettings {
            operator_sink: Some(Url::parse("https://ops.example/hook?token=s3cret").unwrap()),
            allowed_hosts: allowed.iter().map(|h| h.to_string()).collect(),
            timeout: Duration::from_secs(1),
            ..Default::default()
        })
        .unwrap()
    }

    fn job_with_sink(sink: &str) -> ImageJob {
        ImageJob::new(
            "shirt",
            ImageJobSpec {
                notify: Some(Box::new(NotifySpec { sink: sink.into() })),
                ..Default::default()
            },
        )
    }

    #[test]
    fn a_jobs_sink_must_be_on_the_allow_list() {
        let n = notifier(&["hooks.example.com", "*.team.example", "127.0.0.1"]);
        let url = |sink: &str| n.url(NotificationSink::Job, &job_with_sink(sink));
        assert!(url("https://hooks.example.com/x").is_ok());
        assert!(url("https://HOOKS.example.com/x").is_ok());
        assert!(url("http://127.0.0.1:8080/x").is_ok());
        assert!(url("https://a.team.example/x").is_ok());
        assert_eq!(
            url("https://team.example/x"),
            Err(SinkError::NotAllowed("team.example".into())),
            "the wildcard takes subdomains only"
        );
        assert_eq!(
            url("https://evilteam.example/x"),
            Err(SinkError::NotAllowed("evilteam.example".into()))
        );
        assert_eq!(
            url("https://hooks.example.com.evil.net/x"),
            Err(SinkError::NotAllowed("hooks.example.com.evil.net".into()))
        );
        assert_eq!(
            url("http://169.254.169.254/latest"),
            Err(SinkError::NotAllowed("169.254.169.254".into()))
        );
        assert_eq!(url("file:///etc/passwd"), Err(SinkError::Invalid));
        let nobody = notifier(&[]);
        assert!(
            nobody
                .url(
                    NotificationSink::Job,
                    &job_with_sink("https://hooks.example.com/x")
                )
                .is_err()
        );
    }

    #[test]
    fn the_operators_sink_goes_for_every_job_and_the_jobs_only_for_its_own() {
        let n = notifier(&[]);
        let plain = ImageJob::new("a", ImageJobSpec::default());
        assert_eq!(n.sinks(&plain), [NotificationSink::Operator]);
        let own = job_with_sink("https://hooks.example.com/x");
        assert_eq!(
            n.sinks(&own),
            [NotificationSink::Operator, NotificationSink::Job]
        );
    }

    #[test]
    fn the_settings_never_print_the_sink_or_the_key() {
        let settings = NotifySettings {
            signing_key: Some(b"k3y-material".to_vec()),
            ..notifier(&[]).settings().clone()
        };
        let printed = format!("{settings:?}");
        assert!(
            !printed.contains("s3cret") && !printed.contains("k3y-material"),
            "{printed}"
        );
    }
}
