//! The node agent's registration: the node's record and its lease.
//!
//! On start the agent writes its `WorkerNode` record (id, region, address,
//! labels, GPU inventory, CPU, memory) into table WORKER_NODES and takes its
//! node lease (table NODE_LEASES, named by the node id, held by
//! `<id>@<incarnation>`), then renews the lease every
//! [`AgentOptions::renew`] (1 s by default). A lease still held by another
//! incarnation is waited for up to its TTL + 1 s (a restarted agent waits out
//! its dead predecessor); one still held after that means another live agent
//! uses this id, and start fails with [`AgentError::InUse`]. While the lease is live the scheduler may place replicas here;
//! when it expires (the agent died or lost the store for a whole TTL, 10 s by
//! default) the store's leader removes it and the placer marks the node's
//! replicas LOST. A renewal refused (the lease expired meanwhile) takes a new
//! lease at once. A graceful stop releases the lease.
//!
//! Not yet here: watching the replicas assigned to this node and driving
//! each through its phases (the replica actors).

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;
use tidal_proto::pb;
use tidal_store::Request;
use tidal_store::app::{LeaseKind, Outcome, Precondition, Table};
use tidal_store::client::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::gpu::{Inventory, Source};

/// How a node agent registers.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The node's id (the lease's name and holder).
    pub id: String,
    /// Store endpoints (`host:port`).
    pub store: Vec<String>,
    /// The node's region.
    pub region: String,
    /// Where the agent can be reached.
    pub address: String,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// Its GPUs (detected or declared).
    pub gpus: Inventory,
    /// CPU, in thousandths of a core.
    pub cpu_millis: u32,
    /// Memory, in bytes.
    pub memory_bytes: u64,
    /// Node lease time to live: 10 s by default. A restarted agent may wait
    /// up to this long (+ 1 s) for its dead predecessor's lease.
    pub lease_ttl: Duration,
    /// How often the lease is renewed: 1 s by default.
    pub renew: Duration,
}

impl AgentOptions {
    /// Defaults: this machine's CPUs and memory, no GPUs, region `local`.
    pub fn new(id: impl Into<String>, store: Vec<String>, address: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            store,
            region: "local".to_owned(),
            address: address.into(),
            labels: BTreeMap::new(),
            gpus: Inventory {
                gpus: Vec::new(),
                gpu_type: None,
                source: Source::Detected,
            },
            cpu_millis: local_cpu_millis(),
            memory_bytes: local_memory_bytes(),
            lease_ttl: Duration::from_secs(10),
            renew: Duration::from_secs(1),
        }
    }

    /// The node's record.
    pub fn record(&self) -> pb::WorkerNode {
        let mut labels = self.labels.clone();
        let source = match self.gpus.source {
            Source::Detected => "detected",
            Source::Declared => "declared",
        };
        labels.insert("tidal.dev/gpus".to_owned(), source.to_owned());
        pb::WorkerNode {
            id: self.id.clone(),
            region: self.region.clone(),
            address: self.address.clone(),
            labels,
            gpus: self
                .gpus
                .gpus
                .iter()
                .map(|g| pb::Gpu {
                    index: g.index,
                    name: g.name.clone(),
                    memory_bytes: g.memory_bytes,
                    uuid: g.uuid.clone().unwrap_or_default(),
                })
                .collect(),
            gpu_type: self.gpus.gpu_type.clone().unwrap_or_default(),
            gpus_declared: self.gpus.source == Source::Declared,
            cpu_millis: self.cpu_millis,
            memory_bytes: self.memory_bytes,
            schedulable: true,
            ..Default::default()
        }
    }
}

/// This machine's CPUs, in thousandths of a core.
pub fn local_cpu_millis() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    u32::try_from(cpus).unwrap_or(u32::MAX).saturating_mul(1000)
}

/// This machine's memory in bytes (`MemTotal` in /proc/meminfo; 0 if unknown).
pub fn local_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib.saturating_mul(1024))
        })
        .unwrap_or(0)
}

/// Why registration failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The store client could not be built or the store refused.
    #[error("store: {0}")]
    Store(String),
    /// Another live agent holds this node id's lease.
    #[error(
        "node id {id} is in use: its lease is held by {holder} until {expires_at_ms} ms; stop that agent or pick another --id"
    )]
    InUse {
        /// The node id.
        id: String,
        /// The lease's holder.
        holder: String,
        /// When that lease expires.
        expires_at_ms: u64,
    },
}

/// A registered node agent. Stop it with [`Agent::shutdown`].
///
/// The lease's name is the node id; its holder names this incarnation.
#[derive(Debug)]
pub struct Agent {
    id: String,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

fn store_err(e: impl std::fmt::Display) -> AgentError {
    AgentError::Store(e.to_string())
}

/// Takes the node lease for `holder`, waiting up to `ttl` + 1 s for a lease
/// another holder still has.
async fn grant(client: &Client, id: &str, holder: &str, ttl: Duration) -> Result<u64, AgentError> {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
    let deadline = tokio::time::Instant::now() + ttl + Duration::from_secs(1);
    loop {
        let request = Request::grant_lease(LeaseKind::Node, id, holder, ttl_ms);
        match client.write(&request).await.map_err(store_err)?.outcome {
            Outcome::LeaseGranted { epoch, .. } => return Ok(epoch),
            Outcome::Rejected(tidal_store::app::Rejection::LeaseHeld {
                holder,
                expires_at_ms,
            }) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(AgentError::InUse {
                        id: id.to_owned(),
                        holder,
                        expires_at_ms,
                    });
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return Err(AgentError::Store(format!("node lease refused: {other:?}"))),
        }
    }
}

/// A holder name unique to this agent process.
fn incarnation(id: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{id}@{}-{nanos:x}", std::process::id())
}

impl Agent {
    /// Writes the node's record, takes its lease and keeps renewing it.
    pub async fn start(options: AgentOptions) -> Result<Agent, AgentError> {
        let client = Client::new(&options.store, Duration::from_secs(5)).map_err(store_err)?;
        let put = Request::put(
            Table::WorkerNodes,
            &options.id,
            options.record().encode_to_vec(),
            Precondition::None,
            None,
        );
        client.write(&put).await.map_err(store_err)?;
        let holder = incarnation(&options.id);
        let mut epoch = grant(&client, &options.id, &holder, options.lease_ttl).await?;
        tracing::info!(node = %options.id, epoch, "worker registered; node lease taken");
        let (stop, mut stopped) = watch::channel(false);
        let id = options.id.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(options.renew);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = tick.tick() => {}
                }
                let renew = Request::renew_lease(LeaseKind::Node, &options.id, &holder, epoch);
                match client.write(&renew).await.map(|w| w.outcome) {
                    Ok(Outcome::LeaseRenewed { .. }) => {}
                    Ok(other) => {
                        tracing::warn!(node = %options.id, ?other, "node lease lost; taking a new one");
                        match grant(&client, &options.id, &holder, options.lease_ttl).await {
                            Ok(new) => epoch = new,
                            Err(e) => {
                                tracing::warn!(node = %options.id, error = %e, "node lease not retaken")
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(node = %options.id, error = %e, "node lease not renewed; retrying")
                    }
                }
            }
            let release = Request::release_lease(LeaseKind::Node, &options.id, &holder, epoch);
            let _ = client.write(&release).await;
        });
        Ok(Agent {
            id,
            stop,
            task: Some(task),
        })
    }

    /// The node id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stops renewing and releases the lease (replicas are placed elsewhere).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Stops at once without releasing anything, as a crash would (tests).
    pub fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
