//! The worker: registration, the replica watch, one actor per replica, and
//! the node's gRPC + `/metrics` endpoint.
//!
//! [`Worker::start`] binds its listener, registers the node and takes its
//! node lease ([`crate::agent`]), stops any replica process a previous run
//! of this worker left behind ([`crate::orphans`]: cleaned up, not adopted),
//! then lists and watches table REPLICAS. For every replica assigned to this
//! node it carries out the record:
//!
//! - **Pending**, not yet seen → a [`crate::replica`] actor starts it;
//! - **stop requested**, or **Lost**, or deleted → its actor drains and
//!   stops it (a replica asked to stop before it started is marked Stopped);
//! - **running but unknown** to this run (it was started by a previous run,
//!   whose process was just cleaned up) → marked Failed, so the placer
//!   replaces it.
//!
//! [`Worker::shutdown`] stops every replica (drain, SIGTERM, SIGKILL), then
//! releases the node lease: nothing is left running.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use ractor::ActorRef;
use tidal_proto::pb;
use tidal_store::app::{EventFilter, Table};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::agent::{Agent, AgentError, AgentOptions};
use crate::cache::{CacheError, CacheOptions, WeightCache};
use crate::gpu::Allocator;
use crate::metrics::Metrics;
use crate::records::{Records, RecordsError, Updated, enter, is_terminal, now_ms, phase_of};
use crate::replica::{self, Context, ReplicaMsg};
use crate::service::WorkerService;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Registration (id, store, region, GPUs, ...). Its `address` is
    /// replaced by `advertise` or the bound listener.
    pub agent: AgentOptions,
    /// Where to serve gRPC and `/metrics` (port 0 picks one).
    pub listen: SocketAddr,
    /// The address others reach this worker at; `None` = the bound listener.
    pub advertise: Option<String>,
    /// The node's data directory: `cache/`, `logs/`, `run/`.
    pub data_dir: PathBuf,
    /// The weight cache's size limit in bytes.
    pub cache_limit_bytes: u64,
    /// Extra trusted roots (PEM) for `https://` weight downloads.
    pub extra_roots_pem: Vec<u8>,
    /// Ready timeout for deployments that name none (600 s).
    pub ready_timeout: Duration,
    /// Stop grace for deployments that name none (30 s).
    pub stop_grace: Duration,
    /// How long a left-behind process gets after SIGTERM (5 s).
    pub orphan_grace: Duration,
}

impl WorkerOptions {
    /// Defaults around `agent`: listen on 127.0.0.1 (any port), 100 GiB cache.
    pub fn new(agent: AgentOptions, data_dir: PathBuf) -> Self {
        Self {
            agent,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            data_dir,
            cache_limit_bytes: 100 * 1024 * 1024 * 1024,
            extra_roots_pem: Vec::new(),
            ready_timeout: Duration::from_secs(600),
            stop_grace: Duration::from_secs(30),
            orphan_grace: Duration::from_secs(5),
        }
    }
}

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A data directory could not be created.
    #[error("cannot create {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The weight cache could not be opened.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Registration failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The store client could not be built.
    #[error(transparent)]
    Records(#[from] RecordsError),
}

/// A running worker. Stop it with [`Worker::shutdown`].
#[derive(Debug)]
pub struct Worker {
    id: String,
    address: SocketAddr,
    metrics: Metrics,
    stop: watch::Sender<bool>,
    agent: Option<Agent>,
    replicas: Option<JoinHandle<()>>,
    server: Option<JoinHandle<()>>,
}

impl Worker {
    /// Registers the node and starts carrying out its replicas.
    pub async fn start(options: WorkerOptions) -> Result<Worker, WorkerError> {
        // Absolute: replicas get links into the cache and run elsewhere.
        let data_dir =
            std::path::absolute(&options.data_dir).map_err(|source| WorkerError::DataDir {
                path: options.data_dir.clone(),
                source,
            })?;
        let dir = |name: &str| {
            let path = data_dir.join(name);
            std::fs::create_dir_all(&path)
                .map(|()| path.clone())
                .map_err(|source| WorkerError::DataDir { path, source })
        };
        let (cache_dir, log_dir, run_dir) = (dir("cache")?, dir("logs")?, dir("run")?);
        let cache_options = CacheOptions {
            extra_roots_pem: options.extra_roots_pem.clone(),
            ..CacheOptions::default()
        };
        let cache = WeightCache::open_with(&cache_dir, options.cache_limit_bytes, cache_options)?;
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| WorkerError::Listen {
                addr: options.listen,
                source,
            })?;
        let address = listener
            .local_addr()
            .map_err(|source| WorkerError::Listen {
                addr: options.listen,
                source,
            })?;
        let mut agent_options = options.agent.clone();
        agent_options.address = options
            .advertise
            .clone()
            .unwrap_or_else(|| address.to_string());
        let host = agent_options
            .address
            .rsplit_once(':')
            .map_or(agent_options.address.as_str(), |(h, _)| h)
            .to_owned();
        let records = Records::new(&agent_options.store)?;
        let gpus = Allocator::new(&agent_options.gpus);
        let id = agent_options.id.clone();
        let agent = Agent::start(agent_options).await?;
        // The lease is ours: no live twin uses this id, so what carries its
        // mark was left by a dead predecessor.
        let orphans = crate::orphans::clean_up(&id, options.orphan_grace).await;
        if orphans > 0 {
            tracing::warn!(worker = %id, orphans, "stopped replica processes left by a previous run");
        }
        let metrics = Metrics::new();
        let ctx = Arc::new(Context {
            worker_id: id.clone(),
            host,
            records,
            cache,
            gpus: Mutex::new(gpus),
            metrics: metrics.clone(),
            log_dir: log_dir.clone(),
            run_dir,
            ready_timeout: options.ready_timeout,
            stop_grace: options.stop_grace,
        });
        let (stop, stop_rx) = watch::channel(false);
        let replicas = tokio::spawn(
            Reconciler {
                ctx,
                actors: BTreeMap::new(),
                seen: BTreeSet::new(),
            }
            .run(stop_rx.clone(), options.stop_grace),
        );
        let grpc = tonic::service::Routes::new(pb::worker_server::WorkerServer::new(
            WorkerService::new(id.clone(), log_dir),
        ));
        let scrape = metrics.clone();
        let app = grpc.into_axum_router().route(
            "/metrics",
            axum::routing::get(move || {
                let scrape = scrape.clone();
                async move { scrape.encode() }
            }),
        );
        let mut server_stop = stop_rx;
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = server_stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "worker server stopped");
            }
        });
        tracing::info!(worker = %id, %address, "worker started");
        Ok(Worker {
            id,
            address,
            metrics,
            stop,
            agent: Some(agent),
            replicas: Some(replicas),
            server: Some(server),
        })
    }

    /// The node id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where its gRPC service and `/metrics` are served.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stops every replica (drain, SIGTERM, SIGKILL after the grace period),
    /// then releases the node lease.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(replicas) = self.replicas.take() {
            let _ = replicas.await;
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
        }
        if let Some(agent) = self.agent.take() {
            agent.shutdown().await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        for task in [self.replicas.take(), self.server.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
        if let Some(agent) = self.agent.take() {
            agent.abort();
        }
    }
}

/// Carries out the replica records assigned to this worker.
struct Reconciler {
    ctx: Arc<Context>,
    actors: BTreeMap<String, ActorRef<ReplicaMsg>>,
    /// Replicas this run has started (or finished): never restarted, and
    /// never mistaken for a previous run's.
    seen: BTreeSet<String>,
}

impl Reconciler {
    async fn run(mut self, mut stop: watch::Receiver<bool>, grace: Duration) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
        let mut stream = None;
        let filter = EventFilter {
            table: Some(Table::Replicas),
            key_prefix: String::new(),
        };
        loop {
            if stream.is_none() {
                match self.relist(&done_tx).await {
                    Ok(from) => match self.ctx.records.client().watch(from, &filter).await {
                        Ok(s) => stream = Some(s),
                        Err(e) => tracing::warn!(error = %e, "cannot watch replicas"),
                    },
                    Err(e) => tracing::warn!(error = %e, "cannot list replicas"),
                }
                if stream.is_none() {
                    tokio::select! {
                        _ = stop.changed() => break,
                        () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            }
            tokio::select! {
                _ = stop.changed() => break,
                Some(id) = done_rx.recv() => {
                    self.actors.remove(&id);
                }
                message = async {
                    match stream.as_mut() {
                        Some(s) => s.message().await,
                        None => std::future::pending().await,
                    }
                } => match message {
                    Ok(Some(pb::WatchResponse {
                        response: Some(pb::watch_response::Response::Events(events)),
                        ..
                    })) => {
                        for event in events.events {
                            let deleted = event.kind == i32::from(pb::change_event::Kind::Delete);
                            let value = event.value.map(|v| v.value).unwrap_or_default();
                            let record = if deleted {
                                None
                            } else {
                                match pb::Replica::decode(value.as_slice()) {
                                    Ok(r) => Some(r),
                                    Err(e) => {
                                        tracing::warn!(replica = %event.key, error = %e, "undecodable replica");
                                        continue;
                                    }
                                }
                            };
                            self.reconcile(&event.key, record, &done_tx).await;
                        }
                    }
                    Ok(Some(_)) | Ok(None) | Err(_) => stream = None,
                },
            }
        }
        self.stop_all(done_rx, grace).await;
    }

    /// Lists every replica and reconciles this node's; returns the revision
    /// to watch from.
    async fn relist(&mut self, done: &mpsc::UnboundedSender<String>) -> Result<u64, String> {
        let (rows, revision) = self
            .ctx
            .records
            .client()
            .list(Table::Replicas, "")
            .await
            .map_err(|e| e.to_string())?;
        let mut present = BTreeSet::new();
        for (id, kv) in rows {
            let Ok(record) = pb::Replica::decode(kv.value.as_slice()) else {
                tracing::warn!(replica = %id, "undecodable replica");
                continue;
            };
            present.insert(id.clone());
            self.reconcile(&id, Some(record), done).await;
        }
        let gone: Vec<String> = self
            .actors
            .keys()
            .filter(|id| !present.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.reconcile(&id, None, done).await;
        }
        Ok(revision + 1)
    }

    async fn reconcile(
        &mut self,
        id: &str,
        record: Option<pb::Replica>,
        done: &mpsc::UnboundedSender<String>,
    ) {
        let mine = record
            .as_ref()
            .filter(|r| r.worker_id == self.ctx.worker_id);
        let Some(record) = mine else {
            if let Some(actor) = self.actors.get(id) {
                let _ = actor.cast(ReplicaMsg::Stop(
                    "its record was deleted or moved to another worker".into(),
                ));
            }
            return;
        };
        let phase = phase_of(record);
        if let Some(actor) = self.actors.get(id) {
            if is_terminal(phase) {
                let why = format!(
                    "its record is {} ({})",
                    crate::metrics::phase_name(phase),
                    record.reason
                );
                let _ = actor.cast(ReplicaMsg::Stop(why));
            } else if record.stop_requested {
                let why = if record.reason.is_empty() {
                    "stop requested".to_owned()
                } else {
                    format!("stop requested: {}", record.reason)
                };
                let _ = actor.cast(ReplicaMsg::Stop(why));
            }
            return;
        }
        if is_terminal(phase) {
            self.seen.remove(id);
            return;
        }
        if self.seen.contains(id) {
            return;
        }
        self.seen.insert(id.to_owned());
        if record.stop_requested {
            let reason = format!("stopped before it started: {}", record.reason);
            self.mark(id, pb::ReplicaPhase::Stopped, reason).await;
        } else if phase == pb::ReplicaPhase::Pending {
            match replica::spawn(Arc::clone(&self.ctx), record.clone(), done.clone()).await {
                Ok(actor) => {
                    self.actors.insert(id.to_owned(), actor);
                }
                Err(e) => {
                    let reason = format!("the worker could not start a replica actor: {e}");
                    self.mark(id, pb::ReplicaPhase::Failed, reason).await;
                }
            }
        } else {
            let reason = format!(
                "worker {} restarted while the replica was {}; its process was stopped \
                 (a restarted worker cleans up its old replicas rather than adopting them)",
                self.ctx.worker_id,
                crate::metrics::phase_name(phase)
            );
            self.mark(id, pb::ReplicaPhase::Failed, reason).await;
        }
    }

    /// Writes a terminal phase for a replica that has no actor.
    async fn mark(&self, id: &str, phase: pb::ReplicaPhase, reason: String) {
        let at = now_ms();
        let written = self
            .ctx
            .records
            .update(id, |r| {
                enter(r, phase, at);
                r.reason.clone_from(&reason);
                r.endpoint.clear();
                r.pid = 0;
                true
            })
            .await;
        match written {
            Ok(Updated::Applied(_) | Updated::Gone | Updated::Refused(_)) => {}
            Err(e) => tracing::warn!(replica = id, error = %e, "cannot mark the replica"),
        }
    }

    /// Stops every replica and waits for their actors to end.
    async fn stop_all(&mut self, mut done: mpsc::UnboundedReceiver<String>, grace: Duration) {
        if self.actors.is_empty() {
            return;
        }
        tracing::info!(
            replicas = self.actors.len(),
            "stopping this worker's replicas"
        );
        for actor in self.actors.values() {
            let _ = actor.cast(ReplicaMsg::Stop("the worker is shutting down".into()));
        }
        // Drain wait + TERM grace + the writes, per replica, all at once.
        let deadline = tokio::time::Instant::now() + grace * 2 + Duration::from_secs(10);
        while !self.actors.is_empty() {
            match tokio::time::timeout_at(deadline, done.recv()).await {
                Ok(Some(id)) => {
                    self.actors.remove(&id);
                }
                Ok(None) | Err(_) => break,
            }
        }
        for (id, actor) in std::mem::take(&mut self.actors) {
            tracing::warn!(replica = %id, "replica did not stop in time; killing its actor");
            actor.stop(None);
        }
    }
}
