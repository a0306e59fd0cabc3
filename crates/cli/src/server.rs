//! `tidal server`: run one store node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;
use tidal_controller::controller::{Controller, ControllerOptions};
use tidal_store::network::Faults;
use tidal_store::node::{NodeOptions, StoreNode, Tuning};

use crate::Failure;

/// Run a store node: the replicated store that holds every config and lease.
///
/// The first node of a cluster is started, then initialized with `tidal
/// cluster init`; more nodes are started and added with `tidal cluster join`.
/// A node restarted on its data directory rejoins its cluster by itself.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// This node's id (a positive number, unique in the cluster).
    #[arg(long, value_name = "N")]
    node_id: Option<u64>,
    /// Where the node keeps its Raft log, state and identity.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address for Raft and client gRPC traffic.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// The address other nodes and clients use (default: the listen address).
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// A TOML file with the same settings (`node-id`, `data-dir`, `listen`,
    /// `advertise`, and a `[tuning]` table); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Also run a controller in this process, with this id, against this
    /// node's store (it takes its share of the shards once the cluster is
    /// initialized). `tidal controller` runs one on its own.
    #[arg(long, value_name = "ID")]
    controller_id: Option<String>,
    /// Where the controller serves gRPC and /metrics (with --controller-id).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7100")]
    controller_listen: SocketAddr,
}

/// The config file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ConfigFile {
    node_id: Option<u64>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    #[serde(default)]
    tuning: Tuning,
}

fn load_config(path: &Path) -> Result<ConfigFile, Failure> {
    let text = crate::read_input(path)?;
    toml::from_str(&text).map_err(|e| Failure::input(path, e))
}

fn usage(message: &str) -> Failure {
    Failure::Usage(message.to_owned())
}

pub(crate) fn run(args: ServerArgs) -> Result<(), Failure> {
    let file = match &args.config {
        Some(path) => load_config(path)?,
        None => ConfigFile::default(),
    };
    let node_id = args
        .node_id
        .or(file.node_id)
        .ok_or_else(|| usage("--node-id is required (or node-id in --config)"))?;
    if node_id == 0 {
        return Err(usage("--node-id must be a positive number; 0 is reserved"));
    }
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .ok_or_else(|| usage("--data-dir is required (or data-dir in --config)"))?;
    let listen = args
        .listen
        .or(file.listen)
        .ok_or_else(|| usage("--listen is required (or listen in --config)"))?;
    let options = NodeOptions {
        node_id,
        data_dir,
        listen,
        advertise: args.advertise.or(file.advertise),
        tuning: file.tuning,
        faults: Faults::default(),
    };
    let controller = args
        .controller_id
        .map(|id| ControllerOptions::new(id, Vec::new(), args.controller_listen));
    crate::init_tracing();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| Failure::Other(e.into()))?;
    runtime.block_on(serve(options, controller))
}

async fn serve(options: NodeOptions, controller: Option<ControllerOptions>) -> Result<(), Failure> {
    let node = StoreNode::start(options)
        .await
        .map_err(|e| Failure::Other(anyhow::anyhow!("{e}")))?;
    let controller = match controller {
        Some(mut c) => {
            // This node, over loopback if it listens on every interface.
            let mut store = node.addr();
            if store.ip().is_unspecified() {
                store.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            c.store = vec![store.to_string()];
            let started = Controller::start(c)
                .await
                .map_err(|e| Failure::Other(anyhow::anyhow!("{e}")))?;
            tracing::info!(addr = %started.addr(), "controller running in this process");
            Some(started)
        }
        None => None,
    };
    match node.identity().cluster_id() {
        Some(cluster) => tracing::info!(
            node = node.id(),
            addr = %node.addr(),
            cluster,
            "store node running; it rejoins its cluster"
        ),
        None => tracing::info!(
            node = node.id(),
            addr = %node.addr(),
            "store node running; not in a cluster yet: run `tidal cluster init --endpoint {}` \
             for a new cluster, or `tidal cluster join` from a member",
            node.addr()
        ),
    }
    tokio::select! {
        () = wait_for_signal() => {}
        reason = node.failed() => {
            tracing::error!(%reason, "the store's Raft core stopped; exiting");
            let _ = node.shutdown().await;
            return Err(Failure::Other(anyhow::anyhow!("the store's Raft core stopped: {reason}")));
        }
    }
    tracing::info!("stopping");
    if let Some(controller) = controller {
        controller.shutdown().await;
    }
    node.shutdown()
        .await
        .map_err(|e| Failure::Other(anyhow::anyhow!("{e}")))
}

pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
