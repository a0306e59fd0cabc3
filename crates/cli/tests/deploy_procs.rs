//! Real processes: `tidal deploy` of `examples/mlp/deployment.json` against a
//! one-node store with a controller in the same process (`tidal server
//! --controller-id`) and a `tidal worker`, as the example's README runs them;
//! and specs that `tidal deploy` refuses without writing anything.
//!
//! Every process is killed on drop, and the worker's replica processes are
//! found by their `TIDAL_WORKER_ID` mark and killed too.

mod proc_support;
mod store_support;

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use proc_support::{PREDICT, http, wait_for};
use prost::Message;
use store_support::{CONFIG, Procs, WAIT, binary, free_port, tidal};
use tidal_proto::pb;
use tidal_store::app::Table;
use tidal_store::client::Client;

/// A process killed on drop; its log's tail is printed if the test failed.
struct Proc {
    name: String,
    log: PathBuf,
    child: Child,
    /// A worker's id: its replica processes are killed too.
    worker_id: Option<String>,
}

impl Proc {
    fn spawn(name: &str, root: &Path, args: &[&str], worker_id: Option<&str>) -> Self {
        let log = root.join(format!("{name}.log"));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(binary())
            .args(args)
            .env("RUST_LOG", "warn,tidal=info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Self {
            name: name.to_owned(),
            log,
            child,
            worker_id: worker_id.map(str::to_owned),
        }
    }

    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "{} exited with {status}:\n{}",
                self.name,
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(id) = &self.worker_id {
            proc_support::kill_replicas_of(id);
        }
        if std::thread::panicking() {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!("----- {} log (last 60 lines) -----\n{tail}", self.name);
        }
    }
}

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/mlp")
}

/// The example spec copied into `dir` next to a copy of its weights, with
/// its command's program replaced by this build's `tidal`, and `edit`
/// applied. Returns the spec's path.
fn example_spec(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let text = fs::read_to_string(example_dir().join("deployment.json")).unwrap();
    let mut spec: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        spec["command"][0], "tidal",
        "the example runs `tidal model serve`"
    );
    spec["command"][0] = binary().display().to_string().into();
    edit(&mut spec);
    fs::copy(
        example_dir().join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let path = dir.join("deployment.json");
    fs::write(&path, serde_json::to_string_pretty(&spec).unwrap()).unwrap();
    path
}

fn stdout_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "tidal deploy failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn record(client: &Client, id: &str) -> Option<pb::DeploymentRecord> {
    let (kv, _) = client.get(Table::Deployments, id).await.unwrap();
    kv.map(|kv| pb::DeploymentRecord::decode(kv.value.as_slice()).unwrap())
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_example_deploys_and_its_replica_serves_predictions() {
    let root = tempfile::Builder::new()
        .prefix("tidal-deploy-e2e-")
        .tempdir()
        .unwrap();
    let root = root.path();
    let config = root.join("tidal.toml");
    fs::write(&config, CONFIG).unwrap();
    let store = format!("127.0.0.1:{}", free_port());
    let controller = format!("127.0.0.1:{}", free_port());
    let data = root.join("store");
    let mut server = Proc::spawn(
        "server",
        root,
        &[
            "server",
            "--config",
            config.to_str().unwrap(),
            "--node-id",
            "1",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &store,
            "--controller-id",
            "c1",
            "--controller-listen",
            &controller,
        ],
        None,
    );
    let client = Client::new([&store], Duration::from_secs(5)).unwrap();
    wait_for("the store node to answer", WAIT, async || {
        server.assert_alive();
        client.status().await.ok()
    })
    .await;
    let init = tidal(&["cluster", "init", "--endpoint", &store]).await;
    store_support::assert_success(&init, "cluster init");

    let worker_id = format!("w1-{}", std::process::id());
    let worker_addr = format!("127.0.0.1:{}", free_port());
    let worker_dir = root.join("worker");
    let mut worker = Proc::spawn(
        "worker",
        root,
        &[
            "worker",
            "--id",
            &worker_id,
            "--store",
            &store,
            "--listen",
            &worker_addr,
            "--data-dir",
            worker_dir.to_str().unwrap(),
            "--lease-ttl-ms",
            "2000",
            "--stop-grace-secs",
            "2",
        ],
        Some(&worker_id),
    );

    // Deploy the example (weights by a path relative to the spec).
    let spec_dir = root.join("spec");
    let spec = example_spec(&spec_dir, |_| {});
    let out = tidal(&[
        "deploy",
        "--store",
        &store,
        "--json",
        spec.to_str().unwrap(),
    ])
    .await;
    let done = stdout_json(&out);
    assert_eq!(done["action"], "created", "{done}");
    assert_eq!(done["deployment"], "mlp-v1");
    let weights = spec_dir.join("model.safetensors");
    let digest = sha256sum(&weights);
    assert_eq!(done["weights"][0]["sha256"], digest.as_str(), "{done}");
    let stored = record(&client, "mlp-v1")
        .await
        .expect("the record is stored");
    let resources = stored.resources.clone().unwrap();
    assert_eq!(resources.command, binary().display().to_string());
    assert_eq!(resources.args, ["model", "serve"]);
    assert_eq!(resources.weights, [digest.as_str()]);
    assert_eq!(
        resources.weight_files[0].url,
        format!("file://{}", weights.display())
    );
    assert_eq!(
        resources.weight_files[0].size_bytes,
        fs::metadata(&weights).unwrap().len()
    );

    // The controller wants min_replica = 1; the worker makes it Ready.
    let ready = wait_for("a Ready replica of mlp-v1", WAIT, async || {
        server.assert_alive();
        worker.assert_alive();
        let (rows, _) = client.list(Table::Replicas, "").await.ok()?;
        rows.iter()
            .map(|(_, kv)| pb::Replica::decode(kv.value.as_slice()).unwrap())
            .find(|r| r.deployment_id == "mlp-v1" && r.phase == i32::from(pb::ReplicaPhase::Ready))
    })
    .await;
    assert_eq!(ready.worker_id, worker_id);
    let (status, body) = http(&ready.endpoint, "POST", "/predict", PREDICT)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["output"].as_array().unwrap().len(), 4, "{body}");

    // Deploying it again changes nothing; a changed spec replaces the
    // stored one and keeps the controller's desired replicas.
    let again = stdout_json(
        &tidal(&[
            "deploy",
            "--store",
            &store,
            "--json",
            spec.to_str().unwrap(),
        ])
        .await,
    );
    assert_eq!(again["action"], "unchanged", "{again}");
    let desired = record(&client, "mlp-v1").await.unwrap().desired_replicas;
    assert_eq!(desired, 1);
    let changed = example_spec(&spec_dir, |s| {
        s["autoscaling_settings"]["concurrency_target"] = 3.into();
    });
    let updated = stdout_json(
        &tidal(&[
            "deploy",
            "--store",
            &store,
            "--json",
            changed.to_str().unwrap(),
        ])
        .await,
    );
    assert_eq!(updated["action"], "updated", "{updated}");
    assert_eq!(updated["desired_replicas"], 1, "{updated}");
    let stored = record(&client, "mlp-v1").await.unwrap();
    assert_eq!(stored.desired_replicas, 1);
    let settings = stored.deployment.unwrap().autoscaling_settings.unwrap();
    assert_eq!(settings.concurrency_target, 3);
}

/// A change to the example spec.
type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_spec_exits_2_naming_the_field_and_writes_nothing() {
    let mut procs = Procs::new();
    procs.form_cluster(&[1]).await;
    let store = procs.addr(1);
    let client = procs.client(&[1], Duration::from_secs(5));
    let root = procs.root().to_owned();

    let cases: [(&str, Edit, &[&str]); 3] = [
        (
            "over-max",
            Box::new(|s| s["autoscaling_settings"]["max_replica"] = 11.into()),
            &[
                "autoscaling_settings.max_replica: max_replica must be between 1 and 10",
                "got 11",
            ],
        ),
        (
            "worker-env",
            Box::new(|s| s["env"]["PORT"] = "80".into()),
            &["env.PORT: PORT is set by the worker"],
        ),
        (
            "no-weights-file",
            Box::new(|s| s["weights"][0]["path"] = "missing.safetensors".into()),
            &["weights[0].path: cannot read", "missing.safetensors"],
        ),
    ];
    for (name, edit, says) in cases {
        let spec = example_spec(&root.join(name), edit);
        let out = tidal(&["deploy", "--store", &store, spec.to_str().unwrap()]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: {}: ", spec.display())),
            "{name}: {stderr}"
        );
        for piece in says {
            assert!(stderr.contains(piece), "{name}: {piece:?} in {stderr}");
        }
        assert!(out.stdout.is_empty(), "{name}");
    }
    let (rows, _) = client.list(Table::Deployments, "").await.unwrap();
    assert!(rows.is_empty(), "nothing was written: {rows:?}");
}
