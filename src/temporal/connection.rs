//! How every role connects to Temporal, built in one place: the seed's `TEMPORAL_HOST/PORT/
//! NAMESPACE/TASK_QUEUE`, and Temporal's own client configuration (`TEMPORAL_ADDRESS`,
//! `TEMPORAL_API_KEY`, `TEMPORAL_TLS_*`, `TEMPORAL_CONFIG_FILE` / `TEMPORAL_PROFILE`), which the
//! SDK reads and turns into TLS, mTLS and API-key options itself.
//!
//! Certificates, keys and an API key file are usually mounted Secrets: their contents are
//! fingerprinted, and a connection made with older contents is replaced (see
//! [`TemporalSettings::credentials`]).

use crate::digest::sha256_hex;
use crate::temporal::{codec::PayloadCipher, error::TemporalError};
use std::{fmt, path::PathBuf, time::Duration};
use temporalio_client::tonic::Code;
use temporalio_client::{
    Client, ClientOptions, Connection, ConnectionOptions, GrpcCompression,
    envconfig::{ClientConfigProfile, DataSource, LoadClientConfigProfileOptions},
    errors::ClientConnectError,
};
use temporalio_common::{envconfig::load_client_config_profile, telemetry::metrics::TemporalMeter};

/// How often a connection's credential files are compared with what it was made with.
pub const CREDENTIALS_RECHECK: Duration = Duration::from_secs(5);

/// Where the Temporal server is, how to authenticate to it, and which queue we use.
#[derive(Clone)]
pub struct TemporalSettings {
    /// Server host name (`TEMPORAL_HOST`), used when the profile has no address.
    pub host: String,
    /// gRPC port (`TEMPORAL_PORT`), used when the profile has no address.
    pub port: u16,
    /// Namespace (`TEMPORAL_NAMESPACE`).
    pub namespace: String,
    /// Task queue (`TEMPORAL_TASK_QUEUE`).
    pub task_queue: String,
    /// Temporal's client configuration from its environment variables and profile file, as the
    /// SDK loads it: address, API key, TLS server CA, server name, client certificate and key.
    pub profile: ClientConfigProfile,
    /// A file holding the API key (`TEMPORAL_API_KEY_FILE`, a mounted Secret); it wins over
    /// `TEMPORAL_API_KEY` and is re-read when it changes.
    pub api_key_file: Option<PathBuf>,
    /// Payload encryption, when on: every payload this process sends is encrypted.
    pub codec: Option<PayloadCipher>,
    /// Gzip gRPC messages (`TEMPORAL_GRPC_COMPRESSION=gzip`); off by default.
    pub gzip: bool,
}

impl Default for TemporalSettings {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: 7233,
            namespace: "default".into(),
            task_queue: "main-task-queue".into(),
            profile: ClientConfigProfile::default(),
            api_key_file: None,
            codec: None,
            gzip: false,
        }
    }
}

/// Never prints the API key or inline key material.
impl fmt::Debug for TemporalSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TemporalSettings")
            .field("address", &self.address())
            .field("namespace", &self.namespace)
            .field("task_queue", &self.task_queue)
            .field("tls", &self.uses_tls())
            .field("gzip", &self.gzip)
            .field("api_key", &self.has_api_key())
            .field(
                "payload_encryption_key",
                &self.codec.as_ref().map(PayloadCipher::current_key),
            )
            .finish()
    }
}

/// What the credentials a connection was made with contained; a new value means rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialsFingerprint(String);

impl TemporalSettings {
    /// The seed's settings plus Temporal's own environment configuration and profile file.
    pub fn from_environment(
        host: String,
        port: u16,
        namespace: String,
        task_queue: String,
        api_key_file: Option<PathBuf>,
        codec: Option<PayloadCipher>,
    ) -> Result<Self, TemporalError> {
        let profile = load_client_config_profile(LoadClientConfigProfileOptions::default(), None)
            .map_err(|e| {
            TemporalError::Config(format!("Temporal client configuration: {e}"))
        })?;
        Ok(Self {
            host,
            port,
            namespace,
            task_queue,
            profile,
            api_key_file,
            codec,
            gzip: false,
        })
    }

    /// The server address: the profile's (`TEMPORAL_ADDRESS`), else `TEMPORAL_HOST:TEMPORAL_PORT`.
    pub fn address(&self) -> String {
        self.profile
            .address
            .clone()
            .unwrap_or_else(|| format!("{}:{}", self.host, self.port))
    }

    /// Whether connections use TLS (a TLS section not disabled, or an API key without one).
    pub fn uses_tls(&self) -> bool {
        match &self.profile.tls {
            Some(tls) => tls.disabled != Some(true),
            None => self.has_api_key(),
        }
    }

    fn has_api_key(&self) -> bool {
        self.profile.api_key.is_some() || self.api_key_file.is_some()
    }

    /// The files the connection reads its credentials from.
    fn credential_files(&self) -> Vec<PathBuf> {
        let tls = self.profile.tls.iter().flat_map(|tls| {
            [&tls.server_ca_cert, &tls.client_cert, &tls.client_key]
                .into_iter()
                .flatten()
                .filter_map(|source| match source {
                    DataSource::Path(path) => Some(PathBuf::from(path)),
                    _ => None,
                })
        });
        tls.chain(self.api_key_file.clone()).collect()
    }

    /// A digest of the credential files' current contents (a missing file counts as a content).
    pub fn credentials(&self) -> CredentialsFingerprint {
        let mut all = Vec::new();
        for path in self.credential_files() {
            all.extend_from_slice(path.as_os_str().as_encoded_bytes());
            match std::fs::read(&path) {
                Ok(bytes) => all.extend_from_slice(sha256_hex(&bytes).as_bytes()),
                Err(e) => all.extend_from_slice(e.kind().to_string().as_bytes()),
            }
        }
        CredentialsFingerprint(sha256_hex(&all))
    }

    /// The SDK's connection options, credential files read now.
    fn connection_options(&self) -> Result<ConnectionOptions, TemporalError> {
        let mut profile = self.profile.clone();
        profile.address = Some(self.address());
        profile.namespace = Some(self.namespace.clone());
        if let Some(path) = &self.api_key_file {
            let key = std::fs::read_to_string(path).map_err(|e| {
                TemporalError::Config(format!(
                    "cannot read the API key file {}: {e}",
                    path.display()
                ))
            })?;
            profile.api_key = Some(key.trim().to_owned());
        }
        let mut options = ConnectionOptions::try_from(profile)
            .map_err(|e| TemporalError::Config(format!("Temporal client configuration: {e}")))?;
        options.identity = identity();
        options.connect_timeout = Some(Duration::from_secs(5));
        options.grpc_compression = if self.gzip {
            GrpcCompression::Gzip
        } else {
            GrpcCompression::None
        };
        Ok(options)
    }
}

/// This process in Temporal's histories, its usual `pid@host` form (the host is the pod name
/// in a cluster), so a workflow's history names the very pod that ran each task.
fn identity() -> String {
    format!("{}@{}", std::process::id(), crate::host::hostname())
}

/// An error with its chain of causes: a TLS failure's reason (unknown issuer, certificate
/// required) sits several sources below "transport error".
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Connects a client to the configured server and namespace; with `meter`, the connection
/// records its request metrics there.
pub async fn connect(
    settings: &TemporalSettings,
    meter: Option<TemporalMeter>,
) -> Result<Client, TemporalError> {
    let mut options = settings.connection_options()?;
    options.metrics_meter = meter;
    let connection = Connection::connect(options).await.map_err(|e| match e {
        // The server answered the first call: say what it said, not the whole response.
        ClientConnectError::SystemInfoCallError(status) => {
            let answer = format!("{:?}: {}", status.code(), status.message());
            match status.code() {
                Code::Unauthenticated | Code::PermissionDenied => {
                    TemporalError::Unauthorized(answer)
                }
                _ => TemporalError::Unavailable(answer),
            }
        }
        other => TemporalError::Unavailable(with_causes(&other)),
    })?;
    let options = match &settings.codec {
        Some(codec) => ClientOptions::new(settings.namespace.clone())
            .data_converter(codec.data_converter())
            .build(),
        None => ClientOptions::new(settings.namespace.clone()).build(),
    };
    Client::new(connection, options).map_err(|e| TemporalError::Config(format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use temporalio_client::envconfig::ClientConfigProfile;
    use temporalio_common::envconfig::ClientConfigTLS;

    fn with_tls(ca: &std::path::Path) -> TemporalSettings {
        let mut profile = ClientConfigProfile::default();
        let mut tls = ClientConfigTLS::default();
        tls.server_ca_cert = Some(DataSource::Path(ca.display().to_string()));
        profile.tls = Some(tls);
        TemporalSettings {
            profile,
            ..Default::default()
        }
    }

    #[test]
    fn the_seed_host_and_port_are_the_address_unless_temporal_address_is_set() {
        let mut settings = TemporalSettings::default();
        assert_eq!(settings.address(), "localhost:7233");
        settings.profile.address = Some("temporal.example:7233".into());
        assert_eq!(settings.address(), "temporal.example:7233");
        assert!(!settings.uses_tls());
    }

    #[test]
    fn an_api_key_alone_turns_tls_on_and_is_never_printed() {
        let mut settings = TemporalSettings::default();
        settings.profile.api_key = Some("very-secret-key".into());
        assert!(settings.uses_tls());
        let printed = format!("{settings:?}");
        assert!(!printed.contains("very-secret-key"), "{printed}");
        let options = settings.connection_options().expect("options");
        assert_eq!(options.target.scheme(), "https");
        assert_eq!(options.api_key.as_deref(), Some("very-secret-key"));
    }

    #[test]
    fn a_rotated_certificate_changes_the_fingerprint() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "first").expect("write");
        let settings = with_tls(&ca);
        let first = settings.credentials();
        assert_eq!(first, settings.credentials());
        std::fs::write(&ca, "second").expect("write");
        assert_ne!(first, settings.credentials());
    }

    #[test]
    fn an_unreadable_api_key_file_is_a_clear_configuration_error() {
        let settings = TemporalSettings {
            api_key_file: Some("/nonexistent/api-key".into()),
            ..Default::default()
        };
        let error = settings.connection_options().expect_err("no file");
        assert!(
            error.to_string().contains("/nonexistent/api-key"),
            "{error}"
        );
    }
}
