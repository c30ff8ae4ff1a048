//! The `imagejob-operator` binary: parse the configuration, start logging, run one role.

use clap::Parser;
use imagejob_operator::{
    config::{Cli, Command},
    crd, run,
    shutdown::Shutdown,
    telemetry, tls,
};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A C string pointer jemalloc reads at start-up.
#[repr(transparent)]
pub struct MallocConf(*const std::ffi::c_char);
// SAFETY: it points at an immutable static byte string.
unsafe impl Sync for MallocConf {}

/// jemalloc's options: a background thread returns pages unused for a second to the system.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: MallocConf =
    MallocConf(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:1000".as_ptr());

/// Worker threads of the controller's runtime unless `TOKIO_WORKER_THREADS` says otherwise: it
/// waits on the network nearly all the time, and with one thread it spends less CPU per job
/// waking threads (measured with `scripts/bench.sh`: 5.0–6.0 ms per job at 32 in flight against
/// 6.9–7.2 with one thread per core).
const CONTROLLER_WORKER_THREADS: usize = 1;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if matches!(cli.command, Command::Controller(_))
        && std::env::var_os("TOKIO_WORKER_THREADS").is_none()
    {
        runtime.worker_threads(CONTROLLER_WORKER_THREADS);
    }
    let runtime = runtime.enable_all().build()?;
    // The role runs as a task on the worker threads, not on the main thread `block_on` parks:
    // its streams and the tasks they wake then share the worker, instead of waking each other
    // across two threads for every event.
    runtime.block_on(runtime.spawn(run_role(cli)))?
}

async fn run_role(cli: Cli) -> anyhow::Result<()> {
    telemetry::init(cli.log_format);
    tls::install_crypto_provider();
    let shutdown = Shutdown::on_signals();
    match &cli.command {
        Command::Crd => print!("{}", crd::crd_yaml()?),
        Command::Worker(c) => run::worker(&c.temporal, &c.worker, shutdown).await?,
        Command::Controller(c) => run::controller(&c.temporal, &c.controller, shutdown).await?,
        Command::Facade(c) => run::facade(&c.temporal, &c.facade, shutdown).await?,
        Command::Run(c) => run::all(c, shutdown).await?,
    }
    Ok(())
}
