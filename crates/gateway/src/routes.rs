//! What the gateway knows of the cluster: deployments by model and target,
//! and each deployment's Ready replicas, kept from a list + watch of the
//! store's DEPLOYMENTS and REPLICAS tables.
//!
//! Only Ready replicas with an endpoint are routed to: a Draining replica
//! leaves the set the moment its record says so, and gets no new request.
//! Each routed replica carries its in-flight count, shared by every request
//! that picks it, so the choice is least outstanding requests.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tidal_proto::pb;
use tokio::sync::watch;

/// Which deployment of a model a request is for (the inference path),
/// borrowed from the request's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// `/production/…`: the deployment promoted to production.
    Production,
    /// `/development/…`: the model's development deployment.
    Development,
    /// `/deployment/{id}/…`.
    Deployment(&'a str),
    /// `/environments/{name}/…`.
    Environment(&'a str),
}

impl std::fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Production => write!(f, "production"),
            Target::Development => write!(f, "development"),
            Target::Deployment(id) => write!(f, "deployment {id}"),
            Target::Environment(name) => write!(f, "environment {name}"),
        }
    }
}

/// A deployment as the gateway routes to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentRoute {
    /// Its id.
    pub id: String,
    /// Its model.
    pub model_id: String,
    /// Promoted to production.
    pub is_production: bool,
    /// The model's development deployment.
    pub is_development: bool,
    /// The environment it is promoted to.
    pub environment: Option<String>,
    /// Deactivated: serves nothing until activated.
    pub inactive: bool,
}

/// A Ready replica: where it serves and what it has in flight.
#[derive(Debug)]
pub struct ReadyReplica {
    /// The replica's id.
    pub replica: String,
    /// `host:port`.
    pub endpoint: String,
    /// `endpoint` as a `Host` header (`None` if it is not a valid one).
    pub host: Option<http::HeaderValue>,
    /// Requests this gateway has in flight to it.
    pub in_flight: AtomicUsize,
}

/// A routed replica, shared by the table and every request sent to it
/// (cloning is one reference count).
pub type Backend = Arc<ReadyReplica>;

pub(crate) fn backend(replica: &str, endpoint: &str) -> Backend {
    Arc::new(ReadyReplica {
        replica: replica.to_owned(),
        endpoint: endpoint.to_owned(),
        host: http::HeaderValue::from_str(endpoint).ok(),
        in_flight: AtomicUsize::new(0),
    })
}

/// Why a request has no deployment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No deployment of that model matches.
    #[error("model {model_id} has no {target} deployment")]
    NoDeployment {
        /// The model.
        model_id: String,
        /// What was asked for.
        target: String,
    },
}

#[derive(Debug, Default)]
struct Table {
    deployments: HashMap<String, Arc<DeploymentRoute>>,
    /// Model → its deployments (an index of `deployments`).
    by_model: HashMap<String, Vec<Arc<DeploymentRoute>>>,
    /// Replica id → (deployment, phase, endpoint).
    replicas: HashMap<String, (String, pb::ReplicaPhase, String)>,
    /// Deployment → its Ready backends, by replica id.
    ready: HashMap<String, BTreeMap<String, Backend>>,
}

/// The routing table, shared by every request. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Routes {
    table: Arc<RwLock<Table>>,
    /// Bumped whenever a deployment's Ready set changes.
    changed: Arc<watch::Sender<u64>>,
}

impl Default for Routes {
    fn default() -> Self {
        Self::new()
    }
}

fn read(table: &RwLock<Table>) -> std::sync::RwLockReadGuard<'_, Table> {
    table
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write(table: &RwLock<Table>) -> std::sync::RwLockWriteGuard<'_, Table> {
    table
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Routes {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            table: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }

    /// Resolves a model's target to a deployment.
    pub fn resolve(
        &self,
        model_id: &str,
        target: &Target<'_>,
    ) -> Result<Arc<DeploymentRoute>, RouteError> {
        let table = read(&self.table);
        let found = table.by_model.get(model_id).and_then(|deployments| {
            deployments.iter().find(|d| match *target {
                Target::Production => {
                    d.is_production || d.environment.as_deref() == Some("production")
                }
                Target::Development => d.is_development,
                Target::Deployment(id) => d.id == id,
                Target::Environment(name) => d.environment.as_deref() == Some(name),
            })
        });
        found.cloned().ok_or_else(|| RouteError::NoDeployment {
            model_id: model_id.to_owned(),
            target: target.to_string(),
        })
    }

    /// The Ready replica of `deployment` with the fewest requests in flight
    /// (ties: the lowest replica id), if any.
    pub fn pick(&self, deployment: &str) -> Option<Backend> {
        let table = read(&self.table);
        table
            .ready
            .get(deployment)?
            .values()
            .min_by_key(|b| b.in_flight.load(Ordering::Relaxed))
            .cloned()
    }

    /// How many Ready replicas `deployment` has.
    pub fn ready_count(&self, deployment: &str) -> usize {
        read(&self.table)
            .ready
            .get(deployment)
            .map_or(0, BTreeMap::len)
    }

    /// The furthest phase any live replica of `deployment` is in, for
    /// messages ("Loading"), or `None` when it has none.
    pub fn progress(&self, deployment: &str) -> Option<pb::ReplicaPhase> {
        let table = read(&self.table);
        table
            .replicas
            .values()
            .filter(|(d, phase, _)| d == deployment && !terminal(*phase))
            .map(|(_, phase, _)| *phase)
            .max_by_key(|p| progress_rank(*p))
    }

    /// A receiver that changes whenever some deployment's Ready set does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Sets (or with `None` removes) a deployment.
    pub fn set_deployment(&self, id: &str, route: Option<DeploymentRoute>) {
        let mut table = write(&self.table);
        match route {
            Some(route) => {
                table.deployments.insert(id.to_owned(), Arc::new(route));
            }
            None => {
                table.deployments.remove(id);
            }
        }
        table.index();
        drop(table);
        // A deployment appearing or (de)activating matters to waiters too.
        self.changed.send_modify(|v| *v += 1);
    }

    /// Sets (or with `None` removes) a replica from its record.
    pub fn set_replica(&self, id: &str, record: Option<&pb::Replica>) {
        let mut table = write(&self.table);
        let before = table.replicas.remove(id);
        if let Some(r) = record {
            let phase =
                pb::ReplicaPhase::try_from(r.phase).unwrap_or(pb::ReplicaPhase::Unspecified);
            table.replicas.insert(
                id.to_owned(),
                (r.deployment_id.clone(), phase, r.endpoint.clone()),
            );
        }
        let was_ready = before
            .as_ref()
            .is_some_and(|(_, p, e)| *p == pb::ReplicaPhase::Ready && !e.is_empty());
        let is_ready = record.is_some_and(|r| {
            r.phase == i32::from(pb::ReplicaPhase::Ready) && !r.endpoint.is_empty()
        });
        let mut changed = false;
        if was_ready
            && !is_ready
            && let Some((dep, _, _)) = &before
            && let Some(set) = table.ready.get_mut(dep)
        {
            changed |= set.remove(id).is_some();
            if set.is_empty() {
                table.ready.remove(dep);
            }
        }
        if let (Some(r), true) = (record, is_ready) {
            let set = table.ready.entry(r.deployment_id.clone()).or_default();
            let same = set.get(id).is_some_and(|b| b.endpoint == r.endpoint);
            if !same {
                set.insert(id.to_owned(), backend(id, &r.endpoint));
                changed = true;
            }
        }
        drop(table);
        if changed {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// Replaces everything (after a re-list).
    pub fn reset(
        &self,
        deployments: Vec<(String, DeploymentRoute)>,
        replicas: &[(String, pb::Replica)],
    ) {
        {
            let mut table = write(&self.table);
            table.deployments = deployments
                .into_iter()
                .map(|(id, route)| (id, Arc::new(route)))
                .collect();
            table.index();
            // Keep in-flight counters of replicas that are still Ready.
            let old = std::mem::take(&mut table.ready);
            table.replicas.clear();
            for (id, r) in replicas {
                let phase =
                    pb::ReplicaPhase::try_from(r.phase).unwrap_or(pb::ReplicaPhase::Unspecified);
                table.replicas.insert(
                    id.clone(),
                    (r.deployment_id.clone(), phase, r.endpoint.clone()),
                );
                if phase == pb::ReplicaPhase::Ready && !r.endpoint.is_empty() {
                    let kept = old
                        .get(&r.deployment_id)
                        .and_then(|s| s.get(id))
                        .filter(|b| b.endpoint == r.endpoint)
                        .cloned();
                    let backend = kept.unwrap_or_else(|| backend(id, &r.endpoint));
                    table
                        .ready
                        .entry(r.deployment_id.clone())
                        .or_default()
                        .insert(id.clone(), backend);
                }
            }
        }
        self.changed.send_modify(|v| *v += 1);
    }
}

impl Table {
    /// Rebuilds the per-model index (deployments change rarely; requests
    /// look one up every time).
    fn index(&mut self) {
        let mut by_model: HashMap<String, Vec<Arc<DeploymentRoute>>> = HashMap::new();
        for route in self.deployments.values() {
            by_model
                .entry(route.model_id.clone())
                .or_default()
                .push(Arc::clone(route));
        }
        // A stable order, so a target matching two deployments always
        // resolves to the same one.
        for routes in by_model.values_mut() {
            routes.sort_by(|a, b| a.id.cmp(&b.id));
        }
        self.by_model = by_model;
    }
}

fn terminal(phase: pb::ReplicaPhase) -> bool {
    matches!(
        phase,
        pb::ReplicaPhase::Stopped | pb::ReplicaPhase::Failed | pb::ReplicaPhase::Lost
    )
}

fn progress_rank(phase: pb::ReplicaPhase) -> u8 {
    match phase {
        pb::ReplicaPhase::Pending => 1,
        pb::ReplicaPhase::Fetching => 2,
        pb::ReplicaPhase::Starting => 3,
        pb::ReplicaPhase::Loading => 4,
        pb::ReplicaPhase::Ready => 6,
        pb::ReplicaPhase::Draining => 5,
        _ => 0,
    }
}

/// A deployment's route from its stored record.
pub fn route_of(id: &str, record: &pb::DeploymentRecord) -> DeploymentRoute {
    let d = record.deployment.clone().unwrap_or_default();
    DeploymentRoute {
        id: id.to_owned(),
        model_id: d.model_id,
        is_production: d.is_production,
        is_development: d.is_development,
        environment: d.environment.filter(|e| !e.is_empty()),
        inactive: d.status == i32::from(pb::DeploymentStatus::Inactive)
            || d.status == i32::from(pb::DeploymentStatus::Deactivating),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(id: &str, model: &str, prod: bool, dev: bool, env: Option<&str>) -> DeploymentRoute {
        DeploymentRoute {
            id: id.into(),
            model_id: model.into(),
            is_production: prod,
            is_development: dev,
            environment: env.map(Into::into),
            inactive: false,
        }
    }

    fn replica(dep: &str, phase: pb::ReplicaPhase, endpoint: &str) -> pb::Replica {
        pb::Replica {
            deployment_id: dep.into(),
            phase: phase.into(),
            endpoint: endpoint.into(),
            ..Default::default()
        }
    }

    #[test]
    fn targets_resolve_per_model() {
        let routes = Routes::new();
        routes.set_deployment("p", Some(dep("p", "m", true, false, Some("production"))));
        routes.set_deployment("d", Some(dep("d", "m", false, true, None)));
        routes.set_deployment("s", Some(dep("s", "m", false, false, Some("staging"))));
        routes.set_deployment("x", Some(dep("x", "other", true, false, None)));
        assert_eq!(routes.resolve("m", &Target::Production).unwrap().id, "p");
        assert_eq!(routes.resolve("m", &Target::Development).unwrap().id, "d");
        assert_eq!(
            routes
                .resolve("m", &Target::Environment("staging"))
                .unwrap()
                .id,
            "s"
        );
        assert_eq!(
            routes.resolve("m", &Target::Deployment("d")).unwrap().id,
            "d"
        );
        // Another model's deployment id is not this model's.
        let err = routes.resolve("m", &Target::Deployment("x")).unwrap_err();
        assert_eq!(err.to_string(), "model m has no deployment x deployment");
        let err = routes.resolve("nope", &Target::Production).unwrap_err();
        assert_eq!(err.to_string(), "model nope has no production deployment");
    }

    #[test]
    fn only_ready_replicas_with_an_endpoint_are_picked_least_loaded_first() {
        use pb::ReplicaPhase as P;
        let routes = Routes::new();
        let mut rx = routes.subscribe();
        routes.set_replica("r1", Some(&replica("d", P::Loading, "")));
        assert!(routes.pick("d").is_none());
        assert_eq!(routes.progress("d"), Some(P::Loading));
        assert!(!rx.has_changed().unwrap());
        routes.set_replica("r1", Some(&replica("d", P::Ready, "h:1")));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        routes.set_replica("r2", Some(&replica("d", P::Ready, "h:2")));
        let first = routes.pick("d").unwrap();
        assert_eq!(first.replica, "r1");
        first.in_flight.fetch_add(1, Ordering::Relaxed);
        assert_eq!(routes.pick("d").unwrap().replica, "r2");
        // Draining leaves the set at once; its counter goes with it.
        routes.set_replica("r2", Some(&replica("d", P::Draining, "")));
        assert_eq!(routes.pick("d").unwrap().replica, "r1");
        assert_eq!(routes.ready_count("d"), 1);
        routes.set_replica("r1", None);
        assert!(routes.pick("d").is_none());
        assert_eq!(routes.progress("d"), Some(P::Draining));
    }

    #[test]
    fn a_reset_keeps_the_counters_of_replicas_still_ready() {
        use pb::ReplicaPhase as P;
        let routes = Routes::new();
        routes.set_replica("r1", Some(&replica("d", P::Ready, "h:1")));
        routes
            .pick("d")
            .unwrap()
            .in_flight
            .fetch_add(3, Ordering::Relaxed);
        routes.reset(
            vec![],
            &[
                ("r1".into(), replica("d", P::Ready, "h:1")),
                ("r2".into(), replica("d", P::Ready, "h:2")),
            ],
        );
        assert_eq!(routes.pick("d").unwrap().replica, "r2");
    }

    #[test]
    fn inactive_records_are_marked() {
        let record = pb::DeploymentRecord {
            deployment: Some(pb::Deployment {
                model_id: "m".into(),
                status: pb::DeploymentStatus::Inactive.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(route_of("d", &record).inactive);
    }
}
