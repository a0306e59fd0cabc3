//! A store, the API and a management key, in-process; raw HTTP/1.1 calls;
//! records written straight into the store.

use std::net::SocketAddr;
use std::time::Duration;

use prost::Message;
use serde_json::Value;
use tidal_api::{Api, ApiOptions};
use tidal_auth::Scope;
use tidal_proto::pb;
use tidal_store::Request;
use tidal_store::app::{LeaseKind, Outcome, Precondition, Table};
use tidal_store::client::Client;
use tidal_store::node::StoreNode;
use tidal_types::AutoscalingSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const WAIT: Duration = Duration::from_secs(10);

/// One test's cluster: a store node, the API, a management key.
pub struct Cluster {
    _dir: tempfile::TempDir,
    pub node: StoreNode,
    pub client: Client,
    pub api: Api,
    /// A key with the `management` scope.
    pub key: String,
}

/// An answer: status and JSON body (`Value::Null` if none).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    /// The error's `field`, if any.
    pub fn field(&self) -> Option<&str> {
        self.body["error"]["field"].as_str()
    }

    /// The error's message.
    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or_default()
    }

    /// The error's code.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

impl Cluster {
    pub async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let node = StoreNode::start_single(dir.path()).await.unwrap();
        let client = Client::new([node.addr().to_string()], Duration::from_secs(5)).unwrap();
        let api = Api::start(ApiOptions::new(vec![node.addr().to_string()]))
            .await
            .unwrap();
        let key = new_key(&client, &api, &[Scope::Management]).await;
        Cluster {
            _dir: dir,
            node,
            client,
            api,
            key,
        }
    }

    /// A call with the management key.
    pub async fn call(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        let auth = format!("Bearer {}", self.key);
        http(self.api.addr(), method, path, Some(&auth), body).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call("GET", path, None).await
    }

    pub async fn put(&self, table: Table, key: &str, value: Vec<u8>) {
        let w = self
            .client
            .write(&Request::put(table, key, value, Precondition::None, None))
            .await
            .unwrap();
        assert!(matches!(w.outcome, Outcome::Written { .. }), "{w:?}");
    }

    /// A deployment record of `model`, ACTIVE, with `settings`.
    pub async fn deployment(
        &self,
        model: &str,
        id: &str,
        kind: Kind,
        settings: AutoscalingSettings,
    ) {
        let record = record(model, id, kind, settings);
        self.put(Table::Deployments, id, record.encode_to_vec())
            .await;
    }

    /// The stored record of deployment `id`.
    pub async fn stored(&self, id: &str) -> pb::DeploymentRecord {
        let (kv, _) = self.client.get(Table::Deployments, id).await.unwrap();
        pb::DeploymentRecord::decode(kv.unwrap().value.as_slice()).unwrap()
    }

    /// A replica record.
    pub async fn replica(&self, id: &str, deployment: &str, worker: &str, phase: pb::ReplicaPhase) {
        let r = pb::Replica {
            id: id.into(),
            deployment_id: deployment.into(),
            worker_id: worker.into(),
            phase: phase.into(),
            endpoint: if phase == pb::ReplicaPhase::Ready {
                "127.0.0.1:9".into()
            } else {
                String::new()
            },
            created_at_ms: 1000,
            history: vec![
                pb::PhaseChange {
                    phase: pb::ReplicaPhase::Pending.into(),
                    at_ms: 1000,
                },
                pb::PhaseChange {
                    phase: phase.into(),
                    at_ms: 2000,
                },
            ],
            ..Default::default()
        };
        self.put(Table::Replicas, id, r.encode_to_vec()).await;
    }

    /// The stored autoscaling settings of deployment `id`.
    pub async fn stored_settings(&self, id: &str) -> pb::AutoscalingSettings {
        self.stored(id)
            .await
            .deployment
            .unwrap()
            .autoscaling_settings
            .unwrap()
    }

    pub async fn stored_replica(&self, id: &str) -> pb::Replica {
        let (kv, _) = self.client.get(Table::Replicas, id).await.unwrap();
        pb::Replica::decode(kv.unwrap().value.as_slice()).unwrap()
    }

    /// A worker node record at `address`, with a live node lease if `live`.
    pub async fn worker(&self, id: &str, address: &str, live: bool) {
        let node = pb::WorkerNode {
            id: id.into(),
            region: "local".into(),
            address: address.into(),
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            schedulable: true,
            ..Default::default()
        };
        self.put(Table::WorkerNodes, id, node.encode_to_vec()).await;
        if live {
            self.lease(id, id).await;
        }
    }

    /// A node lease `name` held by `holder` for a minute.
    pub async fn lease(&self, name: &str, holder: &str) {
        let grant = Request::grant_lease(LeaseKind::Node, name, holder, 60_000);
        let w = self.client.write(&grant).await.unwrap();
        assert!(matches!(w.outcome, Outcome::LeaseGranted { .. }), "{w:?}");
    }

    pub async fn stop(self) {
        self.api.shutdown().await;
        self.node.shutdown().await.unwrap();
    }
}

/// Workers `w1` (live; its logs served by a [`fake_worker`], whose address
/// is returned) and `w2` (no lease, nothing listening), a live controller
/// `c1`, deployments `d1` (production) and `d2` of model `m`, and replicas
/// `r1` (Ready on w1), `r2` (Lost on w2) and `r3` (Lost on a worker that
/// has no record).
pub async fn workers_and_replicas(c: &Cluster) -> SocketAddr {
    let worker = fake_worker().await;
    c.worker("w1", &worker.to_string(), true).await;
    c.worker("w2", &dead_address().await.to_string(), false)
        .await;
    c.lease("controller:c1", "127.0.0.1:7101").await;
    c.deployment("m", "d1", Kind::Production, settings(0, 2))
        .await;
    c.deployment("m", "d2", Kind::Plain, settings(0, 2)).await;
    c.replica("r1", "d1", "w1", pb::ReplicaPhase::Ready).await;
    c.replica("r2", "d1", "w2", pb::ReplicaPhase::Lost).await;
    c.replica("r3", "d1", "gone", pb::ReplicaPhase::Lost).await;
    worker
}

/// A new key with `scopes`, once the API's ring knows it.
pub async fn new_key(client: &Client, api: &Api, scopes: &[Scope]) -> String {
    let new = tidal_auth::create(client, "test", scopes).await.unwrap();
    assert!(api.key_ring().wait_for_revision(new.revision, WAIT).await);
    new.key
}

/// What a deployment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Plain,
    Development,
    Production,
}

pub fn record(
    model: &str,
    id: &str,
    kind: Kind,
    settings: AutoscalingSettings,
) -> pb::DeploymentRecord {
    pb::DeploymentRecord {
        deployment: Some(pb::Deployment {
            id: id.into(),
            created_at: "2025-01-01T00:00:00Z".into(),
            name: id.into(),
            model_id: model.into(),
            is_production: kind == Kind::Production,
            is_development: kind == Kind::Development,
            status: pb::DeploymentStatus::Active.into(),
            autoscaling_settings: Some(settings.into()),
            environment: (kind == Kind::Production).then(|| "production".into()),
            ..Default::default()
        }),
        resources: Some(pb::DeploymentResources {
            cpu_millis: 100,
            memory_bytes: 1 << 20,
            command: "true".into(),
            ..Default::default()
        }),
        desired_replicas: 1,
        ..Default::default()
    }
}

/// Settings with `max_replica` and `min_replica`, the rest default.
pub fn settings(min: u32, max: u32) -> AutoscalingSettings {
    AutoscalingSettings {
        min_replica: min,
        max_replica: max,
        ..AutoscalingSettings::default()
    }
}

/// One HTTP/1.1 exchange (`Connection: close`).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body}"))
    };
    Answer { status, body }
}

/// A worker's gRPC service with canned logs for replica `r1`.
pub struct FakeWorker;

#[tonic::async_trait]
impl pb::worker_server::Worker for FakeWorker {
    async fn replica_logs(
        &self,
        request: tonic::Request<pb::ReplicaLogsRequest>,
    ) -> Result<tonic::Response<pb::ReplicaLogsResponse>, tonic::Status> {
        let request = request.into_inner();
        if request.replica_id != "r1" {
            return Err(tonic::Status::not_found(format!(
                "no logs of {}",
                request.replica_id
            )));
        }
        let all = ["one", "two", "three"];
        let tail = usize::try_from(request.tail_lines).unwrap();
        let lines: Vec<String> = if tail == 0 || tail >= all.len() {
            all.iter().map(|s| (*s).to_owned()).collect()
        } else {
            all[all.len() - tail..]
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        };
        Ok(tonic::Response::new(pb::ReplicaLogsResponse {
            truncated: lines.len() < all.len(),
            lines,
        }))
    }
}

pub async fn fake_worker() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::worker_server::WorkerServer::new(FakeWorker))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    addr
}

/// A port nothing listens on.
pub async fn dead_address() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}
