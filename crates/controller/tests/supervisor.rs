//! The supervisor restarts a failed deployment actor with backoff; the new
//! actor rebuilds its state from the store, and the supervisor survives
//! (ractor's default would have stopped it).

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorStatus};
use tidal_autoscale::Concurrency;
use tidal_controller::actor::DeploymentMsg;
use tidal_controller::metrics::Metrics;
use tidal_controller::supervisor::{
    Routes, Supervisor, SupervisorArgs, SupervisorEvent, SupervisorMsg,
};
use tidal_store::app::Fence;
use tidal_types::{AutoscalingSettings, ClusterSettings};
use tokio::sync::mpsc;

mod common;
use common::{FakeStore, paused_clock};

fn route(routes: &Routes, deployment: &str) -> Option<ractor::ActorRef<DeploymentMsg>> {
    routes.read().unwrap().get(deployment).cloned()
}

#[tokio::test(start_paused = true)]
async fn a_failed_actor_is_restarted_from_the_store_and_a_stale_one_reports_its_shard() {
    let clock = paused_clock();
    let settings = AutoscalingSettings {
        min_replica: 0,
        max_replica: 5,
        autoscaling_window: 10,
        scale_down_delay: 0,
        concurrency_target: 1,
        target_utilization_percentage: 100,
        ..AutoscalingSettings::default()
    };
    let store = FakeStore::new(clock.clone(), "dep", settings, 3);
    let routes: Routes = Arc::default();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (supervisor, _) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            store: store.clone(),
            clock,
            cluster: ClusterSettings::default(),
            metrics: Metrics::new(),
            routes: Arc::clone(&routes),
            events: events_tx,
            ticker: false,
        },
    )
    .await
    .unwrap();
    let fence = Fence { shard: 5, epoch: 7 };
    supervisor
        .cast(SupervisorMsg::Start {
            deployment: "dep".into(),
            fence,
        })
        .unwrap();
    let count = ractor::call_t!(supervisor, SupervisorMsg::Count, 1000).unwrap();
    assert_eq!(count, 1);
    let first = route(&routes, "dep").expect("routed");

    // The next write panics inside the actor.
    *store.panic_next_write.lock().unwrap() = true;
    first
        .cast(DeploymentMsg::Report {
            second: 0,
            concurrency: Concurrency::from_requests(5),
        })
        .unwrap();
    first
        .cast(DeploymentMsg::Wake {
            pending: 5,
            reply: None,
        })
        .unwrap();
    let start = tokio::time::Instant::now();
    while first.get_status() != ActorStatus::Stopped {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the actor did not fail"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Restarted after the first backoff (100 ms), as a new actor.
    let restarted = loop {
        if let Some(actor) = route(&routes, "dep")
            && actor.get_id() != first.get_id()
        {
            break actor;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "not restarted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        start.elapsed() >= Duration::from_millis(100),
        "restarted before its backoff"
    );
    assert_eq!(supervisor.get_status(), ActorStatus::Running);
    // Its state came from the store (desired 3), not from the dead actor.
    let desired = ractor::call_t!(restarted, DeploymentMsg::Desired, 1000).unwrap();
    assert_eq!(desired, 3);
    // And it works: a wake is written.
    *store.live_epoch.lock().unwrap() = 7;
    let after = ractor::call_t!(
        restarted,
        |reply| DeploymentMsg::Wake {
            pending: 5,
            reply: Some(reply)
        },
        1000
    )
    .unwrap();
    assert_eq!(after, 5);

    // Another controller took the shard: the actor stops and the supervisor
    // reports the shard lost, without restarting the actor.
    *store.live_epoch.lock().unwrap() = 8;
    restarted
        .cast(DeploymentMsg::Settings(AutoscalingSettings {
            min_replica: 1,
            max_replica: 1,
            ..settings
        }))
        .unwrap();
    restarted.cast(DeploymentMsg::Tick).unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("a shard-lost event")
        .unwrap();
    assert_eq!(event, SupervisorEvent::ShardLost { shard: 5, epoch: 7 });
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        route(&routes, "dep").is_none(),
        "a stale actor was restarted"
    );
    let count = ractor::call_t!(supervisor, SupervisorMsg::Count, 1000).unwrap();
    assert_eq!(count, 0);
    supervisor.stop(None);
}
