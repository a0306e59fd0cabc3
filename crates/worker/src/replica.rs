//! The replica actor: one per replica placed on this worker, driving it
//! through `Pending → Fetching → Starting → Loading → Ready → Draining →
//! Stopped`, or `Failed` with a reason.
//!
//! Each phase is its own step, timed (`tidal_worker_phase_duration_seconds`)
//! and written to the replica's record with its timestamp:
//!
//! 1. **Fetching** — read the deployment's runtime spec, take the replica's
//!    GPUs, pin and fetch its weight files into the node cache (verified by
//!    size and sha256), and link them by name into the replica's model
//!    directory. Runs as a task, so a stop can cancel it.
//! 2. **Starting** — spawn the process (`PORT`, `TIDAL_MODEL_DIR`,
//!    `TIDAL_REPLICA_ID`, `TIDAL_WORKER_ID`, `CUDA_VISIBLE_DEVICES` set).
//! 3. **Loading** — the process runs; wait for its health endpoint to answer
//!    200 (at most the ready timeout).
//! 4. **Ready** — serving at `endpoint`; a crash now fails the replica with its
//!    exit status and last output lines.
//! 5. **Draining** — asked to stop: wait for the replica's established
//!    connections to close (up to the grace period), SIGTERM, wait up to the
//!    grace period, SIGKILL.
//!
//! The process itself is owned by a supervising task that reports back to
//! the actor; if the actor dies, the task sees its stop channel close and
//! stops the process, so a replica process never outlives its actor.
//!
//! **Architecture Invariant:** the actor never decides whether a replica
//! should exist; it carries out the record (placed → start, stop requested
//! or lost → stop) and reports truthfully what happened.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tidal_proto::pb;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::cache::WeightCache;
use crate::conns::watch_port;
use crate::gpu::Allocator;
use crate::metrics::Metrics;
use crate::orphans::WORKER_ENV;
use crate::process::{self, ExitReport, ProcessError, ProcessSpec, StopReport};
use crate::records::{Records, Updated, enter, now_ms};
use crate::spec::RuntimeSpec;

/// The longest reason written to a record (its tail is kept).
const MAX_REASON_BYTES: usize = 8 * 1024;

/// What every replica actor of a worker shares.
#[derive(Debug)]
pub struct Context {
    /// This worker's node id.
    pub worker_id: String,
    /// The host replicas are reached at (their endpoints are `host:port`).
    pub host: String,
    /// Store access.
    pub records: Records,
    /// The node's weight cache.
    pub cache: WeightCache,
    /// The node's GPUs.
    pub gpus: Mutex<Allocator>,
    /// The worker's metrics.
    pub metrics: Metrics,
    /// Where replica logs go (`<id>.log`).
    pub log_dir: PathBuf,
    /// Where replica model directories go (`<id>/`).
    pub run_dir: PathBuf,
    /// Ready timeout when the deployment names none.
    pub ready_timeout: Duration,
    /// Stop grace when the deployment names none.
    pub stop_grace: Duration,
}

/// Starts a replica actor for the placed `record`; `done` receives its id
/// when it ends.
pub async fn spawn(
    ctx: Arc<Context>,
    record: pb::Replica,
    done: mpsc::UnboundedSender<String>,
) -> Result<ActorRef<ReplicaMsg>, ActorProcessingErr> {
    let (actor, _) = Actor::spawn(None, ReplicaActor, ReplicaArgs { ctx, record, done })
        .await
        .map_err(|e| format!("spawning a replica actor: {e}"))?;
    Ok(actor)
}

/// The replica actor.
#[derive(Debug)]
pub struct ReplicaActor;

/// What a replica actor starts from.
#[derive(Debug)]
pub struct ReplicaArgs {
    ctx: Arc<Context>,
    record: pb::Replica,
    done: mpsc::UnboundedSender<String>,
}

/// A failure, with how the process ended if it ran.
#[derive(Debug)]
pub struct Failure {
    reason: String,
    exit: Option<ExitReport>,
}

/// Messages to a replica actor.
#[derive(Debug)]
pub enum ReplicaMsg {
    /// Start the replica (sent to itself once).
    Begin,
    /// Drain and stop it, for this reason.
    Stop(String),
    /// The weights are in place (the model directory), or why not.
    Fetched(Result<PathBuf, String>),
    /// The health endpoint answered 200, or the replica failed to get there.
    Loaded(Result<(), Failure>),
    /// The process exited on its own.
    Exited(ExitReport),
    /// The process was stopped.
    Stopped(StopReport),
}

/// A replica actor's state.
#[derive(Debug)]
pub struct ReplicaState {
    ctx: Arc<Context>,
    id: String,
    deployment: String,
    done: mpsc::UnboundedSender<String>,
    phase: pb::ReplicaPhase,
    entered: Instant,
    spec: Option<RuntimeSpec>,
    pinned: Vec<String>,
    fetch: Option<JoinHandle<()>>,
    stop: Option<watch::Sender<bool>>,
    stopping: Option<String>,
    port: u16,
    finished: bool,
}

impl Actor for ReplicaActor {
    type Msg = ReplicaMsg;
    type State = ReplicaState;
    type Arguments = ReplicaArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ReplicaArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.ctx.metrics.replica_started();
        myself.cast(ReplicaMsg::Begin)?;
        Ok(ReplicaState {
            id: args.record.id,
            deployment: args.record.deployment_id,
            ctx: args.ctx,
            done: args.done,
            phase: pb::ReplicaPhase::Pending,
            entered: Instant::now(),
            spec: None,
            pinned: Vec::new(),
            fetch: None,
            stop: None,
            stopping: None,
            port: 0,
            finished: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.finished {
            return Ok(());
        }
        match message {
            ReplicaMsg::Begin => begin(&myself, state).await,
            ReplicaMsg::Stop(reason) => stop(&myself, state, reason).await,
            ReplicaMsg::Fetched(Ok(dir)) => start(&myself, state, dir).await,
            ReplicaMsg::Fetched(Err(reason)) => {
                finish(&myself, state, pb::ReplicaPhase::Failed, reason, None).await;
            }
            ReplicaMsg::Loaded(Ok(())) => {
                if state.stopping.is_none() {
                    let endpoint = format!("{}:{}", state.ctx.host, state.port);
                    tracing::info!(replica = %state.id, %endpoint, "replica ready");
                    transition(&myself, state, pb::ReplicaPhase::Ready, |r| {
                        r.endpoint.clone_from(&endpoint);
                    })
                    .await;
                }
            }
            ReplicaMsg::Loaded(Err(failure)) => {
                finish(
                    &myself,
                    state,
                    pb::ReplicaPhase::Failed,
                    failure.reason,
                    failure.exit,
                )
                .await;
            }
            ReplicaMsg::Exited(exit) => {
                if let Some(reason) = state.stopping.clone() {
                    finish(
                        &myself,
                        state,
                        pb::ReplicaPhase::Stopped,
                        reason,
                        Some(exit),
                    )
                    .await;
                } else {
                    let reason = format!(
                        "replica exited while serving ({}); last output:\n{}",
                        describe(&exit),
                        exit.last_lines.join("\n")
                    );
                    finish(&myself, state, pb::ReplicaPhase::Failed, reason, Some(exit)).await;
                }
            }
            ReplicaMsg::Stopped(report) => {
                let reason = state.stopping.clone().unwrap_or_default();
                let how = match report.stopped_by {
                    process::StoppedBy::AlreadyExited => "it had already exited",
                    process::StoppedBy::Term => "it exited after SIGTERM",
                    process::StoppedBy::Kill => {
                        "it ignored SIGTERM for the grace period and was killed with SIGKILL"
                    }
                };
                let reason = if reason.is_empty() {
                    how.to_owned()
                } else {
                    format!("{reason}; {how}")
                };
                finish(
                    &myself,
                    state,
                    pb::ReplicaPhase::Stopped,
                    reason,
                    Some(report.exit),
                )
                .await;
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        release(state);
        state.ctx.metrics.replica_ended(state.phase);
        let _ = state.done.send(state.id.clone());
        Ok(())
    }
}

fn describe(exit: &ExitReport) -> String {
    match (exit.status, exit.signal) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "exit status unknown".to_owned(),
    }
}

/// Writes `to` (plus `extra`) to the record and times the phase left.
/// Returns `false` when the record refused it (gone or terminal): the
/// replica must stop.
async fn transition(
    myself: &ActorRef<ReplicaMsg>,
    state: &mut ReplicaState,
    to: pb::ReplicaPhase,
    extra: impl Fn(&mut pb::Replica),
) -> bool {
    let at = now_ms();
    let written = state
        .ctx
        .records
        .update(&state.id, |r| {
            enter(r, to, at);
            extra(r);
            true
        })
        .await;
    state
        .ctx
        .metrics
        .transition(state.phase, state.entered.elapsed(), to);
    tracing::debug!(replica = %state.id, from = ?state.phase, ?to, "phase");
    state.phase = to;
    state.entered = Instant::now();
    let refused = match written {
        Ok(Updated::Applied(_)) => None,
        Ok(Updated::Gone) => Some("its record was deleted".to_owned()),
        Ok(Updated::Refused(r)) => Some(format!(
            "its record is {} ({})",
            crate::metrics::phase_name(crate::records::phase_of(&r)),
            r.reason
        )),
        Err(e) => {
            tracing::warn!(replica = %state.id, error = %e, ?to, "cannot record the phase");
            None
        }
    };
    match refused {
        Some(why) if !crate::records::is_terminal(to) => {
            tracing::warn!(replica = %state.id, %why, "stopping the replica");
            let _ = myself.cast(ReplicaMsg::Stop(why));
            false
        }
        Some(_) => false,
        None => true,
    }
}

async fn begin(myself: &ActorRef<ReplicaMsg>, state: &mut ReplicaState) {
    let ctx = Arc::clone(&state.ctx);
    let record = match ctx.records.deployment(&state.deployment).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            let reason = format!("deployment {} does not exist", state.deployment);
            return finish(myself, state, pb::ReplicaPhase::Failed, reason, None).await;
        }
        Err(e) => {
            let reason = format!("cannot read deployment {}: {e}", state.deployment);
            return finish(myself, state, pb::ReplicaPhase::Failed, reason, None).await;
        }
    };
    let spec = match RuntimeSpec::from_record(&state.deployment, &record) {
        Ok(spec) => spec,
        Err(e) => {
            return finish(myself, state, pb::ReplicaPhase::Failed, e.to_string(), None).await;
        }
    };
    let gpus = ctx
        .gpus
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .allocate(&state.id, spec.gpu_count);
    let gpus = match gpus {
        Ok(gpus) => gpus,
        Err(e) => {
            let reason = format!("cannot give the replica {} GPU(s): {e}", spec.gpu_count);
            return finish(myself, state, pb::ReplicaPhase::Failed, reason, None).await;
        }
    };
    for weight in &spec.weights {
        if let Err(e) = ctx.cache.pin(&weight.spec.sha256) {
            let reason = format!("weight file {}: {e}", weight.name);
            return finish(myself, state, pb::ReplicaPhase::Failed, reason, None).await;
        }
        state.pinned.push(weight.spec.sha256.clone());
    }
    state.spec = Some(spec.clone());
    if !transition(myself, state, pb::ReplicaPhase::Fetching, |r| {
        r.gpu_indices.clone_from(&gpus);
    })
    .await
    {
        return;
    }
    let dir = ctx.run_dir.join(&state.id);
    let me = myself.clone();
    state.fetch = Some(tokio::spawn(async move {
        let result = fetch(&ctx.cache, &spec, &dir).await.map(|()| dir);
        let _ = me.cast(ReplicaMsg::Fetched(result));
    }));
}

/// Fetches every weight file and links it by name into `dir`.
async fn fetch(
    cache: &WeightCache,
    spec: &RuntimeSpec,
    dir: &std::path::Path,
) -> Result<(), String> {
    let _ = tokio::fs::remove_dir_all(dir).await;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("cannot create the model directory {}: {e}", dir.display()))?;
    for weight in &spec.weights {
        let path = cache.fetch(&weight.spec).await.map_err(|e| e.to_string())?;
        let link = dir.join(&weight.name);
        tokio::fs::symlink(&path, &link)
            .await
            .map_err(|e| format!("cannot link {} into {}: {e}", weight.name, dir.display()))?;
    }
    Ok(())
}

/// A free TCP port on this machine (the replica binds it next).
fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("0.0.0.0", 0))?;
    Ok(listener.local_addr()?.port())
}

async fn start(myself: &ActorRef<ReplicaMsg>, state: &mut ReplicaState, model_dir: PathBuf) {
    state.fetch = None;
    if let Some(reason) = state.stopping.clone() {
        return finish(myself, state, pb::ReplicaPhase::Stopped, reason, None).await;
    }
    let Some(spec) = state.spec.clone() else {
        return;
    };
    if !transition(myself, state, pb::ReplicaPhase::Starting, |_| {}).await {
        return;
    }
    let port = match free_port() {
        Ok(port) => port,
        Err(e) => {
            let reason = format!("no free port for the replica: {e}");
            return finish(myself, state, pb::ReplicaPhase::Failed, reason, None).await;
        }
    };
    state.port = port;
    let gpus = state
        .ctx
        .gpus
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .held_by(&state.id)
        .map(<[u32]>::to_vec)
        .unwrap_or_default();
    let mut env = spec.env.clone();
    env.insert(WORKER_ENV.to_owned(), state.ctx.worker_id.clone());
    let process_spec = ProcessSpec {
        command: spec.command.clone(),
        args: spec.args.clone(),
        env,
        port,
        model_dir,
        replica_id: state.id.clone(),
        gpus,
        log_dir: state.ctx.log_dir.clone(),
        health_path: spec.health_path.clone(),
    };
    let replica = match process::start(process_spec).await {
        Ok(replica) => replica,
        Err(e) => {
            return finish(myself, state, pb::ReplicaPhase::Failed, e.to_string(), None).await;
        }
    };
    let pid = replica.pid().unwrap_or(0);
    let (stop_tx, stop_rx) = watch::channel(false);
    state.stop = Some(stop_tx);
    let ready_timeout = spec.ready_timeout.unwrap_or(state.ctx.ready_timeout);
    let grace = spec.stop_grace.unwrap_or(state.ctx.stop_grace);
    tokio::spawn(supervise(
        replica,
        myself.clone(),
        stop_rx,
        ready_timeout,
        grace,
        port,
    ));
    transition(myself, state, pb::ReplicaPhase::Loading, |r| r.pid = pid).await;
}

/// Resolves when a stop is asked for, or when the actor is gone.
async fn stop_asked(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Owns the replica's process: waits for it to be ready, then for it to
/// exit or to be stopped, and reports each to the actor.
async fn supervise(
    mut replica: process::Replica,
    actor: ActorRef<ReplicaMsg>,
    mut stop: watch::Receiver<bool>,
    ready_timeout: Duration,
    grace: Duration,
    port: u16,
) {
    let ready = tokio::select! {
        ready = replica.wait_ready(ready_timeout) => ready,
        () = stop_asked(&mut stop) => {
            let report = replica.stop(Some(watch_port(port)), grace, grace).await;
            let _ = actor.cast(ReplicaMsg::Stopped(report));
            return;
        }
    };
    if let Err(e) = ready {
        let exit = match &e {
            ProcessError::Exited {
                status,
                signal,
                last_lines,
            } => Some(ExitReport {
                status: *status,
                signal: *signal,
                last_lines: last_lines.clone(),
            }),
            _ => Some(replica.stop(None, Duration::ZERO, grace).await.exit),
        };
        let failure = Failure {
            reason: e.to_string(),
            exit,
        };
        let _ = actor.cast(ReplicaMsg::Loaded(Err(failure)));
        return;
    }
    let _ = actor.cast(ReplicaMsg::Loaded(Ok(())));
    tokio::select! {
        exit = replica.wait_exit() => {
            let _ = actor.cast(ReplicaMsg::Exited(exit));
        }
        () = stop_asked(&mut stop) => {
            let report = replica.stop(Some(watch_port(port)), grace, grace).await;
            let _ = actor.cast(ReplicaMsg::Stopped(report));
        }
    }
}

async fn stop(myself: &ActorRef<ReplicaMsg>, state: &mut ReplicaState, reason: String) {
    if state.stopping.is_some() {
        return;
    }
    tracing::info!(replica = %state.id, %reason, "stopping replica");
    state.stopping = Some(reason.clone());
    match state.phase {
        pb::ReplicaPhase::Pending | pb::ReplicaPhase::Fetching => {
            if let Some(fetch) = state.fetch.take() {
                fetch.abort();
            }
            finish(myself, state, pb::ReplicaPhase::Stopped, reason, None).await;
        }
        pb::ReplicaPhase::Starting | pb::ReplicaPhase::Loading | pb::ReplicaPhase::Ready => {
            transition(myself, state, pb::ReplicaPhase::Draining, |r| {
                r.endpoint.clear();
            })
            .await;
            if let Some(stop) = &state.stop {
                let _ = stop.send(true);
            }
        }
        _ => {}
    }
}

/// Keeps the tail of `reason` within [`MAX_REASON_BYTES`].
fn bounded(reason: String) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason;
    }
    let mut cut = reason.len() - MAX_REASON_BYTES;
    while !reason.is_char_boundary(cut) {
        cut += 1;
    }
    format!("…{}", &reason[cut..])
}

/// Writes the terminal phase, frees what the replica held and stops the actor.
async fn finish(
    myself: &ActorRef<ReplicaMsg>,
    state: &mut ReplicaState,
    to: pb::ReplicaPhase,
    reason: String,
    exit: Option<ExitReport>,
) {
    let reason = bounded(reason);
    if to == pb::ReplicaPhase::Failed {
        tracing::warn!(replica = %state.id, %reason, "replica failed");
    } else {
        tracing::info!(replica = %state.id, %reason, "replica stopped");
    }
    let (code, signal) = exit.as_ref().map_or((None, None), |e| (e.status, e.signal));
    transition(myself, state, to, |r| {
        r.reason.clone_from(&reason);
        r.exit_code = code;
        r.exit_signal = signal;
        r.pid = 0;
        r.endpoint.clear();
    })
    .await;
    state.finished = true;
    release(state);
    myself.stop(None);
}

/// Frees the replica's GPUs, weight pins and model directory (once).
fn release(state: &mut ReplicaState) {
    if let Some(fetch) = state.fetch.take() {
        fetch.abort();
    }
    state
        .ctx
        .gpus
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .release(&state.id);
    for digest in state.pinned.drain(..) {
        state.ctx.cache.unpin(&digest);
    }
    let _ = std::fs::remove_dir_all(state.ctx.run_dir.join(&state.id));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reasons_keep_their_tail() {
        assert_eq!(bounded("short".into()), "short");
        let long = format!("{}END", "é".repeat(MAX_REASON_BYTES));
        let cut = bounded(long);
        assert!(cut.len() <= MAX_REASON_BYTES + '…'.len_utf8());
        assert!(cut.starts_with('…') && cut.ends_with("END"));
    }
}
