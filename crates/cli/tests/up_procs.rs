//! The whole loop on `tidal up` (one real process: store, controller,
//! worker, gateway; replicas are `tidal model serve` processes), with short
//! settings: window 10 s, delay 3 s, concurrency target 2 at 100 %.
//!
//! A deployment at zero gets a request: it is held, a replica cold-starts,
//! and the request succeeds. Concurrency 8 brings it to 4 Ready replicas;
//! when the traffic stops it returns to 0. Every request sent across the
//! scale-from-zero, the scale-up and the scale-down gets exactly one
//! answer, a 200, counted by request id.

mod proc_support;
mod store_support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proc_support::{PREDICT as BODY, Up};
use prost::Message;
use store_support::{binary, free_port};
use tidal_proto::pb;
use tidal_store::app::Table;
use tidal_store::client::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One POST over its own connection: the status, or `None` if no answer.
async fn post(addr: &str, key: &str, path: &str, id: u64) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {key}\r\nx-request-id: {id}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    let answer = String::from_utf8_lossy(&answer);
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// One GET with a key: status and body.
async fn get(addr: &str, key: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        body.to_owned(),
    )
}

async fn ready_and_desired(client: &Client, deployment: &str) -> (usize, u32) {
    let (rows, _) = client.list(Table::Replicas, "").await.unwrap();
    let ready = rows
        .iter()
        .map(|(_, kv)| pb::Replica::decode(kv.value.as_slice()).unwrap())
        .filter(|r| r.deployment_id == deployment && r.phase == i32::from(pb::ReplicaPhase::Ready))
        .count();
    let (kv, _) = client.get(Table::Deployments, deployment).await.unwrap();
    let desired = kv
        .map(|kv| {
            pb::DeploymentRecord::decode(kv.value.as_slice())
                .unwrap()
                .desired_replicas
        })
        .unwrap_or(0);
    (ready, desired)
}

fn spec(dir: &Path) -> PathBuf {
    let out = Command::new(binary())
        .args(["model", "generate", "--params", "5000", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let spec = serde_json::json!({
        "model": "mlp",
        "deployment": "mlp-v1",
        "autoscaling_settings": {
            "min_replica": 0, "max_replica": 10, "concurrency_target": 2,
            "target_utilization_percentage": 100,
            "autoscaling_window": 10, "scale_down_delay": 3
        },
        "resources": {"cpu_millis": 100, "memory_bytes": 67_108_864},
        "command": [binary().display().to_string(), "model", "serve"],
        "env": {"TIDAL_MODEL_DELAY_MS": "250", "TIDAL_MODEL_HOST": "127.0.0.1"},
        "ready_timeout_secs": 60,
        "stop_grace_secs": 5,
        "weights": [{"name": "model.safetensors", "path": "model.safetensors"}]
    });
    let path = dir.join("deployment.json");
    fs::write(&path, spec.to_string()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn up_scales_from_zero_to_four_and_back_and_loses_no_request() {
    let root = tempfile::tempdir().unwrap();
    let (store, gateway) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let log = root.path().join("up.log");
    let worker_id = format!("up-test-{}", std::process::id());
    let out = fs::File::create(&log).unwrap();
    let child = Command::new(binary())
        .args(["up", "--data-dir"])
        .arg(root.path().join("data"))
        .args(["--store-listen", &store, "--gateway-listen", &gateway])
        .args(["--api-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--worker-id", &worker_id])
        .env("RUST_LOG", "warn,tidal_worker=info,tidal_controller=info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let _up = Up {
        child: Some(child),
        log: log.clone(),
        worker_id: worker_id.clone(),
    };
    let started = Instant::now();
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("tidal is up")
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "tidal up did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cluster: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(root.path().join("data/cluster.json")).unwrap())
            .unwrap();
    assert_eq!(cluster["gateway_url"], format!("http://{gateway}"));
    let key = cluster["api_key"].as_str().unwrap().to_owned();
    // Without the key: 401.
    assert_eq!(
        post(&gateway, "", "/v1/models/mlp/production/predict", 0).await,
        Some(401)
    );
    let client = Client::new([store.clone()], Duration::from_secs(10)).unwrap();

    let deployed = Command::new(binary())
        .args(["deploy", "--store", &store])
        .arg(spec(&root.path().join("model")))
        .output()
        .unwrap();
    assert!(deployed.status.success(), "{deployed:?}");
    // The management API sees it (with the admin key from cluster.json).
    let api = cluster["api_url"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .to_owned();
    let (status, body) = get(&api, &key, "/v1/models/mlp/deployments/mlp-v1").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"autoscaling_window\":10"), "{body}");
    let (status, _) = get(&api, "", "/v1/models/mlp/deployments/mlp-v1").await;
    assert_eq!(status, 401);
    let path = "/v1/models/mlp/deployment/mlp-v1/predict";
    // Wait until the gateway knows the deployment (a 404 before that).
    let known = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (ready, desired) = ready_and_desired(&client, "mlp-v1").await;
        assert_eq!((ready, desired), (0, 0), "at zero before any request");
        if known.elapsed() > Duration::from_secs(2) {
            break;
        }
    }

    // Every request: one answer, counted by id.
    let answers: Arc<std::sync::Mutex<BTreeMap<u64, Vec<Option<u16>>>>> = Arc::default();
    let next_id = Arc::new(AtomicU64::new(0));
    let send = {
        let (answers, next_id, gateway) =
            (Arc::clone(&answers), Arc::clone(&next_id), gateway.clone());
        move || {
            let (answers, next_id, gateway) =
                (Arc::clone(&answers), Arc::clone(&next_id), gateway.clone());
            let key = key.clone();
            async move {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let status = post(&gateway, &key, path, id).await;
                answers.lock().unwrap().entry(id).or_default().push(status);
                status
            }
        }
    };

    // 1. From zero: held, cold start, 200.
    let t = Instant::now();
    assert_eq!(send().await, Some(200));
    let cold = t.elapsed();
    let (ready, _) = ready_and_desired(&client, "mlp-v1").await;
    assert!(ready >= 1);

    // 2. Concurrency 8 (closed loop, 250 ms per request): 4 Ready replicas.
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for _ in 0..8 {
        let (send, stop) = (send.clone(), Arc::clone(&stop));
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                send().await;
            }
        }));
    }
    let t = Instant::now();
    let mut peak = 0;
    loop {
        let (ready, desired) = ready_and_desired(&client, "mlp-v1").await;
        peak = peak.max(ready);
        assert!(
            desired <= 4,
            "concurrency 8 / target 2 never needs more than 4: {desired}"
        );
        if ready == 4 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "not at 4 Ready replicas: {ready} ({desired} desired)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let to_four = t.elapsed();
    // Hold it a few seconds at 4.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ready_and_desired(&client, "mlp-v1").await.1, 4);
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }

    // 3. Traffic stops: back to 0 about window + delay later (10 s + 3 s).
    let t = Instant::now();
    loop {
        let (ready, desired) = ready_and_desired(&client, "mlp-v1").await;
        if ready == 0 && desired == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "not back at 0: {ready} ready, {desired} desired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let to_zero = t.elapsed();

    // Exactly one answer per request, all 200.
    let answers = answers.lock().unwrap().clone();
    let total = answers.len();
    let bad: Vec<_> = answers
        .iter()
        .filter(|(_, a)| a.as_slice() != [Some(200)])
        .take(10)
        .collect();
    assert!(bad.is_empty(), "requests without exactly one 200: {bad:?}");
    assert!(total >= 400, "only {total} requests were sent");
    drop(answers);
    // The last replicas drain and exit (drain + grace: at most 10 s).
    let t = Instant::now();
    while !tidal_worker::orphans::find(&worker_id).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "replica processes still run at zero"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "cold start answered in {cold:?}; 4 Ready replicas {to_four:?} after load began (peak {peak}); \
         back at 0 {to_zero:?} after it stopped; {total} requests, each one 200"
    );
}
