//! The placement loop against a real in-process store: replicas placed and
//! spread, an unplaceable deployment reported in its status, replicas of a
//! worker whose lease expired marked lost and replaced.

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;
use tidal_controller::controller::{Controller, ControllerOptions};
use tidal_proto::pb;
use tidal_store::Request;
use tidal_store::app::{LeaseKind, Outcome, Precondition, Table};
use tidal_store::client::Client;
use tidal_store::node::StoreNode;
use tidal_types::AutoscalingSettings;

const WAIT: Duration = Duration::from_secs(20);

async fn put(client: &Client, table: Table, key: &str, value: Vec<u8>) {
    let w = client
        .write(&Request::put(table, key, value, Precondition::None, None))
        .await
        .unwrap();
    assert!(matches!(w.outcome, Outcome::Written { .. }), "{w:?}");
}

async fn worker(client: &Client, id: &str, gpus: u32) -> u64 {
    let node = pb::WorkerNode {
        id: id.into(),
        region: "local".into(),
        gpus: (0..gpus)
            .map(|index| pb::Gpu {
                index,
                name: "H100".into(),
                ..Default::default()
            })
            .collect(),
        gpu_type: "H100".into(),
        cpu_millis: 8_000,
        memory_bytes: 64 << 30,
        schedulable: true,
        ..Default::default()
    };
    put(client, Table::WorkerNodes, id, node.encode_to_vec()).await;
    let grant = Request::grant_lease(LeaseKind::Node, id, id, 60_000);
    match client.write(&grant).await.unwrap().outcome {
        Outcome::LeaseGranted { epoch, .. } => epoch,
        other => panic!("{other:?}"),
    }
}

async fn deployment(client: &Client, id: &str, min: u32, gpu_type: &str) {
    let settings = AutoscalingSettings {
        min_replica: min,
        max_replica: 3,
        autoscaling_window: 10,
        ..AutoscalingSettings::default()
    };
    let record = pb::DeploymentRecord {
        deployment: Some(pb::Deployment {
            id: id.into(),
            autoscaling_settings: Some(settings.into()),
            ..Default::default()
        }),
        resources: Some(pb::DeploymentResources {
            gpu_type: gpu_type.into(),
            gpu_count: 1,
            cpu_millis: 1_000,
            memory_bytes: 1 << 30,
            image: "img".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    put(client, Table::Deployments, id, record.encode_to_vec()).await;
}

/// Active (not terminal, not stopping) replicas of `deployment` by worker.
async fn active(client: &Client, deployment: &str) -> BTreeMap<String, u32> {
    let (rows, _) = client.list(Table::Replicas, "").await.unwrap();
    let mut by_worker = BTreeMap::new();
    for (_, kv) in rows {
        let r = pb::Replica::decode(kv.value.as_slice()).unwrap();
        let terminal = r.phase == i32::from(pb::ReplicaPhase::Lost)
            || r.phase == i32::from(pb::ReplicaPhase::Stopped)
            || r.phase == i32::from(pb::ReplicaPhase::Failed);
        if r.deployment_id == deployment && !terminal && !r.stop_requested {
            *by_worker.entry(r.worker_id).or_default() += 1;
        }
    }
    by_worker
}

async fn status_reason(client: &Client, id: &str) -> String {
    let (kv, _) = client.get(Table::Deployments, id).await.unwrap();
    pb::DeploymentRecord::decode(kv.unwrap().value.as_slice())
        .unwrap()
        .status_reason
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_are_placed_spread_reported_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let node = StoreNode::start_single(dir.path()).await.unwrap();
    let client = Client::new([node.addr().to_string()], WAIT).unwrap();
    worker(&client, "w1", 2).await;
    let w2_epoch = worker(&client, "w2", 2).await;
    deployment(&client, "d1", 2, "H100").await;
    deployment(&client, "d2", 1, "A100").await;

    let mut options = ControllerOptions::new(
        "ctl",
        vec![node.addr().to_string()],
        "127.0.0.1:0".parse().unwrap(),
    );
    options.lease_ttl = Duration::from_millis(1500);
    options.tick = Duration::from_millis(150);
    let controller = Controller::start(options).await.unwrap();

    // min_replica 2: two replicas, one per worker.
    eventually("d1 placed on both workers", || async {
        active(&client, "d1").await == BTreeMap::from([("w1".into(), 1), ("w2".into(), 1)])
    })
    .await;
    // No A100 anywhere: said in d2's status, nothing placed.
    eventually("d2's status to say why", || async {
        status_reason(&client, "d2").await.contains("GPU type A100")
    })
    .await;
    assert!(active(&client, "d2").await.is_empty());
    assert_eq!(status_reason(&client, "d1").await, "");

    // w2 goes away: its replica is lost and replaced on w1.
    let release = Request::release_lease(LeaseKind::Node, "w2", "w2", w2_epoch);
    client.write(&release).await.unwrap();
    eventually("d1's lost replica replaced on w1", || async {
        active(&client, "d1").await == BTreeMap::from([("w1".into(), 2)])
    })
    .await;
    let (rows, _) = client.list(Table::Replicas, "").await.unwrap();
    let lost: Vec<pb::Replica> = rows
        .iter()
        .map(|(_, kv)| pb::Replica::decode(kv.value.as_slice()).unwrap())
        .filter(|r| r.phase == i32::from(pb::ReplicaPhase::Lost))
        .collect();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].worker_id, "w2");
    assert!(
        lost[0].reason.contains("lost its node lease"),
        "{}",
        lost[0].reason
    );

    controller.shutdown().await;
    node.shutdown().await.unwrap();
}

/// Marks `id` Failed (as a worker would) at `at_ms`.
async fn fail(client: &Client, id: &str, at_ms: u64) {
    let (kv, _) = client.get(Table::Replicas, id).await.unwrap();
    let mut r = pb::Replica::decode(kv.unwrap().value.as_slice()).unwrap();
    r.phase = pb::ReplicaPhase::Failed.into();
    r.phase_changed_at_ms = at_ms;
    r.reason = "replica exited before it was ready (exit status 3); last output:\nboom".into();
    put(client, Table::Replicas, id, r.encode_to_vec()).await;
}

async fn replica_ids(client: &Client, deployment: &str) -> Vec<String> {
    let (rows, _) = client.list(Table::Replicas, "").await.unwrap();
    rows.into_iter()
        .filter(|(_, kv)| {
            pb::Replica::decode(kv.value.as_slice())
                .unwrap()
                .deployment_id
                == deployment
        })
        .map(|(id, _)| id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_replicas_back_off_and_finished_records_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let node = StoreNode::start_single(dir.path()).await.unwrap();
    let client = Client::new([node.addr().to_string()], WAIT).unwrap();
    worker(&client, "w1", 2).await;
    deployment(&client, "d1", 1, "H100").await;
    let mut options = ControllerOptions::new(
        "ctl",
        vec![node.addr().to_string()],
        "127.0.0.1:0".parse().unwrap(),
    );
    options.lease_ttl = Duration::from_millis(1500);
    options.tick = Duration::from_millis(150);
    let controller = Controller::start(options).await.unwrap();
    eventually("d1 placed", || async {
        active(&client, "d1").await.len() == 1
    })
    .await;
    let first = replica_ids(&client, "d1").await;
    assert_eq!(first.len(), 1);

    // It fails now: no replacement for 10 s, and the status says why.
    fail(&client, &first[0], tidal_store::service::now_ms()).await;
    eventually("d1's status to name the crash loop", || async {
        status_reason(&client, "d1")
            .await
            .contains("replicas keep failing (1 in the last")
    })
    .await;
    let reason = status_reason(&client, "d1").await;
    assert!(
        reason.contains("last failure: replica exited before it was ready"),
        "{reason}"
    );
    // Many placement rounds (150 ms each) pass without a new replica.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        replica_ids(&client, "d1").await,
        first,
        "placed during the backoff"
    );

    // The same failure, dated 11 s ago: the backoff is over; a replacement
    // comes and the status clears.
    fail(&client, &first[0], tidal_store::service::now_ms() - 11_000).await;
    eventually("a replacement", || async {
        active(&client, "d1").await.len() == 1
    })
    .await;
    eventually("the status to clear", || async {
        status_reason(&client, "d1").await.is_empty()
    })
    .await;

    // A record failed more than an hour ago is deleted.
    fail(
        &client,
        &first[0],
        tidal_store::service::now_ms() - 3_601_000,
    )
    .await;
    eventually("the old record deleted", || async {
        !replica_ids(&client, "d1").await.contains(&first[0])
    })
    .await;

    controller.shutdown().await;
    node.shutdown().await.unwrap();
}
