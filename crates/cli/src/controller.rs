//! `tidal controller`: run a controller against a store cluster.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use tidal_controller::controller::{Controller, ControllerOptions};
use tidal_controller::shard::DEFAULT_SHARDS;

use crate::Failure;

/// Run a controller: it takes a share of the shards (leases in the store),
/// runs one actor per deployment in them, and writes desired replicas.
///
/// Several controllers share the shards evenly; when one stops (Ctrl-C or
/// SIGTERM) it hands its shards over at once, and when one dies the others
/// take its shards once its leases expire (--lease-ttl-ms).
#[derive(Debug, Args)]
pub(crate) struct ControllerArgs {
    /// This controller's id, unique among controllers (no ':').
    #[arg(long, value_name = "ID")]
    id: String,
    /// Store endpoints, host:port, comma-separated or repeated.
    #[arg(long, value_name = "HOST:PORT", value_delimiter = ',', required = true)]
    store: Vec<String>,
    /// Address for the controller's gRPC service and /metrics.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// The address gateways and other controllers use (default: the bound address).
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Shards in the cluster; every controller must use the same number.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SHARDS)]
    shards: u32,
    /// Lease time to live: how long a dead controller's shards stay unowned.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    lease_ttl_ms: u64,
    /// How often leases are renewed and shards rebalanced.
    #[arg(long, value_name = "MS", default_value_t = 1_000)]
    tick_ms: u64,
}

pub(crate) fn run(args: ControllerArgs) -> Result<(), Failure> {
    let mut options = ControllerOptions::new(args.id, args.store, args.listen);
    options.advertise = args.advertise;
    options.shards = args.shards;
    options.lease_ttl = Duration::from_millis(args.lease_ttl_ms);
    options.tick = Duration::from_millis(args.tick_ms);
    crate::init_tracing();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| Failure::Other(e.into()))?;
    runtime.block_on(async move {
        let controller = Controller::start(options)
            .await
            .map_err(|e| Failure::Usage(e.to_string()))?;
        println!("controller listening on {}", controller.addr());
        crate::server::wait_for_signal().await;
        tracing::info!("stopping: handing shards over");
        controller.shutdown().await;
        Ok(())
    })
}
