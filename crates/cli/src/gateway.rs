//! `tidal gateway`: run a gateway.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use tidal_gateway::activator::ActivatorOptions;
use tidal_gateway::{Gateway, GatewayOptions};

use crate::Failure;

/// Run a gateway: it proxies inference requests to Ready replicas (least
/// outstanding requests), reports each deployment's concurrency to its
/// controller every second, and holds requests for a deployment with no
/// Ready replica while it wakes it up.
///
/// Paths (Baseten's): POST /v1/models/{model_id}/production/predict,
/// …/development/predict, …/deployment/{deployment_id}/predict,
/// …/environments/{env_name}/predict, and the same ending in /wake (202).
/// Prometheus metrics at GET /metrics.
#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// This gateway's id (in its reports).
    #[arg(long, value_name = "ID", default_value = "gateway")]
    id: String,
    /// Store endpoints, host:port, comma-separated or repeated.
    #[arg(long, value_name = "HOST:PORT", value_delimiter = ',', required = true)]
    store: Vec<String>,
    /// Where to serve HTTP.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7300")]
    listen: SocketAddr,
    /// Requests one deployment may have waiting for a replica; more get 503.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    queue_size: usize,
    /// The longest a request waits for a Ready replica (then 504).
    #[arg(long, value_name = "SECS", default_value_t = 900)]
    queue_timeout_secs: u64,
    /// Serve requests without an API key. By default every request needs a
    /// key with the `inference` scope (`tidal keys create`), sent as
    /// `Authorization: Bearer <key>` or `Authorization: Api-Key <key>`.
    #[arg(long)]
    allow_anonymous: bool,
    /// Serving threads, each owning its connections (client and replica
    /// side) like an nginx worker; 0 is one per core.
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
}

pub(crate) fn run(args: GatewayArgs) -> Result<(), Failure> {
    if args.queue_size == 0 || args.queue_timeout_secs == 0 {
        return Err(Failure::Usage(
            "--queue-size and --queue-timeout-secs must be at least 1".into(),
        ));
    }
    crate::init_tracing();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| Failure::Other(e.into()))?;
    runtime.block_on(async move {
        let mut options = GatewayOptions::new(args.id, args.store);
        options.listen = args.listen;
        options.require_key = !args.allow_anonymous;
        options.threads = args.threads;
        options.activator = ActivatorOptions {
            queue_size: args.queue_size,
            timeout: Duration::from_secs(args.queue_timeout_secs),
        };
        let gateway = Gateway::start(options)
            .await
            .map_err(|e| Failure::Other(anyhow::anyhow!("{e}")))?;
        println!("gateway serving on http://{}", gateway.addr());
        crate::server::wait_for_signal().await;
        tracing::info!("stopping: finishing in-flight requests");
        gateway.shutdown().await;
        Ok(())
    })
}
