//! Carrying out the scheduler's plan against the store.
//!
//! Placement needs one view of every worker's capacity, so one controller
//! places for the whole cluster: the holder of shard [`PLACEMENT_SHARD`],
//! with every write fenced by that shard's epoch (a controller that lost the
//! shard cannot place). Each round it reads the workers, their node leases
//! and the replicas, takes the deployments (desired replicas, limits,
//! resources) from the manager's index, computes
//! [`crate::scheduler::plan`], and writes: a new `Replica` record per
//! placement (phase PENDING, for the worker to pick up), `stop_requested` per
//! stop, phase LOST per replica whose worker's lease expired. A deployment
//! that cannot be placed gets the reason in its record's `status_reason`
//! (cleared once it can be placed again). Replicas that keep failing put
//! their deployment in a backoff, and finished records are deleted after
//! their retention ([`crate::backoff`]).

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use tidal_proto::pb;
use tidal_store::Request;
use tidal_store::app::{Fence, KeyValueRecord, Lease, Outcome, Precondition, Rejection, Table};
use tidal_store::client::Client;

use crate::backoff::{Ended, Terminal, backoffs, expires_at};
use crate::manager::PRESENCE_PREFIX;
use crate::scheduler::{
    Command, DeploymentState, Phase, ReplicaState, Requirements, StopReason, Worker, plan,
};

/// The shard whose holder places replicas for the whole cluster.
pub const PLACEMENT_SHARD: u32 = 0;

/// A deployment as the placer needs it (kept by the manager's index).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlacementInput {
    /// Desired replicas (its actor's last decision).
    pub desired: u32,
    /// Its `max_replica`.
    pub max_replica: u32,
    /// What one replica needs.
    pub requirements: Requirements,
    /// The record's current `status_reason`.
    pub status_reason: String,
    /// Deactivated: no replicas, and its status reason (why it was
    /// deactivated) is left alone.
    pub inactive: bool,
    /// Its current status (`pb::DeploymentStatus` as stored).
    pub status: i32,
}

impl PlacementInput {
    /// From a stored record.
    /// An inactive (or deactivating) deployment runs no replica, whatever
    /// its desired count.
    pub fn from_record(record: &pb::DeploymentRecord, max_replica: u32) -> Self {
        let r = record.resources.clone().unwrap_or_default();
        let some = |s: String| (!s.is_empty()).then_some(s);
        let status = record.deployment.as_ref().map_or(0, |d| d.status);
        let inactive = status == i32::from(pb::DeploymentStatus::Inactive)
            || status == i32::from(pb::DeploymentStatus::Deactivating);
        Self {
            desired: if inactive { 0 } else { record.desired_replicas },
            max_replica,
            requirements: Requirements {
                region: some(r.region),
                gpu_type: some(r.gpu_type),
                gpu_count: r.gpu_count,
                cpu_millis: r.cpu_millis,
                memory_bytes: r.memory_bytes,
                image: r.image,
                weights: r.weights,
            },
            status_reason: record.status_reason.clone(),
            inactive,
            status,
        }
    }
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoundReport {
    /// Replicas placed.
    pub placed: usize,
    /// Replicas asked to stop.
    pub stopped: usize,
    /// Replicas marked lost.
    pub lost: usize,
    /// Terminal replica records deleted after their retention.
    pub deleted: usize,
    /// When a round must run even if nothing changes (a backoff ends, or a
    /// record's retention does).
    pub next_due_ms: Option<u64>,
    /// Deployments whose status reason was set to a new value, and the value.
    pub statuses: Vec<(String, String)>,
    /// Deployments whose status was set to a new value, and the value.
    pub deployment_statuses: Vec<(String, i32)>,
    /// Whether a write was refused for a stale epoch (the shard is lost).
    pub stale: bool,
}

fn phase(p: i32) -> Phase {
    match pb::ReplicaPhase::try_from(p).unwrap_or(pb::ReplicaPhase::Unspecified) {
        pb::ReplicaPhase::Pending | pb::ReplicaPhase::Unspecified => Phase::Pending,
        pb::ReplicaPhase::Fetching => Phase::Fetching,
        pb::ReplicaPhase::Starting => Phase::Starting,
        pb::ReplicaPhase::Loading => Phase::Loading,
        pb::ReplicaPhase::Ready => Phase::Ready,
        pb::ReplicaPhase::Draining => Phase::Draining,
        pb::ReplicaPhase::Stopped => Phase::Stopped,
        pb::ReplicaPhase::Failed => Phase::Failed,
        pb::ReplicaPhase::Lost => Phase::Lost,
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// What the placer reads from the store each round.
#[derive(Debug, Default)]
pub struct Observed {
    workers: Vec<Worker>,
    records: BTreeMap<String, (KeyValueRecord, pb::Replica)>,
    /// Changes when a worker or replica record changes or a worker's
    /// liveness does (not on every lease renewal).
    pub fingerprint: u64,
}

/// Reads workers, their liveness and the replicas.
pub async fn observe(client: &Client, now_ms: u64) -> Result<Observed, String> {
    use std::hash::{Hash, Hasher};
    let (workers, leases, replicas) = tokio::join!(
        client.list(Table::WorkerNodes, ""),
        client.list(Table::NodeLeases, ""),
        client.list(Table::Replicas, ""),
    );
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let live: BTreeSet<String> = leases
        .map_err(err)?
        .0
        .into_iter()
        .filter(|(name, _)| !name.starts_with(PRESENCE_PREFIX))
        .filter_map(|(name, kv)| {
            let lease = Lease::from(pb::Lease::decode(kv.value.as_slice()).ok()?);
            (lease.expires_at_ms > now_ms).then_some(name)
        })
        .collect();
    live.hash(&mut hasher);
    let workers: Vec<Worker> = workers
        .map_err(err)?
        .0
        .into_iter()
        .filter_map(|(id, kv)| {
            (id.as_str(), kv.mod_revision).hash(&mut hasher);
            pb::WorkerNode::decode(kv.value.as_slice())
                .ok()
                .map(|w| (id, w))
        })
        .map(|(id, w)| Worker {
            live: live.contains(&id),
            id,
            region: w.region,
            gpu_type: (!w.gpu_type.is_empty()).then_some(w.gpu_type),
            gpus: u32::try_from(w.gpus.len()).unwrap_or(u32::MAX),
            cpu_millis: w.cpu_millis,
            memory_bytes: w.memory_bytes,
            schedulable: w.schedulable,
            cached_images: w.cached_images.into_iter().collect(),
            cached_weights: w.cached_weights.into_iter().collect(),
        })
        .collect();
    let mut records: BTreeMap<String, (KeyValueRecord, pb::Replica)> = BTreeMap::new();
    for (id, kv) in replicas.map_err(err)?.0 {
        (id.as_str(), kv.mod_revision).hash(&mut hasher);
        if let Ok(r) = pb::Replica::decode(kv.value.as_slice()) {
            records.insert(id, (kv, r));
        }
    }
    Ok(Observed {
        workers,
        records,
        fingerprint: hasher.finish(),
    })
}

/// One placement round over `observed`, fenced with `fence` (shard
/// [`PLACEMENT_SHARD`]).
pub async fn round(
    client: &Client,
    fence: Fence,
    deployments: &BTreeMap<String, PlacementInput>,
    observed: Observed,
    now_ms: u64,
) -> RoundReport {
    let Observed {
        workers, records, ..
    } = observed;
    let observed: Vec<ReplicaState> = records
        .iter()
        .map(|(id, (_, r))| ReplicaState {
            id: id.clone(),
            deployment: r.deployment_id.clone(),
            worker: r.worker_id.clone(),
            phase: phase(r.phase),
            stop_requested: r.stop_requested,
            gpus: r.gpu_count,
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
        })
        .collect();
    let terminal: Vec<Terminal<'_>> = records
        .iter()
        .filter_map(|(id, (_, r))| {
            let ended = match pb::ReplicaPhase::try_from(r.phase).ok()? {
                pb::ReplicaPhase::Failed => Ended::Failed,
                pb::ReplicaPhase::Stopped | pb::ReplicaPhase::Lost => Ended::Finished,
                _ => return None,
            };
            Some(Terminal {
                id,
                deployment: &r.deployment_id,
                ended,
                at_ms: r.phase_changed_at_ms,
                reason: &r.reason,
            })
        })
        .collect();
    let held = backoffs(&terminal, now_ms);
    let mut active: BTreeMap<&str, u32> = BTreeMap::new();
    for r in observed
        .iter()
        .filter(|r| !r.phase.is_terminal() && !r.stop_requested)
    {
        *active.entry(r.deployment.as_str()).or_default() += 1;
    }
    let wanted: Vec<DeploymentState> = deployments
        .iter()
        .map(|(id, d)| DeploymentState {
            id: id.clone(),
            // A deployment in a crash-loop backoff gets no new replicas.
            desired: if held.contains_key(id) {
                d.desired.min(active.get(id.as_str()).copied().unwrap_or(0))
            } else {
                d.desired
            },
            max_replica: d.max_replica,
            requirements: d.requirements.clone(),
        })
        .collect();
    let plan = plan(&wanted, &workers, &observed);

    let mut report = RoundReport::default();
    let mut writes = Vec::new();
    // Finished records go after their retention; the next round is due when
    // the first of the rest does, or a backoff ends.
    for t in &terminal {
        let expires = expires_at(t);
        if expires <= now_ms {
            if let Some((kv, _)) = records.get(t.id) {
                report.deleted += 1;
                writes.push(Request::delete(
                    Table::Replicas,
                    t.id,
                    Precondition::ModRevision(kv.mod_revision),
                    Some(fence),
                ));
            }
        } else {
            report.next_due_ms = Some(report.next_due_ms.map_or(expires, |d| d.min(expires)));
        }
    }
    for b in held.values() {
        report.next_due_ms = Some(report.next_due_ms.map_or(b.until_ms, |d| d.min(b.until_ms)));
    }
    let mut seq = 0u64;
    for command in plan.commands {
        match command {
            Command::Place {
                deployment,
                worker,
                gpus,
            } => {
                seq += 1;
                // Unique: the shard epoch, this round's time and a counter.
                let id = format!("{deployment}-{:x}-{now_ms:x}-{seq}", fence.epoch);
                let req = deployments.get(&deployment).map(|d| &d.requirements);
                let replica = pb::Replica {
                    id: id.clone(),
                    deployment_id: deployment,
                    worker_id: worker,
                    phase: pb::ReplicaPhase::Pending.into(),
                    gpu_count: gpus,
                    cpu_millis: req.map_or(0, |r| r.cpu_millis),
                    memory_bytes: req.map_or(0, |r| r.memory_bytes),
                    created_at_ms: now_ms,
                    phase_changed_at_ms: now_ms,
                    history: vec![pb::PhaseChange {
                        phase: pb::ReplicaPhase::Pending.into(),
                        at_ms: now_ms,
                    }],
                    ..Default::default()
                };
                report.placed += 1;
                writes.push(Request::put(
                    Table::Replicas,
                    id,
                    replica.encode_to_vec(),
                    Precondition::MustNotExist,
                    Some(fence),
                ));
            }
            Command::Stop { replica, reason } => {
                if let Some((kv, r)) = records.get(&replica) {
                    let mut r = r.clone();
                    r.stop_requested = true;
                    r.reason = match reason {
                        StopReason::ScaleDown => "scaled down".into(),
                        StopReason::OverMax => "over max_replica".into(),
                        StopReason::DeploymentGone => "deployment deleted".into(),
                    };
                    report.stopped += 1;
                    writes.push(cas(Table::Replicas, &replica, kv, r.encode_to_vec(), fence));
                }
            }
            Command::MarkLost { replica } => {
                if let Some((kv, r)) = records.get(&replica) {
                    let mut r = r.clone();
                    r.phase = pb::ReplicaPhase::Lost.into();
                    r.reason = format!("worker {} lost its node lease", r.worker_id);
                    r.phase_changed_at_ms = now_ms;
                    r.history.push(pb::PhaseChange {
                        phase: pb::ReplicaPhase::Lost.into(),
                        at_ms: now_ms,
                    });
                    report.lost += 1;
                    writes.push(cas(Table::Replicas, &replica, kv, r.encode_to_vec(), fence));
                }
            }
        }
    }
    // The reason leaves out how many replicas are missing, so it does not
    // change (and cost a write) each time desired replicas do.
    let unplaceable: BTreeMap<&str, String> = plan
        .unplaceable
        .iter()
        .map(|u| {
            (
                u.deployment.as_str(),
                format!("cannot be placed: {}", u.reason),
            )
        })
        .collect();
    // Each deployment's status follows its replicas.
    let mut ready: BTreeMap<&str, usize> = BTreeMap::new();
    let mut starting: BTreeSet<&str> = BTreeSet::new();
    for (_, r) in records.values() {
        match pb::ReplicaPhase::try_from(r.phase).unwrap_or(pb::ReplicaPhase::Unspecified) {
            pb::ReplicaPhase::Ready => *ready.entry(r.deployment_id.as_str()).or_default() += 1,
            pb::ReplicaPhase::Fetching | pb::ReplicaPhase::Starting | pb::ReplicaPhase::Loading => {
                starting.insert(r.deployment_id.as_str());
            }
            _ => {}
        }
    }
    let mut deployment_statuses = Vec::new();
    for (id, d) in deployments {
        let current =
            pb::DeploymentStatus::try_from(d.status).unwrap_or(pb::DeploymentStatus::Unspecified);
        let next = derive_status(
            current,
            d.desired,
            ready.get(id.as_str()).copied().unwrap_or(0),
            starting.contains(id.as_str()),
        );
        if next != current {
            deployment_statuses.push((id.clone(), i32::from(next)));
        }
    }
    report.deployment_statuses.clone_from(&deployment_statuses);
    let mut statuses = Vec::new();
    for (id, d) in deployments.iter().filter(|(_, d)| !d.inactive) {
        let reason = match held.get(id) {
            Some(backoff) => backoff.status(),
            None => unplaceable.get(id.as_str()).cloned().unwrap_or_default(),
        };
        if reason != d.status_reason {
            tracing::debug!(deployment = %id, %reason, "status reason");
            statuses.push((id.clone(), reason));
        }
    }
    let newly = statuses.iter().filter(|(_, r)| !r.is_empty()).count();
    if newly > 0 {
        let (first, reason) = statuses
            .iter()
            .find(|(_, r)| !r.is_empty())
            .map_or(("", ""), |(d, r)| (d.as_str(), r.as_str()));
        tracing::warn!(
            deployments = newly,
            first,
            reason,
            "deployments cannot be placed (reason in each one's status)"
        );
    }
    report.statuses.clone_from(&statuses);
    // Concurrent (the store coalesces them), but bounded: a first round can
    // have a write for every deployment.
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(
        crate::store_port::MAX_IN_FLIGHT,
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for write in writes {
        let client = client.clone();
        let limit = std::sync::Arc::clone(&limit);
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            client.write(&write).await.map(|w| w.outcome)
        });
    }
    for (id, reason) in statuses {
        let client = client.clone();
        let limit = std::sync::Arc::clone(&limit);
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            update_record(&client, &id, fence, |r| {
                if r.status_reason == reason {
                    return false;
                }
                reason.clone_into(&mut r.status_reason);
                true
            })
            .await
        });
    }
    for (id, status) in deployment_statuses {
        let client = client.clone();
        let limit = std::sync::Arc::clone(&limit);
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            update_record(&client, &id, fence, |r| {
                let Some(d) = r.deployment.as_mut() else {
                    return false;
                };
                // Recomputed from what is stored now: a deactivation or a
                // build status written meanwhile wins.
                let current = pb::DeploymentStatus::try_from(d.status)
                    .unwrap_or(pb::DeploymentStatus::Unspecified);
                if !managed(current) || d.status == status {
                    return false;
                }
                d.status = status;
                true
            })
            .await
        });
    }
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(Outcome::Rejected(Rejection::StaleEpoch { .. }))) => report.stale = true,
            Ok(Ok(Outcome::Rejected(r))) => tracing::debug!(%r, "placement write refused"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "placement write failed"),
            Err(e) => tracing::warn!(error = %e, "placement task failed"),
        }
    }
    report
}

fn cas(table: Table, key: &str, kv: &KeyValueRecord, value: Vec<u8>, fence: Fence) -> Request {
    Request::put(
        table,
        key,
        value,
        Precondition::ModRevision(kv.mod_revision),
        Some(fence),
    )
}

/// Whether the placer keeps this status up to date (it leaves build,
/// failure, update and (de)activation statuses to whoever set them).
fn managed(status: pb::DeploymentStatus) -> bool {
    use pb::DeploymentStatus as S;
    matches!(
        status,
        S::Unspecified | S::Deploying | S::LoadingModel | S::Active | S::ScaledToZero | S::WakingUp
    )
}

/// A deployment's status from its replicas (pure): ACTIVE with a Ready
/// replica; SCALED_TO_ZERO with none wanted; WAKING_UP when it had been up
/// (or at zero) and waits for one; otherwise LOADING_MODEL while one is
/// being fetched, started or loaded, else DEPLOYING. Statuses it does not
/// manage are kept.
pub fn derive_status(
    current: pb::DeploymentStatus,
    desired: u32,
    ready: usize,
    starting: bool,
) -> pb::DeploymentStatus {
    use pb::DeploymentStatus as S;
    if !managed(current) {
        return current;
    }
    if ready > 0 {
        S::Active
    } else if desired == 0 {
        S::ScaledToZero
    } else if matches!(current, S::Active | S::ScaledToZero | S::WakingUp) {
        S::WakingUp
    } else if starting {
        S::LoadingModel
    } else {
        S::Deploying
    }
}

/// Applies `change` to a deployment record (compare-and-set, fenced);
/// `change` returns false to leave it.
async fn update_record(
    client: &Client,
    id: &str,
    fence: Fence,
    mut change: impl FnMut(&mut pb::DeploymentRecord) -> bool,
) -> Result<Outcome, tidal_store::client::ClientError> {
    for _ in 0..8 {
        let (kv, _) = client.get(Table::Deployments, id).await?;
        let Some(kv) = kv else {
            return Ok(Outcome::Deleted {
                revision: 0,
                existed: false,
            });
        };
        let Ok(mut record) = pb::DeploymentRecord::decode(kv.value.as_slice()) else {
            break;
        };
        if !change(&mut record) {
            return Ok(Outcome::Written {
                revision: kv.mod_revision,
            });
        }
        let put = cas(Table::Deployments, id, &kv, record.encode_to_vec(), fence);
        let outcome = client.write(&put).await?.outcome;
        if !matches!(outcome, Outcome::Rejected(Rejection::Conflict { .. })) {
            return Ok(outcome);
        }
    }
    Ok(Outcome::Rejected(Rejection::Invalid {
        message: format!("{id}: not updated after repeated conflicts"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_follows_the_replicas() {
        use pb::DeploymentStatus as S;
        let cases = [
            (S::Deploying, 1, 0, false, S::Deploying),
            (S::Deploying, 1, 0, true, S::LoadingModel),
            (S::LoadingModel, 1, 1, false, S::Active),
            (S::Active, 0, 0, false, S::ScaledToZero),
            (S::ScaledToZero, 1, 0, true, S::WakingUp),
            (S::WakingUp, 1, 1, false, S::Active),
            (S::Active, 2, 0, false, S::WakingUp),
            (S::Deploying, 0, 0, false, S::ScaledToZero),
            // Not the placer's to change.
            (S::Inactive, 1, 1, false, S::Inactive),
            (S::BuildFailed, 1, 0, false, S::BuildFailed),
            (S::Updating, 1, 1, false, S::Updating),
        ];
        for (current, desired, ready, starting, want) in cases {
            assert_eq!(
                derive_status(current, desired, ready, starting),
                want,
                "{current:?} desired {desired} ready {ready} starting {starting}"
            );
        }
    }

    #[test]
    fn an_inactive_deployment_wants_no_replica() {
        let mut record = pb::DeploymentRecord {
            deployment: Some(pb::Deployment {
                status: pb::DeploymentStatus::Active.into(),
                ..Default::default()
            }),
            desired_replicas: 3,
            ..Default::default()
        };
        assert_eq!(PlacementInput::from_record(&record, 5).desired, 3);
        for status in [
            pb::DeploymentStatus::Inactive,
            pb::DeploymentStatus::Deactivating,
        ] {
            record.deployment.as_mut().unwrap().status = status.into();
            assert_eq!(PlacementInput::from_record(&record, 5).desired, 0);
        }
    }
}
