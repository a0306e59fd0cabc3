//! The worker's Prometheus metrics (text format at `/metrics`).
//!
//! - `tidal_worker_phase_duration_seconds{phase}` — how long replicas spent
//!   in each phase (observed when they leave it): `fetching` is the weight
//!   download, `starting` the process spawn, `loading` from spawn to the
//!   first 200 from the health endpoint (`model.load()`), `ready` the time
//!   served, `draining` the stop.
//! - `tidal_worker_replicas{phase}` — this worker's replicas in each phase now.
//! - `tidal_worker_replica_failures_total{phase}` — replicas failed, by the
//!   phase they failed in.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tidal_proto::pb;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

/// Buckets (seconds) from a fast local start to a multi-minute GPU cold start.
const BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
];

/// A phase's label: its enum name in lower case (`fetching`, `ready`, ...).
pub fn phase_name(phase: pb::ReplicaPhase) -> &'static str {
    match phase {
        pb::ReplicaPhase::Unspecified => "unspecified",
        pb::ReplicaPhase::Pending => "pending",
        pb::ReplicaPhase::Fetching => "fetching",
        pb::ReplicaPhase::Starting => "starting",
        pb::ReplicaPhase::Loading => "loading",
        pb::ReplicaPhase::Ready => "ready",
        pb::ReplicaPhase::Draining => "draining",
        pb::ReplicaPhase::Stopped => "stopped",
        pb::ReplicaPhase::Failed => "failed",
        pb::ReplicaPhase::Lost => "lost",
    }
}

/// The worker's metrics. Cheap to clone: clones share the series.
#[derive(Clone, Debug)]
pub struct Metrics {
    durations: Family<PhaseLabel, Histogram>,
    replicas: Family<PhaseLabel, Gauge>,
    failures: Family<PhaseLabel, Counter>,
    registry: Arc<Mutex<Registry>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn label(phase: pb::ReplicaPhase) -> PhaseLabel {
    PhaseLabel {
        phase: phase_name(phase).to_owned(),
    }
}

impl Metrics {
    /// A fresh set of series in its own registry.
    pub fn new() -> Self {
        let durations =
            Family::<PhaseLabel, Histogram>::new_with_constructor(|| Histogram::new(BUCKETS));
        let replicas = Family::<PhaseLabel, Gauge>::default();
        let failures = Family::<PhaseLabel, Counter>::default();
        let mut registry = Registry::with_prefix("tidal_worker");
        registry.register(
            "phase_duration_seconds",
            "Time replicas spent in each phase, observed when they leave it",
            durations.clone(),
        );
        registry.register(
            "replicas",
            "This worker's replicas in each phase",
            replicas.clone(),
        );
        registry.register(
            "replica_failures",
            "Replicas failed, by the phase they failed in",
            failures.clone(),
        );
        Self {
            durations,
            replicas,
            failures,
            registry: Arc::new(Mutex::new(registry)),
        }
    }

    /// A replica left `from` after `spent` and entered `to`.
    pub fn transition(&self, from: pb::ReplicaPhase, spent: Duration, to: pb::ReplicaPhase) {
        self.durations
            .get_or_create(&label(from))
            .observe(spent.as_secs_f64());
        self.replicas.get_or_create(&label(from)).dec();
        self.replicas.get_or_create(&label(to)).inc();
        if to == pb::ReplicaPhase::Failed {
            self.failures.get_or_create(&label(from)).inc();
        }
    }

    /// A replica actor started (its record is Pending).
    pub fn replica_started(&self) {
        self.replicas
            .get_or_create(&label(pb::ReplicaPhase::Pending))
            .inc();
    }

    /// A replica actor ended in `phase` (it no longer counts).
    pub fn replica_ended(&self, phase: pb::ReplicaPhase) {
        self.replicas.get_or_create(&label(phase)).dec();
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::ReplicaPhase as P;

    #[test]
    fn a_start_shows_up_per_phase() {
        let m = Metrics::new();
        m.replica_started();
        m.transition(P::Pending, Duration::from_millis(1), P::Fetching);
        m.transition(P::Fetching, Duration::from_millis(300), P::Starting);
        m.transition(P::Starting, Duration::from_millis(2), P::Loading);
        m.transition(P::Loading, Duration::from_secs(3), P::Failed);
        m.replica_ended(P::Failed);
        let text = m.encode();
        assert!(
            text.contains("tidal_worker_phase_duration_seconds_count{phase=\"fetching\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tidal_worker_phase_duration_seconds_sum{phase=\"loading\"} 3.0"),
            "{text}"
        );
        assert!(
            text.contains("tidal_worker_replica_failures_total{phase=\"loading\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tidal_worker_replicas{phase=\"failed\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("tidal_worker_replicas{phase=\"loading\"} 0"),
            "{text}"
        );
    }
}
