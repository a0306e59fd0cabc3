//! Deployment actors on paused tokio time, against an in-memory store.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef, ActorStatus};
use tidal_autoscale::sim::simulate;
use tidal_autoscale::trace::Trace;
use tidal_autoscale::{Concurrency, Policy};
use tidal_controller::actor::{DeploymentActor, DeploymentArgs, DeploymentMsg};
use tidal_controller::metrics::Metrics;
use tidal_controller::port::Clock;
use tidal_store::app::Fence;

mod common;
use common::{FakeStore, Writes, paused_clock};
use tidal_types::{AutoscalingSettings, ClusterSettings};

fn settings(min: u32, max: u32, window: u32, delay: u32, target: u32) -> AutoscalingSettings {
    AutoscalingSettings {
        min_replica: min,
        max_replica: max,
        autoscaling_window: window,
        scale_down_delay: delay,
        concurrency_target: target,
        target_utilization_percentage: 100,
        ..AutoscalingSettings::default()
    }
}

async fn spawn(store: Arc<FakeStore>, clock: Clock, ticker: bool) -> ActorRef<DeploymentMsg> {
    let args = DeploymentArgs {
        deployment: "dep".into(),
        fence: Fence { shard: 3, epoch: 7 },
        store,
        clock,
        cluster: ClusterSettings::default(),
        metrics: Metrics::new(),
        ticker,
    };
    let (actor, _) = Actor::spawn(None, DeploymentActor, args).await.unwrap();
    actor
}

async fn desired(actor: &ActorRef<DeploymentMsg>) -> u32 {
    ractor::call_t!(actor, DeploymentMsg::Desired, 1000).unwrap()
}

/// Feeds `trace` to an actor second by second (its sample, then the decision
/// for that second, as the simulator does) and checks it stores exactly the
/// simulator's changes of desired replicas, at the same seconds.
async fn assert_same_decisions_as_the_simulator(s: AutoscalingSettings, trace: &Trace) {
    let policy = Policy::new(s, &ClusterSettings::default()).unwrap();
    let report = simulate(policy, trace, None);
    let expected: Writes = report
        .transitions(s.min_replica)
        .iter()
        .map(|t| (t.second, t.to))
        .collect();
    assert!(
        expected.len() >= 3,
        "the trace should scale up and down: {expected:?}"
    );
    let clock = paused_clock();
    let store = FakeStore::new(clock.clone(), "dep", s, s.min_replica);
    let actor = spawn(store.clone(), clock, false).await;
    for (second, value) in (0u64..).zip(&trace.samples) {
        actor
            .cast(DeploymentMsg::Report {
                second,
                concurrency: *value,
            })
            .unwrap();
        actor.cast(DeploymentMsg::Tick).unwrap();
        desired(&actor).await; // handled while the clock reads `second`
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(store.writes(), expected);
    actor.stop(None);
}

#[tokio::test(start_paused = true)]
async fn reports_drive_the_same_decisions_as_the_simulator() {
    let trace = Trace::parse_csv(
        "second,concurrency\n0,0\n1,3\n2,5\n3,8\n4,8\n5,8\n6,2\n7,0\n8,0\n9,0\n10,0\n11,0\n12,0\n\
         13,0\n14,0\n15,0\n16,0\n17,0\n18,0\n19,0\n20,0\n21,0\n22,0\n23,0\n24,0\n25,0\n26,0\n27,9\n28,0\n",
    )
    .unwrap();
    assert_same_decisions_as_the_simulator(settings(0, 10, 10, 5, 2), &trace).await;
}

/// The README's `tidal sim` example: examples/sim/settings.json and trace.csv.
#[tokio::test(start_paused = true)]
async fn the_example_trace_gives_the_same_decisions_as_tidal_sim() {
    let trace = Trace::parse_csv(include_str!("../../../examples/sim/trace.csv")).unwrap();
    let s = AutoscalingSettings {
        target_utilization_percentage: 70,
        ..settings(0, 5, 60, 300, 2)
    };
    assert_same_decisions_as_the_simulator(s, &trace).await;
}

#[tokio::test(start_paused = true)]
async fn scale_down_waits_for_the_delay_and_a_spike_inside_it_keeps_replicas() {
    let clock = paused_clock();
    // window 10 s, delay 30 s, one request per replica; its own 1 s ticker.
    let store = FakeStore::new(clock.clone(), "dep", settings(0, 10, 10, 30, 1), 0);
    let actor = spawn(store.clone(), clock.clone(), true).await;
    // 4 in flight during seconds 0–9, then nothing but a 1-second spike at
    // 30, inside the scale-down delay.
    for second in 0..120u64 {
        let load = match second {
            0..=9 | 30 => 4,
            _ => 0,
        };
        actor
            .cast(DeploymentMsg::Report {
                second,
                concurrency: Concurrency::from_requests(load),
            })
            .unwrap();
        if second == 9 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            assert_eq!(desired(&actor).await, 4, "{:?}", store.writes());
            tokio::time::sleep(Duration::from_millis(500)).await;
        } else {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let writes = store.writes();
    // The load needed 4 until its last second in the window (10 + 1 at
    // most): nothing goes below 4 until that recommendation is 30 s old.
    let first_down = writes.iter().find(|w| w.1 < 4).expect("it scales down").0;
    assert!((40..=43).contains(&first_down), "{writes:?}");
    // The spike (4 for one second = 0.4 over the window: 1 replica) keeps
    // at least 1 for the whole delay after it.
    let zero = writes.iter().find(|w| w.1 == 0).expect("it reaches zero").0;
    assert!(
        zero >= 30 + 30,
        "reached zero inside the spike's delay: {writes:?}"
    );
    assert!(zero <= 30 + 10 + 30 + 2, "{writes:?}");
    assert_eq!(writes.last().map(|w| w.1), Some(0));
    actor.stop(None);
}

#[tokio::test(start_paused = true)]
async fn a_wake_turns_zero_into_one_while_the_message_is_handled() {
    let clock = paused_clock();
    let store = FakeStore::new(clock.clone(), "dep", settings(0, 3, 60, 900, 1), 0);
    // No ticker: if the wake waited for a tick, nothing would ever decide.
    let actor = spawn(store.clone(), clock, false).await;
    let after = ractor::call_t!(
        actor,
        |reply| DeploymentMsg::Wake {
            pending: 1,
            reply: Some(reply)
        },
        1000
    )
    .unwrap();
    assert_eq!(after, 1);
    assert_eq!(store.writes(), vec![(0, 1)]);
    actor.stop(None);
}

#[tokio::test(start_paused = true)]
async fn a_takeover_does_not_scale_down_before_a_full_window() {
    let clock = paused_clock();
    // The store says 3; no load at all after the takeover.
    let store = FakeStore::new(clock.clone(), "dep", settings(0, 5, 20, 0, 1), 3);
    let actor = spawn(store.clone(), clock.clone(), true).await;
    tokio::time::sleep(Duration::from_secs(19)).await;
    assert_eq!(desired(&actor).await, 3);
    assert!(store.writes().is_empty(), "{:?}", store.writes());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(desired(&actor).await, 0);
    actor.stop(None);
}

#[tokio::test(start_paused = true)]
async fn a_stale_epoch_stops_the_actor_and_an_unavailable_store_is_retried() {
    let clock = paused_clock();
    let store = FakeStore::new(clock.clone(), "dep", settings(0, 5, 10, 0, 1), 0);
    let actor = spawn(store.clone(), clock.clone(), false).await;
    *store.unavailable.lock().unwrap() = true;
    actor
        .cast(DeploymentMsg::Report {
            second: 0,
            concurrency: Concurrency::from_requests(2),
        })
        .unwrap();
    actor.cast(DeploymentMsg::Tick).unwrap();
    assert_eq!(desired(&actor).await, 0, "nothing stored while unavailable");
    *store.unavailable.lock().unwrap() = false;
    actor.cast(DeploymentMsg::Tick).unwrap();
    assert_eq!(desired(&actor).await, 2, "the next tick retries");
    // Another controller took the shard: the next write is refused.
    *store.live_epoch.lock().unwrap() = 8;
    actor
        .cast(DeploymentMsg::Report {
            second: 0,
            concurrency: Concurrency::from_requests(5),
        })
        .unwrap();
    actor.cast(DeploymentMsg::Tick).unwrap();
    let start = tokio::time::Instant::now();
    while actor.get_status() != ActorStatus::Stopped {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the actor did not stop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.writes(), vec![(0, 2)]);
}

#[tokio::test(start_paused = true)]
async fn a_gap_in_reports_holds_replicas_until_a_whole_window_is_silent() {
    let clock = paused_clock();
    // window 20 s, no scale-down delay: without the gap rule, missing
    // seconds (zeros) would lower desired within a few seconds.
    let store = FakeStore::new(clock.clone(), "dep", settings(0, 10, 20, 0, 1), 0);
    let actor = spawn(store.clone(), clock.clone(), true).await;
    for second in 0..25u64 {
        actor
            .cast(DeploymentMsg::Report {
                second,
                concurrency: Concurrency::from_requests(4),
            })
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(desired(&actor).await, 4);
    // The last report arrived at this clock second.
    let last_report = clock() - 1;
    // No report at all (a paused controller, a lost stream) for 15 s.
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(desired(&actor).await, 4, "{:?}", store.writes());
    // Once a whole window has passed in silence, the zeros are believed.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let writes = store.writes();
    let first_down = writes.iter().find(|w| w.1 < 4).expect("scaled down").0;
    assert!(
        first_down >= last_report + 20,
        "{writes:?} (last report at {last_report})"
    );
    assert_eq!(desired(&actor).await, 0);
    actor.stop(None);
}
