//! Per-deployment concurrency, as the controllers need it: every request
//! counts from the moment it arrives (queued in the activator or proxied)
//! until its answer is sent, integrated into 1-second time-weighted averages
//! by `tidal_autoscale::ConcurrencyMeter`.
//!
//! A deployment keeps being reported (zeros included) for an hour after its
//! last request — the longest autoscaling window — so its controller sees
//! the traffic stop rather than a gap in the reports.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tidal_autoscale::ConcurrencyMeter;
use tidal_proto::pb;

/// How long after its last request a deployment is still reported.
pub const REPORT_FOR: Duration = Duration::from_secs(3600);

#[derive(Debug)]
struct Entry {
    meter: ConcurrencyMeter,
    /// Requests that arrived, by second.
    arrivals: HashMap<u64, u32>,
    /// Requests waiting in the activator now.
    queued: u32,
    last_active: Duration,
}

/// One deployment's meter, shared by the table and its requests in flight.
type Shared = Arc<Mutex<Entry>>;

/// Every deployment's meter. Cheap to clone. Requests take the table's read
/// lock and their own deployment's lock; only a new deployment and the
/// once-a-second [`Meters::take`] take the write lock.
#[derive(Debug, Clone, Default)]
pub struct Meters {
    inner: Arc<RwLock<HashMap<String, Shared>>>,
}

fn lock(entry: &Mutex<Entry>) -> std::sync::MutexGuard<'_, Entry> {
    entry.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Now, as an offset from the Unix epoch (the samples' seconds are Unix seconds).
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// A request being counted; it stops counting when dropped.
#[derive(Debug)]
pub struct InFlight {
    entry: Shared,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        finish(&self.entry, unix_now());
    }
}

fn finish(entry: &Mutex<Entry>, at: Duration) {
    let mut entry = lock(entry);
    entry.meter.finish(at);
    entry.last_active = at;
}

impl Meters {
    /// A request for `deployment` arrived now; it counts until the guard drops.
    pub fn start(&self, deployment: &str) -> InFlight {
        InFlight {
            entry: self.count_start(deployment, unix_now()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Shared>> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Shared>> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request started at `at` (tests drive time themselves).
    pub fn start_at(&self, deployment: &str, at: Duration) {
        self.count_start(deployment, at);
    }

    /// Counts a request's start; its deployment's meter.
    fn count_start(&self, deployment: &str, at: Duration) -> Shared {
        let count = |shared: &Shared| {
            let mut entry = lock(shared);
            entry.meter.start(at);
            *entry.arrivals.entry(at.as_secs()).or_default() += 1;
            entry.last_active = at;
        };
        // Counted while the table is locked, so `take` cannot forget the
        // deployment between the lookup and the count.
        {
            let all = self.read();
            if let Some(shared) = all.get(deployment) {
                count(shared);
                return Arc::clone(shared);
            }
        }
        let mut all = self.write();
        let shared = all.entry(deployment.to_owned()).or_insert_with(|| {
            Arc::new(Mutex::new(Entry {
                meter: ConcurrencyMeter::new(at),
                arrivals: HashMap::new(),
                queued: 0,
                last_active: at,
            }))
        });
        count(shared);
        Arc::clone(shared)
    }

    /// A request ended at `at`.
    pub fn finish(&self, deployment: &str, at: Duration) {
        if let Some(entry) = self.read().get(deployment) {
            finish(entry, at);
        }
    }

    /// Sets how many requests for `deployment` wait in the activator.
    pub fn set_queued(&self, deployment: &str, queued: u32) {
        if let Some(entry) = self.read().get(deployment) {
            lock(entry).queued = queued;
        }
    }

    /// Requests in flight (queued included) for `deployment` now.
    pub fn in_flight(&self, deployment: &str) -> u64 {
        self.read()
            .get(deployment)
            .map_or(0, |e| lock(e).meter.in_flight())
    }

    /// The samples of every second that ended by `at`, and forgets
    /// deployments idle for [`REPORT_FOR`].
    pub fn take(&self, at: Duration) -> Vec<pb::DeploymentMetrics> {
        let mut all = self.write();
        let mut samples = Vec::new();
        all.retain(|deployment, entry| {
            let entry = &mut *lock(entry);
            for (second, concurrency) in entry.meter.take_closed(at) {
                samples.push(pb::DeploymentMetrics {
                    deployment_id: deployment.clone(),
                    second,
                    concurrency_micros: concurrency.micros(),
                    requests: entry.arrivals.remove(&second).unwrap_or(0),
                    queued: entry.queued,
                });
            }
            let idle =
                entry.meter.in_flight() == 0 && at.saturating_sub(entry.last_active) > REPORT_FOR;
            !idle
        });
        samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn requests_become_time_weighted_samples_per_second() {
        let m = Meters::default();
        // Two requests of 500 ms in second 100: 1.0; one queued request
        // spanning second 101 entirely: 1.0.
        m.start_at("d", secs(100.0));
        m.finish("d", secs(100.5));
        m.start_at("d", secs(100.5));
        m.finish("d", secs(101.0));
        m.start_at("d", secs(101.0));
        m.set_queued("d", 1);
        let samples = m.take(secs(102.0));
        let got: Vec<_> = samples
            .iter()
            .map(|s| (s.second, s.concurrency_micros, s.requests, s.queued))
            .collect();
        assert_eq!(got, [(100, 1_000_000, 2, 1), (101, 1_000_000, 1, 1)]);
        assert_eq!(m.in_flight("d"), 1);
        m.finish("d", secs(102.25));
        let next = m.take(secs(103.0));
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].concurrency_micros, 250_000);
    }

    #[test]
    fn idle_deployments_are_reported_as_zero_then_forgotten() {
        let m = Meters::default();
        m.start_at("d", secs(10.0));
        m.finish("d", secs(10.1));
        let zeros = m.take(secs(20.0));
        assert_eq!(zeros.len(), 10);
        assert!(zeros[1..].iter().all(|s| s.concurrency_micros == 0));
        let later = 10.1 + REPORT_FOR.as_secs_f64() + 1.0;
        assert!(!m.take(secs(later)).is_empty());
        assert!(m.take(secs(later + 5.0)).is_empty(), "forgotten");
    }

    #[test]
    fn a_guard_counts_until_dropped() {
        let m = Meters::default();
        let guard = m.start("d");
        assert_eq!(m.in_flight("d"), 1);
        drop(guard);
        assert_eq!(m.in_flight("d"), 0);
    }
}
