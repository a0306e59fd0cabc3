//! The gateway's Prometheus metrics (text format at `/metrics`):
//! `tidal_gateway_responses_total{code}` — answers by HTTP status.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: u16,
}

/// The gateway's metrics. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    responses: Family<CodeLabel, Counter>,
    /// `responses{code="200"}`, looked up once: nearly every answer.
    ok: Counter,
    registry: Arc<Mutex<Registry>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let responses = Family::<CodeLabel, Counter>::default();
        let mut registry = Registry::with_prefix("tidal_gateway");
        registry.register("responses", "Answers by HTTP status", responses.clone());
        let ok = responses.get_or_create(&CodeLabel { code: 200 }).clone();
        Self {
            responses,
            ok,
            registry: Arc::new(Mutex::new(registry)),
        }
    }
}

impl Metrics {
    /// Counts an answer with `code`.
    pub fn answered(&self, code: u16) {
        if code == 200 {
            self.ok.inc();
            return;
        }
        self.responses.get_or_create(&CodeLabel { code }).inc();
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
