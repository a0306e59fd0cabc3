//! `DeploymentActor`: one per deployment in the controller's shards.
//!
//! It keeps the deployment's metric window through `tidal-autoscale`, ticks
//! every second, owns the scale-down timers (the policy's recommendation
//! history), and writes the desired replica count to the store fenced with
//! its shard's epoch. A wake poke decides while the message is handled, not
//! at the next tick.
//!
//! It starts as a takeover (DESIGN.md §3 rule 6): it holds at least the
//! replicas the store says until it has observed a full window, so a
//! restart or failover never scales a deployment down.
//!
//! Time: a gateway reports second `t` once it is over, so the actor decides
//! for the last complete second (`clock − 1`); deciding for the current one
//! would count it as zero before its reports arrive.
//!
//! Reporting gaps: a second with no report counts as zero load, which is
//! right for an idle deployment but wrong when reports stop arriving (the
//! controller was paused, a gateway lost its stream). While no report has
//! arrived for [`REPORT_GAP_SECS`] or more, and for less than a window, the
//! actor does not scale down; scale-ups go ahead.
//!
//! A store that is unavailable is retried at the next tick; a stale epoch
//! stops the actor with [`STALE_EPOCH`] as its reason (its shard is lost);
//! a deployment that is gone stops it with [`GONE`].

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tidal_autoscale::{Autoscaler, Concurrency, Decision, Policy};
use tidal_store::app::Fence;
use tidal_types::{AutoscalingSettings, ClusterSettings};
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::port::{Clock, SharedStore, WriteResult};

/// The stop reason of an actor whose shard epoch went stale.
pub const STALE_EPOCH: &str = "stale-epoch";
/// The stop reason of an actor whose deployment was deleted.
pub const GONE: &str = "deployment-gone";
/// How often an actor decides.
pub const TICK: Duration = Duration::from_secs(1);
/// Seconds without any report after which scale-downs are held (see the
/// module docs).
pub const REPORT_GAP_SECS: u64 = 3;

/// Messages a deployment actor handles.
#[derive(Debug)]
pub enum DeploymentMsg {
    /// A gateway's sample: average concurrency (queued requests included)
    /// over `second`.
    Report {
        /// The second the sample covers (Unix seconds).
        second: u64,
        /// Its time-weighted average concurrency.
        concurrency: Concurrency,
    },
    /// Decide now (sent every [`TICK`]).
    Tick,
    /// Requests wait for this deployment: scale up at once if needed. Replies
    /// with the desired replicas after the decision.
    Wake {
        /// Requests waiting (at least 1 is assumed).
        pending: u32,
        /// Where to send the desired replicas, if anyone waits.
        reply: Option<RpcReplyPort<u32>>,
    },
    /// The deployment's settings changed in the store.
    Settings(AutoscalingSettings),
    /// Asks for the desired replicas last written (for status and tests).
    Desired(RpcReplyPort<u32>),
}

/// What a deployment actor starts from.
#[derive(Clone)]
pub struct DeploymentArgs {
    /// The deployment's id.
    pub deployment: String,
    /// Its shard's lease: writes carry it.
    pub fence: Fence,
    /// The store.
    pub store: SharedStore,
    /// The controller's clock.
    pub clock: Clock,
    /// The cluster's limits (for validating settings).
    pub cluster: ClusterSettings,
    /// Where decisions are counted.
    pub metrics: Metrics,
    /// Whether the actor runs its own 1 s ticker (tests may drive ticks).
    pub ticker: bool,
}

impl std::fmt::Debug for DeploymentArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentArgs")
            .field("deployment", &self.deployment)
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

/// The actor's state.
pub struct DeploymentState {
    args: DeploymentArgs,
    autoscaler: Autoscaler,
    /// The desired replicas the store holds (as far as this actor knows).
    /// A decision that differs is written; one that failed is retried by the
    /// next tick's decision.
    written: u32,
    /// The clock second at which the last report arrived (or the actor started).
    last_report: u64,
}

impl std::fmt::Debug for DeploymentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentState")
            .field("deployment", &self.args.deployment)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

/// One deployment's decider.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeploymentActor;

fn policy(settings: AutoscalingSettings, cluster: &ClusterSettings) -> Policy {
    Policy::new(settings, cluster).unwrap_or_else(|invalid| {
        // Settings in the store were validated when written; a cluster limit
        // lowered since is honoured by clamping max_replica.
        tracing::warn!(%invalid, "stored settings no longer valid; clamping max_replica");
        let mut clamped = settings;
        clamped.max_replica = clamped
            .max_replica
            .min(cluster.per_deployment_replica_limit)
            .max(1);
        clamped.min_replica = clamped.min_replica.min(clamped.max_replica);
        Policy::new(clamped, cluster).unwrap_or_else(|_| {
            Policy::new(AutoscalingSettings::default(), cluster)
                .expect("the default settings are valid")
        })
    })
}

impl Actor for DeploymentActor {
    type Msg = DeploymentMsg;
    type State = DeploymentState;
    type Arguments = DeploymentArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: DeploymentArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Rebuilt from the store every time: a restarted actor has no memory.
        let loaded = args
            .store
            .load(&args.deployment)
            .await
            .map_err(|e| format!("loading {}: {e}", args.deployment))?;
        let Some(loaded) = loaded else {
            myself.stop(Some(GONE.to_owned()));
            return Ok(DeploymentState {
                autoscaler: Autoscaler::new(policy(AutoscalingSettings::default(), &args.cluster)),
                args,
                written: 0,
                last_report: 0,
            });
        };
        let now = (args.clock)();
        // The gap clock starts now; the policy's time is the last complete second.
        let last_report = now;
        let autoscaler = Autoscaler::take_over(
            policy(loaded.settings, &args.cluster),
            loaded.desired,
            now.saturating_sub(1),
        );
        if args.ticker {
            myself.send_interval(TICK, || DeploymentMsg::Tick);
        }
        args.metrics.set_desired(&args.deployment, loaded.desired);
        Ok(DeploymentState {
            args,
            autoscaler,
            written: loaded.desired,
            last_report,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            DeploymentMsg::Report {
                second,
                concurrency,
            } => {
                state.autoscaler.record(second, concurrency);
                let now = (state.args.clock)();
                state.last_report = now;
                state.args.metrics.report_received(second, now);
            }
            DeploymentMsg::Tick => {
                let now = (state.args.clock)();
                let decision = state.autoscaler.decide(now.saturating_sub(1));
                let gap = now.saturating_sub(state.last_report);
                let window = u64::from(state.autoscaler.policy().settings().autoscaling_window);
                if decision.desired < state.written && (REPORT_GAP_SECS..window).contains(&gap) {
                    tracing::debug!(
                        deployment = %state.args.deployment,
                        gap,
                        "no reports for {gap} s: holding {} replicas",
                        state.written
                    );
                    return Ok(());
                }
                carry_out(&myself, state, decision).await;
            }
            DeploymentMsg::Wake { pending, reply } => {
                let now = (state.args.clock)().saturating_sub(1);
                let decision = state.autoscaler.wake(now, pending);
                carry_out(&myself, state, decision).await;
                if let Some(reply) = reply {
                    let _ = reply.send(state.written);
                }
            }
            DeploymentMsg::Settings(settings) => {
                state
                    .autoscaler
                    .set_policy(policy(settings, &state.args.cluster));
            }
            DeploymentMsg::Desired(reply) => {
                let _ = reply.send(state.written);
            }
        }
        Ok(())
    }
}

/// Writes `decision` if it changes what the store holds.
async fn carry_out(
    myself: &ActorRef<DeploymentMsg>,
    state: &mut DeploymentState,
    decision: Decision,
) {
    if decision.desired == state.written {
        return;
    }
    let reason = format!("{:?}", decision.reason);
    let span = tracing::info_span!(
        "scale",
        deployment = %state.args.deployment,
        from = state.written,
        to = decision.desired,
        reason = %reason,
        average = %decision.average,
    );
    let result = state
        .args
        .store
        .write_desired(
            &state.args.deployment,
            state.args.fence,
            decision.desired,
            &reason,
        )
        .instrument(span.clone())
        .await;
    let _enter = span.enter();
    match result {
        Ok(WriteResult::Written) => {
            tracing::info!("desired replicas {} → {}", state.written, decision.desired);
            state.written = decision.desired;
            state
                .args
                .metrics
                .decision(&state.args.deployment, decision.desired, &reason);
        }
        Ok(WriteResult::StaleEpoch) => {
            tracing::warn!("shard lease lost (stale epoch): this actor stops");
            state.args.metrics.stale_write();
            myself.stop(Some(STALE_EPOCH.to_owned()));
        }
        Ok(WriteResult::Gone) => {
            tracing::info!("deployment deleted: this actor stops");
            myself.stop(Some(GONE.to_owned()));
        }
        Err(e) => {
            tracing::warn!(error = %e, "desired replicas not written; the next tick retries");
        }
    }
}
