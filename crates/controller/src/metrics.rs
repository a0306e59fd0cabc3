//! The controller's Prometheus metrics (text format at `/metrics`).
//!
//! - `tidal_controller_desired_replicas{deployment}` — the desired replicas
//!   each owned deployment's actor last stored.
//! - `tidal_controller_decisions_total{reason}` — decisions that changed
//!   desired replicas, by the rule that set them.
//! - `tidal_controller_shard_owned{shard}` — 1 for each shard this
//!   controller holds, 0 once released or lost.
//! - `tidal_controller_report_lag_seconds` — how old a gateway's sample was
//!   when its deployment's actor received it.
//! - `tidal_controller_stale_writes_total` — writes refused for a stale
//!   shard epoch (each stops an actor).

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentLabel {
    deployment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: u32,
}

/// The controller's metrics. Cheap to clone: clones share the series.
#[derive(Clone, Debug)]
pub struct Metrics {
    desired: Family<DeploymentLabel, Gauge>,
    decisions: Family<ReasonLabel, Counter>,
    shard_owned: Family<ShardLabel, Gauge>,
    report_lag: Histogram,
    stale_writes: Counter,
    registry: Arc<Mutex<Registry>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of series in its own registry.
    pub fn new() -> Self {
        let desired = Family::<DeploymentLabel, Gauge>::default();
        let decisions = Family::<ReasonLabel, Counter>::default();
        let shard_owned = Family::<ShardLabel, Gauge>::default();
        let report_lag = Histogram::new([0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0]);
        let stale_writes = Counter::default();
        let mut registry = Registry::with_prefix("tidal_controller");
        registry.register(
            "desired_replicas",
            "Desired replicas of each owned deployment, as last stored",
            desired.clone(),
        );
        registry.register(
            "decisions",
            "Decisions that changed desired replicas, by reason",
            decisions.clone(),
        );
        registry.register(
            "shard_owned",
            "1 for each shard this controller holds",
            shard_owned.clone(),
        );
        registry.register(
            "report_lag_seconds",
            "Age of a gateway sample when its deployment's actor received it",
            report_lag.clone(),
        );
        registry.register(
            "stale_writes",
            "Writes refused because the shard epoch was stale",
            stale_writes.clone(),
        );
        Self {
            desired,
            decisions,
            shard_owned,
            report_lag,
            stale_writes,
            registry: Arc::new(Mutex::new(registry)),
        }
    }

    /// Records a deployment's desired replicas.
    pub fn set_desired(&self, deployment: &str, desired: u32) {
        self.desired
            .get_or_create(&DeploymentLabel {
                deployment: deployment.to_owned(),
            })
            .set(i64::from(desired));
    }

    /// Forgets a deployment this controller no longer owns.
    pub fn forget(&self, deployment: &str) {
        self.desired.remove(&DeploymentLabel {
            deployment: deployment.to_owned(),
        });
    }

    /// Records a stored decision.
    pub fn decision(&self, deployment: &str, desired: u32, reason: &str) {
        self.set_desired(deployment, desired);
        self.decisions
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Records whether this controller holds `shard`.
    pub fn set_shard(&self, shard: u32, owned: bool) {
        self.shard_owned
            .get_or_create(&ShardLabel { shard })
            .set(i64::from(owned));
    }

    /// Records a sample for `second` received at `now` (Unix seconds).
    #[allow(clippy::cast_precision_loss)]
    pub fn report_received(&self, second: u64, now: u64) {
        self.report_lag.observe(now.saturating_sub(second) as f64);
    }

    /// Counts a write refused for a stale epoch.
    pub fn stale_write(&self) {
        self.stale_writes.inc();
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
