//! The supervisor: one `DeploymentActor` per deployment in the controller's
//! shards, spawned linked, restarted with backoff when it fails.
//!
//! ractor's default `handle_supervisor_evt` stops the supervisor when a
//! linked child fails; this one overrides it: a failed child is re-spawned
//! after a backoff (100 ms doubling to 30 s, reset once a child has run for a
//! minute) and rebuilds its state from the store. A child that stops with
//! [`STALE_EPOCH`] lost its shard: the supervisor stops the shard's other
//! actors and tells the shard manager. The [`Routes`] table (deployment →
//! actor) is shared with the metric ingestion service, which sends reports
//! straight to the actors.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tidal_store::app::Fence;
use tidal_types::ClusterSettings;
use tokio::sync::mpsc;

use crate::actor::{DeploymentActor, DeploymentArgs, DeploymentMsg, GONE, STALE_EPOCH};
use crate::metrics::Metrics;
use crate::port::{Clock, SharedStore};

/// The first restart backoff.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// The longest restart backoff.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A child that ran this long before failing starts over at the first backoff.
const BACKOFF_RESET: Duration = Duration::from_secs(60);

/// Deployment → its running actor. Shared with the ingestion service.
pub type Routes = Arc<RwLock<HashMap<String, ActorRef<DeploymentMsg>>>>;

/// What the supervisor tells the shard manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SupervisorEvent {
    /// A write with this shard's epoch was refused: the lease is lost.
    ShardLost {
        /// The shard.
        shard: u32,
        /// The epoch that went stale.
        epoch: u64,
    },
}

/// Messages the supervisor handles.
#[derive(Debug)]
pub enum SupervisorMsg {
    /// Run an actor for `deployment` under `fence` (no-op if one runs with
    /// that fence; restarted under the new fence if the epoch changed).
    Start {
        /// The deployment.
        deployment: String,
        /// Its shard's lease.
        fence: Fence,
    },
    /// Stop `deployment`'s actor (deleted, or moved to another shard owner).
    Stop(String),
    /// Stop every actor of `shard`; replies when they are stopped.
    StopShard(u32, RpcReplyPort<()>),
    /// Re-spawn a failed child (sent to itself after the backoff).
    Restart(String),
    /// How many actors run (for status and tests).
    Count(RpcReplyPort<usize>),
    /// Tick every running actor (sent every `actor::TICK` when the
    /// supervisor runs the shared ticker).
    Tick,
}

/// What every child gets besides its deployment and fence.
#[derive(Clone)]
pub struct SupervisorArgs {
    /// The store.
    pub store: SharedStore,
    /// The controller's clock.
    pub clock: Clock,
    /// The cluster's limits.
    pub cluster: ClusterSettings,
    /// Metrics.
    pub metrics: Metrics,
    /// The routes table to keep.
    pub routes: Routes,
    /// Where shard losses go.
    pub events: mpsc::UnboundedSender<SupervisorEvent>,
    /// Whether to tick the children every second (one shared timer, rather
    /// than one per actor: 10,000 timers cost a tenth of a core).
    pub ticker: bool,
}

impl std::fmt::Debug for SupervisorArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorArgs").finish_non_exhaustive()
    }
}

struct Child {
    fence: Fence,
    actor: Option<ActorRef<DeploymentMsg>>,
    failures: u32,
    started: Instant,
}

/// The supervisor's state.
pub struct SupervisorState {
    args: SupervisorArgs,
    /// Wanted deployments, running or waiting for a restart.
    children: HashMap<String, Child>,
    /// Running actors' ids → their deployment.
    by_actor: HashMap<ActorId, String>,
}

impl std::fmt::Debug for SupervisorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorState")
            .field("children", &self.children.len())
            .finish_non_exhaustive()
    }
}

/// Supervises deployment actors.
#[derive(Debug, Clone, Copy, Default)]
pub struct Supervisor;

fn backoff(failures: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

impl SupervisorState {
    async fn spawn(&mut self, myself: &ActorRef<SupervisorMsg>, deployment: &str) {
        let Some(child) = self.children.get_mut(deployment) else {
            return;
        };
        let args = DeploymentArgs {
            deployment: deployment.to_owned(),
            fence: child.fence,
            store: Arc::clone(&self.args.store),
            clock: Arc::clone(&self.args.clock),
            cluster: self.args.cluster,
            metrics: self.args.metrics.clone(),
            ticker: false,
        };
        child.started = Instant::now();
        match Actor::spawn_linked(None, DeploymentActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.by_actor.insert(actor.get_id(), deployment.to_owned());
                if let Ok(mut routes) = self.args.routes.write() {
                    routes.insert(deployment.to_owned(), actor.clone());
                }
                child.actor = Some(actor);
            }
            Err(e) => {
                child.failures += 1;
                let wait = backoff(child.failures);
                tracing::warn!(deployment, error = %e, ?wait, "deployment actor did not start; retrying");
                let name = deployment.to_owned();
                myself.send_after(wait, move || SupervisorMsg::Restart(name));
            }
        }
    }

    fn unroute(&mut self, deployment: &str) {
        if let Ok(mut routes) = self.args.routes.write() {
            routes.remove(deployment);
        }
    }

    /// Stops and forgets every actor whose child entry matches.
    fn stop_where(&mut self, matches: impl Fn(&Child) -> bool) {
        let doomed: Vec<String> = self
            .children
            .iter()
            .filter(|(_, c)| matches(c))
            .map(|(d, _)| d.clone())
            .collect();
        for deployment in doomed {
            self.stop(&deployment);
        }
    }

    /// Stops and forgets `deployment`'s actor.
    fn stop(&mut self, deployment: &str) {
        self.unroute(deployment);
        self.args.metrics.forget(deployment);
        if let Some(child) = self.children.remove(deployment)
            && let Some(actor) = child.actor
        {
            self.by_actor.remove(&actor.get_id());
            actor.stop(None);
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        if args.ticker {
            myself.send_interval(crate::actor::TICK, || SupervisorMsg::Tick);
        }
        Ok(SupervisorState {
            args,
            children: HashMap::new(),
            by_actor: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Start { deployment, fence } => {
                if state
                    .children
                    .get(&deployment)
                    .is_some_and(|c| c.fence == fence)
                {
                    return Ok(());
                }
                state.stop(&deployment);
                state.children.insert(
                    deployment.clone(),
                    Child {
                        fence,
                        actor: None,
                        failures: 0,
                        started: Instant::now(),
                    },
                );
                state.spawn(&myself, &deployment).await;
            }
            SupervisorMsg::Stop(deployment) => state.stop(&deployment),
            SupervisorMsg::StopShard(shard, reply) => {
                state.stop_where(|c| c.fence.shard == shard);
                let _ = reply.send(());
            }
            SupervisorMsg::Restart(deployment) => {
                let waiting = state
                    .children
                    .get(&deployment)
                    .is_some_and(|c| c.actor.is_none());
                if waiting {
                    state.spawn(&myself, &deployment).await;
                }
            }
            SupervisorMsg::Tick => {
                for child in state.children.values() {
                    if let Some(actor) = &child.actor {
                        let _ = actor.cast(DeploymentMsg::Tick);
                    }
                }
            }
            SupervisorMsg::Count(reply) => {
                let running = state
                    .children
                    .values()
                    .filter(|c| c.actor.is_some())
                    .count();
                let _ = reply.send(running);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                let Some(deployment) = state.by_actor.remove(&cell.get_id()) else {
                    return Ok(());
                };
                state.unroute(&deployment);
                let Some(child) = state.children.get_mut(&deployment) else {
                    return Ok(());
                };
                child.actor = None;
                if child.started.elapsed() >= BACKOFF_RESET {
                    child.failures = 0;
                }
                child.failures += 1;
                let wait = backoff(child.failures);
                tracing::warn!(%deployment, %error, ?wait, failures = child.failures, "deployment actor failed; restarting it");
                myself.send_after(wait, move || SupervisorMsg::Restart(deployment));
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let Some(deployment) = state.by_actor.remove(&cell.get_id()) else {
                    return Ok(());
                };
                let fence = state.children.get(&deployment).map(|c| c.fence);
                state.stop(&deployment);
                match (reason.as_deref(), fence) {
                    (Some(STALE_EPOCH), Some(fence)) => {
                        // Every actor of the shard is stale: stop them all.
                        state.stop_where(|c| c.fence == fence);
                        let _ = state.args.events.send(SupervisorEvent::ShardLost {
                            shard: fence.shard,
                            epoch: fence.epoch,
                        });
                    }
                    (Some(GONE), _) => {
                        tracing::debug!(%deployment, "actor stopped: deployment gone")
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        Ok(())
    }
}
