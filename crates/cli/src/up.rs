//! `tidal up`: every role in one process, on loopback, with a persistent
//! data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::Args;
use prost::Message;
use serde::{Deserialize, Serialize};
use tidal_api::{Api, ApiOptions};
use tidal_controller::controller::{Controller, ControllerOptions};
use tidal_gateway::{Gateway, GatewayOptions};
use tidal_proto::{deployment_record, pb};
use tidal_store::Request;
use tidal_store::app::{Precondition, Table};
use tidal_store::client::Client;
use tidal_store::node::{NodeOptions, StoreNode, Tuning};
use tidal_types::{ClusterSettings, DeploymentSpec};
use tidal_worker::agent::AgentOptions;
use tidal_worker::gpu::{detect, parse_declared};
use tidal_worker::{Worker, WorkerOptions};

use crate::Failure;

/// The file in the data directory that says where everything is.
pub(crate) const CLUSTER_FILE: &str = "cluster.json";

/// Run tidal on this machine: a one-node store, a controller, a worker, a
/// gateway and the management API, all in this process on 127.0.0.1,
/// keeping their state in DATA_DIR (default ./.tidal). Writes the URLs and
/// an admin API key to DATA_DIR/cluster.json, which the CLI reads.
///
/// Ctrl-C stops it cleanly: the gateway finishes its requests, the worker
/// stops its replicas, the controller hands its shards over, the store
/// closes. Running it again on the same DATA_DIR resumes: deployments,
/// settings and keys are kept.
///
/// With --demo it also deploys the reference model as model `demo`
/// (production, min_replica 0: the first request wakes it).
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Where the store, the worker's cache and logs, and cluster.json live.
    #[arg(long, value_name = "DIR", default_value = ".tidal")]
    data_dir: PathBuf,
    /// The store's address [default: 127.0.0.1:7070, or what this data
    /// directory used before: a store keeps its address].
    #[arg(long, value_name = "HOST:PORT")]
    store_listen: Option<SocketAddr>,
    /// The gateway's address [default: 127.0.0.1:7080, or as before].
    #[arg(long, value_name = "HOST:PORT")]
    gateway_listen: Option<SocketAddr>,
    /// The management API's address [default: 127.0.0.1:7090, or as before].
    #[arg(long, value_name = "HOST:PORT")]
    api_listen: Option<SocketAddr>,
    /// Declare GPUs for the local worker, e.g. `1xH100-80GB` (otherwise
    /// detected with nvidia-smi).
    #[arg(long, value_name = "COUNTxTYPE")]
    gpus: Option<String>,
    /// Also deploy the reference model as model `demo`.
    #[arg(long)]
    demo: bool,
    /// The local worker's node id (its replica processes carry it).
    #[arg(long, value_name = "ID", default_value = "local")]
    worker_id: String,
}

/// What `tidal up` writes to DATA_DIR/cluster.json (and the CLI reads).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ClusterFile {
    /// The management API's URL.
    pub api_url: String,
    /// The gateway's URL.
    pub gateway_url: String,
    /// An admin API key (management and inference scopes).
    pub api_key: String,
    /// The store's address (host:port).
    pub store: String,
}

fn read_cluster_file(dir: &Path) -> Option<ClusterFile> {
    let text = std::fs::read_to_string(dir.join(CLUSTER_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

fn other(e: impl std::fmt::Display) -> Failure {
    Failure::Other(anyhow::anyhow!("{e}"))
}

pub(crate) fn run(args: UpArgs) -> Result<(), Failure> {
    let declared = match &args.gpus {
        Some(spec) => {
            Some(parse_declared(spec).map_err(|e| Failure::Usage(format!("--gpus: {e}")))?)
        }
        None => None,
    };
    let data_dir = std::path::absolute(&args.data_dir)
        .map_err(|e| Failure::Usage(format!("--data-dir {}: {e}", args.data_dir.display())))?;
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| Failure::input(&data_dir, format!("cannot create the data directory: {e}")))?;
    let before = read_cluster_file(&data_dir);
    let store_listen = match (args.store_listen, &before) {
        (Some(addr), _) => addr,
        (None, Some(file)) => file.store.parse().map_err(|e| {
            Failure::input(
                &data_dir.join(CLUSTER_FILE),
                format!("store address {:?}: {e}", file.store),
            )
        })?,
        (None, None) => SocketAddr::from(([127, 0, 0, 1], 7070)),
    };
    let gateway_listen = match (args.gateway_listen, &before) {
        (Some(addr), _) => addr,
        (None, Some(file)) => file
            .gateway_url
            .trim_start_matches("http://")
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 7080))),
        (None, None) => SocketAddr::from(([127, 0, 0, 1], 7080)),
    };
    let api_listen = match (args.api_listen, &before) {
        (Some(addr), _) => addr,
        (None, Some(file)) => file
            .api_url
            .trim_start_matches("http://")
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 7090))),
        (None, None) => SocketAddr::from(([127, 0, 0, 1], 7090)),
    };
    crate::init_tracing();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| Failure::Other(e.into()))?;
    runtime.block_on(async move {
        eprintln!("starting tidal in {}", data_dir.display());
        let node = StoreNode::start(NodeOptions {
            node_id: 1,
            data_dir: data_dir.join("store"),
            listen: store_listen,
            advertise: None,
            tuning: Tuning::default(),
            faults: Default::default(),
        })
        .await
        .map_err(|e| other(format!("store: {e} (another `tidal up` on this data directory or port? try --store-listen)")))?;
        if node.identity().cluster_id().is_none() {
            node.initialize().await.map_err(other)?;
            eprintln!("  store      new one-node cluster at {}", node.addr());
        } else {
            eprintln!("  store      resumed at {}", node.addr());
        }
        let store = vec![node.addr().to_string()];
        let client = Client::new(&store, Duration::from_secs(10)).map_err(other)?;
        wait_for_leader(&client).await?;

        let controller = Controller::start(ControllerOptions::new(
            "local",
            store.clone(),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        ))
        .await
        .map_err(|e| other(format!("controller: {e}")))?;
        eprintln!("  controller {}", controller.addr());

        let gpus = match declared {
            Some(inventory) => inventory,
            None => detect().await.map_err(|e| other(format!("detecting GPUs: {e}")))?,
        };
        let agent = AgentOptions::new(args.worker_id.clone(), store.clone(), String::new());
        let mut agent = agent;
        agent.gpus = gpus;
        eprintln!("  worker     registering (a previous run's lease, if it crashed, is waited out: up to 11 s)");
        let worker = Worker::start(WorkerOptions::new(agent, data_dir.join("worker")))
            .await
            .map_err(|e| other(format!("worker: {e}")))?;
        eprintln!("  worker     {}", worker.address());

        let mut options = GatewayOptions::new("local", store.clone());
        options.listen = gateway_listen;
        let gateway = Gateway::start(options)
            .await
            .map_err(|e| other(format!("gateway: {e} (try --gateway-listen)")))?;
        let mut api_options = ApiOptions::new(store.clone());
        api_options.listen = api_listen;
        let api = Api::start(api_options)
            .await
            .map_err(|e| other(format!("management API: {e} (try --api-listen)")))?;
        let api_key = admin_key(&client, before.as_ref()).await?;
        let file = ClusterFile {
            api_url: format!("http://{}", api.addr()),
            gateway_url: format!("http://{}", gateway.addr()),
            api_key,
            store: node.addr().to_string(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(other)?;
        std::fs::write(data_dir.join(CLUSTER_FILE), format!("{text}\n")).map_err(other)?;

        if args.demo {
            deploy_demo(&client, &data_dir).await?;
        }
        println!("tidal is up (data in {})", data_dir.display());
        println!("  api      {}", file.api_url);
        println!("  gateway  {}", file.gateway_url);
        println!("  store    {}", file.store);
        println!("  api key  {} (management and inference)", file.api_key);
        println!("  written to {}", data_dir.join(CLUSTER_FILE).display());
        if args.demo {
            println!(
                "try:  curl -s -X POST {}/v1/models/demo/production/predict -H 'Authorization: Bearer {}' -d '{{\"input\": [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]}}'",
                file.gateway_url, file.api_key
            );
        }
        println!("Ctrl-C stops everything.");

        tokio::select! {
            () = crate::server::wait_for_signal() => {}
            reason = node.failed() => {
                eprintln!("the store stopped: {reason}; stopping");
            }
        }
        eprintln!("stopping: gateway and API");
        gateway.shutdown().await;
        api.shutdown().await;
        eprintln!("stopping: worker (its replicas first)");
        worker.shutdown().await;
        eprintln!("stopping: controller");
        controller.shutdown().await;
        eprintln!("stopping: store");
        node.shutdown().await.map_err(other)?;
        eprintln!("stopped");
        Ok(())
    })
}

/// The admin key of a previous run (if the store still has it), or a new
/// one with both scopes.
async fn admin_key(client: &Client, before: Option<&ClusterFile>) -> Result<String, Failure> {
    if let Some(file) = before.filter(|f| !f.api_key.is_empty()) {
        let keys = tidal_auth::list(client).await.map_err(other)?;
        let known = tidal_auth::key::parse_key(&file.api_key)
            .ok()
            .is_some_and(|parsed| keys.iter().any(|k| k.id == parsed.id && !k.revoked));
        if known {
            return Ok(file.api_key.clone());
        }
    }
    let scopes = [tidal_auth::Scope::Management, tidal_auth::Scope::Inference];
    let created = tidal_auth::create(client, "tidal up admin", &scopes)
        .await
        .map_err(other)?;
    eprintln!(
        "  api key    created {} (admin: management and inference)",
        created.info.id
    );
    Ok(created.key)
}

/// Waits until the store answers a linearizable read (it has a leader).
async fn wait_for_leader(client: &Client) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match client.get(Table::ClusterSettings, "-").await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(other(format!("the store did not come up: {e}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Generates the demo model (once) and deploys it as model `demo`,
/// promoted to production, unless it is already deployed.
async fn deploy_demo(client: &Client, data_dir: &Path) -> Result<(), Failure> {
    let (existing, _) = client
        .get(Table::Deployments, "demo-v1")
        .await
        .map_err(other)?;
    if existing.is_some() {
        eprintln!("  demo       already deployed (model demo, deployment demo-v1)");
        return Ok(());
    }
    let dir = data_dir.join("demo");
    if !dir.join("model.safetensors").exists() {
        tidal_model::generate::generate(&dir, 20_000, 0).map_err(|e| {
            other(format!(
                "generating the demo model in {}: {e}",
                dir.display()
            ))
        })?;
    }
    let exe = std::env::current_exe().map_err(other)?;
    let spec = serde_json::json!({
        "model": "demo",
        "deployment": "demo-v1",
        "autoscaling_settings": {
            "min_replica": 0, "max_replica": 3, "concurrency_target": 2,
            "autoscaling_window": 60, "scale_down_delay": 60
        },
        "resources": {"cpu_millis": 250, "memory_bytes": 268_435_456},
        "command": [exe.display().to_string(), "model", "serve"],
        "env": {"TIDAL_MODEL_DELAY_MS": "200", "TIDAL_MODEL_HOST": "127.0.0.1"},
        "ready_timeout_secs": 60,
        "stop_grace_secs": 10,
        "weights": [{"name": "model.safetensors", "path": "model.safetensors"}]
    });
    let mut spec = DeploymentSpec::from_json(&spec.to_string(), &dir, &ClusterSettings::default())
        .map_err(|e| other(format!("the demo spec: {e}")))?;
    crate::deploy::measure_local_weights(&mut spec).map_err(other)?;
    let mut record =
        deployment_record(&spec, &crate::deploy::rfc3339(SystemTime::now())).map_err(other)?;
    if let Some(d) = record.deployment.as_mut() {
        d.is_production = true;
        d.environment = Some("production".into());
        d.status = pb::DeploymentStatus::Active.into();
    }
    let put = Request::put(
        Table::Deployments,
        "demo-v1",
        record.encode_to_vec(),
        Precondition::MustNotExist,
        None,
    );
    client.write(&put).await.map_err(other)?;
    eprintln!(
        "  demo       deployed model demo (deployment demo-v1, production, scales from zero)"
    );
    Ok(())
}
