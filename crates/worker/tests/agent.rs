//! A node agent registers against a real (in-process) store; a controller
//! places a replica on it; when the agent dies, its node lease expires and
//! the replica is marked LOST within the lease TTL + 1 s.

use std::time::Duration;

use prost::Message;
use tidal_controller::controller::{Controller, ControllerOptions};
use tidal_proto::pb;
use tidal_store::Request;
use tidal_store::app::{Precondition, Table};
use tidal_store::client::Client;
use tidal_store::node::StoreNode;
use tidal_types::AutoscalingSettings;
use tidal_worker::agent::{Agent, AgentError, AgentOptions};
use tidal_worker::gpu::parse_declared;

const WAIT: Duration = Duration::from_secs(20);

async fn replicas(client: &Client) -> Vec<pb::Replica> {
    let (rows, _) = client.list(Table::Replicas, "").await.unwrap();
    rows.iter()
        .map(|(_, kv)| pb::Replica::decode(kv.value.as_slice()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_agents_replicas_are_marked_lost_within_ttl_plus_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let node = StoreNode::start_single(dir.path()).await.unwrap();
    let store = vec![node.addr().to_string()];
    let client = Client::new(&store, WAIT).unwrap();

    let mut options = AgentOptions::new("gpu-node-1", store.clone(), "127.0.0.1:7200");
    options.gpus = parse_declared("2xH100-80GB").unwrap();
    options.lease_ttl = Duration::from_secs(2);
    options.renew = Duration::from_millis(200);
    let agent = Agent::start(options.clone()).await.unwrap();
    // Its record, with the declared inventory labelled as such.
    let (kv, _) = client.get(Table::WorkerNodes, "gpu-node-1").await.unwrap();
    let record = pb::WorkerNode::decode(kv.unwrap().value.as_slice()).unwrap();
    assert_eq!(record.gpus.len(), 2);
    assert_eq!(record.gpu_type, "H100-80GB");
    assert!(record.gpus_declared);
    assert_eq!(record.labels["tidal.dev/gpus"], "declared");
    // A second agent with the same id is refused while the first lives.
    let twin = Agent::start(options.clone()).await;
    assert!(matches!(twin, Err(AgentError::InUse { .. })), "{twin:?}");

    // A deployment that needs one H100: placed on this node.
    let settings = AutoscalingSettings {
        min_replica: 1,
        max_replica: 2,
        autoscaling_window: 10,
        ..AutoscalingSettings::default()
    };
    let record = pb::DeploymentRecord {
        deployment: Some(pb::Deployment {
            id: "llm".into(),
            autoscaling_settings: Some(settings.into()),
            ..Default::default()
        }),
        resources: Some(pb::DeploymentResources {
            gpu_type: "H100-80GB".into(),
            gpu_count: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    let put = Request::put(
        Table::Deployments,
        "llm",
        record.encode_to_vec(),
        Precondition::MustNotExist,
        None,
    );
    client.write(&put).await.unwrap();
    let mut controller_options =
        ControllerOptions::new("ctl", store.clone(), "127.0.0.1:0".parse().unwrap());
    controller_options.lease_ttl = Duration::from_millis(1500);
    controller_options.tick = Duration::from_millis(150);
    let controller = Controller::start(controller_options).await.unwrap();
    let start = tokio::time::Instant::now();
    loop {
        let placed = replicas(&client).await;
        if placed.len() == 1 && placed[0].worker_id == "gpu-node-1" {
            break;
        }
        assert!(start.elapsed() < WAIT, "not placed: {placed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The agent dies (nothing released): LOST within TTL + 1 s.
    agent.abort();
    let died = tokio::time::Instant::now();
    loop {
        let all = replicas(&client).await;
        let lost = all
            .iter()
            .any(|r| r.worker_id == "gpu-node-1" && r.phase == i32::from(pb::ReplicaPhase::Lost));
        if lost {
            break;
        }
        assert!(
            died.elapsed() < Duration::from_secs(2 + 1),
            "not marked lost within TTL + 1 s: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("marked lost {:?} after the agent died", died.elapsed());

    // It comes back with the same id: a new lease, and a new replica here.
    let agent = Agent::start(options).await.unwrap();
    let start = tokio::time::Instant::now();
    loop {
        let all = replicas(&client).await;
        let pending = all
            .iter()
            .filter(|r| r.phase == i32::from(pb::ReplicaPhase::Pending))
            .count();
        if pending == 1 {
            break;
        }
        assert!(start.elapsed() < WAIT, "not replaced: {all:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.shutdown().await;
    controller.shutdown().await;
    node.shutdown().await.unwrap();
}
