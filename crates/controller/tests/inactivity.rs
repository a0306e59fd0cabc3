//! Idle deployments are deactivated by the controller holding the placement
//! shard, with limits from the cluster's settings (shortened here).

use std::time::Duration;

use prost::Message;
use tidal_controller::controller::{Controller, ControllerOptions};
use tidal_proto::pb;
use tidal_store::Request;
use tidal_store::app::{Precondition, Table};
use tidal_store::client::Client;
use tidal_store::node::StoreNode;

const WAIT: Duration = Duration::from_secs(20);

async fn put(client: &Client, table: Table, key: &str, value: Vec<u8>) {
    let put = Request::put(table, key, value, Precondition::None, None);
    client.write(&put).await.unwrap();
}

async fn record(client: &Client, id: &str) -> pb::DeploymentRecord {
    let (kv, _) = client.get(Table::Deployments, id).await.unwrap();
    pb::DeploymentRecord::decode(kv.unwrap().value.as_slice()).unwrap()
}

fn deployment(id: &str, production: bool, last_request_at_ms: u64) -> pb::DeploymentRecord {
    pb::DeploymentRecord {
        deployment: Some(pb::Deployment {
            id: id.into(),
            model_id: "m".into(),
            is_production: production,
            status: pb::DeploymentStatus::Active.into(),
            ..Default::default()
        }),
        last_request_at_ms,
        ..Default::default()
    }
}

fn inactive(r: &pb::DeploymentRecord) -> bool {
    r.deployment.as_ref().unwrap().status == i32::from(pb::DeploymentStatus::Inactive)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_deployments_are_deactivated_after_the_clusters_limits() {
    let dir = tempfile::tempdir().unwrap();
    let node = StoreNode::start_single(dir.path()).await.unwrap();
    let client = Client::new([node.addr().to_string()], WAIT).unwrap();
    let config = pb::ClusterConfig {
        deactivate_development_after_secs: 3,
        deactivate_production_after_secs: 300,
        ..Default::default()
    };
    put(
        &client,
        Table::ClusterSettings,
        "cluster",
        config.encode_to_vec(),
    )
    .await;
    let now = tidal_store::service::now_ms();
    for (id, prod, last) in [
        ("dev-idle", false, now - 10_000),
        ("dev-new", false, 0),
        ("prod", true, now - 10_000),
    ] {
        put(
            &client,
            Table::Deployments,
            id,
            deployment(id, prod, last).encode_to_vec(),
        )
        .await;
    }
    let mut options = ControllerOptions::new(
        "ctl",
        vec![node.addr().to_string()],
        "127.0.0.1:0".parse().unwrap(),
    );
    options.lease_ttl = Duration::from_millis(1500);
    options.tick = Duration::from_millis(150);
    let controller = Controller::start(options).await.unwrap();

    let start = tokio::time::Instant::now();
    loop {
        let r = record(&client, "dev-idle").await;
        if inactive(&r) {
            assert!(
                r.status_reason.contains("development limit is 3 s"),
                "{}",
                r.status_reason
            );
            break;
        }
        assert!(start.elapsed() < WAIT, "dev-idle not deactivated");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Never seen: stamped by a sweep, not deactivated at once.
    let fresh = loop {
        let fresh = record(&client, "dev-new").await;
        if fresh.last_request_at_ms > 0 {
            break fresh;
        }
        assert!(start.elapsed() < WAIT, "dev-new not stamped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(fresh.last_request_at_ms >= now, "{fresh:?}");
    assert!(!inactive(&fresh));
    // Production idles for 10 s of its 300: kept.
    assert!(!inactive(&record(&client, "prod").await));
    // Three seconds after its stamp, dev-new is idle too.
    loop {
        if inactive(&record(&client, "dev-new").await) {
            break;
        }
        assert!(start.elapsed() < WAIT, "dev-new not deactivated");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!inactive(&record(&client, "prod").await));
    controller.shutdown().await;
    node.shutdown().await.unwrap();
}
