//! The decision: how many replicas a deployment should have now.
//!
//! The rules (DESIGN.md §3, after Baseten's description):
//! 1. `avg` = time-weighted average concurrency over the last
//!    `autoscaling_window` seconds (fewer at the start of history);
//! 2. `raw = ceil(avg / per_replica)` with
//!    `per_replica = concurrency_target × target_utilization_percentage / 100`,
//!    computed exactly in integers;
//! 3. `desired` = the maximum `raw` over the last `scale_down_delay` seconds,
//!    so scaling up is immediate and a replica is removed only after it has been
//!    unneeded for the whole delay;
//! 4. clamp to `[min_replica, max_replica]` (0 is allowed: scale to zero);
//! 5. a wake (a request for a deployment at zero) scales up at once;
//! 6. after a takeover, never scale down before a full window was observed.
//!
//! Optional, off unless set: burst mode (Knative's panic window) and
//! `max_scale_down_rate`.

use tidal_types::{AutoscalingSettings, ClusterSettings, InvalidSettings};

use crate::{Concurrency, MaxQueue, MetricWindow, WindowSum};

/// Validated settings with the per-replica target ready for exact arithmetic.
/// A `Policy` cannot hold invalid settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    settings: AutoscalingSettings,
}

impl Policy {
    /// Validates `settings` against the cluster's limits.
    pub fn new(
        settings: AutoscalingSettings,
        cluster: &ClusterSettings,
    ) -> Result<Self, InvalidSettings> {
        settings.validate(cluster)?;
        Ok(Self { settings })
    }

    /// The settings in force.
    pub fn settings(&self) -> &AutoscalingSettings {
        &self.settings
    }

    /// `concurrency_target × target_utilization_percentage / 100`, for display.
    pub fn per_replica(&self) -> f64 {
        f64::from(self.settings.concurrency_target)
            * f64::from(self.settings.target_utilization_percentage)
            / 100.0
    }

    /// `ceil(average / per_replica)` for a window sum, exactly:
    /// `ceil(micros × 100 / (seconds × 10⁶ × target × utilization))`.
    pub fn replicas_for(&self, sum: WindowSum) -> u32 {
        if sum.seconds == 0 || sum.micros == 0 {
            return 0;
        }
        let numerator = sum.micros.saturating_mul(100);
        let denominator = u128::from(sum.seconds)
            * u128::from(Concurrency::SCALE)
            * u128::from(self.settings.concurrency_target)
            * u128::from(self.settings.target_utilization_percentage);
        u32::try_from(numerator.div_ceil(denominator)).unwrap_or(u32::MAX)
    }

    /// Replicas needed to serve `pending` queued requests at once.
    pub fn replicas_for_requests(&self, pending: u32) -> u32 {
        self.replicas_for(WindowSum {
            micros: u128::from(Concurrency::from_requests(pending).micros()),
            seconds: 1,
        })
    }

    fn clamp(&self, replicas: u32) -> u32 {
        replicas.clamp(self.settings.min_replica, self.settings.max_replica)
    }
}

/// Why the decision is what it is. When several rules hold, the one that set
/// the final number wins, in this order: max, min, wake, rate limit, takeover,
/// burst, delay, load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Desired is what the window's load needs.
    Load,
    /// Held above the load by a recommendation less than `scale_down_delay` old.
    ScaleDownDelay,
    /// Held by a takeover that has not yet observed a full window.
    Takeover,
    /// Burst mode: scaled on the short window and not scaling down.
    Burst,
    /// Scale-down slowed by `max_scale_down_rate`.
    RateLimit,
    /// Raised to `min_replica`.
    MinReplica,
    /// Capped at `max_replica`.
    MaxReplica,
    /// Woken from zero by a request.
    Wake,
}

/// One decision: data, for the actor to carry out and the tests to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The second it was made for.
    pub at: u64,
    /// Replicas the deployment should have.
    pub desired: u32,
    /// The previous decision's `desired`.
    pub previous: u32,
    /// What the window's load alone needs (`raw`).
    pub load_replicas: u32,
    /// The window's average concurrency.
    pub average: Concurrency,
    /// The rule that set `desired`.
    pub reason: Reason,
    /// Whether burst mode is on.
    pub burst: bool,
}

impl Decision {
    /// `desired - previous`, signed.
    pub fn change(&self) -> i64 {
        i64::from(self.desired) - i64::from(self.previous)
    }
}

/// One deployment's autoscaler: the metric window, the recent
/// recommendations, and the few facts the rules need. Deterministic: every
/// method takes the time, none reads a clock, none does I/O, and each costs
/// amortised O(1) whatever the window and delay lengths.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    policy: Policy,
    window: MetricWindow,
    recommendations: MaxQueue,
    desired: u32,
    /// Rule 6: until this second, never go below `takeover_floor`.
    takeover_until: u64,
    takeover_floor: u32,
    /// Burst mode lasts until this second.
    burst_until: Option<u64>,
    /// Rate limit period: (start, replicas at the start).
    rate_period: Option<(u64, u32)>,
    last_decision: Option<u64>,
}

impl Autoscaler {
    /// A new deployment's autoscaler: it starts at `min_replica` with no history.
    pub fn new(policy: Policy) -> Self {
        let s = policy.settings;
        Self {
            policy,
            window: MetricWindow::new(s.autoscaling_window, s.burst_window),
            recommendations: MaxQueue::new(),
            desired: s.min_replica,
            takeover_until: 0,
            takeover_floor: 0,
            burst_until: None,
            rate_period: None,
            last_decision: None,
        }
    }

    /// An autoscaler taking over a deployment that has `current` replicas
    /// (controller restart, failover, or a freshly created deployment with its
    /// first replica). It keeps at least `current` replicas until it has
    /// observed a full window, and those count as recommendations, so the
    /// scale-down delay runs from there.
    pub fn take_over(policy: Policy, current: u32, now: u64) -> Self {
        let mut this = Self::new(policy);
        this.desired = policy.clamp(current);
        this.takeover_floor = current;
        this.takeover_until = now + u64::from(policy.settings.autoscaling_window);
        this.window.advance(now);
        this
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The last decision's replica count.
    pub fn desired(&self) -> u32 {
        self.desired
    }

    /// The metric window (read only).
    pub fn window(&self) -> &MetricWindow {
        &self.window
    }

    /// Replaces the settings. Samples are kept (as many as the new window
    /// holds); recommendations older than the new delay expire at the next
    /// decision.
    pub fn set_policy(&mut self, policy: Policy) {
        let (old, new) = (self.policy.settings, policy.settings);
        if (old.autoscaling_window, old.burst_window) != (new.autoscaling_window, new.burst_window)
        {
            self.window = self
                .window
                .resized(new.autoscaling_window, new.burst_window);
        }
        if new.burst_window.is_none() {
            self.burst_until = None;
        }
        if new.max_scale_down_rate.is_none() {
            self.rate_period = None;
        }
        self.policy = policy;
    }

    /// Adds a concurrency sample (a gateway's report) for `second`. Reports
    /// for the same second add up; ones older than the window are dropped.
    pub fn record(&mut self, second: u64, value: Concurrency) {
        self.window.record(second, value);
    }

    /// The decision for `now` (a second). Calling it again for the same
    /// second after more samples arrived refines it.
    pub fn decide(&mut self, now: u64) -> Decision {
        self.decide_with(now, None)
    }

    /// A request arrived for this deployment while `pending` requests (at
    /// least 1) wait: decide at once, with at least enough replicas to serve
    /// them (rule 5).
    pub fn wake(&mut self, now: u64, pending: u32) -> Decision {
        let need = self.policy.replicas_for_requests(pending.max(1)).max(1);
        self.decide_with(now, Some(need))
    }

    fn decide_with(&mut self, now: u64, wake: Option<u32>) -> Decision {
        // Time never runs backwards for the policy.
        let now = now.max(self.last_decision.unwrap_or(0));
        let s = self.policy.settings;
        self.window.advance(now);
        let window = self.window.window_sum();
        let load = self.policy.replicas_for(window);
        let previous = self.desired;
        let mut recommendation = load;
        let mut reason = Reason::Load;

        // Burst mode: scale on the short window, and never down, while a burst lasts.
        if let (Some(threshold), Some(burst_sum)) =
            (s.effective_burst_threshold(), self.window.burst_sum())
        {
            let burst_load = self.policy.replicas_for(burst_sum);
            if previous > 0
                && u64::from(burst_load) * 100 >= u64::from(threshold) * u64::from(previous)
            {
                self.burst_until = Some(now + u64::from(s.autoscaling_window));
            }
            if self.burst_until.is_some_and(|until| now < until) {
                let held = burst_load.max(previous);
                if held > recommendation {
                    recommendation = held;
                    reason = Reason::Burst;
                }
            } else {
                self.burst_until = None;
            }
        }
        if now < self.takeover_until && self.takeover_floor > recommendation {
            recommendation = self.takeover_floor;
            reason = Reason::Takeover;
        }
        if let Some(need) = wake
            && need > recommendation
        {
            recommendation = need;
            reason = Reason::Wake;
        }

        // Scale-down delay: the highest recommendation of the last delay seconds.
        let delay = u64::from(s.scale_down_delay);
        self.recommendations.push(now, recommendation, delay);
        let held = self.recommendations.max().unwrap_or(recommendation);
        let mut desired = held;
        if held > recommendation {
            reason = Reason::ScaleDownDelay;
        }

        if let Some(rate) = s.max_scale_down_rate
            && desired < previous
        {
            let window = u64::from(s.autoscaling_window);
            let (start, reference) = match self.rate_period {
                Some((start, reference)) if now < start + window => (start, reference),
                _ => (now, previous),
            };
            self.rate_period = Some((start, reference));
            let removable = (u64::from(reference) * u64::from(rate)).div_ceil(100);
            let floor =
                u32::try_from(u64::from(reference).saturating_sub(removable)).unwrap_or(u32::MAX);
            if floor > desired {
                desired = floor;
                reason = Reason::RateLimit;
            }
        }

        let clamped = self.policy.clamp(desired);
        if clamped > desired {
            reason = Reason::MinReplica;
        } else if clamped < desired {
            reason = Reason::MaxReplica;
        }
        self.desired = clamped;
        self.last_decision = Some(now);
        Decision {
            at: now,
            desired: clamped,
            previous,
            load_replicas: load,
            average: window.average(),
            reason,
            burst: self.burst_until.is_some(),
        }
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
