//! One test per sentence of the seed's "Autoscaling behavior" and "Scale to
//! zero" sections (../shared/seed-baseten-autoscaling.md), named after the
//! behaviour it checks, then DESIGN.md's extra rules, then properties.

use super::*;
use tidal_types::{AutoscalingSettings, ClusterSettings};

fn policy(json: &str) -> Policy {
    let s: AutoscalingSettings = serde_json::from_str(json).unwrap();
    Policy::new(s, &ClusterSettings::default()).unwrap()
}

fn c(v: u32) -> Concurrency {
    Concurrency::from_requests(v)
}

fn dec(text: &str) -> Concurrency {
    Concurrency::parse(text).unwrap()
}

/// Desired replicas per second for a trace of whole requests, from a fresh
/// autoscaler, one sample and one decision per second.
fn run(p: Policy, trace: &[u32]) -> Vec<u32> {
    let mut a = Autoscaler::new(p);
    (0u64..)
        .zip(trace)
        .map(|(t, &v)| {
            a.record(t, c(v));
            a.decide(t).desired
        })
        .collect()
}

/// The decision for a single second of history holding `avg`.
fn one_second(p: Policy, avg: Concurrency) -> Decision {
    let mut a = Autoscaler::new(p);
    a.record(0, avg);
    a.decide(0)
}

/// `n` copies of `v`, then `m` copies of `w`.
fn steps(parts: &[(u32, usize)]) -> Vec<u32> {
    parts
        .iter()
        .flat_map(|&(v, n)| std::iter::repeat_n(v, n))
        .collect()
}

const UNIT: &str = r#""concurrency_target": 1, "target_utilization_percentage": 100"#;

// ---- Scaling up ----

// "When the average requests per active replica exceed the concurrency target
// within the autoscaling window, more replicas are created ..."
#[test]
fn scales_up_when_average_per_replica_exceeds_concurrency_target() {
    let p = policy(&format!(
        r#"{{"max_replica": 10, "autoscaling_window": 10, {UNIT}}}"#
    ));
    let desired = run(p, &steps(&[(1, 10), (3, 10)]));
    assert_eq!(desired[9], 1, "one request per replica meets the target");
    // At second 10 the window (1..=10) averages 1.2 > 1: a second replica.
    assert_eq!(desired[10], 2);
    assert!(desired[10..].windows(2).all(|w| w[1] >= w[0]));
}

// "... until the concurrency target is met ..."
#[test]
fn scale_up_stops_once_the_concurrency_target_is_met() {
    let p = policy(&format!(
        r#"{{"max_replica": 10, "autoscaling_window": 10, {UNIT}}}"#
    ));
    let desired = run(p, &steps(&[(3, 40)]));
    assert!(desired.iter().all(|&d| d == 3), "{desired:?}");
}

// "... or the maximum replica count is reached."
#[test]
fn scale_up_stops_at_max_replica() {
    let p = policy(&format!(
        r#"{{"max_replica": 5, "autoscaling_window": 10, {UNIT}}}"#
    ));
    let d = one_second(p, c(30));
    assert_eq!(
        (d.desired, d.load_replicas, d.reason),
        (5, 30, Reason::MaxReplica)
    );
}

// "... the amount of headroom is determined by the target utilization percentage."
#[test]
fn headroom_is_set_by_target_utilization_percentage() {
    let at = |util: u32| {
        let p = policy(&format!(
            r#"{{"max_replica": 10, "concurrency_target": 10, "target_utilization_percentage": {util}}}"#
        ));
        one_second(p, c(20)).desired
    };
    // A higher number means less headroom and fewer replicas.
    assert_eq!(at(100), 2);
    assert_eq!(at(70), 3);
    assert_eq!(at(50), 4);
    assert_eq!(at(25), 8);
}

// "... with a concurrency target of 10 requests and a target utilization
// percentage of 70%, scaling will begin when the average requests per active
// replica exceeds 7."
#[test]
fn target_10_at_70_percent_scales_when_average_exceeds_exactly_7() {
    let p = policy(
        r#"{"max_replica": 10, "concurrency_target": 10, "target_utilization_percentage": 70}"#,
    );
    assert_eq!(one_second(p, dec("7")).desired, 1);
    assert_eq!(one_second(p, dec("7.000001")).desired, 2);
    assert_eq!(one_second(p, dec("14")).desired, 2);
    assert_eq!(one_second(p, dec("14.000001")).desired, 3);
    // Averages over several seconds stay exact: 6, 8 → 7.0 over 2 s.
    let mut a = Autoscaler::new(p);
    a.record(0, c(6));
    a.record(1, c(8));
    assert_eq!(a.decide(1).desired, 1);
}

#[test]
fn per_replica_target_has_no_float_surprises() {
    // 3 × 0.7 is 2.0999999999999996 in f64, so 6.3 / (3 × 0.7) would round up to 4.
    let p = policy(
        r#"{"max_replica": 10, "concurrency_target": 3, "target_utilization_percentage": 70}"#,
    );
    assert_eq!(one_second(p, dec("2.1")).desired, 1);
    assert_eq!(one_second(p, dec("4.2")).desired, 2);
    assert_eq!(one_second(p, dec("6.3")).desired, 3);
    assert_eq!(one_second(p, dec("6.300001")).desired, 4);
}

#[test]
fn scale_up_is_immediate() {
    let p = policy(&format!(
        r#"{{"max_replica": 10, "autoscaling_window": 60, "scale_down_delay": 900, {UNIT}}}"#
    ));
    let desired = run(p, &steps(&[(1, 60), (200, 1)]));
    // The second the load arrives: (59 × 1 + 200) / 60 = 4.3 → 5.
    assert_eq!(desired[60], 5);
}

// ---- Scaling down ----

/// Load 3 for seconds 0..=9, then nothing; window 10 s, delay 30 s.
/// Load alone needs 3 replicas through second 12 (average 2.1), 2 through 15,
/// 1 through 18, and 0 from 19 when the last sample has left the window.
fn scale_down_case(min: u32, extra: &[(u32, usize)]) -> Vec<u32> {
    let p = policy(&format!(
        r#"{{"min_replica": {min}, "max_replica": 5, "autoscaling_window": 10, "scale_down_delay": 30, {UNIT}}}"#
    ));
    let mut trace = steps(&[(3, 10), (0, 90)]);
    for &(value, second) in extra {
        trace[second] = value;
    }
    run(p, &trace)
}

// "When traffic drops below the concurrency target, excess replicas are
// flagged for removal."
#[test]
fn replicas_in_excess_are_removed_when_traffic_drops() {
    let desired = scale_down_case(0, &[]);
    assert_eq!(desired[99], 0);
    assert_eq!(desired[43], 2);
}

// "The scale-down delay ensures that replicas are not removed prematurely."
#[test]
fn replicas_are_kept_for_the_whole_scale_down_delay() {
    let desired = scale_down_case(0, &[]);
    // The third replica was last needed at second 12: it is kept for the 30
    // seconds 13..=42 and removed at 43; likewise the second (15 → 46) and the
    // first (18 → 49).
    assert!(desired[..43].iter().all(|&d| d == 3), "{desired:?}");
    assert_eq!(&desired[43..50], &[2, 2, 2, 1, 1, 1, 0]);
}

// "If traffic spikes again before the delay ends, replicas remain active."
#[test]
fn a_spike_before_the_delay_ends_keeps_replicas() {
    // 30 requests in second 35 average 3.0 over the window until second 44.
    let desired = scale_down_case(0, &[(30, 35)]);
    assert!(desired[..75].iter().all(|&d| d == 3), "{desired:?}");
    assert_eq!(desired[75], 0);
}

// "If the minimum replica count is reached, no further scaling down occurs."
#[test]
fn scale_down_stops_at_min_replica() {
    let desired = scale_down_case(2, &[]);
    assert_eq!(&desired[43..50], &[2, 2, 2, 2, 2, 2, 2]);
    assert!(desired.iter().all(|&d| d >= 2));
}

// "A short autoscaling window with a longer scale-down delay is recommended for
// fast upscaling while maintaining capacity during temporary dips."
#[test]
fn short_window_and_long_delay_upscale_fast_and_ride_out_dips() {
    let p = policy(&format!(
        r#"{{"max_replica": 10, "autoscaling_window": 10, "scale_down_delay": 600, {UNIT}}}"#
    ));
    let trace = steps(&[(0, 10), (4, 20), (0, 60), (4, 20)]);
    let desired = run(p, &trace);
    assert_eq!(desired[12], 2, "three seconds into the load: 12/10 → 2");
    assert!(
        desired[30..90].iter().all(|&d| d == 4),
        "kept through the dip"
    );
}

// ---- Scale to zero ----

// "... when a deployed model is not receiving traffic, it scales down to zero
// replicas" — about autoscaling_window + scale_down_delay after the last request.
#[test]
fn scales_to_zero_window_plus_delay_after_last_request() {
    let p = policy("{}");
    let desired = run(p, &steps(&[(1, 100), (0, 1000)]));
    // The last request is in second 99; it leaves the 60 s window at 159, and the
    // last nonzero recommendation (158) expires after the 900 s delay.
    assert_eq!(desired[1058], 1);
    assert_eq!(desired[1059], 0);
    assert_eq!(1059, 99 + 60 + 900);
}

// "When the model is called, Baseten spins up a new instance to serve model requests."
#[test]
fn a_request_at_zero_wakes_a_replica_at_once() {
    let p = policy(r#"{"max_replica": 3, "target_utilization_percentage": 100}"#);
    let mut a = Autoscaler::new(p);
    assert_eq!(a.decide(5).desired, 0);
    let d = a.wake(5, 1);
    assert_eq!((d.desired, d.reason), (1, Reason::Wake));
    // More queued requests wake more replicas.
    let mut a = Autoscaler::new(p);
    assert_eq!(a.wake(0, 2).desired, 2);
    // With the default 70 % utilization one request is 1 / 0.7 → 2 replicas'
    // worth, capped by the default max_replica of 1.
    let mut a = Autoscaler::new(policy("{}"));
    assert_eq!(a.wake(0, 1).desired, 1);
    // The woken replica is kept for the delay even before samples arrive.
    let mut a = Autoscaler::new(p);
    a.wake(0, 1);
    assert_eq!(a.decide(899).desired, 1);
    assert_eq!(a.decide(901).desired, 0);
}

// "To turn on scale to zero, just set a deployment's minimum replica count to zero."
#[test]
fn min_replica_above_zero_never_scales_to_zero() {
    let p = policy(
        r#"{"min_replica": 1, "max_replica": 2, "scale_down_delay": 0, "target_utilization_percentage": 100}"#,
    );
    let desired = run(p, &steps(&[(1, 10), (0, 500)]));
    assert!(desired.iter().all(|&d| d == 1));
}

// "Scale to zero is enabled by default in the standard autoscaling config."
#[test]
fn scale_to_zero_is_on_by_default() {
    assert_eq!(AutoscalingSettings::default().min_replica, 0);
    let desired = run(policy("{}"), &steps(&[(1, 1), (0, 2000)]));
    assert_eq!(desired.last(), Some(&0));
}

// "When first deployed, the model starts with 1 replica (or the minimum count,
// if higher)" — the controller takes the new deployment over with that count.
#[test]
fn a_new_deployment_keeps_its_first_replica_until_window_and_delay_pass() {
    let p = policy(r#"{"autoscaling_window": 60, "scale_down_delay": 300}"#);
    let mut a = Autoscaler::take_over(p, 1, 0);
    for t in 0..360 {
        assert_eq!(a.decide(t).desired, 1, "second {t}");
    }
    assert_eq!(a.decide(360).desired, 0);
}

// ---- DESIGN.md rule 6: takeover ----

#[test]
fn takeover_never_scales_down_before_a_full_window() {
    let p = policy(r#"{"max_replica": 5, "autoscaling_window": 10, "scale_down_delay": 30}"#);
    let mut a = Autoscaler::take_over(p, 3, 100);
    let d = a.decide(100);
    assert_eq!((d.desired, d.reason), (3, Reason::Takeover));
    for t in 101..110 {
        assert_eq!(a.decide(t).desired, 3);
    }
    // The window is observed at 110; the delay then runs from the last held second.
    assert_eq!(a.decide(110).reason, Reason::ScaleDownDelay);
    assert_eq!(a.decide(139).desired, 3);
    assert_eq!(a.decide(140).desired, 0);
}

#[test]
fn takeover_scales_up_at_once_when_load_needs_it() {
    let p = policy(&format!(
        r#"{{"max_replica": 8, "autoscaling_window": 10, {UNIT}}}"#
    ));
    let mut a = Autoscaler::take_over(p, 2, 0);
    a.record(0, c(6));
    assert_eq!(a.decide(0).desired, 6);
}

// ---- Extensions: off by default, exact Baseten behaviour when off ----

fn burst_trace() -> Vec<u32> {
    steps(&[(1, 60), (10, 30)])
}

#[test]
fn burst_mode_scales_on_the_short_window() {
    let base =
        format!(r#""max_replica": 10, "autoscaling_window": 60, "scale_down_delay": 0, {UNIT}"#);
    let off = run(policy(&format!("{{{base}}}")), &burst_trace());
    let on = run(
        policy(&format!(r#"{{{base}, "burst_window": 6}}"#)),
        &burst_trace(),
    );
    assert_eq!(off[60], 2, "(59 + 10) / 60 = 1.15");
    assert_eq!(on[60], 3, "(5 + 10) / 6 = 2.5 ≥ 2 × 1 replica: burst");
    assert_eq!(on[65], 10);
    assert_eq!(off[65], 2);
    // In a burst, never down, even with no delay.
    assert!(on[60..].windows(2).all(|w| w[1] >= w[0]), "{on:?}");
}

#[test]
fn burst_mode_ends_a_window_after_the_last_trigger() {
    let p = policy(&format!(
        r#"{{"max_replica": 10, "autoscaling_window": 10, "scale_down_delay": 0, "burst_window": 2, {UNIT}}}"#
    ));
    let mut a = Autoscaler::new(p);
    let trace = steps(&[(1, 10), (8, 2), (0, 40)]);
    let mut decisions = Vec::new();
    for (t, &v) in (0u64..).zip(&trace) {
        a.record(t, c(v));
        decisions.push(a.decide(t));
    }
    assert!(decisions[10].burst);
    // (1 + 8) / 2 → 5 ≥ 2 × 1 triggers at 10; at 11, 8 < 2 × 5 does not
    // retrigger, so the burst lasts one window: seconds 10..=19.
    assert!(decisions[19].burst);
    assert!(!decisions[20].burst);
    assert_eq!(decisions[40].desired, 0);
}

#[test]
fn max_scale_down_rate_limits_removals_per_window() {
    let base =
        format!(r#""max_replica": 10, "autoscaling_window": 10, "scale_down_delay": 0, {UNIT}"#);
    let trace = steps(&[(10, 10), (0, 40)]);
    let off = run(policy(&format!("{{{base}}}")), &trace);
    assert_eq!(&off[9..20], &[10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
    let on = run(
        policy(&format!(r#"{{{base}, "max_scale_down_rate": 50}}"#)),
        &trace,
    );
    // At most half of 10 in the window 10..=19, then half of 5 (rounded up: 3),
    // then 1 of 2, then the last one.
    assert_eq!(&on[9..20], &[10, 9, 8, 7, 6, 5, 5, 5, 5, 5, 5]);
    assert!(on[20..30].iter().all(|&d| d == 2), "{on:?}");
    assert!(on[30..40].iter().all(|&d| d == 1), "{on:?}");
    assert_eq!(on[40], 0);
}

#[test]
fn lowering_max_replica_applies_at_once() {
    let p = policy(&format!(
        r#"{{"max_replica": 5, "autoscaling_window": 10, {UNIT}}}"#
    ));
    let mut a = Autoscaler::new(p);
    a.record(0, c(5));
    assert_eq!(a.decide(0).desired, 5);
    a.set_policy(policy(&format!(
        r#"{{"max_replica": 2, "autoscaling_window": 20, {UNIT}}}"#
    )));
    a.record(1, c(5));
    let d = a.decide(1);
    assert_eq!((d.desired, d.reason), (2, Reason::MaxReplica));
    assert_eq!(a.window().len(), 20);
    assert_eq!(d.average, c(5), "samples survive the window change");
}

#[test]
fn decide_is_deterministic_and_time_never_runs_back() {
    let p = policy(r#"{"max_replica": 4, "autoscaling_window": 10, "scale_down_delay": 5}"#);
    let trace = steps(&[(2, 15), (0, 30)]);
    assert_eq!(run(p, &trace), run(p, &trace));
    let mut a = Autoscaler::new(p);
    a.record(10, c(2));
    let d = a.decide(10);
    assert_eq!(a.decide(3).at, 10);
    assert_eq!(a.decide(3).desired, d.desired);
}

// ---- Properties ----

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn settings(features: bool) -> impl Strategy<Value = AutoscalingSettings> {
        (
            0u32..=3,
            1u32..=10,
            10u32..=120,
            0u32..=200,
            1u32..=5,
            1u32..=100,
            proptest::option::of(1u32..=50),
            proptest::option::of(1u32..=10),
        )
            .prop_map(
                move |(min, max, window, delay, target, util, rate, burst)| AutoscalingSettings {
                    min_replica: min.min(max),
                    max_replica: max,
                    autoscaling_window: window,
                    scale_down_delay: delay,
                    concurrency_target: target,
                    target_utilization_percentage: util,
                    max_scale_down_rate: if features { rate } else { None },
                    burst_window: if features { burst } else { None },
                    ..Default::default()
                },
            )
    }

    fn load() -> impl Strategy<Value = Vec<u64>> {
        proptest::collection::vec(
            prop_oneof![Just(0u64), 0u64..3_000_000, 0u64..40_000_000],
            1..400,
        )
    }

    fn decisions(s: AutoscalingSettings, trace: &[u64]) -> Vec<Decision> {
        let mut a = Autoscaler::new(Policy::new(s, &ClusterSettings::default()).unwrap());
        (0u64..)
            .zip(trace)
            .map(|(t, &v)| {
                a.record(t, Concurrency::from_micros(v));
                a.decide(t)
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn desired_stays_between_min_and_max(s in settings(true), trace in load(), wakes in proptest::collection::vec(0usize..400, 0..5)) {
            let mut a = Autoscaler::new(Policy::new(s, &ClusterSettings::default()).unwrap());
            for (t, &v) in (0u64..).zip(&trace) {
                a.record(t, Concurrency::from_micros(v));
                let d = if wakes.contains(&usize::try_from(t).unwrap()) { a.wake(t, 3) } else { a.decide(t) };
                prop_assert!(s.min_replica <= d.desired && d.desired <= s.max_replica, "{d:?}");
            }
        }

        #[test]
        fn scale_up_never_waits(s in settings(true), trace in load()) {
            for d in decisions(s, &trace) {
                let needed = d.load_replicas.clamp(s.min_replica, s.max_replica);
                prop_assert!(d.desired >= needed, "{d:?}");
            }
        }

        #[test]
        fn no_replica_is_removed_before_unneeded_for_the_delay(s in settings(false), trace in load()) {
            let ds = decisions(s, &trace);
            let delay = s.scale_down_delay as usize;
            for (t, d) in ds.iter().enumerate() {
                if d.desired < d.previous {
                    // Every second of the last `delay` seconds needed no more.
                    for earlier in &ds[t.saturating_sub(delay)..=t] {
                        let needed = earlier.load_replicas.clamp(s.min_replica, s.max_replica);
                        prop_assert!(needed <= d.desired, "removed at {t}: {earlier:?} → {d:?}");
                    }
                }
            }
        }

        #[test]
        fn desired_is_monotone_in_load(s in settings(false), trace in load(), extra in proptest::collection::vec(0u64..5_000_000, 400)) {
            let more: Vec<u64> = trace.iter().zip(&extra).map(|(a, b)| a + b).collect();
            let low = decisions(s, &trace);
            let high = decisions(s, &more);
            for (l, h) in low.iter().zip(&high) {
                prop_assert!(l.desired <= h.desired, "{l:?} vs {h:?}");
            }
        }

        #[test]
        fn window_average_matches_a_rescan(window in 10u32..60, trace in load()) {
            let s = AutoscalingSettings { autoscaling_window: window, max_replica: 10, ..Default::default() };
            let ds = decisions(s, &trace);
            let w = window as usize;
            for (t, d) in ds.iter().enumerate() {
                let lo = (t + 1).saturating_sub(w);
                let slice = &trace[lo..=t];
                let expected = slice.iter().map(|&v| u128::from(v)).sum::<u128>() / slice.len() as u128;
                prop_assert_eq!(u128::from(d.average.micros()), expected);
            }
        }
    }
}
