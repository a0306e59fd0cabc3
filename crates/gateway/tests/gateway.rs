//! The gateway against a real in-process store and controller. Replicas are
//! small in-process HTTP servers; a fake worker (this test) turns the
//! placer's Pending replicas into Ready ones with their endpoints, so the
//! whole loop runs: request → activator → wake → decision → placement →
//! Ready → release → proxy, and reports → decisions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use prost::Message;
use tidal_controller::controller::{Controller, ControllerOptions};
use tidal_gateway::activator::ActivatorOptions;
use tidal_gateway::{Gateway, GatewayOptions};
use tidal_proto::pb;
use tidal_store::Request;
use tidal_store::app::{LeaseKind, Outcome, Precondition, Table};
use tidal_store::client::Client;
use tidal_store::node::StoreNode;
use tidal_types::AutoscalingSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

/// A replica: answers `/predict` with its name after `delay_ms`.
struct FakeReplica {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

async fn fake_replica(name: &str, delay_ms: Arc<AtomicU64>) -> FakeReplica {
    let name = name.to_owned();
    let app = Router::new().route(
        "/predict",
        post(move |body: String| {
            let (name, delay) = (name.clone(), Arc::clone(&delay_ms));
            async move {
                tokio::time::sleep(Duration::from_millis(delay.load(Ordering::Relaxed))).await;
                format!("{{\"replica\":\"{name}\",\"echo\":{body}}}")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    FakeReplica { addr, task }
}

/// One HTTP/1.1 exchange (`Connection: close`): status, headers, body.
async fn http(addr: SocketAddr, path: &str, body: &str) -> (u16, String, String) {
    http_with(addr, path, body, "").await
}

/// Like [`http`], with extra header lines (each ending in `\r\n`).
async fn http_with(
    addr: SocketAddr,
    path: &str,
    body: &str,
    headers: &str,
) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

async fn put(client: &Client, table: Table, key: &str, value: Vec<u8>) {
    let w = client
        .write(&Request::put(table, key, value, Precondition::None, None))
        .await
        .unwrap();
    assert!(matches!(w.outcome, Outcome::Written { .. }), "{w:?}");
}

async fn deployment(client: &Client, id: &str, settings: AutoscalingSettings, inactive: bool) {
    let status = if inactive {
        pb::DeploymentStatus::Inactive
    } else {
        pb::DeploymentStatus::Active
    };
    let record = pb::DeploymentRecord {
        deployment: Some(pb::Deployment {
            id: id.into(),
            model_id: "m".into(),
            is_production: id == "d1",
            status: status.into(),
            autoscaling_settings: Some(settings.into()),
            ..Default::default()
        }),
        resources: Some(pb::DeploymentResources {
            cpu_millis: 100,
            memory_bytes: 1 << 20,
            ..Default::default()
        }),
        ..Default::default()
    };
    put(client, Table::Deployments, id, record.encode_to_vec()).await;
}

/// Registers worker "fake" (big, live for a minute).
async fn fake_worker_node(client: &Client) {
    let node = pb::WorkerNode {
        id: "fake".into(),
        region: "local".into(),
        cpu_millis: 64_000,
        memory_bytes: 64 << 30,
        schedulable: true,
        ..Default::default()
    };
    put(client, Table::WorkerNodes, "fake", node.encode_to_vec()).await;
    let grant = Request::grant_lease(LeaseKind::Node, "fake", "fake", 60_000);
    assert!(matches!(
        client.write(&grant).await.unwrap().outcome,
        Outcome::LeaseGranted { .. }
    ));
}

/// Plays the worker: every Pending replica becomes Ready at one of the
/// fake replicas' endpoints (round robin) after `delay`, while `on`.
fn fake_worker(
    client: Client,
    endpoints: Vec<SocketAddr>,
    delay: Duration,
    on: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut next = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if !on.load(Ordering::Relaxed) {
                continue;
            }
            let Ok((rows, _)) = client.list(Table::Replicas, "").await else {
                continue;
            };
            for (id, kv) in rows {
                let mut r = pb::Replica::decode(kv.value.as_slice()).unwrap();
                if r.phase != i32::from(pb::ReplicaPhase::Pending) || r.stop_requested {
                    continue;
                }
                tokio::time::sleep(delay).await;
                r.phase = pb::ReplicaPhase::Ready.into();
                r.endpoint = endpoints[next % endpoints.len()].to_string();
                next += 1;
                let put = Request::put(
                    Table::Replicas,
                    &id,
                    r.encode_to_vec(),
                    Precondition::ModRevision(kv.mod_revision),
                    None,
                );
                let _ = client.write(&put).await;
            }
        }
    })
}

async fn desired(client: &Client, id: &str) -> u32 {
    let (kv, _) = client.get(Table::Deployments, id).await.unwrap();
    pb::DeploymentRecord::decode(kv.unwrap().value.as_slice())
        .unwrap()
        .desired_replicas
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

/// The gateway's body limit in these tests.
const MAX_BODY: usize = 4096;

struct Cluster {
    _dir: tempfile::TempDir,
    node: StoreNode,
    client: Client,
    controller: Controller,
    gateway: Gateway,
}

async fn cluster(activator: ActivatorOptions, require_key: bool) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let node = StoreNode::start_single(dir.path()).await.unwrap();
    let store = vec![node.addr().to_string()];
    let client = Client::new(&store, WAIT).unwrap();
    fake_worker_node(&client).await;
    let mut options = ControllerOptions::new("ctl", store.clone(), "127.0.0.1:0".parse().unwrap());
    options.lease_ttl = Duration::from_millis(1500);
    options.tick = Duration::from_millis(150);
    let controller = Controller::start(options).await.unwrap();
    let mut options = GatewayOptions::new("gw", store);
    options.activator = activator;
    options.require_key = require_key;
    options.max_body_bytes = MAX_BODY;
    let gateway = Gateway::start(options).await.unwrap();
    Cluster {
        _dir: dir,
        node,
        client,
        controller,
        gateway,
    }
}

impl Cluster {
    async fn stop(self) {
        self.gateway.shutdown().await;
        self.controller.shutdown().await;
        self.node.shutdown().await.unwrap();
    }
}

/// Window 10 s; a scale-down delay of 3 s, so a wake's replica is not
/// taken back before the first reports of its request arrive.
fn settings(min: u32, max: u32) -> AutoscalingSettings {
    AutoscalingSettings {
        min_replica: min,
        max_replica: max,
        autoscaling_window: 10,
        scale_down_delay: 3,
        concurrency_target: 1,
        target_utilization_percentage: 100,
        ..AutoscalingSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_at_zero_is_held_woken_and_served_then_load_is_reported() {
    let c = cluster(ActivatorOptions::default(), false).await;
    deployment(&c.client, "d1", settings(0, 4), false).await;
    let delay = Arc::new(AtomicU64::new(0));
    let replicas = [
        fake_replica("a", Arc::clone(&delay)).await,
        fake_replica("b", Arc::clone(&delay)).await,
    ];
    let on = Arc::new(AtomicBool::new(true));
    let worker = fake_worker(
        c.client.clone(),
        replicas.iter().map(|r| r.addr).collect(),
        Duration::from_millis(500),
        Arc::clone(&on),
    );
    assert_eq!(desired(&c.client, "d1").await, 0);
    let addr = c.gateway.addr();
    eventually("the gateway to know d1", || async {
        c.gateway
            .routes()
            .resolve("m", &tidal_gateway::routes::Target::Production)
            .is_ok()
    })
    .await;

    // At zero: held, the controller woken, a replica placed and made Ready.
    let (status, _, body) = http(addr, "/v1/models/m/production/predict", "[1]").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"echo\":[1]"), "{body}");
    assert!(desired(&c.client, "d1").await >= 1);
    // The request's time reaches the record (for deactivating idle ones).
    eventually("last_request_at_ms recorded", || async {
        let (kv, _) = c.client.get(Table::Deployments, "d1").await.unwrap();
        pb::DeploymentRecord::decode(kv.unwrap().value.as_slice())
            .unwrap()
            .last_request_at_ms
            > 0
    })
    .await;
    // The same deployment by id.
    let (status, _, _) = http(addr, "/v1/models/m/deployment/d1/predict", "2").await;
    assert_eq!(status, 200);

    // Sustained concurrency 3 (slow requests): the reports reach the
    // controller, which wants 3 replicas.
    delay.store(400, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..3 {
        let stop = Arc::clone(&stop);
        load.push(tokio::spawn(async move {
            let mut seen = BTreeMap::<String, u32>::new();
            while !stop.load(Ordering::Relaxed) {
                let (status, _, body) = http(addr, "/v1/models/m/production/predict", "0").await;
                assert_eq!(status, 200, "{body}");
                *seen.entry(body[..16].to_owned()).or_default() += 1;
            }
            seen
        }));
    }
    eventually("desired replicas to follow the load to 3", || async {
        desired(&c.client, "d1").await == 3
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    // The load over, the window (10 s) runs out and it returns to zero.
    eventually("desired replicas back to 0", || async {
        desired(&c.client, "d1").await == 0
    })
    .await;
    worker.abort();
    for r in replicas {
        r.task.abort();
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_outstanding_routing_and_draining_replicas_get_nothing_new() {
    let c = cluster(ActivatorOptions::default(), false).await;
    deployment(&c.client, "d1", settings(2, 2), false).await;
    let delay = Arc::new(AtomicU64::new(300));
    let replicas = [
        fake_replica("a", Arc::clone(&delay)).await,
        fake_replica("b", Arc::clone(&delay)).await,
    ];
    let on = Arc::new(AtomicBool::new(true));
    let worker = fake_worker(
        c.client.clone(),
        replicas.iter().map(|r| r.addr).collect(),
        Duration::ZERO,
        Arc::clone(&on),
    );
    eventually("two ready replicas", || async {
        c.gateway.routes().ready_count("d1") == 2
    })
    .await;
    let addr = c.gateway.addr();
    // 8 concurrent slow requests: least outstanding puts 4 on each.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            http(addr, "/v1/models/m/production/predict", "0").await
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut per = BTreeMap::<bool, u32>::new();
    for t in tasks {
        let (status, _, body) = t.await.unwrap();
        assert_eq!(status, 200);
        *per.entry(body.contains("\"a\"")).or_default() += 1;
    }
    assert_eq!(per, BTreeMap::from([(false, 4), (true, 4)]));

    // One replica drains: every new request goes to the other.
    on.store(false, Ordering::Relaxed);
    let (rows, _) = c.client.list(Table::Replicas, "").await.unwrap();
    let (id, kv) = rows
        .iter()
        .find(|(_, kv)| {
            pb::Replica::decode(kv.value.as_slice()).unwrap().endpoint
                == replicas[0].addr.to_string()
        })
        .unwrap();
    let mut r = pb::Replica::decode(kv.value.as_slice()).unwrap();
    r.phase = pb::ReplicaPhase::Draining.into();
    r.endpoint.clear();
    let put = Request::put(
        Table::Replicas,
        id,
        r.encode_to_vec(),
        Precondition::ModRevision(kv.mod_revision),
        None,
    );
    c.client.write(&put).await.unwrap();
    eventually("one ready replica", || async {
        c.gateway.routes().ready_count("d1") == 1
    })
    .await;
    delay.store(0, Ordering::Relaxed);
    for _ in 0..10 {
        let (status, _, body) = http(addr, "/v1/models/m/production/predict", "0").await;
        assert_eq!(status, 200);
        assert!(body.contains("\"b\""), "{body}");
    }
    worker.abort();
    for r in replicas {
        r.task.abort();
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_are_answered_never_hung() {
    let c = cluster(
        ActivatorOptions {
            queue_size: 2,
            timeout: Duration::from_secs(3),
        },
        false,
    )
    .await;
    deployment(&c.client, "d1", settings(0, 1), false).await;
    deployment(&c.client, "off", settings(0, 1), true).await;
    eventually("the gateway to know both deployments", || async {
        c.gateway
            .routes()
            .resolve("m", &tidal_gateway::routes::Target::Deployment("off"))
            .is_ok()
            && c.gateway
                .routes()
                .resolve("m", &tidal_gateway::routes::Target::Production)
                .is_ok()
    })
    .await;
    let addr = c.gateway.addr();

    // Unknown model, unknown action, unknown path.
    let (status, _, body) = http(addr, "/v1/models/nope/production/predict", "0").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("model nope has no production deployment"),
        "{body}"
    );
    let (status, _, _) = http(addr, "/v1/models/m/production/explode", "0").await;
    assert_eq!(status, 404);
    let (status, _, body) = http(addr, "/v2/whatever", "0").await;
    assert_eq!(status, 404);
    assert!(body.contains("inference paths are"), "{body}");
    // A body over the limit: 413, before any replica is asked for.
    let big = format!("\"{}\"", "x".repeat(MAX_BODY));
    let (status, _, body) = http(addr, "/v1/models/m/production/predict", &big).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("body_too_large"), "{body}");
    // Inference paths take POST, /health GET.
    for (request, allow) in [
        ("GET /v1/models/m/production/predict", "POST"),
        ("POST /health", "GET"),
    ] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("{request} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
        assert!(
            answer
                .to_lowercase()
                .contains(&format!("allow: {}", allow.to_lowercase())),
            "{answer}"
        );
    }
    // Inactive: says how to activate.
    let (status, _, body) = http(addr, "/v1/models/m/deployment/off/predict", "0").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("deployment_inactive") && body.contains("activate"),
        "{body}"
    );

    // Wake answers 202 at once; the controller places a replica, which no
    // worker ever starts (it stays Pending).
    let (status, _, body) = http(addr, "/v1/models/m/production/wake", "").await;
    assert_eq!(status, 202, "{body}");
    // (Wakes are idempotent: asking again covers a controller whose actor
    // for d1 was not running yet.)
    eventually("a pending replica", || async {
        let _ = http(addr, "/v1/models/m/production/wake", "").await;
        c.gateway.routes().progress("d1") == Some(pb::ReplicaPhase::Pending)
    })
    .await;
    // Two requests wait, the third is refused at once with Retry-After,
    // the two time out with a 504 naming the phase.
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(async move { http(addr, "/v1/models/m/production/predict", "0").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, head, body) = http(addr, "/v1/models/m/production/predict", "0").await;
    assert_eq!(status, 503, "{body}");
    assert!(head.to_lowercase().contains("retry-after: 5"), "{head}");
    assert!(body.contains("queue_full"), "{body}");
    for w in waiting {
        let (status, _, body) = w.await.unwrap();
        assert_eq!(status, 504, "{body}");
        assert!(
            body.contains("deployment d1 had no ready replica"),
            "{body}"
        );
        assert!(body.contains("its furthest replica was pending"), "{body}");
    }

    // A replica that dies mid-request: 502, not a hang.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dying = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0; 4096];
            let _ = s.read(&mut buf).await;
            drop(s); // closes without an answer
        }
    });
    // The pending replica (as a worker would) becomes Ready at that address.
    eventually("a pending replica made ready", || async {
        let (rows, _) = c.client.list(Table::Replicas, "").await.unwrap();
        let Some((id, kv, mut r)) = rows.into_iter().find_map(|(id, kv)| {
            let r = pb::Replica::decode(kv.value.as_slice()).unwrap();
            (r.deployment_id == "d1" && !r.stop_requested).then_some((id, kv, r))
        }) else {
            return false;
        };
        r.phase = pb::ReplicaPhase::Ready.into();
        r.endpoint = dying.to_string();
        let put = Request::put(
            Table::Replicas,
            &id,
            r.encode_to_vec(),
            Precondition::ModRevision(kv.mod_revision),
            None,
        );
        matches!(
            c.client.write(&put).await.unwrap().outcome,
            Outcome::Written { .. }
        )
    })
    .await;
    eventually("the dying replica routed", || async {
        c.gateway.routes().ready_count("d1") == 1
    })
    .await;
    let (status, _, body) = http(addr, "/v1/models/m/production/predict", "0").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("replica_failed"), "{body}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inference_needs_a_key_with_the_inference_scope() {
    let c = cluster(ActivatorOptions::default(), true).await;
    deployment(&c.client, "d1", settings(1, 1), false).await;
    let delay = Arc::new(AtomicU64::new(0));
    let replica = fake_replica("a", delay).await;
    let on = Arc::new(AtomicBool::new(true));
    let worker = fake_worker(c.client.clone(), vec![replica.addr], Duration::ZERO, on);
    eventually("a ready replica", || async {
        c.gateway.routes().ready_count("d1") == 1
    })
    .await;
    let inference = tidal_auth::create(&c.client, "infer", &[tidal_auth::Scope::Inference])
        .await
        .unwrap();
    let management = tidal_auth::create(&c.client, "admin", &[tidal_auth::Scope::Management])
        .await
        .unwrap();
    let addr = c.gateway.addr();
    let path = "/v1/models/m/production/predict";
    let with = |h: String| async move { http_with(addr, path, "1", &h).await };

    let (status, _, body) = http(addr, path, "1").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("missing_api_key"), "{body}");
    let (status, _, body) = with("Authorization: Bearer tidal_nope_nope\r\n".into()).await;
    assert_eq!(status, 401, "{body}");
    // New keys reach the gateway's ring through the store's watch, so the
    // management key is unknown (401) until the watch delivers it.
    eventually("the management key to be known (and refused)", || {
        let h = format!("Authorization: Bearer {}\r\n", management.key);
        async move { with(h).await.0 == 403 }
    })
    .await;
    let (status, _, body) = with(format!("Authorization: Bearer {}\r\n", management.key)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("inference"), "{body}");
    eventually("the inference key to work", || {
        let h = format!("Authorization: Bearer {}\r\n", inference.key);
        async move { with(h).await.0 == 200 }
    })
    .await;
    let (status, _, body) = with(format!("Authorization: Api-Key {}\r\n", inference.key)).await;
    assert_eq!(status, 200, "{body}");
    // Revoked: refused again.
    tidal_auth::revoke(&c.client, &inference.info.id)
        .await
        .unwrap();
    eventually("the revoked key to be refused", || {
        let h = format!("Authorization: Bearer {}\r\n", inference.key);
        async move { with(h).await.0 == 401 }
    })
    .await;
    worker.abort();
    replica.task.abort();
    c.stop().await;
}
