//! The activator: requests for a deployment with no Ready replica wait in a
//! bounded per-deployment queue while its controller is poked, and are
//! released in arrival order as soon as a replica is Ready.
//!
//! A full queue is refused at once (503 with Retry-After); a request that
//! waits longer than the timeout gets 504 naming the deployment and the
//! phase its furthest replica had reached. While requests wait, the
//! deployment's controller is asked to wake it at once and again every
//! [`WAKE_EVERY`], with the number waiting.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tidal_proto::pb;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::controllers::Controllers;
use crate::meter::Meters;
use crate::routes::{Backend, Routes};

/// How often waiting requests re-poke their deployment's controller.
pub const WAKE_EVERY: Duration = Duration::from_secs(2);

/// The activator's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivatorOptions {
    /// Requests one deployment may have waiting; more are refused (503).
    pub queue_size: usize,
    /// The longest a request waits for a Ready replica (504 after).
    pub timeout: Duration,
}

impl Default for ActivatorOptions {
    /// 1,000 waiting requests and 15 minutes: a GPU cold start (image,
    /// weights, `model.load()`) can take several minutes.
    fn default() -> Self {
        Self {
            queue_size: 1000,
            timeout: Duration::from_secs(15 * 60),
        }
    }
}

/// Why a request got no replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActivateError {
    /// The deployment's queue is full.
    #[error(
        "deployment {deployment} is starting and already has {waiting} requests waiting \
         (the gateway's limit); retry after {retry_after_secs} s"
    )]
    QueueFull {
        /// The deployment.
        deployment: String,
        /// How many wait.
        waiting: usize,
        /// A suggested wait.
        retry_after_secs: u64,
    },
    /// No replica became Ready in time.
    #[error(
        "deployment {deployment} had no ready replica after {waited_secs} s ({progress}); \
         the request was not sent"
    )]
    Timeout {
        /// The deployment.
        deployment: String,
        /// How long the request waited.
        waited_secs: u64,
        /// Where its furthest replica was.
        progress: String,
    },
}

#[derive(Debug, Default)]
struct Queue {
    waiters: VecDeque<(u64, oneshot::Sender<()>)>,
    releasing: bool,
}

/// The activator. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Activator {
    options: ActivatorOptions,
    routes: Routes,
    controllers: Controllers,
    meters: Meters,
    queues: Arc<Mutex<HashMap<String, Queue>>>,
    tickets: Arc<std::sync::atomic::AtomicU64>,
}

/// A phase in words, for the timeout message.
pub fn progress_text(phase: Option<pb::ReplicaPhase>) -> String {
    match phase {
        None => "no replica was started for it yet".to_owned(),
        Some(p) => {
            let name = format!("{p:?}").to_lowercase();
            format!("its furthest replica was {name}")
        }
    }
}

impl Activator {
    /// An activator over the gateway's routes, controllers and meters.
    pub fn new(
        options: ActivatorOptions,
        routes: Routes,
        controllers: Controllers,
        meters: Meters,
    ) -> Self {
        Self {
            options,
            routes,
            controllers,
            meters,
            queues: Arc::default(),
            tickets: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Queue>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A Ready replica of `deployment`, waiting for one if needed.
    pub async fn backend(&self, deployment: &str) -> Result<Backend, ActivateError> {
        let started = Instant::now();
        let deadline = started + self.options.timeout;
        loop {
            if let Some(backend) = self.routes.pick(deployment) {
                return Ok(backend);
            }
            let ticket = self
                .tickets
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            {
                let mut queues = self.lock();
                let queue = queues.entry(deployment.to_owned()).or_default();
                if queue.waiters.len() >= self.options.queue_size {
                    return Err(ActivateError::QueueFull {
                        deployment: deployment.to_owned(),
                        waiting: queue.waiters.len(),
                        retry_after_secs: 5,
                    });
                }
                queue.waiters.push_back((ticket, tx));
                let waiting = queue.waiters.len();
                if !queue.releasing {
                    queue.releasing = true;
                    tokio::spawn(self.clone().release(deployment.to_owned()));
                }
                self.meters
                    .set_queued(deployment, u32::try_from(waiting).unwrap_or(u32::MAX));
            }
            match tokio::time::timeout_at(deadline, rx).await {
                // Released (or the releaser ended): try to pick again.
                Ok(_) => {}
                Err(_) => {
                    self.leave(deployment, ticket);
                    return Err(ActivateError::Timeout {
                        deployment: deployment.to_owned(),
                        waited_secs: started.elapsed().as_secs(),
                        progress: progress_text(self.routes.progress(deployment)),
                    });
                }
            }
        }
    }

    /// Asks `deployment`'s controller to scale it up from zero now (a wake
    /// request); the desired replicas it answered, if one did.
    pub async fn wake(&self, deployment: &str) -> Option<u32> {
        let pending = u32::try_from(self.meters.in_flight(deployment)).unwrap_or(u32::MAX);
        self.controllers.wake(deployment, pending.max(1)).await
    }

    fn leave(&self, deployment: &str, ticket: u64) {
        let mut queues = self.lock();
        if let Some(queue) = queues.get_mut(deployment) {
            queue.waiters.retain(|(t, _)| *t != ticket);
            let waiting = u32::try_from(queue.waiters.len()).unwrap_or(u32::MAX);
            self.meters.set_queued(deployment, waiting);
        }
    }

    /// While `deployment` has waiters: pokes its controller, and releases
    /// every waiter, oldest first, once a replica is Ready.
    async fn release(self, deployment: String) {
        let mut changed = self.routes.subscribe();
        let mut next_wake = Instant::now();
        loop {
            let waiting = {
                let mut queues = self.lock();
                let Some(queue) = queues.get_mut(&deployment) else {
                    return;
                };
                if queue.waiters.is_empty() {
                    queue.releasing = false;
                    queues.remove(&deployment);
                    self.meters.set_queued(&deployment, 0);
                    return;
                }
                if self.routes.ready_count(&deployment) > 0 {
                    for (_, waiter) in queue.waiters.drain(..) {
                        let _ = waiter.send(());
                    }
                    self.meters.set_queued(&deployment, 0);
                    continue;
                }
                queue.waiters.len()
            };
            if Instant::now() >= next_wake {
                let pending = u32::try_from(waiting).unwrap_or(u32::MAX);
                let desired = self.controllers.wake(&deployment, pending).await;
                tracing::debug!(%deployment, pending, ?desired, "woke deployment");
                next_wake = Instant::now() + WAKE_EVERY;
            }
            tokio::select! {
                _ = changed.changed() => {}
                () = tokio::time::sleep_until(next_wake) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reads_like_a_sentence() {
        assert_eq!(progress_text(None), "no replica was started for it yet");
        assert_eq!(
            progress_text(Some(pb::ReplicaPhase::Loading)),
            "its furthest replica was loading"
        );
    }
}
