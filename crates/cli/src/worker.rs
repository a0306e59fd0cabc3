//! `tidal worker`: run a node agent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tidal_worker::agent::AgentOptions;
use tidal_worker::gpu::{detect, parse_declared};
use tidal_worker::{Worker, WorkerOptions};

use crate::Failure;

/// Run a worker agent on this node: it registers the node (region, GPUs,
/// CPU, memory) in the store, keeps its node lease, and starts and stops the
/// replicas controllers place here, reporting each phase to the store.
///
/// Replica logs are kept under DATA_DIR/logs and served over gRPC
/// (`tidal.v1.Worker/ReplicaLogs`); Prometheus metrics at
/// `http://LISTEN/metrics`. SIGTERM or Ctrl-C stops every replica (drain,
/// SIGTERM, SIGKILL after the grace period), then releases the node lease.
/// A worker restarted after a crash stops the replica processes its
/// previous run left behind (it does not adopt them).
#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// This node's id, unique among workers.
    #[arg(long, value_name = "ID")]
    id: String,
    /// Store endpoints, host:port, comma-separated or repeated.
    #[arg(long, value_name = "HOST:PORT", value_delimiter = ',', required = true)]
    store: Vec<String>,
    /// The node's region.
    #[arg(long, default_value = "local")]
    region: String,
    /// Where to serve gRPC (replica logs) and /metrics.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7200")]
    listen: SocketAddr,
    /// The address others reach this worker and its replicas at (its host
    /// is used in replica endpoints); default: the listen address.
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// The node's data directory: weight cache, replica logs, model dirs.
    #[arg(long, value_name = "DIR", default_value = ".tidal-worker")]
    data_dir: PathBuf,
    /// A PEM file of extra root certificates trusted for https:// weight
    /// URLs (a private CA), besides Mozilla's roots.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// The weight cache's size limit, in GiB.
    #[arg(long, value_name = "GIB", default_value_t = 100)]
    cache_limit_gib: u64,
    /// A label for the node, KEY=VALUE; repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Declare GPUs on a machine without them, e.g. `2xH100-80GB` (the node
    /// is labelled as declared). Without it, GPUs come from `nvidia-smi`.
    #[arg(long, value_name = "COUNTxTYPE")]
    gpus: Option<String>,
    /// Node lease time to live.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    lease_ttl_ms: u64,
    /// Ready timeout for deployments that set none.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    ready_timeout_secs: u64,
    /// Stop grace (in-flight wait, then SIGTERM → SIGKILL) for deployments
    /// that set none.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    stop_grace_secs: u64,
}

pub(crate) fn run(args: WorkerArgs) -> Result<(), Failure> {
    let declared = match &args.gpus {
        Some(spec) => {
            Some(parse_declared(spec).map_err(|e| Failure::Usage(format!("--gpus: {e}")))?)
        }
        None => None,
    };
    if args.lease_ttl_ms < 2_000 {
        return Err(Failure::Usage(format!(
            "--lease-ttl-ms must be at least 2000 (the lease is renewed every second); got {}",
            args.lease_ttl_ms
        )));
    }
    // Absolute, because replica model directories link into the cache by
    // path and replicas resolve TIDAL_MODEL_DIR themselves.
    let data_dir = std::path::absolute(&args.data_dir)
        .map_err(|e| Failure::Usage(format!("--data-dir {}: {e}", args.data_dir.display())))?;
    let extra_roots_pem = match &args.ca_file {
        Some(path) => std::fs::read(path).map_err(|e| Failure::Input {
            path: path.clone(),
            message: format!("cannot read the CA file: {e}"),
        })?,
        None => Vec::new(),
    };
    crate::init_tracing();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| Failure::Other(e.into()))?;
    runtime.block_on(async move {
        let gpus = match declared {
            Some(inventory) => inventory,
            None => detect()
                .await
                .map_err(|e| Failure::Other(anyhow::anyhow!("detecting GPUs: {e}")))?,
        };
        let mut agent = AgentOptions::new(args.id, args.store, String::new());
        agent.region = args.region;
        agent.labels = args.labels.into_iter().collect();
        agent.gpus = gpus;
        agent.lease_ttl = Duration::from_millis(args.lease_ttl_ms);
        let gpu_count = agent.gpus.gpus.len();
        let gpu_type = agent.gpus.gpu_type.clone().unwrap_or_else(|| "none".into());
        let mut options = WorkerOptions::new(agent, data_dir);
        options.listen = args.listen;
        options.advertise = args.advertise;
        options.cache_limit_bytes = args.cache_limit_gib.saturating_mul(1 << 30);
        options.extra_roots_pem = extra_roots_pem;
        options.ready_timeout = Duration::from_secs(args.ready_timeout_secs);
        options.stop_grace = Duration::from_secs(args.stop_grace_secs);
        let worker = Worker::start(options)
            .await
            .map_err(|e| Failure::Other(anyhow::anyhow!("{e}")))?;
        println!(
            "worker {} registered: {gpu_count} GPU(s) of type {gpu_type}; serving on {}",
            worker.id(),
            worker.address()
        );
        crate::server::wait_for_signal().await;
        tracing::info!("stopping: stopping replicas, then releasing the node lease");
        worker.shutdown().await;
        Ok(())
    })
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !key.starts_with("tidal.dev/") => {
            Ok((key.to_owned(), value.to_owned()))
        }
        Some((key, _)) if key.starts_with("tidal.dev/") => Err(format!(
            "label keys starting with tidal.dev/ are set by tidal; got {key:?}"
        )),
        _ => Err(format!("a label is KEY=VALUE; got {text:?}")),
    }
}
