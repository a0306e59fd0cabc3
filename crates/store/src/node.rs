//! One store node: its data directory, its Raft instance and its gRPC server
//! (Raft RPCs and the store service on one port).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::{Config, Raft, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::app::{self, LeaseKind};
use crate::identity::{Identity, IdentityError};
use crate::network::{Faults, Network, RaftService};
use crate::service::{StoreService, now_ms};
use crate::{NodeId, Request, StateMachineStore, TypeConfig};

/// Raft timing. The defaults suit a real cluster on disks whose fsync takes
/// around a millisecond; tests use [`Tuning::fast`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Tuning {
    /// Leader heartbeat, ms. openraft's default (50 ms) costs CPU and
    /// fsyncs for nothing; 250 ms keeps followers sure of the leader.
    pub heartbeat_ms: u64,
    /// Election timeout range, ms. Well above heartbeat and p99 fsync so a
    /// slow disk or a busy core does not trigger elections (openraft's
    /// 150–300 ms default does, on a 2-core machine under load).
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot (and purge the log) after this many entries.
    pub snapshot_every: u64,
    /// Log entries kept after a snapshot, so a briefly lagging follower
    /// catches up from the log rather than by a full snapshot.
    pub logs_kept_after_snapshot: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            heartbeat_ms: 250,
            election_min_ms: 1500,
            election_max_ms: 3000,
            snapshot_every: 20_000,
            logs_kept_after_snapshot: 1_000,
        }
    }
}

impl Tuning {
    /// Quicker elections and frequent snapshots, for in-process tests.
    pub fn fast() -> Self {
        Self {
            heartbeat_ms: 100,
            election_min_ms: 500,
            election_max_ms: 1000,
            snapshot_every: 200,
            logs_kept_after_snapshot: 0,
        }
    }

    fn raft_config(&self) -> Result<Config, NodeError> {
        Config {
            cluster_name: "tidal".to_owned(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            // A snapshot chunk must cross a loaded link well within this.
            install_snapshot_timeout: 4_000,
            // Chunks far below the gRPC message limit.
            snapshot_max_chunk_size: 1024 * 1024,
            // One append RPC carries at most this many entries.
            max_payload_entries: 512,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Config(e.to_string()))
    }
}

/// What a store node needs to start.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    /// Where to listen (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The address peers and clients use; the bound address if `None`.
    pub advertise: Option<String>,
    pub tuning: Tuning,
    /// Test hook: links to cut.
    pub faults: Faults,
}

/// Why a node could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Open(#[from] crate::OpenError),
    #[error(
        "data directory {dir} belongs to cluster {cluster} but {file} is missing or empty: this node's Raft state is lost, and starting it could make it vote twice. Remove the data directory, `tidal cluster leave --node-id {node}` it, and add it back as a new node"
    )]
    LostState {
        dir: PathBuf,
        file: &'static str,
        cluster: String,
        node: NodeId,
    },
    #[error("invalid Raft configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("Raft: {0}")]
    Raft(String),
}

/// A running store node. Dropping it does not stop it; call [`StoreNode::shutdown`].
pub struct StoreNode {
    raft: Raft<TypeConfig>,
    sm: StateMachineStore,
    identity: Identity,
    addr: SocketAddr,
    advertise: String,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    expiry: JoinHandle<()>,
    closing: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for StoreNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreNode")
            .field("identity", &self.identity)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl StoreNode {
    /// Opens the data directory and starts serving. A node restarted on its
    /// data directory rejoins its cluster with no further command.
    pub async fn start(opts: NodeOptions) -> Result<Self, NodeError> {
        let identity = Identity::load_or_create(&opts.data_dir, opts.node_id)?;
        if let Some(cluster) = identity.cluster_id() {
            // A member's files must exist: redb would silently create empty ones.
            for file in [crate::LOG_FILE, crate::STATE_FILE] {
                let present =
                    std::fs::metadata(opts.data_dir.join(file)).is_ok_and(|m| m.len() > 0);
                if !present {
                    return Err(NodeError::LostState {
                        dir: opts.data_dir.clone(),
                        file,
                        cluster,
                        node: opts.node_id,
                    });
                }
            }
        }
        let (log, sm) = crate::open(&opts.data_dir)?;
        let config = Arc::new(opts.tuning.raft_config()?);
        let network = Network::new(identity.clone(), opts.faults.clone());
        let raft = Raft::new(opts.node_id, config, network, log, sm.clone())
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let listener =
            TcpListener::bind(opts.listen)
                .await
                .map_err(|source| NodeError::Listen {
                    addr: opts.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| NodeError::Listen {
            addr: opts.listen,
            source,
        })?;
        let advertise = opts.advertise.clone().unwrap_or_else(|| addr.to_string());
        let (stop, stopped) = oneshot::channel::<()>();
        let (closing, closing_rx) = tokio::sync::watch::channel(false);
        let raft_service = RaftService::new(raft.clone(), identity.clone(), opts.faults.clone());
        let store_service = StoreService::new(
            raft.clone(),
            sm.clone(),
            identity.clone(),
            advertise.clone(),
            closing_rx,
        );
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(raft_service.into_server())
                .add_service(store_service.into_server())
                // Without TCP_NODELAY on accepted sockets, Nagle's algorithm and
                // delayed ACKs stall small responses by ~40 ms.
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        tracing::info!(node = opts.node_id, %addr, "store node listening");
        let expiry = tokio::spawn(expire_leases(raft.clone(), sm.clone(), opts.node_id));
        Ok(Self {
            raft,
            sm,
            identity,
            addr,
            advertise,
            stop: Some(stop),
            server: Some(server),
            expiry,
            closing,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.identity.node_id()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Raft handle.
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// The state machine (for reads).
    pub fn state_machine(&self) -> &StateMachineStore {
        &self.sm
    }

    /// The node's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// A one-node cluster in `data_dir` on a free loopback port, initialized
    /// (so it leads), with [`Tuning::fast`]: for tests and examples of the
    /// roles that use a store.
    pub async fn start_single(data_dir: &std::path::Path) -> Result<StoreNode, NodeError> {
        let node = StoreNode::start(NodeOptions {
            node_id: 1,
            data_dir: data_dir.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            tuning: Tuning::fast(),
            faults: Faults::default(),
        })
        .await?;
        node.initialize().await?;
        Ok(node)
    }

    /// Makes this node the first member of a new cluster and returns its id.
    pub async fn initialize(&self) -> Result<String, NodeError> {
        crate::service::initialize(&self.raft, &self.identity, &self.advertise)
            .await
            .map_err(|status| NodeError::Raft(status.message().to_owned()))
    }

    /// Resolves if this node's Raft core stops on its own (a fatal storage
    /// error, a panic): the process should then exit rather than keep
    /// listening without Raft. Never resolves while Raft runs.
    pub async fn failed(&self) -> String {
        // Checked on a timer, not on every metrics change: the metrics change
        // several times per write, and waking for each costs CPU (and a
        // cross-thread wake-up when the caller is `block_on`'s thread).
        let metrics = self.raft.metrics();
        let mut tick = tokio::time::interval(FAILED_CHECK);
        loop {
            tick.tick().await;
            if let Err(fatal) = &metrics.borrow().running_state {
                return fatal.to_string();
            }
            if metrics.has_changed().is_err() {
                return "the Raft core stopped".to_owned();
            }
        }
    }

    /// Stops Raft and the server.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        self.expiry.abort();
        self.closing.send_replace(true);
        let result = self.raft.shutdown().await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut server) = self.server.take() {
            // Graceful: in-flight calls finish; a client that keeps a
            // connection open does not hold the node up for long.
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
        result.map_err(|e| NodeError::Raft(e.to_string()))
    }
}

/// How long shutdown waits for open connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How often [`StoreNode::failed`] looks at the Raft core's state.
const FAILED_CHECK: Duration = Duration::from_millis(200);

/// How often the leader looks for expired leases.
const EXPIRY_PERIOD: Duration = Duration::from_millis(250);

/// While this node leads, proposes `ExpireLeases` (stamped with its clock)
/// whenever a lease has expired. Followers do nothing: expiry is a command in
/// the log, never a local decision.
async fn expire_leases(raft: Raft<TypeConfig>, sm: StateMachineStore, me: NodeId) {
    let mut tick = tokio::time::interval(EXPIRY_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if raft.metrics().borrow().current_leader != Some(me) {
            continue;
        }
        let now = now_ms();
        let expired = {
            use redb::ReadableDatabase;
            let Ok(txn) = sm.database().begin_read() else {
                continue;
            };
            [LeaseKind::Node, LeaseKind::Shard].into_iter().any(|kind| {
                app::leases(&txn, kind)
                    .map(|leases| leases.iter().any(|(_, lease)| lease.expires_at_ms <= now))
                    .unwrap_or(false)
            })
        };
        if !expired {
            continue;
        }
        match Request::expire_leases().stamped(now) {
            Ok(request) => match raft.client_write(request).await {
                Ok(written) => {
                    if let Ok(app::Outcome::Rejected(rejection)) = written.data.outcome() {
                        tracing::warn!(%rejection, "lease expiry was refused");
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "lease expiry not proposed (leadership moved?)");
                }
            },
            Err(e) => tracing::error!(error = %e, "cannot build the lease expiry command"),
        }
    }
}
