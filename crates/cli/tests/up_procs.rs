//! The whole loop on `tidal up` (one real process: store, controller,
//! worker, gateway; replicas are `tidal model serve` processes), with short
//! settings: window 10 s, delay 3 s, concurrency target 2 at 100 %.
//!
//! A deployment at zero gets a request: it is held, a replica cold-starts,
//! and the request succeeds. Concurrency 8 brings it to 4 Ready replicas.
//! Then (settings PATCHed through the management API to a 20 s delay and at
//! most 4 replicas) the traffic stops, and a spike arrives inside the
//! scale-down delay, after the load's recommendation has dropped below 4:
//! the 4 replicas are kept for a whole delay after the spike, and the
//! deployment returns to 0 window + delay after the spike's last request.
//! Every request sent across the scale-from-zero, the scale-up, the spike
//! and the scale-down gets exactly one answer, a 200, counted by request id.

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

/// The spec's autoscaling window.
const WINDOW: Duration = Duration::from_secs(10);
/// The scale-down delay PATCHed in for the spike (the spec has 3 s).
const DELAY: u64 = 20;
const DELAY_SECS: Duration = Duration::from_secs(DELAY);
/// From the load's stop to the spike.
const QUIET: Duration = Duration::from_secs(7);
/// The spike: this many closed loops (4× the load) for this long.
const SPIKE_LOOPS: usize = 32;
const SPIKE: Duration = Duration::from_secs(3);

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

/// One request with a key to the management API: status and body.
async fn call(addr: &str, key: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
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

/// One GET with a key: status and body.
async fn get(addr: &str, key: &str, path: &str) -> (u16, String) {
    call(addr, key, "GET", path, "").await
}

/// `n` closed loops, each sending one request after another until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    loops: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start<F, Fut>(send: &F, n: usize) -> Self
    where
        F: Fn() -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Option<u16>> + Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let loops = (0..n)
            .map(|_| {
                let (send, stop) = (send.clone(), Arc::clone(&stop));
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        send().await;
                    }
                })
            })
            .collect();
        Self { stop, loops }
    }

    /// Stops the loops; returns once each one's last request was answered.
    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for l in self.loops {
            l.await.unwrap();
        }
    }
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
    let settings = serde_json::json!({
        "min_replica": 0, "max_replica": 10, "concurrency_target": 2,
        "target_utilization_percentage": 100,
        "autoscaling_window": 10, "scale_down_delay": 3
    });
    proc_support::mlp_spec(
        &binary(),
        dir,
        settings,
        &[("TIDAL_MODEL_DELAY_MS", "250")],
        5,
    )
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
        let (answers, next_id, gateway, key) = (
            Arc::clone(&answers),
            Arc::clone(&next_id),
            gateway.clone(),
            key.clone(),
        );
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
    let load = Load::start(&send, 8);
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
    // For the spike: a delay long enough to hold a spike inside it with
    // seconds to spare, and at most 4 replicas, so that a spike heavier than
    // the load keeps the 4 without adding more. The store's watch brings the
    // settings to the controller while the load holds 4 for a few seconds
    // (if they did not arrive, the 3 s delay would drop the replicas long
    // before the hold below ends, and the test would fail).
    let settings = "/v1/models/mlp/deployments/mlp-v1/autoscaling_settings";
    let patch = format!(r#"{{"scale_down_delay":{DELAY},"max_replica":4}}"#);
    let (status, body) = call(&api, &key, "PATCH", settings, &patch).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&api, &key, "/v1/models/mlp/deployments/mlp-v1").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("\"scale_down_delay\":{DELAY}"))
            && body.contains("\"max_replica\":4"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ready_and_desired(&client, "mlp-v1").await, (4, 4));
    load.stop().await;
    let stopped = Instant::now();

    // 3. A spike inside the scale-down delay keeps the 4 replicas.
    //
    // From the code (tidal-autoscale's `Autoscaler::decide`, the actor's
    // tick deciding for the last complete second): the recommendation is
    // ceil(window sum / (10 s × 2)) and desired is the highest
    // recommendation of the last DELAY seconds. With 8 loops the gateway
    // counts at most 8 in flight, so once a window holds at most 7 seconds
    // of that load (sum ≤ 56 ≤ 60) the recommendation is at most 3: from
    // the second 3 s after the stop on, decided 3 to 5 s after the stop.
    // The spike begins QUIET (7 s) after the stop: the recommendation has
    // dropped by then, and only the delay holds desired at 4.
    hold_four(&client, stopped + QUIET, "before the spike").await;
    let first_ids = next_id.load(Ordering::Relaxed);
    let spike = Load::start(&send, SPIKE_LOOPS);
    let spike_began = Instant::now();
    hold_four(&client, spike_began + SPIKE, "during the spike").await;
    let spike_stop = Instant::now();
    spike.stop().await;
    let spike_end = Instant::now();
    let spike_requests = next_id.load(Ordering::Relaxed) - first_ids;
    // 32 loops for 3 s put about 96 request-seconds in the window (more
    // than 60, so the recommendation is 4 or more, clamped to 4) for the
    // second the spike ends in, decided after it ends: desired must stay 4
    // for DELAY seconds from there. Without the spike (a controller that
    // ignored it) desired would have dropped at most DELAY + 6 s after the
    // stop, which is ≥ 4 s before this hold ends (the spike ends ≥ 10 s
    // after the stop).
    hold_four(&client, spike_stop + DELAY_SECS, "after the spike").await;
    let kept = spike_end.elapsed();

    // 4. Back to 0 after the spike: only when its load has left the window
    // and the delay has passed since. The recommendation is 0 only for a
    // second whose window holds none of the spike's load, and desired is 0
    // only a delay after that, decided a second later still: desired is 0
    // no sooner than window + delay after the spike's last request (the
    // 250 ms only allow for where the test reads its clock).
    let mut below_four = None;
    let mut desired_zero = None;
    let zero = loop {
        let (ready, desired) = ready_and_desired(&client, "mlp-v1").await;
        if desired < 4 && below_four.is_none() {
            below_four = Some(spike_end.elapsed());
        }
        if desired == 0 && desired_zero.is_none() {
            desired_zero = Some(spike_end.elapsed());
        }
        if desired == 0 && ready == 0 {
            break spike_end.elapsed();
        }
        assert!(
            spike_end.elapsed() < WINDOW + DELAY_SECS + Duration::from_secs(30),
            "not back at 0: {ready} ready, {desired} desired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let desired_zero = desired_zero.unwrap_or(zero);
    assert!(
        desired_zero + Duration::from_millis(250) >= WINDOW + DELAY_SECS,
        "desired 0 {desired_zero:?} after the spike, before window + delay"
    );

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
    assert!(spike_requests >= 100, "only {spike_requests} in the spike");
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
    let below_four = below_four.unwrap_or(zero);
    println!(
        "cold start answered in {cold:?}; 4 Ready replicas {to_four:?} after load began (peak {peak}); \
         load stopped, spike of {SPIKE_LOOPS} loops {:?} later for {:?} ({spike_requests} requests); \
         4 kept {kept:?} after the spike ended (delay {DELAY} s); below 4 {below_four:?}, desired 0 \
         {desired_zero:?} and back at 0 {zero:?} after it ({:?} after the load stopped); {total} requests, each one 200",
        spike_began - stopped,
        spike_end - spike_began,
        spike_end - stopped + zero,
    );
}

/// Polls every 200 ms until `until`: desired and Ready must be 4 each time.
async fn hold_four(client: &Client, until: Instant, when: &str) {
    while Instant::now() < until {
        let (ready, desired) = ready_and_desired(client, "mlp-v1").await;
        assert_eq!(
            (ready, desired),
            (4, 4),
            "replicas not kept {when} ({:?} before the hold ends)",
            until.saturating_duration_since(Instant::now())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
