//! Real processes: a one-node store (`tidal server`), `tidal worker`s, and
//! replicas that are `tidal model serve` (the reference model) or small
//! shell scripts. The tests write replica records as the placer would (so
//! each phase is the worker's doing), except the last one, which runs a
//! `tidal controller` to mark a killed worker's replicas lost.
//!
//! Every process is killed on drop, and a worker's replica processes are
//! found by their `TIDAL_WORKER_ID` mark and killed too.

mod proc_support;
mod store_support;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proc_support::{PREDICT, http, wait_for};
use prost::Message;
use store_support::{Procs, WAIT, binary, free_port};
use tidal_proto::pb;
use tidal_store::Request;
use tidal_store::app::{Precondition, Table};
use tidal_store::client::Client;
use tidal_types::AutoscalingSettings;

/// A `tidal worker` process, killed on drop with every replica it started.
struct WorkerProc {
    id: String,
    addr: String,
    dir: PathBuf,
    log: PathBuf,
    store: String,
    extra: Vec<String>,
    child: Option<Child>,
}

impl WorkerProc {
    fn new(root: &Path, id: &str, store: &str, extra: &[&str]) -> Self {
        Self {
            id: format!("{id}-{}", std::process::id()),
            addr: format!("127.0.0.1:{}", free_port()),
            dir: root.join(format!("worker-{id}")),
            log: root.join(format!("worker-{id}.log")),
            store: store.to_owned(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
        }
    }

    /// Starts it and waits until it serves `/metrics`.
    async fn start(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(binary())
            .args(["worker", "--id", &self.id, "--store", &self.store])
            .args(["--listen", &self.addr, "--data-dir"])
            .arg(&self.dir)
            .args(["--lease-ttl-ms", "2000", "--stop-grace-secs", "2"])
            .args(&self.extra)
            .env("RUST_LOG", "warn,tidal_worker=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = self.addr.clone();
        wait_for("the worker to serve /metrics", WAIT, async || {
            if let Some(status) = self.child.as_mut()?.try_wait().unwrap() {
                panic!("worker exited with {status}:\n{}", self.log_text());
            }
            let (status, _) = http(&addr, "GET", "/metrics", "").await?;
            (status == 200).then_some(())
        })
        .await;
    }

    fn signal(&mut self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(&pid)
            .status();
        assert!(sent.unwrap().success(), "kill -{signal} {pid}");
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn metrics(&self) -> String {
        let (status, body) = http(&self.addr, "GET", "/metrics", "").await.unwrap();
        assert_eq!(status, 200);
        body
    }

    async fn logs(&self, replica: &str) -> Result<pb::ReplicaLogsResponse, tonic::Status> {
        let mut client = pb::worker_client::WorkerClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap();
        client
            .replica_logs(pb::ReplicaLogsRequest {
                replica_id: replica.into(),
                tail_lines: 0,
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        proc_support::kill_replicas_of(&self.id);
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!("----- worker {} log (last 60 lines) -----\n{tail}", self.id);
        }
    }
}

/// A one-node store; its processes and a client.
async fn store() -> (Procs, Client, String) {
    let mut procs = Procs::new();
    procs.form_cluster(&[1]).await;
    let client = procs.client(&[1], Duration::from_secs(5));
    let addr = procs.addr(1);
    (procs, client, addr)
}

/// `tidal model generate` into `dir`: the weight file as a deployment names it.
fn generate(dir: &Path) -> pb::WeightFile {
    let out = Command::new(binary())
        .args(["model", "generate", "--params", "5000", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    weight_file(&dir.join("model.safetensors"))
}

/// A weight file entry for `path` (its real size and sha256).
fn weight_file(path: &Path) -> pb::WeightFile {
    let sum = Command::new("sha256sum").arg(path).output().unwrap();
    let sum = String::from_utf8(sum.stdout).unwrap();
    pb::WeightFile {
        url: format!("file://{}", path.display()),
        size_bytes: fs::metadata(path).unwrap().len(),
        sha256: sum.split_whitespace().next().unwrap().to_owned(),
        name: "model.safetensors".into(),
    }
}

/// Resources running `tidal model serve` on `weights`.
fn model_resources(weights: pb::WeightFile, delay_ms: u32) -> pb::DeploymentResources {
    pb::DeploymentResources {
        command: binary().display().to_string(),
        args: vec!["model".into(), "serve".into()],
        env: [
            ("TIDAL_MODEL_DELAY_MS".to_owned(), delay_ms.to_string()),
            ("TIDAL_MODEL_HOST".to_owned(), "127.0.0.1".to_owned()),
        ]
        .into(),
        weight_files: vec![weights],
        ready_timeout_secs: 60,
        ..Default::default()
    }
}

/// Resources running `sh -c script`.
fn sh_resources(script: &str) -> pb::DeploymentResources {
    pb::DeploymentResources {
        command: "sh".into(),
        args: vec!["-c".into(), script.into()],
        ready_timeout_secs: 60,
        stop_grace_secs: 1,
        ..Default::default()
    }
}

async fn put_deployment(
    client: &Client,
    id: &str,
    settings: AutoscalingSettings,
    resources: pb::DeploymentResources,
) {
    let record = pb::DeploymentRecord {
        deployment: Some(pb::Deployment {
            id: id.into(),
            autoscaling_settings: Some(settings.into()),
            ..Default::default()
        }),
        resources: Some(resources),
        ..Default::default()
    };
    let put = Request::put(
        Table::Deployments,
        id,
        record.encode_to_vec(),
        Precondition::None,
        None,
    );
    client.write(&put).await.unwrap();
}

/// Writes a PENDING replica of `deployment` on `worker`, as the placer does.
async fn place(client: &Client, id: &str, deployment: &str, worker: &str) {
    let replica = pb::Replica {
        id: id.into(),
        deployment_id: deployment.into(),
        worker_id: worker.into(),
        phase: pb::ReplicaPhase::Pending.into(),
        history: vec![pb::PhaseChange {
            phase: pb::ReplicaPhase::Pending.into(),
            at_ms: 1,
        }],
        ..Default::default()
    };
    let put = Request::put(
        Table::Replicas,
        id,
        replica.encode_to_vec(),
        Precondition::MustNotExist,
        None,
    );
    client.write(&put).await.unwrap();
}

async fn replica(client: &Client, id: &str) -> Option<pb::Replica> {
    let (kv, _) = client.get(Table::Replicas, id).await.unwrap();
    kv.map(|kv| pb::Replica::decode(kv.value.as_slice()).unwrap())
}

fn phase(r: &pb::Replica) -> pb::ReplicaPhase {
    pb::ReplicaPhase::try_from(r.phase).unwrap()
}

/// Waits until replica `id` is in `want` (fails at once on another terminal phase).
async fn wait_phase(client: &Client, id: &str, want: pb::ReplicaPhase) -> pb::Replica {
    wait_for(&format!("{id} to be {want:?}"), WAIT, async || {
        let r = replica(client, id).await?;
        let p = phase(&r);
        let terminal = matches!(
            p,
            pb::ReplicaPhase::Stopped | pb::ReplicaPhase::Failed | pb::ReplicaPhase::Lost
        );
        assert!(
            p == want || !terminal,
            "{id} ended {p:?} while waiting for {want:?}: {}",
            r.reason
        );
        (p == want).then_some(r)
    })
    .await
}

/// Sets `stop_requested`, as the placer does on a scale-down.
async fn request_stop(client: &Client, id: &str) {
    let (kv, _) = client.get(Table::Replicas, id).await.unwrap();
    let kv = kv.unwrap();
    let mut r = pb::Replica::decode(kv.value.as_slice()).unwrap();
    r.stop_requested = true;
    r.reason = "scaled down".into();
    let put = Request::put(
        Table::Replicas,
        id,
        r.encode_to_vec(),
        Precondition::ModRevision(kv.mod_revision),
        None,
    );
    let written = client.write(&put).await.unwrap();
    assert!(
        matches!(written.outcome, tidal_store::app::Outcome::Written { .. }),
        "{written:?}"
    );
}

fn alive(pid: u32) -> bool {
    // A zombie has no command line left.
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_starts_serves_and_drains_with_its_slow_request_finishing() {
    let (procs, client, store) = store().await;
    let weights = generate(&procs.root().join("model"));
    put_deployment(
        &client,
        "mlp",
        AutoscalingSettings::default(),
        model_resources(weights, 1500),
    )
    .await;
    let mut worker = WorkerProc::new(procs.root(), "w1", &store, &[]);
    worker.start().await;
    place(&client, "mlp-r1", "mlp", &worker.id).await;

    let ready = wait_phase(&client, "mlp-r1", pb::ReplicaPhase::Ready).await;
    // Every phase, in order, each with a time no earlier than the last.
    let phases: Vec<pb::ReplicaPhase> = ready
        .history
        .iter()
        .map(|c| pb::ReplicaPhase::try_from(c.phase).unwrap())
        .collect();
    use pb::ReplicaPhase as P;
    assert_eq!(
        phases,
        [P::Pending, P::Fetching, P::Starting, P::Loading, P::Ready]
    );
    assert!(ready.history.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    assert_eq!(ready.phase_changed_at_ms, ready.history[4].at_ms);
    assert!(ready.pid > 0 && alive(ready.pid));

    // It serves a prediction computed from the loaded weights.
    let (status, body) = http(&ready.endpoint, "POST", "/predict", PREDICT)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["output"].as_array().unwrap().len(), 4, "{body}");

    // Its output, through the worker: the model's load line.
    let logs = worker.logs("mlp-r1").await.unwrap();
    assert!(
        logs.lines
            .iter()
            .any(|l| l.contains("[Coldboost] Completed model.load() execution in")),
        "{:?}",
        logs.lines
    );
    let missing = worker.logs("nope").await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    // Each phase's duration is a histogram.
    let metrics = worker.metrics().await;
    for phase in ["pending", "fetching", "starting", "loading"] {
        let series = format!("tidal_worker_phase_duration_seconds_count{{phase=\"{phase}\"}} 1");
        assert!(metrics.contains(&series), "{series} in\n{metrics}");
    }

    // A slow request is in flight when the stop comes; it still completes.
    let endpoint = ready.endpoint.clone();
    let slow = tokio::spawn(async move { http(&endpoint, "POST", "/predict", PREDICT).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    request_stop(&client, "mlp-r1").await;
    wait_phase(&client, "mlp-r1", P::Draining).await;
    let (status, body) = slow
        .await
        .unwrap()
        .expect("the in-flight request got an answer");
    assert_eq!(status, 200, "{body}");
    let stopped = wait_phase(&client, "mlp-r1", P::Stopped).await;
    assert!(
        stopped.reason.contains("scaled down") && stopped.reason.contains("exited after SIGTERM"),
        "{}",
        stopped.reason
    );
    assert_eq!(stopped.exit_code, Some(0), "{stopped:?}");
    assert!(stopped.endpoint.is_empty() && stopped.pid == 0);
    let tail: Vec<_> = stopped.history[5..]
        .iter()
        .map(|c| pb::ReplicaPhase::try_from(c.phase).unwrap())
        .collect();
    assert_eq!(tail, [P::Draining, P::Stopped]);
    assert!(!alive(ready.pid), "the replica process is gone");
    let metrics = worker.metrics().await;
    assert!(metrics.contains("tidal_worker_phase_duration_seconds_count{phase=\"ready\"} 1"));

    // A graceful worker stop leaves nothing behind.
    worker.signal("TERM");
    let mut child = worker.child.take().unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(tidal_worker::orphans::find(&worker.id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_are_reported_with_their_reason() {
    let (procs, client, store) = store().await;
    let root = procs.root().to_owned();
    let good = generate(&root.join("model"));
    let mut worker = WorkerProc::new(
        &root,
        "w2",
        &store,
        &["--gpus", "2xH100-80GB", "--label", "zone=a"],
    );
    worker.start().await;
    let w = worker.id.clone();
    let s = AutoscalingSettings::default;

    // Crashes at start: exit status and last lines.
    put_deployment(
        &client,
        "crash",
        s(),
        sh_resources("echo booting; echo 'fatal: cannot open /dev/nvidia0' >&2; exit 7"),
    )
    .await;
    // A command that does not exist.
    let mut missing = sh_resources("");
    missing.command = "/nonexistent/model-server".into();
    missing.args.clear();
    put_deployment(&client, "missing", s(), missing).await;
    // A weight file whose digest is wrong.
    let mut wrong = good.clone();
    wrong.sha256 = "0".repeat(64);
    put_deployment(&client, "digest", s(), model_resources(wrong, 0)).await;
    // A truncated safetensors file (with its true digest).
    let bytes = fs::read(root.join("model/model.safetensors")).unwrap();
    let truncated = root.join("truncated.safetensors");
    fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    put_deployment(
        &client,
        "truncated",
        s(),
        model_resources(weight_file(&truncated), 0),
    )
    .await;
    // A malformed header.
    let malformed = root.join("malformed.safetensors");
    let mut garbage = 20u64.to_le_bytes().to_vec();
    garbage.extend_from_slice(b"{not json at all!!!}");
    fs::write(&malformed, &garbage).unwrap();
    put_deployment(
        &client,
        "malformed",
        s(),
        model_resources(weight_file(&malformed), 0),
    )
    .await;
    // Ignores SIGTERM.
    put_deployment(
        &client,
        "stubborn",
        s(),
        sh_resources("trap '' TERM; echo up; while :; do sleep 0.2; done"),
    )
    .await;
    for d in [
        "crash",
        "missing",
        "digest",
        "truncated",
        "malformed",
        "stubborn",
    ] {
        place(&client, &format!("{d}-r1"), d, &w).await;
    }
    // One GPU per replica, never shared: two fit on this 2-GPU node, a third does not.
    let mut gpu = sh_resources("echo gpus=$CUDA_VISIBLE_DEVICES; exec sleep 60");
    gpu.gpu_count = 1;
    put_deployment(&client, "gpu", s(), gpu).await;
    for r in ["gpu-r1", "gpu-r2", "gpu-r3"] {
        place(&client, r, "gpu", &w).await;
    }

    let crash = wait_phase(&client, "crash-r1", pb::ReplicaPhase::Failed).await;
    assert_eq!(crash.exit_code, Some(7));
    assert!(crash.reason.contains("exit status 7"), "{}", crash.reason);
    assert!(
        crash.reason.contains("fatal: cannot open /dev/nvidia0"),
        "{}",
        crash.reason
    );
    assert!(crash.reason.contains("booting"), "{}", crash.reason);

    let missing = wait_phase(&client, "missing-r1", pb::ReplicaPhase::Failed).await;
    assert!(
        missing
            .reason
            .contains("cannot start replica command `/nonexistent/model-server`"),
        "{}",
        missing.reason
    );
    assert_eq!(missing.exit_code, None);

    let digest = wait_phase(&client, "digest-r1", pb::ReplicaPhase::Failed).await;
    assert!(
        digest.reason.contains("but the deployment declares 0000")
            && digest.reason.contains("refused"),
        "{}",
        digest.reason
    );
    // It never got to start a process.
    let phases: Vec<_> = digest.history.iter().map(|c| c.phase).collect();
    assert!(
        !phases.contains(&pb::ReplicaPhase::Starting.into()),
        "{phases:?}"
    );

    for (id, what) in [("truncated-r1", "truncated"), ("malformed-r1", "header")] {
        let r = wait_phase(&client, id, pb::ReplicaPhase::Failed).await;
        assert_eq!(r.exit_code, Some(1), "{id}: {}", r.reason);
        assert!(
            r.reason.contains("exited before it was ready"),
            "{id}: {}",
            r.reason
        );
        assert!(
            r.reason.contains("tidal-model") || r.reason.contains("error"),
            "{id}: {}",
            r.reason
        );
        assert!(r.reason.to_lowercase().contains(what), "{id}: {}", r.reason);
    }

    // The stubborn one is Loading forever; a stop gets SIGKILL after 1 s.
    wait_phase(&client, "stubborn-r1", pb::ReplicaPhase::Loading).await;
    request_stop(&client, "stubborn-r1").await;
    let stubborn = wait_phase(&client, "stubborn-r1", pb::ReplicaPhase::Stopped).await;
    assert!(stubborn.reason.contains("SIGKILL"), "{}", stubborn.reason);
    assert_eq!(stubborn.exit_signal, Some(9), "{stubborn:?}");
    let metrics = worker.metrics().await;
    assert!(
        metrics.contains("tidal_worker_replica_failures_total{phase=\"fetching\"} 1"),
        "{metrics}"
    );

    // The node's record: declared GPUs, labelled so.
    let (kv, _) = client.get(Table::WorkerNodes, &w).await.unwrap();
    let node = pb::WorkerNode::decode(kv.unwrap().value.as_slice()).unwrap();
    assert_eq!((node.gpus.len(), node.gpu_type.as_str()), (2, "H100-80GB"));
    assert!(node.gpus_declared);
    assert_eq!(node.labels["zone"], "a");
    assert_eq!(node.labels["tidal.dev/gpus"], "declared");
    // Two replicas hold one GPU each, different ones; the third fails.
    let mut seen = Vec::new();
    let mut refused = 0;
    for r in ["gpu-r1", "gpu-r2", "gpu-r3"] {
        let rec = wait_for(&format!("{r} to settle"), WAIT, async || {
            let rec = replica(&client, r).await?;
            matches!(
                phase(&rec),
                pb::ReplicaPhase::Loading | pb::ReplicaPhase::Failed
            )
            .then_some(rec)
        })
        .await;
        if phase(&rec) == pb::ReplicaPhase::Failed {
            assert!(
                rec.reason.contains("cannot give the replica 1 GPU(s)"),
                "{}",
                rec.reason
            );
            refused += 1;
            continue;
        }
        let line = wait_for(&format!("{r}'s output"), WAIT, async || {
            let logs = worker.logs(r).await.ok()?;
            logs.lines.into_iter().find(|l| l.starts_with("gpus="))
        })
        .await;
        assert_eq!(rec.gpu_indices.len(), 1, "{rec:?}");
        assert_eq!(line, format!("gpus={}", rec.gpu_indices[0]));
        seen.push(rec.gpu_indices[0]);
    }
    seen.sort_unstable();
    assert_eq!((seen, refused), (vec![0, 1], 1));
}

/// `tidal controller` on the store, killed on drop.
struct ControllerProc(Child);

impl Drop for ControllerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_is_lost_within_ttl_plus_a_second_and_a_restart_leaves_no_orphans() {
    let (procs, client, store) = store().await;
    let root = procs.root().to_owned();
    let weights = generate(&root.join("model"));
    let log = File::create(root.join("controller.log")).unwrap();
    let _controller = ControllerProc(
        Command::new(binary())
            .args(["controller", "--id", "c1", "--store", &store])
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--lease-ttl-ms", "2000", "--tick-ms", "200"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let settings = AutoscalingSettings {
        min_replica: 1,
        max_replica: 1,
        ..AutoscalingSettings::default()
    };
    put_deployment(&client, "mlp", settings, model_resources(weights, 0)).await;
    let mut worker = WorkerProc::new(&root, "w3", &store, &[]);
    worker.start().await;

    // The controller places one replica here; it becomes Ready.
    let first = wait_for("a Ready replica", WAIT, async || {
        let (rows, _) = client.list(Table::Replicas, "").await.ok()?;
        rows.iter()
            .map(|(_, kv)| pb::Replica::decode(kv.value.as_slice()).unwrap())
            .find(|r| phase(r) == pb::ReplicaPhase::Ready)
    })
    .await;
    assert_eq!(first.worker_id, worker.id);
    let pid = first.pid;
    assert!(alive(pid));

    // SIGKILL: the lease (TTL 2 s) expires and the replica is marked LOST.
    worker.signal("KILL");
    let killed = Instant::now();
    let lost = wait_phase(&client, &first.id, pb::ReplicaPhase::Lost).await;
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_millis(3000),
        "marked lost {took:?} after the kill (TTL 2 s + 1 s)"
    );
    assert!(
        lost.reason.contains("lost its node lease"),
        "{}",
        lost.reason
    );
    // Its process outlived the worker: an orphan, for now.
    assert!(
        alive(pid),
        "the replica process outlives a SIGKILLed worker"
    );
    let _ = worker.child.take().map(|mut c| c.wait());

    // The restarted worker stops it (cleanup, not adoption), and the
    // controller's replacement becomes Ready on it.
    worker.start().await;
    assert!(!alive(pid), "the restarted worker cleaned up the orphan");
    let second = wait_for("a replacement Ready replica", WAIT, async || {
        let (rows, _) = client.list(Table::Replicas, "").await.ok()?;
        rows.iter()
            .map(|(_, kv)| pb::Replica::decode(kv.value.as_slice()).unwrap())
            .find(|r| r.id != first.id && phase(r) == pb::ReplicaPhase::Ready)
    })
    .await;
    let marked = tidal_worker::orphans::find(&worker.id);
    assert_eq!(marked.len(), 1, "only the replacement runs: {marked:?}");
    assert_eq!(marked[0], second.pid);
    let (status, _) = http(&second.endpoint, "POST", "/predict", PREDICT)
        .await
        .unwrap();
    assert_eq!(status, 200);
    println!("replica marked lost {took:?} after SIGKILL (TTL 2 s)");
}
