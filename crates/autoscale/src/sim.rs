//! The trace simulator behind `tidal sim`: runs the policy second by second
//! over a trace and reports what it would have done.
//!
//! The decision for second `t` sees the samples of seconds `0..=t`; before
//! second 0 the deployment has `min_replica` replicas. With a cold start of
//! `S` seconds, a replica asked for at second `t` is ready from second `t + S`;
//! a scale-down removes starting replicas before ready ones.

use serde::Serialize;

use crate::trace::Trace;
use crate::{Autoscaler, Concurrency, Policy};

/// One second of the simulation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub second: u64,
    pub concurrency: f64,
    pub desired_replicas: u32,
    /// Replicas ready to serve (only with a cold start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<u32>,
}

/// Totals over the whole trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Sum over seconds of desired replicas (replicas are paid for from the
    /// moment they are asked for).
    pub replica_seconds: u64,
    pub max_replicas: u32,
    pub scale_up_events: u32,
    pub scale_down_events: u32,
    /// Only with a cold start: request-seconds beyond what the ready replicas
    /// are sized for (`ready × concurrency_target`) during seconds when a
    /// replica was starting. At zero ready replicas that is every request: the
    /// ones the gateway holds while a replica cold-starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cold_start_wait_request_seconds: Option<f64>,
}

/// The simulation's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub timeline: Vec<Step>,
    pub summary: Summary,
}

/// Replicas by the second they are (or become) ready, oldest first.
#[derive(Debug, Default)]
struct Fleet {
    ready_at: Vec<u64>,
}

impl Fleet {
    fn resize(&mut self, desired: u32, now: u64, cold_start: u64) {
        let desired = desired as usize;
        while self.ready_at.len() < desired {
            self.ready_at.push(now + cold_start);
        }
        // The newest (least ready) replicas go first.
        self.ready_at.truncate(desired);
    }

    fn ready(&self, now: u64) -> u32 {
        let n = self.ready_at.iter().filter(|&&at| at <= now).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// Runs `policy` over `trace`. `cold_start` is in seconds.
pub fn simulate(policy: Policy, trace: &Trace, cold_start: Option<u32>) -> Report {
    let mut autoscaler = Autoscaler::new(policy);
    let mut fleet = Fleet::default();
    fleet.resize(policy.settings().min_replica, 0, 0);
    let target = Concurrency::from_requests(policy.settings().concurrency_target).micros();
    let mut summary = Summary {
        replica_seconds: 0,
        max_replicas: autoscaler.desired(),
        scale_up_events: 0,
        scale_down_events: 0,
        cold_start_wait_request_seconds: cold_start.map(|_| 0.0),
    };
    let mut waited_micros: u128 = 0;
    let mut timeline = Vec::with_capacity(trace.len());
    for (second, &value) in (0u64..).zip(&trace.samples) {
        autoscaler.record(second, value);
        let decision = autoscaler.decide(second);
        let desired = decision.desired;
        match decision.change() {
            c if c > 0 => summary.scale_up_events += 1,
            c if c < 0 => summary.scale_down_events += 1,
            _ => {}
        }
        summary.replica_seconds += u64::from(desired);
        summary.max_replicas = summary.max_replicas.max(desired);
        let ready_replicas = cold_start.map(|s| {
            fleet.resize(desired, second, u64::from(s));
            let ready = fleet.ready(second);
            if (ready as usize) < fleet.ready_at.len() {
                let capacity = u64::from(ready).saturating_mul(target);
                waited_micros += u128::from(value.micros().saturating_sub(capacity));
            }
            ready
        });
        timeline.push(Step {
            second,
            concurrency: value.as_f64(),
            desired_replicas: desired,
            ready_replicas,
        });
    }
    if cold_start.is_some() {
        summary.cold_start_wait_request_seconds =
            Some(waited_micros as f64 / Concurrency::SCALE as f64);
    }
    Report { timeline, summary }
}

/// A change in desired replicas, for people: from `from` to `to` at `second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub second: u64,
    pub from: u32,
    pub to: u32,
}

impl Report {
    /// The seconds at which desired replicas changed.
    pub fn transitions(&self, initial: u32) -> Vec<Transition> {
        let mut previous = initial;
        let mut out = Vec::new();
        for step in &self.timeline {
            if step.desired_replicas != previous {
                out.push(Transition {
                    second: step.second,
                    from: previous,
                    to: step.desired_replicas,
                });
                previous = step.desired_replicas;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidal_types::{AutoscalingSettings, ClusterSettings};

    fn policy(json: &str) -> Policy {
        let s: AutoscalingSettings = serde_json::from_str(json).unwrap();
        Policy::new(s, &ClusterSettings::default()).unwrap()
    }

    fn trace(values: &[u32]) -> Trace {
        Trace {
            samples: values
                .iter()
                .map(|&v| Concurrency::from_requests(v))
                .collect(),
        }
    }

    #[test]
    fn summary_counts_replica_seconds_and_events() {
        let p = policy(r#"{"max_replica": 5, "scale_down_delay": 0, "autoscaling_window": 10}"#);
        let report = simulate(p, &trace(&[0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        let desired: Vec<u32> = report.timeline.iter().map(|s| s.desired_replicas).collect();
        // Average over 2 s is 1.0 → ceil(1/0.7) = 2; it falls as zeros join the window.
        assert_eq!(desired, [0, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]);
        assert_eq!(report.summary.replica_seconds, 11);
        assert_eq!(report.summary.max_replicas, 2);
        assert_eq!(
            (
                report.summary.scale_up_events,
                report.summary.scale_down_events
            ),
            (1, 2)
        );
        assert_eq!(report.summary.cold_start_wait_request_seconds, None);
        assert_eq!(
            report.transitions(0),
            [
                Transition {
                    second: 1,
                    from: 0,
                    to: 2
                },
                Transition {
                    second: 2,
                    from: 2,
                    to: 1
                },
                Transition {
                    second: 11,
                    from: 1,
                    to: 0
                },
            ]
        );
    }

    #[test]
    fn cold_start_delays_readiness_and_counts_waiting_requests() {
        let p = policy(r#"{"max_replica": 3, "scale_down_delay": 0, "autoscaling_window": 10}"#);
        let report = simulate(p, &trace(&[0, 1, 1, 1, 1]), Some(2));
        let ready: Vec<Option<u32>> = report.timeline.iter().map(|s| s.ready_replicas).collect();
        assert_eq!(ready, [Some(0), Some(0), Some(0), Some(1), Some(1)]);
        // Seconds 1 and 2: one request each, held while the replica starts.
        assert_eq!(report.summary.cold_start_wait_request_seconds, Some(2.0));
    }

    #[test]
    fn scale_down_removes_starting_replicas_first() {
        let mut fleet = Fleet::default();
        fleet.resize(1, 0, 0);
        fleet.resize(3, 5, 10);
        assert_eq!(fleet.ready(6), 1);
        fleet.resize(2, 6, 10);
        assert_eq!(fleet.ready(6), 1);
        assert_eq!(fleet.ready(15), 2);
    }

    // Seed, "Scale to zero": "If you're just testing your model or anticipate
    // light and inconsistent traffic, scale to zero can save you substantial
    // amounts of money."
    #[test]
    fn scale_to_zero_saves_replica_seconds_on_light_traffic() {
        // One short burst an hour, for a day.
        let mut values = vec![0; 24 * 3600];
        for hour in 0..24 {
            for s in 0..30 {
                values[hour * 3600 + s] = 1;
            }
        }
        let light = trace(&values);
        let to_zero = simulate(policy(r#"{"min_replica": 0}"#), &light, None);
        let always_on = simulate(policy(r#"{"min_replica": 1}"#), &light, None);
        assert_eq!(always_on.summary.replica_seconds, 24 * 3600);
        // Each burst keeps the replica for about 30 + 60 + 900 seconds.
        assert!(
            to_zero.summary.replica_seconds * 3 < always_on.summary.replica_seconds,
            "{} vs {}",
            to_zero.summary.replica_seconds,
            always_on.summary.replica_seconds
        );
        assert_eq!(to_zero.summary.scale_down_events, 24);
    }

    #[test]
    fn json_has_the_documented_shape() {
        let p = policy("{}");
        let report = simulate(p, &trace(&[0]), None);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "timeline": [{"second": 0, "concurrency": 0.0, "desired_replicas": 0}],
                "summary": {"replica_seconds": 0, "max_replicas": 0, "scale_up_events": 0, "scale_down_events": 0}
            })
        );
    }
}
