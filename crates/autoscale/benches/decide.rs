//! The per-second cost of the autoscaling decision.
//!
//! `cargo bench -p tidal-autoscale --bench decide` (figures and machine in
//! `benchmarks/README.md`).
//!
//! Each case builds an [`Autoscaler`], warms it with a full window plus delay
//! of history, then measures the steady-state step the controller does once a
//! second per deployment:
//!
//! - `record_decide`: `record(t, sample)` then `decide(t)` for the next second;
//! - `decide_only`: `decide(t)` for the next second, with no samples;
//! - `rescan_baseline`: the same step done naively (sum the last `window`
//!   samples, max over the last `delay + 1` recommendations), to show that the
//!   running sums and the max-queue keep the cost flat in the window length.
//!
//! Samples come from a precomputed ring, so generating the load costs nothing.

use std::collections::VecDeque;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tidal_autoscale::{Autoscaler, Concurrency, Policy, WindowSum};
use tidal_types::{AutoscalingSettings, ClusterSettings};

/// Length of the load ring, in seconds (a power of two, longer than any window
/// plus delay measured here).
const RING: usize = 1 << 13;

/// One benchmark case.
struct Case {
    name: &'static str,
    window: u32,
    delay: u32,
    /// Burst mode (6 s) and `max_scale_down_rate` (10 %) on.
    extras: bool,
}

const CASES: [Case; 4] = [
    Case {
        name: "w60_d900",
        window: 60,
        delay: 900,
        extras: false,
    },
    Case {
        name: "w3600_d900",
        window: 3600,
        delay: 900,
        extras: false,
    },
    Case {
        name: "w3600_d3600",
        window: 3600,
        delay: 3600,
        extras: false,
    },
    Case {
        name: "w3600_d900_burst_rate",
        window: 3600,
        delay: 900,
        extras: true,
    },
];

fn policy(case: &Case) -> Policy {
    let settings = AutoscalingSettings {
        autoscaling_window: case.window,
        scale_down_delay: case.delay,
        max_replica: 10,
        min_replica: 0,
        concurrency_target: 1,
        burst_window: case.extras.then_some(6),
        max_scale_down_rate: case.extras.then_some(10),
        ..Default::default()
    };
    Policy::new(settings, &ClusterSettings::default()).expect("benchmark settings are valid")
}

/// A deterministic load between 0 and 9 requests: seeded xorshift noise under
/// a triangle envelope with a period of `RING` seconds, so that both the long
/// average and the recommendations rise and fall and the max-queue holds
/// several entries.
fn load_ring() -> Vec<Concurrency> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..RING)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let phase = u64::try_from(i).unwrap_or(0);
            let half = u64::try_from(RING / 2).unwrap_or(1);
            let rising = if phase < half {
                phase
            } else {
                2 * half - phase
            };
            let envelope = rising * 9 / half; // 0..=9
            let requests = (x >> 32) % (envelope + 1);
            Concurrency::from_requests(u32::try_from(requests).unwrap_or(0))
        })
        .collect()
}

/// The naive decision: keep every sample of the window and every
/// recommendation of the delay, and rescan them each second.
struct Rescan {
    policy: Policy,
    window: usize,
    delay: usize,
    samples: VecDeque<u64>,
    recommendations: VecDeque<u32>,
}

impl Rescan {
    fn new(policy: Policy) -> Self {
        let s = policy.settings();
        let window = usize::try_from(s.autoscaling_window).unwrap_or(usize::MAX);
        let delay = usize::try_from(s.scale_down_delay).unwrap_or(usize::MAX);
        Self {
            policy,
            window,
            delay,
            samples: VecDeque::with_capacity(window + 1),
            recommendations: VecDeque::with_capacity(delay + 2),
        }
    }

    /// One sample for the next second, then the decision for it.
    fn step(&mut self, sample: Concurrency) -> u32 {
        if self.samples.len() == self.window {
            self.samples.pop_front();
        }
        self.samples.push_back(sample.micros());
        let micros: u128 = self.samples.iter().map(|&v| u128::from(v)).sum();
        let seconds = self.samples.len() as u64;
        let load = self.policy.replicas_for(WindowSum { micros, seconds });
        if self.recommendations.len() == self.delay + 1 {
            self.recommendations.pop_front();
        }
        self.recommendations.push_back(load);
        let held = self.recommendations.iter().copied().max().unwrap_or(load);
        let s = self.policy.settings();
        held.clamp(s.min_replica, s.max_replica)
    }
}

/// An autoscaler with `window + delay` seconds of history (seconds
/// `0..warm_up`), the next second, and the next index in the ring. Without the
/// optional features, checks on the way that the rescan decides the same.
fn warmed(case: &Case, ring: &[Concurrency]) -> (Autoscaler, Rescan, u64, usize) {
    let policy = policy(case);
    let mut autoscaler = Autoscaler::new(policy);
    let mut rescan = Rescan::new(policy);
    let warm_up = u64::from(case.window) + u64::from(case.delay);
    let mut i = 0;
    let mut changes = 0;
    for t in 0..warm_up {
        autoscaler.record(t, ring[i]);
        let decision = autoscaler.decide(t);
        let naive = rescan.step(ring[i]);
        if !case.extras {
            assert_eq!(decision.desired, naive, "rescan disagrees at second {t}");
        }
        if decision.change() != 0 {
            changes += 1;
        }
        i = (i + 1) % RING;
    }
    assert!(changes > 0, "the load should move the recommendation");
    (autoscaler, rescan, warm_up, i)
}

fn bench_decide(c: &mut Criterion) {
    let ring = load_ring();
    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Elements(1));
    for case in &CASES {
        // Warmed once per case; the state carries over from one criterion
        // sample to the next, so time keeps moving forward.
        let (warm, warm_rescan, start, start_i) = warmed(case, &ring);

        let (mut autoscaler, mut t, mut i) = (warm.clone(), start, start_i);
        group.bench_function(BenchmarkId::new("record_decide", case.name), |b| {
            b.iter(|| {
                autoscaler.record(black_box(t), black_box(ring[i]));
                let decision = autoscaler.decide(black_box(t));
                t += 1;
                i = (i + 1) % RING;
                black_box(decision)
            });
        });

        let (mut autoscaler, mut t) = (warm, start);
        group.bench_function(BenchmarkId::new("decide_only", case.name), |b| {
            b.iter(|| {
                let decision = autoscaler.decide(black_box(t));
                t += 1;
                black_box(decision)
            });
        });

        if !case.extras {
            let (mut rescan, mut i) = (warm_rescan, start_i);
            group.bench_function(BenchmarkId::new("rescan_baseline", case.name), |b| {
                b.iter(|| {
                    let desired = rescan.step(black_box(ring[i]));
                    i = (i + 1) % RING;
                    black_box(desired)
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_decide);
criterion_main!(benches);
