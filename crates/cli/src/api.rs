//! `tidal api`: run the management API.

use std::net::SocketAddr;

use clap::Args;
use tidal_api::{Api, ApiOptions};

use crate::Failure;

/// Run the management API (REST with Baseten's paths, and the same
/// operations over gRPC, `tidal.v1.Management`, on the same port):
/// deployments, autoscaling settings, promotion, activation, replicas and
/// their logs, workers, cluster status and settings, API keys. Every request needs an API key
/// with the `management` scope (`tidal keys create --store …` makes the
/// first one).
#[derive(Debug, Args)]
pub(crate) struct ApiArgs {
    /// Store endpoints, host:port, comma-separated or repeated.
    #[arg(long, value_name = "HOST:PORT", value_delimiter = ',', required = true)]
    store: Vec<String>,
    /// Where to serve HTTP (REST) and h2c (gRPC).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7090")]
    listen: SocketAddr,
}

pub(crate) fn run(args: ApiArgs) -> Result<(), Failure> {
    crate::init_tracing();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| Failure::Other(e.into()))?;
    runtime.block_on(async move {
        let mut options = ApiOptions::new(args.store);
        options.listen = args.listen;
        let api = Api::start(options)
            .await
            .map_err(|e| Failure::Other(anyhow::anyhow!("{e}")))?;
        println!("management API serving on http://{}", api.addr());
        crate::server::wait_for_signal().await;
        api.shutdown().await;
        Ok(())
    })
}
