//! The scheduler: a pure function from desired and observed replicas to a [`Plan`].
//!
//! [`plan`] takes the deployments (what is wanted), the workers and the replicas (what
//! is there) and returns [`Command`]s for a runtime to carry out, plus an
//! [`Unplaceable`] entry for every deployment it could not satisfy. It does no I/O,
//! keeps no state and reads no clock: the same inputs always give the same plan.
//!
//! # Rules
//!
//! 1. **Active replicas.** A replica is *terminal* when its phase is Stopped, Failed
//!    or Lost; terminal replicas are ignored entirely and hold no capacity. A
//!    non-terminal replica holds its worker's GPUs, CPU and memory. It is *active*
//!    (counts toward its deployment) unless `stop_requested` is set: a replica that
//!    was asked to stop still holds capacity until it is terminal, so stops in a plan
//!    never free capacity for placements in the same plan.
//! 2. **Lost replicas.** A non-terminal replica whose worker is missing from the
//!    worker list or is not `live` gets [`Command::MarkLost`]; it then neither counts
//!    nor holds capacity, and is replaced like any other missing replica.
//! 3. **Scale down.** The target is `min(desired, max_replica)`. Active replicas over
//!    the target are stopped with [`StopReason::OverMax`] when `desired > max_replica`
//!    and [`StopReason::ScaleDown`] otherwise. They are picked one at a time, each time
//!    the least valuable remaining one by:
//!    1. not serving first (Pending, Fetching, Starting, Loading, Draining), Ready last;
//!    2. then the worker holding the most remaining active replicas of the deployment
//!       (undo crowding);
//!    3. then the greatest replica id.
//! 4. **Deleted deployments.** Active replicas of a deployment missing from the
//!    deployment list are stopped with [`StopReason::DeploymentGone`].
//! 5. **Placement.** Below the target, `target − active` replicas are placed one at a
//!    time, each on the best eligible worker given the capacity already used by
//!    non-terminal replicas (including stop-requested ones) and by placements made
//!    earlier in the same plan. A worker is eligible when it is `live` and
//!    `schedulable`, in the required region (if any), has the required GPU type (if
//!    any, and only when `gpu_count > 0`) and at least `gpu_count` free GPUs, and has
//!    at least the required CPU and memory free. The target never exceeds
//!    `max_replica`, so neither does the number of active replicas after the plan.
//! 6. **Best worker.** Among eligible workers, the first by:
//!    1. fewest active replicas of this deployment already there (spread);
//!    2. warmest: image and all weights cached = 2, one of the two = 1, neither = 0
//!       (an empty weights list counts as cached);
//!    3. fewest free GPUs after placement (pack GPU nodes tightly so big holes stay
//!       for big replicas; for CPU-only replicas this keeps them off GPU nodes);
//!    4. most free CPU after placement (spread CPU load);
//!    5. lowest worker id.
//! 7. **Unplaceable.** When a replica fits nowhere, placement for that deployment stops
//!    and one [`Unplaceable`] records how many replicas are missing and the most
//!    specific reason, checked in this order: no live, schedulable worker (in the
//!    region); none of the GPU type; no worker large enough for `gpu_count`; not enough
//!    GPUs free; not enough CPU or memory free. Nothing is placed partially.
//! 8. **Determinism.** Workers, replicas and deployments are read in id order (when
//!    ids repeat, the first occurrence wins). Commands come as: every `MarkLost` (by
//!    replica id), then per deployment in id order (deleted ones included) its stops,
//!    then its placements. Deployments earlier in id order get capacity first.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

/// What one replica of a deployment needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Requirements {
    /// The region the replica must run in; `None` means any region.
    pub region: Option<String>,
    /// The GPU type it needs (e.g. `H100`); `None` means any. Ignored when `gpu_count` is 0.
    pub gpu_type: Option<String>,
    /// GPUs it needs, all on one worker.
    pub gpu_count: u32,
    /// CPU it needs, in thousandths of a core.
    pub cpu_millis: u32,
    /// Memory it needs, in bytes.
    pub memory_bytes: u64,
    /// The container image it runs.
    pub image: String,
    /// The model weights it loads.
    pub weights: Vec<String>,
}

/// One deployment as the scheduler sees it: how many replicas are wanted, and of what.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeploymentState {
    /// The deployment's id.
    pub id: String,
    /// Replicas the autoscaler wants.
    pub desired: u32,
    /// The most replicas it may ever have.
    pub max_replica: u32,
    /// What each replica needs.
    pub requirements: Requirements,
}

/// A node that can run replicas, with its total capacity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Worker {
    /// The worker's id.
    pub id: String,
    /// The region it runs in.
    pub region: String,
    /// The type of its GPUs, if it has any.
    pub gpu_type: Option<String>,
    /// Its GPUs in total.
    pub gpus: u32,
    /// Its CPU in total, in thousandths of a core.
    pub cpu_millis: u32,
    /// Its memory in total, in bytes.
    pub memory_bytes: u64,
    /// Whether its node lease is valid; replicas on a worker that is not live are lost.
    pub live: bool,
    /// Whether new replicas may be placed on it (false when cordoned).
    pub schedulable: bool,
    /// Container images already on its disk.
    pub cached_images: BTreeSet<String>,
    /// Model weights already on its disk.
    pub cached_weights: BTreeSet<String>,
}

/// Where a replica is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Placed; the worker has not started on it yet.
    Pending,
    /// Pulling the image or weights.
    Fetching,
    /// Starting the container.
    Starting,
    /// Loading weights into memory.
    Loading,
    /// Serving traffic.
    Ready,
    /// Finishing in-flight requests before stopping.
    Draining,
    /// Stopped cleanly (terminal).
    Stopped,
    /// Crashed or failed to start (terminal).
    Failed,
    /// Its worker lost its lease (terminal).
    Lost,
}

impl Phase {
    /// Whether the replica is gone for good: Stopped, Failed or Lost.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Stopped | Self::Failed | Self::Lost)
    }

    /// Whether the replica is serving traffic (Ready).
    #[must_use]
    pub fn is_serving(self) -> bool {
        self == Self::Ready
    }
}

/// One replica as last observed, with the capacity it holds on its worker.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplicaState {
    /// The replica's id.
    pub id: String,
    /// The deployment it belongs to.
    pub deployment: String,
    /// The worker it runs on.
    pub worker: String,
    /// Where it is in its life.
    pub phase: Phase,
    /// Whether it has been asked to stop (it then no longer counts, but holds capacity).
    pub stop_requested: bool,
    /// GPUs it holds.
    pub gpus: u32,
    /// CPU it holds, in thousandths of a core.
    pub cpu_millis: u32,
    /// Memory it holds, in bytes.
    pub memory_bytes: u64,
}

/// One step for the runtime to carry out.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Command {
    /// Create a new replica of `deployment` on `worker` (the caller assigns its id).
    Place {
        /// The deployment to add a replica to.
        deployment: String,
        /// The worker to run it on.
        worker: String,
        /// GPUs it takes on that worker.
        gpus: u32,
    },
    /// Ask the replica's worker to drain and stop it.
    Stop {
        /// The replica to stop.
        replica: String,
        /// Why it is stopped.
        reason: StopReason,
    },
    /// The replica's worker lost its lease: record the replica as lost.
    MarkLost {
        /// The replica to record as lost.
        replica: String,
    },
}

/// Why a replica is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StopReason {
    /// The deployment wants fewer replicas.
    ScaleDown,
    /// The deployment has more replicas than its `max_replica` allows.
    OverMax,
    /// The deployment no longer exists.
    DeploymentGone,
}

/// Replicas of a deployment that fit on no worker, and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Unplaceable {
    /// The deployment short of replicas.
    pub deployment: String,
    /// How many replicas could not be placed.
    pub missing: u32,
    /// The most specific reason, naming the numbers, for the user to act on.
    pub reason: String,
}

/// The scheduler's output: commands in the order to carry them out, and shortfalls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Plan {
    /// Commands, ordered as described in the module docs.
    pub commands: Vec<Command>,
    /// Deployments (in id order) that could not get all their replicas.
    pub unplaceable: Vec<Unplaceable>,
}

/// Turns desired versus observed replicas into a plan; see the module docs for the rules.
#[must_use]
pub fn plan(
    deployments: &[DeploymentState],
    workers: &[Worker],
    replicas: &[ReplicaState],
) -> Plan {
    let mut slots: BTreeMap<&str, Slot<'_>> = BTreeMap::new();
    for worker in workers {
        slots.entry(worker.id.as_str()).or_insert(Slot {
            worker,
            used: Usage::default(),
        });
    }
    let mut wanted: BTreeMap<&str, &DeploymentState> = BTreeMap::new();
    for deployment in deployments {
        wanted.entry(deployment.id.as_str()).or_insert(deployment);
    }
    let mut live_replicas: BTreeMap<&str, &ReplicaState> = BTreeMap::new();
    for replica in replicas.iter().filter(|r| !r.phase.is_terminal()) {
        live_replicas.entry(replica.id.as_str()).or_insert(replica);
    }

    let mut out = Plan::default();
    let mut active: BTreeMap<&str, Vec<&ReplicaState>> = BTreeMap::new();
    for replica in live_replicas.into_values() {
        match slots.get_mut(replica.worker.as_str()) {
            Some(slot) if slot.worker.live => {
                slot.used
                    .add(replica.gpus, replica.cpu_millis, replica.memory_bytes);
                if !replica.stop_requested {
                    active.entry(&replica.deployment).or_default().push(replica);
                }
            }
            _ => out.commands.push(Command::MarkLost {
                replica: replica.id.clone(),
            }),
        }
    }

    let ids: BTreeSet<&str> = wanted.keys().chain(active.keys()).copied().collect();
    for id in ids {
        let current = active.remove(id).unwrap_or_default();
        match wanted.get(id) {
            None => out.commands.extend(current.iter().map(|r| Command::Stop {
                replica: r.id.clone(),
                reason: StopReason::DeploymentGone,
            })),
            Some(deployment) => reconcile(deployment, current, &mut slots, &mut out),
        }
    }
    out
}

/// GPUs, CPU and memory held on one worker.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    gpus: u32,
    cpu_millis: u32,
    memory_bytes: u64,
}

impl Usage {
    fn add(&mut self, gpus: u32, cpu_millis: u32, memory_bytes: u64) {
        self.gpus = self.gpus.saturating_add(gpus);
        self.cpu_millis = self.cpu_millis.saturating_add(cpu_millis);
        self.memory_bytes = self.memory_bytes.saturating_add(memory_bytes);
    }
}

/// A worker and the capacity used on it so far in this plan.
#[derive(Debug, Clone, Copy)]
struct Slot<'a> {
    worker: &'a Worker,
    used: Usage,
}

impl Slot<'_> {
    fn free_gpus(&self) -> u32 {
        self.worker.gpus.saturating_sub(self.used.gpus)
    }

    fn free_cpu(&self) -> u32 {
        self.worker.cpu_millis.saturating_sub(self.used.cpu_millis)
    }

    fn free_memory(&self) -> u64 {
        self.worker
            .memory_bytes
            .saturating_sub(self.used.memory_bytes)
    }

    fn is_up(&self) -> bool {
        self.worker.live && self.worker.schedulable
    }

    fn in_region(&self, req: &Requirements) -> bool {
        req.region.as_ref().is_none_or(|r| *r == self.worker.region)
    }

    /// Has GPUs of the required type (only asked when `gpu_count > 0`).
    fn has_gpu_type(&self, req: &Requirements) -> bool {
        self.worker.gpus > 0
            && req
                .gpu_type
                .as_ref()
                .is_none_or(|t| self.worker.gpu_type.as_ref() == Some(t))
    }

    fn fits(&self, req: &Requirements) -> bool {
        self.is_up()
            && self.in_region(req)
            && (req.gpu_count == 0 || (self.has_gpu_type(req) && self.free_gpus() >= req.gpu_count))
            && self.free_cpu() >= req.cpu_millis
            && self.free_memory() >= req.memory_bytes
    }

    fn warmth(&self, req: &Requirements) -> u8 {
        let image = self.worker.cached_images.contains(&req.image);
        let weights = req
            .weights
            .iter()
            .all(|w| self.worker.cached_weights.contains(w));
        u8::from(image) + u8::from(weights)
    }
}

/// Stops the excess or places the shortfall of one existing deployment.
fn reconcile<'a>(
    deployment: &DeploymentState,
    current: Vec<&'a ReplicaState>,
    slots: &mut BTreeMap<&'a str, Slot<'_>>,
    out: &mut Plan,
) {
    let target = deployment.desired.min(deployment.max_replica);
    let active = u32::try_from(current.len()).unwrap_or(u32::MAX);
    let mut per_worker: BTreeMap<&str, u32> = BTreeMap::new();
    for replica in &current {
        *per_worker.entry(replica.worker.as_str()).or_default() += 1;
    }
    if active > target {
        let reason = if deployment.desired > deployment.max_replica {
            StopReason::OverMax
        } else {
            StopReason::ScaleDown
        };
        scale_down(current, active - target, reason, &mut per_worker, out);
    } else if active < target {
        place(deployment, target - active, slots, &mut per_worker, out);
    }
}

/// Stops `excess` replicas, the least valuable first (rule 3).
fn scale_down(
    mut current: Vec<&ReplicaState>,
    excess: u32,
    reason: StopReason,
    per_worker: &mut BTreeMap<&str, u32>,
    out: &mut Plan,
) {
    for _ in 0..excess {
        let pick = current
            .iter()
            .enumerate()
            .min_by_key(|(_, r)| {
                let crowding = per_worker.get(r.worker.as_str()).copied().unwrap_or(0);
                (
                    r.phase.is_serving(),
                    Reverse(crowding),
                    Reverse(r.id.as_str()),
                )
            })
            .map(|(i, _)| i);
        let Some(i) = pick else { break };
        let replica = current.swap_remove(i);
        if let Some(n) = per_worker.get_mut(replica.worker.as_str()) {
            *n = n.saturating_sub(1);
        }
        out.commands.push(Command::Stop {
            replica: replica.id.clone(),
            reason,
        });
    }
}

/// Places `missing` replicas one at a time on the best worker (rules 5–7).
fn place<'a>(
    deployment: &DeploymentState,
    missing: u32,
    slots: &mut BTreeMap<&'a str, Slot<'_>>,
    per_worker: &mut BTreeMap<&'a str, u32>,
    out: &mut Plan,
) {
    let req = &deployment.requirements;
    for placed in 0..missing {
        let best = slots
            .iter()
            .filter(|(_, slot)| slot.fits(req))
            .min_by_key(|&(&id, slot)| {
                (
                    per_worker.get(id).copied().unwrap_or(0),
                    Reverse(slot.warmth(req)),
                    slot.free_gpus().saturating_sub(req.gpu_count),
                    Reverse(slot.free_cpu().saturating_sub(req.cpu_millis)),
                    id,
                )
            })
            .map(|(&id, _)| id);
        let Some(id) = best else {
            out.unplaceable.push(Unplaceable {
                deployment: deployment.id.clone(),
                missing: missing - placed,
                reason: diagnose(req, slots),
            });
            return;
        };
        if let Some(slot) = slots.get_mut(id) {
            slot.used
                .add(req.gpu_count, req.cpu_millis, req.memory_bytes);
        }
        *per_worker.entry(id).or_default() += 1;
        out.commands.push(Command::Place {
            deployment: deployment.id.clone(),
            worker: id.to_owned(),
            gpus: req.gpu_count,
        });
    }
}

/// The most specific reason no worker fits `req` (rule 7).
fn diagnose(req: &Requirements, slots: &BTreeMap<&str, Slot<'_>>) -> String {
    let region = req
        .region
        .as_ref()
        .map(|r| format!(" in region {r}"))
        .unwrap_or_default();
    let mut matching: Vec<&Slot<'_>> = slots
        .values()
        .filter(|s| s.is_up() && s.in_region(req))
        .collect();
    if matching.is_empty() {
        return format!("no live, schedulable worker{region}");
    }
    if req.gpu_count > 0 {
        let need = req.gpu_count;
        let label = req.gpu_type.as_deref().unwrap_or("GPU");
        matching.retain(|s| s.has_gpu_type(req));
        if matching.is_empty() {
            return match &req.gpu_type {
                Some(t) => format!("no live, schedulable worker{region} has GPU type {t}"),
                None => format!("no live, schedulable worker{region} has GPUs"),
            };
        }
        let largest = matching.iter().map(|s| s.worker.gpus).max().unwrap_or(0);
        if largest < need {
            return format!(
                "needs {need} × {label} on one worker; the largest matching worker has {largest}"
            );
        }
        let most_free = matching.iter().map(|s| s.free_gpus()).max().unwrap_or(0);
        if most_free < need {
            return format!(
                "needs {need} × {label} on one worker; the most free on any matching worker is {most_free}"
            );
        }
        matching.retain(|s| s.free_gpus() >= need);
    }
    let cpu = matching.iter().map(|s| s.free_cpu()).max().unwrap_or(0);
    let memory = matching.iter().map(|s| s.free_memory()).max().unwrap_or(0);
    format!(
        "not enough CPU or memory free on any matching worker: needs {}m CPU and {} memory \
         on one worker; the most free CPU on any is {cpu}m and the most free memory {}",
        req.cpu_millis,
        bytes(req.memory_bytes),
        bytes(memory),
    )
}

/// Bytes for people: whole GiB or MiB when exact, else plain bytes.
fn bytes(n: u64) -> String {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    match n {
        0 => "0 bytes".to_owned(),
        n if n % GIB == 0 => format!("{} GiB", n / GIB),
        n if n % MIB == 0 => format!("{} MiB", n / MIB),
        n => format!("{n} bytes"),
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
