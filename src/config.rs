//! Configuration of every role: command-line flags, each with an environment variable fallback.
//! The seed's `TEMPORAL_*` variables are part of the contract.

use crate::{
    controller::LeaseSettings,
    fetch::{AddressPolicy, Cidr, FetchLimits, ImageFetcher},
    similarity::{
        Catalog, CatalogSearch, Describer, LykdatClient, LykdatError, SimilarityBackend,
        model::EfficientNetLite0,
    },
    store::{CouchbaseSettings, CouchbaseStore, EmbeddedStore, MetadataStore, StoreError},
    telemetry::LogFormat,
    temporal::{
        codec::PayloadCipher,
        connection::TemporalSettings,
        error::TemporalError,
        worker::{WorkerTuning, WorkerVersion},
    },
};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};
use url::Url;

/// imagejob-operator: image-processing jobs as Kubernetes resources, run by Temporal.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Compression of the gRPC calls to Temporal.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcCompression {
    /// Uncompressed (the Go and Java SDKs' default).
    None,
    /// Gzip requests and accept gzip responses.
    Gzip,
}

/// The roles.
// Parsed once at startup: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Reconcile ImageJobs into Temporal workflows.
    Controller(ControllerCommand),
    /// Run the Temporal worker (workflow and activities).
    Worker(WorkerCommand),
    /// Serve the REST facade.
    Facade(FacadeCommand),
    /// Run worker, controller and facade in one process.
    Run(RunCommand),
    /// Print the ImageJob CRD as YAML.
    Crd,
}

/// `controller` flags.
#[derive(Args, Debug)]
pub struct ControllerCommand {
    /// Temporal connection.
    #[command(flatten)]
    pub temporal: TemporalArgs,
    /// Controller options.
    #[command(flatten)]
    pub controller: ControllerArgs,
}

/// `worker` flags.
#[derive(Args, Debug)]
pub struct WorkerCommand {
    /// Temporal connection.
    #[command(flatten)]
    pub temporal: TemporalArgs,
    /// Worker options.
    #[command(flatten)]
    pub worker: WorkerArgs,
}

/// `facade` flags.
#[derive(Args, Debug)]
pub struct FacadeCommand {
    /// Temporal connection (for the full similarity results).
    #[command(flatten)]
    pub temporal: TemporalArgs,
    /// Facade options.
    #[command(flatten)]
    pub facade: FacadeArgs,
}

/// `run` flags: all roles' options.
#[derive(Args, Debug)]
pub struct RunCommand {
    /// Temporal connection.
    #[command(flatten)]
    pub temporal: TemporalArgs,
    /// Worker options.
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Controller options.
    #[command(flatten)]
    pub controller: ControllerArgs,
    /// Facade options.
    #[command(flatten)]
    pub facade: FacadeArgs,
}

/// Where Temporal is (the seed's variables).
#[derive(Args, Debug, Clone)]
pub struct TemporalArgs {
    /// Temporal server host name.
    #[arg(long, env = "TEMPORAL_HOST", default_value = "localhost")]
    pub temporal_host: String,
    /// Temporal gRPC port.
    #[arg(long, env = "TEMPORAL_PORT", default_value_t = 7233)]
    pub temporal_port: u16,
    /// Temporal namespace.
    #[arg(long, env = "TEMPORAL_NAMESPACE", default_value = "default")]
    pub temporal_namespace: String,
    /// Task queue of the workflow and its activities.
    #[arg(long, env = "TEMPORAL_TASK_QUEUE", default_value = "main-task-queue")]
    pub temporal_task_queue: String,
    /// File holding a Temporal API key (a mounted Secret), re-read when it changes. TLS,
    /// mTLS, a fixed API key and the server address otherwise come from Temporal's own
    /// variables (`TEMPORAL_ADDRESS`, `TEMPORAL_API_KEY`, `TEMPORAL_TLS_*`, `TEMPORAL_PROFILE`).
    #[arg(long, env = "TEMPORAL_API_KEY_FILE")]
    pub temporal_api_key_file: Option<PathBuf>,
    /// Compression of gRPC messages to and from Temporal. The SDK's default, gzip, cost the
    /// controller and the Temporal server CPU on every call for payloads of a few hundred bytes;
    /// worth it only over a slow link.
    #[arg(
        long,
        env = "TEMPORAL_GRPC_COMPRESSION",
        value_enum,
        default_value_t = GrpcCompression::None
    )]
    pub temporal_grpc_compression: GrpcCompression,
    /// Directory of payload encryption keys (a mounted Secret: one file per key id, 32 bytes
    /// in base64). Set, every payload sent to Temporal is AES-256-GCM encrypted.
    #[arg(
        long,
        env = "PAYLOAD_ENCRYPTION_KEYS_DIR",
        requires = "payload_encryption_key_id"
    )]
    pub payload_encryption_keys_dir: Option<PathBuf>,
    /// The key id new payloads are encrypted with (others still decrypt older payloads).
    #[arg(
        long,
        env = "PAYLOAD_ENCRYPTION_KEY_ID",
        requires = "payload_encryption_keys_dir"
    )]
    pub payload_encryption_key_id: Option<String>,
}

impl TemporalArgs {
    /// The settings the Temporal module takes, with Temporal's own client configuration.
    pub fn settings(&self) -> Result<TemporalSettings, TemporalError> {
        TemporalSettings::from_environment(
            self.temporal_host.clone(),
            self.temporal_port,
            self.temporal_namespace.clone(),
            self.temporal_task_queue.clone(),
            self.temporal_api_key_file.clone(),
            self.payload_cipher()?,
        )
        .map(|settings| TemporalSettings {
            gzip: self.temporal_grpc_compression == GrpcCompression::Gzip,
            ..settings
        })
    }

    /// The payload cipher, when encryption is configured.
    pub fn payload_cipher(&self) -> Result<Option<PayloadCipher>, TemporalError> {
        match (
            &self.payload_encryption_keys_dir,
            &self.payload_encryption_key_id,
        ) {
            (Some(dir), Some(id)) => PayloadCipher::load(dir.clone(), id.clone())
                .map(Some)
                .map_err(|e| TemporalError::Config(e.to_string())),
            _ => Ok(None),
        }
    }
}

/// Metadata store backends.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreBackend {
    /// A local redb file (default; for local use and small installs).
    Embedded,
    /// Couchbase (the seed's production store).
    Couchbase,
}

/// A secret given by the environment (or a flag): its value never appears in `Debug` output,
/// so a logged configuration cannot leak it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"<redacted>\""
        })
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.to_owned()))
    }
}

/// Worker options: the metadata store and the similarity search.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Metadata store backend.
    #[arg(long, env = "METADATA_STORE", value_enum, default_value_t = StoreBackend::Embedded)]
    pub metadata_store: StoreBackend,
    /// File of the embedded store.
    #[arg(
        long,
        env = "EMBEDDED_STORE_PATH",
        default_value = ".imagejob-data/metadata.redb"
    )]
    pub embedded_store_path: PathBuf,
    /// Couchbase connection string.
    #[arg(long, env = "COUCHBASE_CONNSTR")]
    pub couchbase_connstr: Option<String>,
    /// Couchbase user name.
    #[arg(long, env = "COUCHBASE_USERNAME", default_value = "")]
    pub couchbase_username: String,
    /// Couchbase password (prefer the environment / a Kubernetes Secret).
    #[arg(
        long,
        env = "COUCHBASE_PASSWORD",
        hide_env_values = true,
        default_value = ""
    )]
    pub couchbase_password: Secret,
    /// Couchbase bucket.
    #[arg(long, env = "COUCHBASE_BUCKET", default_value = "images")]
    pub couchbase_bucket: String,
    /// Couchbase scope.
    #[arg(long, env = "COUCHBASE_SCOPE", default_value = "_default")]
    pub couchbase_scope: String,
    /// Couchbase collection.
    #[arg(long, env = "COUCHBASE_COLLECTION", default_value = "_default")]
    pub couchbase_collection: String,
    /// Deadline of each Couchbase operation, in seconds.
    #[arg(long, env = "COUCHBASE_TIMEOUT_SECS", default_value_t = 10)]
    pub couchbase_timeout_secs: u64,
    /// Lykdat API key (prefer the environment / a Kubernetes Secret). Unset: similarity searches
    /// are skipped with a message in the job's state.
    #[arg(long, env = "LYKDAT_API_KEY", hide_env_values = true)]
    pub lykdat_api_key: Option<Secret>,
    /// Lykdat API base URL.
    #[arg(
        long,
        env = "LYKDAT_BASE_URL",
        default_value = "https://cloudapi.lykdat.com"
    )]
    pub lykdat_base_url: Url,
    /// Deadline of one Lykdat request, in seconds.
    #[arg(long, env = "LYKDAT_TIMEOUT_SECS", default_value_t = 30)]
    pub lykdat_timeout_secs: u64,
    /// Which similarity backend answers searches: `auto` is Lykdat when `LYKDAT_API_KEY` is
    /// set, the catalog otherwise.
    #[arg(long, env = "SIMILARITY_BACKEND", value_enum, default_value_t = SimilarityChoice::Auto)]
    pub similarity_backend: SimilarityChoice,
    /// File of the catalog backend's index; unset: `catalog.redb` beside the embedded store's
    /// file (`EMBEDDED_STORE_PATH`).
    #[arg(long, env = "CATALOG_PATH")]
    pub catalog_path: Option<PathBuf>,
    /// The image model's weights (EfficientNet-Lite0 as safetensors, installed by
    /// `scripts/install-deps.sh` and carried by the container image); unset: the catalog
    /// compares the classical descriptor (colour histogram and grey layout) instead.
    #[arg(long, env = "IMAGE_MODEL_PATH")]
    pub image_model_path: Option<PathBuf>,
    /// Address ranges image URLs may lead to although they are not public (comma-separated,
    /// e.g. `127.0.0.1/32,::1/128` for local development); empty: public addresses only.
    #[arg(long, env = "IMAGE_FETCH_ALLOW_CIDRS", value_delimiter = ',')]
    pub image_fetch_allow_cidrs: Vec<Cidr>,
    /// Largest image fetched, in bytes (checked while it streams).
    #[arg(long, env = "IMAGE_FETCH_MAX_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub image_fetch_max_bytes: u64,
    /// Deadline of one image fetch, connection to last byte, in seconds.
    #[arg(long, env = "IMAGE_FETCH_TIMEOUT_SECS", default_value_t = 30)]
    pub image_fetch_timeout_secs: u64,
    /// Most pixels (width x height) of an image, checked from its header before decoding.
    #[arg(long, env = "IMAGE_MAX_PIXELS", default_value_t = 40_000_000)]
    pub image_max_pixels: u64,
    /// Which task queues this worker polls: `all`; `workflows` (several replicas sharing
    /// Couchbase); `similarity` (the catalog's owner, one replica beside them).
    #[arg(long, env = "WORKER_QUEUES", value_enum, default_value_t = WorkerQueues::All)]
    pub worker_queues: WorkerQueues,
    /// Address of the worker's `/healthz`, `/readyz` (ready while polling Temporal) and
    /// `/metrics` (the SDK's worker metrics); unset: no probe server.
    #[arg(long, env = "WORKER_HEALTH_ADDR")]
    pub worker_health_addr: Option<SocketAddr>,
    /// How much work one worker takes on at once.
    #[command(flatten)]
    pub tuning: WorkerTuningArgs,
    /// Worker Deployment name: set, the worker opts into Worker Deployment Versioning and new
    /// workflows are pinned to the version they start on.
    #[arg(long, env = "WORKER_DEPLOYMENT_NAME", requires = "worker_build_id")]
    pub worker_deployment_name: Option<String>,
    /// This worker's build id within the deployment (the chart uses the image tag).
    #[arg(long, env = "WORKER_BUILD_ID", requires = "worker_deployment_name")]
    pub worker_build_id: Option<String>,
    /// How versioned workflows follow new builds.
    #[arg(long, env = "WORKER_VERSIONING_BEHAVIOR", value_enum, default_value_t = VersioningMode::Pinned)]
    pub worker_versioning_behavior: VersioningMode,
}

/// `WORKER_QUEUES`'s values: which of the two task queues a worker polls.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerQueues {
    /// Both: the workflows (with their store step) and the similarity queue.
    All,
    /// The workflows and their store step; searches run on a `similarity` worker.
    Workflows,
    /// The similarity queue only (searches, and removing deleted jobs' images from the
    /// catalog): the catalog's single owner when workflows run on several workers.
    Similarity,
}

impl WorkerQueues {
    /// Whether this worker runs the workflows (and so needs the metadata store).
    pub fn runs_workflows(self) -> bool {
        self != WorkerQueues::Similarity
    }

    /// Whether this worker searches (and so needs the similarity backend, the catalog's file
    /// for that backend).
    pub fn searches(self) -> bool {
        self != WorkerQueues::Workflows
    }
}

/// `SIMILARITY_BACKEND`'s values.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimilarityChoice {
    /// Lykdat when an API key is configured, the catalog otherwise.
    Auto,
    /// Lykdat's hosted search (skipped without an API key).
    Lykdat,
    /// The catalog of images searched before, described in the worker.
    Catalog,
}

/// How a versioned workflow follows new worker builds.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersioningMode {
    /// It finishes on the build it started on.
    Pinned,
    /// It moves to the current build at its next task (changes must be replay-compatible).
    AutoUpgrade,
}

/// Worker capacity: task slots, pollers and the sticky workflow cache (the SDK's defaults), and
/// the similarity searches' rate.
#[derive(Args, Debug, Clone, Copy, PartialEq)]
pub struct WorkerTuningArgs {
    /// Workflow tasks run at once.
    #[arg(long, env = "WORKER_MAX_CONCURRENT_WORKFLOW_TASKS", default_value_t = WorkerTuning::SDK_DEFAULTS.max_concurrent_workflow_tasks as u32, value_parser = clap::value_parser!(u32).range(2..))]
    pub max_concurrent_workflow_tasks: u32,
    /// Activities run at once.
    #[arg(long, env = "WORKER_MAX_CONCURRENT_ACTIVITIES", default_value_t = WorkerTuning::SDK_DEFAULTS.max_concurrent_activities as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_activities: u32,
    /// Concurrent workflow task polls (at least 2 with the sticky cache on).
    #[arg(long, env = "WORKER_WORKFLOW_POLLERS", default_value_t = WorkerTuning::SDK_DEFAULTS.workflow_pollers as u32, value_parser = clap::value_parser!(u32).range(2..))]
    pub workflow_pollers: u32,
    /// Concurrent activity task polls.
    #[arg(long, env = "WORKER_ACTIVITY_POLLERS", default_value_t = WorkerTuning::SDK_DEFAULTS.activity_pollers as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub activity_pollers: u32,
    /// Workflows kept in memory between tasks (sticky execution); 0 replays each task.
    #[arg(long, env = "WORKER_MAX_CACHED_WORKFLOWS", default_value_t = WorkerTuning::SDK_DEFAULTS.max_cached_workflows as u32)]
    pub max_cached_workflows: u32,
    /// Most similarity searches started per second across every worker of the similarity
    /// queue (Temporal's task-queue rate limit; Lykdat's quota is per key and per second).
    /// Unset: no limit.
    #[arg(long, env = "SIMILARITY_SEARCHES_PER_SECOND", value_parser = positive_rate)]
    pub similarity_searches_per_second: Option<f64>,
}

/// `ns=weight,...`: each weight a number above zero.
fn fairness_weights(text: &str) -> Result<std::collections::BTreeMap<String, f32>, String> {
    text.split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            let (ns, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not ns=weight"))?;
            let weight: f32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: the weight is not a number"))?;
            if !(weight.is_finite() && weight > 0.0) {
                return Err(format!("{part:?}: the weight must be above zero"));
            }
            Ok((ns.trim().to_owned(), weight))
        })
        .collect()
}

/// A rate above zero.
fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("{text:?} is not a rate above zero")),
    }
}

impl WorkerTuningArgs {
    /// The tuning the worker takes.
    pub fn tuning(&self) -> WorkerTuning {
        WorkerTuning {
            max_concurrent_workflow_tasks: self.max_concurrent_workflow_tasks as usize,
            max_concurrent_activities: self.max_concurrent_activities as usize,
            workflow_pollers: self.workflow_pollers as usize,
            activity_pollers: self.activity_pollers as usize,
            max_cached_workflows: self.max_cached_workflows as usize,
            similarity_searches_per_second: self.similarity_searches_per_second,
        }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required option is missing.
    #[error("{0} is required")]
    Missing(&'static str),
    /// The metadata store cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Lykdat client cannot be built.
    #[error(transparent)]
    Lykdat(#[from] LykdatError),
    /// An option has a value that cannot work.
    #[error("{name}: {message}")]
    Invalid {
        /// The option (its environment variable).
        name: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

impl WorkerArgs {
    /// The worker's deployment version, when versioning is on.
    pub fn version(&self) -> Option<WorkerVersion> {
        Some(WorkerVersion {
            deployment_name: self.worker_deployment_name.clone()?,
            build_id: self.worker_build_id.clone()?,
            pinned: self.worker_versioning_behavior == VersioningMode::Pinned,
        })
    }

    /// Opens the configured metadata store.
    pub async fn open_store(&self) -> Result<Arc<dyn MetadataStore>, ConfigError> {
        Ok(match self.metadata_store {
            StoreBackend::Embedded => Arc::new(EmbeddedStore::open(&self.embedded_store_path)?),
            StoreBackend::Couchbase => {
                let settings = CouchbaseSettings {
                    connection_string: self
                        .couchbase_connstr
                        .clone()
                        .ok_or(ConfigError::Missing("COUCHBASE_CONNSTR"))?,
                    username: self.couchbase_username.clone(),
                    password: self.couchbase_password.0.clone(),
                    bucket: self.couchbase_bucket.clone(),
                    scope: self.couchbase_scope.clone(),
                    collection: self.couchbase_collection.clone(),
                    timeout: Duration::from_secs(self.couchbase_timeout_secs),
                };
                Arc::new(CouchbaseStore::connect(&settings).await?)
            }
        })
    }

    /// Builds the Lykdat client.
    pub fn lykdat(&self) -> Result<LykdatClient, ConfigError> {
        Ok(LykdatClient::new(
            &self.lykdat_base_url,
            self.lykdat_api_key.as_ref().map(|k| k.0.clone()),
            Duration::from_secs(self.lykdat_timeout_secs),
        )?)
    }

    /// The catalog's file: `CATALOG_PATH`, else beside the embedded store's file.
    pub fn catalog_file(&self) -> PathBuf {
        self.catalog_path
            .clone()
            .unwrap_or_else(|| self.embedded_store_path.with_file_name("catalog.redb"))
    }

    /// Builds the configured similarity backend (opening the catalog, for that backend).
    pub fn similarity(&self) -> Result<SimilarityBackend, ConfigError> {
        let lykdat = self.lykdat()?;
        let use_lykdat = match self.similarity_backend {
            SimilarityChoice::Lykdat => true,
            SimilarityChoice::Catalog => false,
            SimilarityChoice::Auto => lykdat.is_configured(),
        };
        if use_lykdat {
            return Ok(SimilarityBackend::Lykdat(lykdat));
        }
        let invalid = |name, e: &dyn std::fmt::Display| ConfigError::Invalid {
            name,
            message: e.to_string(),
        };
        let limits = FetchLimits {
            max_bytes: self.image_fetch_max_bytes,
            timeout: Duration::from_secs(self.image_fetch_timeout_secs),
            max_pixels: self.image_max_pixels,
        };
        let policy = AddressPolicy::allowing(self.image_fetch_allow_cidrs.clone());
        let fetcher = ImageFetcher::new(policy, limits)
            .map_err(|e| invalid("IMAGE_FETCH_ALLOW_CIDRS", &e))?;
        let catalog =
            Catalog::open(&self.catalog_file()).map_err(|e| invalid("CATALOG_PATH", &e))?;
        let describer = match &self.image_model_path {
            None => Describer::Classical,
            Some(path) => Describer::Model(Arc::new(
                EfficientNetLite0::load(path).map_err(|e| invalid("IMAGE_MODEL_PATH", &e))?,
            )),
        };
        Ok(SimilarityBackend::Catalog(CatalogSearch::new(
            fetcher, catalog, describer,
        )))
    }
}

/// Controller options.
#[derive(Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Namespaces to watch (comma-separated); all namespaces when unset.
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "CONTROLLER_METRICS_ADDR",
        default_value = "127.0.0.1:9090"
    )]
    pub metrics_addr: SocketAddr,
    /// Elect a leader over a Lease so only one replica reconciles.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = false)]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(
        long,
        env = "LEASE_NAME",
        default_value = "imagejob-operator-controller"
    )]
    pub lease_name: String,
    /// Namespace of the Lease.
    #[arg(long, env = "LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Lease duration in seconds: candidates take over a leader whose Lease they saw unchanged
    /// for this long.
    #[arg(long, env = "LEASE_DURATION_SECS", default_value_t = 15)]
    pub lease_duration_secs: u64,
    /// Seconds the leader may act after the start of its last successful renewal; it stops
    /// every write when this passes without a renewal. Shorter than the lease duration.
    #[arg(long, env = "LEASE_RENEW_DEADLINE_SECS", default_value_t = 10.0)]
    pub lease_renew_deadline_secs: f64,
    /// Seconds between acquire and renew attempts. Shorter than the renew deadline.
    #[arg(long, env = "LEASE_RETRY_PERIOD_SECS", default_value_t = 2.0)]
    pub lease_retry_period_secs: f64,
    /// This replica's identity in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Most workflows watched by a long poll at once (each wakes its job at its steps and the
    /// moment its workflow closes); further running jobs, and jobs started while some are, are
    /// listed: their closes found by one list of closed runs a second.
    #[arg(long, env = "MAX_WORKFLOW_WATCHES", default_value_t = 100)]
    pub max_workflow_watches: usize,
    /// Most reconciles running at once. Bounds memory and apiserver load when thousands of
    /// jobs arrive together (or at startup).
    #[arg(long, env = "RECONCILE_CONCURRENCY", default_value_t = 32)]
    pub reconcile_concurrency: u16,
    /// Seconds a deleted job waits for its workflow to be cancelled (while Temporal is down, say)
    /// before it is released anyway with a Warning event. The annotation
    /// `imagejob.dev/release-without-cancel` releases one at once.
    #[arg(long, env = "CANCEL_ON_DELETE_TIMEOUT_SECS", default_value_t = 300)]
    pub cancel_on_delete_timeout_secs: u64,
    /// Fairness weights of namespaces in Temporal's task queues, `ns=weight` comma-separated
    /// (`team-a=2,batch=0.5`): a namespace's jobs get dispatch turns in proportion to its weight
    /// (1 when not listed), so one namespace's backlog does not make the others wait.
    #[arg(long, env = "FAIRNESS_WEIGHTS", value_parser = fairness_weights, default_value = "")]
    pub fairness_weights: std::collections::BTreeMap<String, f32>,
    /// Once the watched jobs have fallen to a quarter of their peak, and that peak was at least
    /// this many, the controller is rebuilt so its caches give their memory back (0: never).
    #[arg(long, env = "CACHE_REBUILD_MIN_PEAK", default_value_t = 2048)]
    pub cache_rebuild_min_peak: usize,
    /// The operator's completion notification sink: every job's end is POSTed there as a
    /// CloudEvent. None when unset.
    #[arg(long, env = "NOTIFY_SINK_URL", hide_env_values = true, value_parser = sink_url)]
    pub notify_sink_url: Option<reqwest::Url>,
    /// Hosts a job's own sink (`spec.notify.sink`) may name, comma-separated: exact names or IP
    /// addresses, or `*.example.com` for any subdomain. Empty: no job sink is allowed.
    #[arg(long, env = "NOTIFY_ALLOWED_HOSTS", value_delimiter = ',')]
    pub notify_allowed_hosts: Vec<String>,
    /// Key of the notifications' HMAC-SHA256 signature (header `X-ImageJob-Signature`); from a
    /// Secret. Notifications are sent unsigned without it.
    #[arg(long, env = "NOTIFY_SIGNING_KEY", hide_env_values = true)]
    pub notify_signing_key: Option<String>,
    /// Deadline of one notification delivery attempt, in seconds.
    #[arg(long, env = "NOTIFY_TIMEOUT_SECS", default_value_t = 5)]
    pub notify_timeout_secs: u64,
    /// Delivery attempts of a notification before it is given up (backoff from 1 s, doubling,
    /// at most 5 minutes apart).
    #[arg(long, env = "NOTIFY_MAX_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub notify_max_attempts: u32,
}

/// An http(s) URL.
fn sink_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|_| "not a URL".to_owned())?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        _ => Err("not an http or https URL".to_owned()),
    }
}

impl ControllerArgs {
    /// The notification settings; `None` when neither an operator sink nor a job sink's host is
    /// configured (no job can have a notification).
    pub fn notify_settings(&self) -> Option<crate::notify::NotifySettings> {
        let allowed: Vec<String> = (self.notify_allowed_hosts.iter())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .collect();
        if self.notify_sink_url.is_none() && allowed.is_empty() {
            return None;
        }
        Some(crate::notify::NotifySettings {
            operator_sink: self.notify_sink_url.clone(),
            allowed_hosts: allowed,
            signing_key: (self.notify_signing_key.as_ref()).map(|k| k.as_bytes().to_vec()),
            timeout: Duration::from_secs(self.notify_timeout_secs.max(1)),
            max_failures: self.notify_max_attempts,
        })
    }

    /// The Lease settings, checked against client-go's invariants.
    pub fn lease_settings(&self, identity: String) -> Result<LeaseSettings, ConfigError> {
        let seconds = |name: &'static str, value: f64| {
            Duration::try_from_secs_f64(value).map_err(|_| ConfigError::Invalid {
                name,
                message: format!("{value} is not a duration in seconds"),
            })
        };
        let settings = LeaseSettings {
            name: self.lease_name.clone(),
            namespace: self.lease_namespace.clone(),
            identity,
            lease_duration: Duration::from_secs(self.lease_duration_secs),
            renew_deadline: seconds("LEASE_RENEW_DEADLINE_SECS", self.lease_renew_deadline_secs)?,
            retry_period: seconds("LEASE_RETRY_PERIOD_SECS", self.lease_retry_period_secs)?,
        };
        settings.validate().map_err(|e| ConfigError::Invalid {
            name: "LEASE_*",
            message: e.to_string(),
        })?;
        Ok(settings)
    }
}

/// Facade options.
#[derive(Args, Debug, Clone)]
pub struct FacadeArgs {
    /// Address the facade listens on.
    #[arg(long, env = "FACADE_ADDR", default_value = "127.0.0.1:8080")]
    pub facade_addr: SocketAddr,
    /// Address of the facade's admin port: `/metrics`, `/healthz` and `/readyz`, apart from the
    /// API so only the cluster's monitoring reaches them.
    #[arg(long, env = "FACADE_ADMIN_ADDR", default_value = "127.0.0.1:9091")]
    pub facade_admin_addr: SocketAddr,
    /// Namespace where the facade creates ImageJobs.
    #[arg(long, env = "FACADE_NAMESPACE", default_value = "default")]
    pub facade_namespace: String,
    /// File of accepted bearer tokens, one per line (a mounted Secret).
    #[arg(long, env = "FACADE_TOKENS_FILE")]
    pub facade_tokens_file: Option<PathBuf>,
    /// Serve without authentication (local use only).
    #[arg(long, env = "FACADE_NO_AUTH", default_value_t = false)]
    pub no_auth: bool,
    /// Whether jobs posted without `similarity_search` run the search.
    #[arg(long, env = "FACADE_SIMILARITY_DEFAULT", default_value_t = false)]
    pub similarity_search_default: bool,
    /// Most `/result` requests waiting at once on this replica (beyond: 503 and Retry-After).
    #[arg(long, env = "FACADE_MAX_RESULT_WAITERS", default_value_t = crate::facade::DEFAULT_RESULT_WAITERS)]
    pub max_result_waiters: usize,
    /// Most event streams open at once on this replica (beyond: 503 and Retry-After).
    #[arg(long, env = "FACADE_MAX_EVENT_STREAMS", default_value_t = crate::facade::DEFAULT_EVENT_STREAMS)]
    pub max_event_streams: usize,
    /// Jobs one client (token) may create per second on this replica (0: no limit); beyond,
    /// 429 and `Retry-After`.
    #[arg(long, env = "FACADE_CREATE_RATE", default_value_t = crate::facade::QuotaSettings::default().per_second)]
    pub create_rate: f64,
    /// Jobs one client may create at once before its rate applies.
    #[arg(long, env = "FACADE_CREATE_BURST", default_value_t = crate::facade::QuotaSettings::default().burst)]
    pub create_burst: u32,
    /// Jobs one client may have unfinished at once, counted across replicas (0: no cap);
    /// beyond, 429 and `Retry-After`.
    #[arg(long, env = "FACADE_MAX_JOBS_IN_FLIGHT", default_value_t = crate::facade::QuotaSettings::default().max_in_flight)]
    pub max_jobs_in_flight: usize,
    /// Seconds a job created through the facade is kept after it finished (its
    /// `ttlSecondsAfterFinished`); its status and result are then answered from Temporal for as
    /// long as Temporal retains the workflow. 0 keeps jobs forever.
    #[arg(long, env = "FACADE_JOB_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    pub job_ttl_secs: u32,
    /// Seconds the facade keeps serving after SIGTERM, reporting itself not ready, before it
    /// stops accepting connections: requests routed to it before it left the Service's
    /// endpoints are still answered. Waiting `result` requests and event streams end at once.
    #[arg(long, env = "FACADE_DRAIN_SECS", default_value_t = 5)]
    pub drain_secs: u64,
    /// Base URL of the Temporal UI (e.g. `http://localhost:8233`): the jobs page links each job
    /// to its workflow there. Unset: no link.
    #[arg(long, env = "FACADE_TEMPORAL_UI_URL")]
    pub temporal_ui_url: Option<url::Url>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser)]
    struct TemporalOnly {
        #[command(flatten)]
        temporal: TemporalArgs,
    }

    fn settings(args: &[&str]) -> TemporalSettings {
        let argv = std::iter::once("imagejob-operator").chain(args.iter().copied());
        TemporalOnly::parse_from(argv)
            .temporal
            .settings()
            .expect("settings")
    }

    #[derive(Parser)]
    struct TuningOnly {
        #[command(flatten)]
        tuning: WorkerTuningArgs,
    }

    #[test]
    fn worker_tuning_defaults_to_the_sdks_and_takes_each_option() {
        let parsed = TuningOnly::parse_from(["t"]).tuning.tuning();
        assert_eq!(parsed, WorkerTuning::SDK_DEFAULTS);
        let tuned = TuningOnly::parse_from(["t", "--workflow-pollers", "2"])
            .tuning
            .tuning();
        assert_eq!(tuned.workflow_pollers, 2);
        assert!(TuningOnly::try_parse_from(["t", "--workflow-pollers", "1"]).is_err());
    }

    #[test]
    fn grpc_compression_is_off_unless_gzip_is_asked_for() {
        assert!(!settings(&[]).gzip);
        assert!(settings(&["--temporal-grpc-compression", "gzip"]).gzip);
        assert!(
            TemporalOnly::try_parse_from(["t", "--temporal-grpc-compression", "zstd"]).is_err()
        );
    }

    #[derive(Parser)]
    struct WorkerOnly {
        #[command(flatten)]
        worker: WorkerArgs,
    }

    #[test]
    fn a_logged_worker_configuration_shows_no_secret() {
        let args = WorkerOnly::parse_from([
            "t",
            "--couchbase-password",
            "couch-pass-5f3a",
            "--lykdat-api-key",
            "lykdat-key-9c1e",
        ])
        .worker;
        let logged = format!("{args:?}");
        assert!(!logged.contains("couch-pass-5f3a"), "{logged}");
        assert!(!logged.contains("lykdat-key-9c1e"), "{logged}");
        assert!(logged.contains("<redacted>"));
        assert_eq!(
            args.couchbase_password.0, "couch-pass-5f3a",
            "the value itself is kept"
        );
        assert!(args.lykdat().unwrap().is_configured());
    }
}
