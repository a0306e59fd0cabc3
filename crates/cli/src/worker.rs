//! `tidal worker`: run a node agent (registration and node lease so far).

use std::time::Duration;

use clap::Args;
use tidal_worker::agent::{Agent, AgentOptions};
use tidal_worker::gpu::{detect, parse_declared};

use crate::Failure;

/// Run a worker agent on this node: it registers the node (region, GPUs,
/// CPU, memory) in the store and keeps its node lease; controllers place
/// replicas on live nodes only, and mark a node's replicas lost when its
/// lease expires. (Starting the replicas themselves is not wired in yet.)
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
    /// The address the agent is reached at.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7200")]
    address: String,
    /// Declare GPUs on a machine without them, e.g. `2xH100-80GB` (the node
    /// is labelled as declared). Without it, GPUs come from `nvidia-smi`.
    #[arg(long, value_name = "COUNTxTYPE")]
    gpus: Option<String>,
    /// Node lease time to live.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    lease_ttl_ms: u64,
}

pub(crate) fn run(args: WorkerArgs) -> Result<(), Failure> {
    let declared = match &args.gpus {
        Some(spec) => {
            Some(parse_declared(spec).map_err(|e| Failure::Usage(format!("--gpus: {e}")))?)
        }
        None => None,
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
        let mut options = AgentOptions::new(args.id, args.store, args.address);
        options.region = args.region;
        options.gpus = gpus;
        options.lease_ttl = Duration::from_millis(args.lease_ttl_ms);
        let gpu_count = options.gpus.gpus.len();
        let gpu_type = options
            .gpus
            .gpu_type
            .clone()
            .unwrap_or_else(|| "none".into());
        let agent = Agent::start(options)
            .await
            .map_err(|e| Failure::Other(anyhow::anyhow!("{e}")))?;
        println!(
            "worker {} registered: {gpu_count} GPU(s) of type {gpu_type}",
            agent.id()
        );
        crate::server::wait_for_signal().await;
        tracing::info!("stopping: releasing the node lease");
        agent.shutdown().await;
        Ok(())
    })
}
