//! Controllers as processes: two `tidal controller`s against a one-node
//! `tidal server`, fed metric reports over gRPC once a second, and watched
//! through the store (shard leases, deployment records and their change
//! history) and their `/metrics`. What a pause past the lease TTL (SIGSTOP,
//! then SIGCONT) and a crash (SIGKILL) do to shard ownership and to desired
//! replicas. Every process is killed when the test ends, panic or not.

mod store_support;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use store_support::{Procs, binary, free_port};
use tidal_controller::shard::shard_of;
use tidal_controller::store_port::{decode_record, settings_of};
use tidal_proto::pb;
use tidal_store::Request;
use tidal_store::app::{EventFilter, Outcome, Precondition, Table};
use tidal_store::client::Client;
use tidal_types::AutoscalingSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SHARDS: u32 = 64;
const WAIT: Duration = Duration::from_secs(20);
/// Desired replicas must hold this long before a test calls them steady: an
/// actor's first seconds of history can flap (2, 1, 2) while the second in
/// progress, not yet reported, counts as zero.
const STEADY: Duration = Duration::from_secs(3);
/// The tests time leases: one at a time on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Load `c` → `c` replicas (target 1 at 100 %), no scale-down delay.
fn settings() -> AutoscalingSettings {
    AutoscalingSettings {
        min_replica: 0,
        max_replica: 5,
        autoscaling_window: 10,
        scale_down_delay: 0,
        concurrency_target: 1,
        target_utilization_percentage: 100,
        ..AutoscalingSettings::default()
    }
}

/// A `DeploymentRecord` for `id` with settings `s`, desired replicas 0.
fn record_bytes(id: &str, s: AutoscalingSettings) -> Vec<u8> {
    let record = pb::DeploymentRecord {
        deployment: Some(pb::Deployment {
            id: id.to_owned(),
            autoscaling_settings: Some(s.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let bytes = record.encode_to_vec();
    let decoded = decode_record(&bytes).unwrap();
    assert_eq!(decoded.deployment.as_ref().unwrap().id, id);
    assert_eq!(settings_of(&decoded), s);
    bytes
}

/// The holder and epoch of a stored `Lease`.
fn lease_of(bytes: &[u8]) -> (String, u64) {
    let lease = pb::Lease::decode(bytes).unwrap();
    (lease.holder, lease.epoch)
}

/// Shard → (holder, epoch), as the store has the leases now.
async fn shard_leases(client: &Client) -> BTreeMap<u32, (String, u64)> {
    let (rows, _) = client.list(Table::ShardLeases, "").await.unwrap();
    rows.into_iter()
        .map(|(key, kv)| (key.parse().unwrap(), lease_of(&kv.value)))
        .collect()
}

fn held_by(leases: &BTreeMap<u32, (String, u64)>, id: &str) -> usize {
    leases.values().filter(|(holder, _)| holder == id).count()
}

/// Each deployment's desired replicas, the revision read, and the revision
/// of the last write to any deployment.
async fn desired_of(client: &Client) -> (BTreeMap<String, u32>, u64, u64) {
    let (rows, revision) = client.list(Table::Deployments, "").await.unwrap();
    let last_write = rows
        .iter()
        .map(|(_, kv)| kv.mod_revision)
        .max()
        .unwrap_or(0);
    let desired = rows
        .into_iter()
        .map(|(id, kv)| (id, decode_record(&kv.value).unwrap().desired_replicas))
        .collect();
    (desired, revision, last_write)
}

/// Polls `probe` every 25 ms until it answers; returns the answer and how
/// long it took. Fails the test after `within`.
async fn wait_for<T>(
    what: &str,
    within: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(answer) = probe().await {
            return (answer, start.elapsed());
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until every deployment has been at `want` for `hold` without a
/// break; returns the revision of the last read.
async fn wait_all_at(client: &Client, want: u32, hold: Duration) -> u64 {
    let start = Instant::now();
    let mut since: Option<Instant> = None;
    loop {
        let (desired, revision, _) = desired_of(client).await;
        if desired.values().all(|&d| d == want) {
            let at = *since.get_or_insert_with(Instant::now);
            if at.elapsed() >= hold {
                return revision;
            }
        } else {
            since = None;
        }
        assert!(
            start.elapsed() < WAIT,
            "not all steady at {want}: {desired:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every desired replicas value written to a deployment after revision
/// `from`, up to the last write now: (deployment, desired, revision).
async fn writes_since(client: &Client, from: u64) -> Vec<(String, u32, u64)> {
    let (_, _, last_write) = desired_of(client).await;
    let filter = EventFilter {
        table: Some(Table::Deployments),
        key_prefix: String::new(),
    };
    let mut watch = client.watch(from + 1, &filter).await.unwrap();
    let mut writes = Vec::new();
    let mut seen = from;
    while seen < last_write {
        let message = tokio::time::timeout(WAIT, watch.message())
            .await
            .expect("the watch stalled")
            .unwrap()
            .expect("the watch ended");
        let Some(pb::watch_response::Response::Events(events)) = message.response else {
            panic!("watch from {from}: {message:?}");
        };
        for event in events.events {
            let value = event.value.expect("a put carries its value").value;
            let desired = decode_record(&value).unwrap().desired_replicas;
            writes.push((event.key, desired, event.revision));
            seen = seen.max(event.revision);
        }
    }
    writes
}

/// `GET /metrics` over plain HTTP/1.1; `None` if it does not answer in 2 s.
async fn scrape(addr: &str) -> Option<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        stream.write_all(request).await.ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let answer = String::from_utf8(answer).ok()?;
        let (head, body) = answer.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

/// The value of series `series` (name and labels, as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `tidal controller` processes, killed (and their logs shown if the test
/// failed) on drop; declared after the [`Procs`] whose directory they use.
#[derive(Debug)]
struct Controllers {
    store: String,
    dir: PathBuf,
    running: BTreeMap<&'static str, Child>,
}

impl Controllers {
    fn new(procs: &Procs) -> Self {
        let (store, dir) = (procs.addr(procs.ids()[0]), procs.root().to_owned());
        let running = BTreeMap::new();
        Self {
            store,
            dir,
            running,
        }
    }

    fn log(&self, id: &str) -> PathBuf {
        self.dir.join(format!("controller-{id}.log"))
    }

    /// Starts controller `id`, waits until it serves `/metrics`; its address.
    async fn start(&mut self, id: &'static str, ttl_ms: u64, tick_ms: u64) -> String {
        let addr = format!("127.0.0.1:{}", free_port());
        let args = format!(
            "controller --id {id} --store {} --listen {addr} --shards {SHARDS} \
             --lease-ttl-ms {ttl_ms} --tick-ms {tick_ms}",
            self.store
        );
        let log = File::create(self.log(id)).unwrap();
        let child = Command::new(binary())
            .args(args.split_whitespace())
            .env("RUST_LOG", "warn,tidal=info,tidal_controller=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.running.insert(id, child);
        wait_for(&format!("controller {id} to serve"), WAIT, async || {
            if let Some(status) = self.running.get_mut(id)?.try_wait().unwrap() {
                panic!("controller {id} exited with {status}");
            }
            scrape(&addr).await
        })
        .await;
        addr
    }

    /// Sends `signal` (STOP, CONT, KILL) to controller `id`.
    fn signal(&self, id: &str, signal: &str) {
        let pid = self.running[id].id().to_string();
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(&pid)
            .status();
        assert!(sent.unwrap().success(), "kill -{signal} {pid}");
    }
}

impl Drop for Controllers {
    fn drop(&mut self) {
        for (id, child) in &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                let text = fs::read_to_string(self.dir.join(format!("controller-{id}.log")));
                let text = text.unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                eprintln!("----- controller {id} log (last 40 lines) -----\n{tail}");
            }
        }
    }
}

/// Sends every deployment's load to the controller at `addr` once a second
/// while `on`; aborted on drop.
#[derive(Debug)]
struct Reporter(tokio::task::JoinHandle<()>);

impl Drop for Reporter {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn report(
    addr: &str,
    deployments: &[String],
    load: &Arc<AtomicU64>,
    on: Arc<AtomicBool>,
) -> Reporter {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .connect_lazy();
    let mut client = pb::controller_client::ControllerClient::new(channel);
    let (deployments, load) = (deployments.to_vec(), Arc::clone(load));
    Reporter(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            let concurrency_micros = load.load(Ordering::SeqCst) * 1_000_000;
            let metrics = deployments.iter().map(|d| pb::DeploymentMetrics {
                deployment_id: d.clone(),
                second: now.as_secs(),
                concurrency_micros,
                requests: 1,
                queued: 0,
            });
            let gateway_id = "test".to_owned();
            let report = pb::MetricReport {
                gateway_id,
                metrics: metrics.collect(),
            };
            let send = async {
                let stream = tonic::codegen::tokio_stream::iter([report]);
                if let Ok(acks) = client.report(stream).await {
                    let mut acks = acks.into_inner();
                    while let Ok(Some(_)) = acks.message().await {}
                }
            };
            if on.load(Ordering::SeqCst) {
                let _ = tokio::time::timeout(Duration::from_millis(900), send).await;
            }
        }
    }))
}

/// A one-node store with `count` deployments at 0 desired replicas.
async fn store_with(count: usize) -> (Procs, Client, Vec<String>) {
    let mut procs = Procs::new();
    procs.form_cluster(&[1]).await;
    let client = procs.client(&[1], Duration::from_secs(5));
    let deployments: Vec<String> = (0..count).map(|i| format!("dep-{i:03}")).collect();
    for d in &deployments {
        let put = Request::put(
            Table::Deployments,
            d,
            record_bytes(d, settings()),
            Precondition::MustNotExist,
            None,
        );
        let written = client.write(&put).await.unwrap();
        assert!(
            matches!(written.outcome, Outcome::Written { .. }),
            "{d}: {written:?}"
        );
    }
    (procs, client, deployments)
}

/// Waits until a and b hold 32 shards each; returns the leases.
async fn wait_split(client: &Client) -> BTreeMap<u32, (String, u64)> {
    let (leases, _) = wait_for("a and b to hold 32 shards each", WAIT, async || {
        let leases = shard_leases(client).await;
        (held_by(&leases, "a") == 32 && held_by(&leases, "b") == 32).then_some(leases)
    })
    .await;
    leases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_controllers_writes_are_fenced_and_its_actors_stop() {
    let _serial = SERIAL.lock().await;
    let (procs, client, deployments) = store_with(40).await;
    let mut controllers = Controllers::new(&procs);
    let a = controllers.start("a", 2000, 200).await;
    let b = controllers.start("b", 2000, 200).await;
    let (load_a, load_b) = (Arc::new(AtomicU64::new(2)), Arc::new(AtomicU64::new(2)));
    let a_on = Arc::new(AtomicBool::new(true));
    let _reporters = [
        report(&a, &deployments, &load_a, Arc::clone(&a_on)),
        report(&b, &deployments, &load_b, Arc::new(AtomicBool::new(true))),
    ];
    let revision = wait_all_at(&client, 2, STEADY).await;
    let before = wait_split(&client).await;
    let a_epochs: BTreeMap<u32, u64> = before
        .iter()
        .filter(|(_, (holder, _))| holder == "a")
        .map(|(shard, (_, epoch))| (*shard, *epoch))
        .collect();
    assert_eq!(a_epochs.len(), 32, "{before:?}");
    let a_deployments = deployments
        .iter()
        .filter(|d| a_epochs.contains_key(&shard_of(d, SHARDS)))
        .count();

    // What proves fencing. While a is stopped, b takes every shard and its
    // load goes to 4. When a resumes, its reports say 0: its old actors
    // (still holding the old epochs, and now receiving reports again) decide
    // to scale down below 2 and try to write that under epochs b's grants
    // have replaced. Every legitimate write is ≥ 2 (b's take-over holds the
    // stored 2 and its load is 4; a's new actors start as take-overs holding
    // the stored value, and a's load is back at 4 before they could lower
    // anything), so a desired below 2 in the history since `revision` can
    // only be one of a's stale writes getting through. The store refusing
    // them shows as a's stale-write counter; a's manager noticing first that
    // its leases ran out (not renewed for a TTL) stops those actors before
    // they write (shard_owned at 0): either is correct, a stale write in the
    // history is not. Re-granted epochs (new revisions) mean a's old actors
    // cannot be the ones running afterwards.
    const PAUSE: Duration = Duration::from_secs(6);
    a_on.store(false, Ordering::SeqCst);
    load_b.store(4, Ordering::SeqCst);
    load_a.store(0, Ordering::SeqCst);
    controllers.signal("a", "STOP");
    let (_, taken) = wait_for(
        "b to hold every shard while a is stopped",
        WAIT,
        async || {
            let leases = shard_leases(&client).await;
            (held_by(&leases, "b") == 64).then_some(())
        },
    )
    .await;
    assert!(taken < PAUSE, "b took a's shards only after {taken:?}");
    tokio::time::sleep(PAUSE - taken).await;
    controllers.signal("a", "CONT");
    a_on.store(true, Ordering::SeqCst);

    let (how, stopped_after) = wait_for("a to stop acting on its old shards", WAIT, async || {
        let text = scrape(&a).await?;
        let stale = sample(&text, "tidal_controller_stale_writes_total")?;
        if stale >= 1.0 {
            return Some(format!("{stale} writes refused for a stale epoch"));
        }
        let released = a_epochs.keys().all(|s| {
            sample(
                &text,
                &format!("tidal_controller_shard_owned{{shard=\"{s}\"}}"),
            ) == Some(0.0)
        });
        released.then(|| "its old shards released without a write".to_owned())
    })
    .await;
    // a acts again only through new take-over actors: give them the real load.
    load_a.store(4, Ordering::SeqCst);
    let (after, regained) = wait_for("a to hold 32 shards again", WAIT, async || {
        let leases = shard_leases(&client).await;
        (held_by(&leases, "a") == 32 && held_by(&leases, "b") == 32).then_some(leases)
    })
    .await;
    for (shard, (holder, epoch)) in &after {
        if holder == "a" {
            assert_ne!(
                a_epochs.get(shard),
                Some(epoch),
                "a kept shard {shard}'s old epoch"
            );
        }
    }
    wait_all_at(&client, 4, Duration::ZERO).await;
    let writes = writes_since(&client, revision).await;
    let lowered: Vec<_> = writes.iter().filter(|(_, d, _)| *d < 2).collect();
    assert!(lowered.is_empty(), "stale writes got through: {lowered:?}");
    assert!(writes.iter().any(|(_, d, _)| *d == 4), "{writes:?}");
    // An actor refused for a stale epoch stops: each of a's old deployments
    // is refused at most once, not at every tick.
    let text = scrape(&a).await.expect("a serves /metrics");
    let stale = sample(&text, "tidal_controller_stale_writes_total").unwrap();
    assert!(
        stale <= f64::from(u32::try_from(a_deployments).unwrap()),
        "{stale} stale writes"
    );
    eprintln!(
        "pause: b held every shard {taken:?} after SIGSTOP; after SIGCONT a stopped ({how}) \
         within {stopped_after:?} and held 32 shards with new epochs {regained:?} later; \
         {} writes since, {stale} refused",
        writes.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_controllers_shards_move_within_ttl_plus_a_tick_and_nothing_scales_down() {
    let _serial = SERIAL.lock().await;
    let (procs, client, deployments) = store_with(100).await;
    let mut controllers = Controllers::new(&procs);
    let a = controllers.start("a", 2000, 250).await;
    let b = controllers.start("b", 2000, 250).await;
    let (load, on) = (Arc::new(AtomicU64::new(2)), Arc::new(AtomicBool::new(true)));
    let _reporters = [
        report(&a, &deployments, &load, Arc::clone(&on)),
        report(&b, &deployments, &load, on),
    ];
    let revision = wait_all_at(&client, 2, STEADY).await;
    wait_split(&client).await;

    controllers.signal("a", "KILL");
    let (_, moved) = wait_for("b to hold every shard", WAIT, async || {
        (held_by(&shard_leases(&client).await, "b") == 64).then_some(())
    })
    .await;
    // Acceptance: within lease TTL + one tick of the kill (2 s + 250 ms: a's
    // presence expires at most 2 s after its last renewal, its shard leases
    // no later, and b grants at its next tick), plus 500 ms for the grant
    // round trips and this test's polling on a loaded 2-core machine.
    assert!(
        moved <= Duration::from_millis(2000 + 250 + 500),
        "shards moved after {moved:?}"
    );
    wait_for("b to run an actor per deployment", WAIT, async || {
        let text = scrape(&b).await?;
        let actors = text
            .lines()
            .filter(|l| l.starts_with("tidal_controller_desired_replicas{"));
        (actors.count() == deployments.len()).then_some(())
    })
    .await;
    // Keep the load up a while longer: nothing may go below 2 since the kill
    // (b's new actors start with an empty window; without the take-over
    // floor, their first decision, before a report, would be 0).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes = writes_since(&client, revision).await;
    let lowered: Vec<_> = writes.iter().filter(|(_, d, _)| *d < 2).collect();
    assert!(
        lowered.is_empty(),
        "scaled down after the kill: {lowered:?}"
    );
    let (desired, _, _) = desired_of(&client).await;
    assert!(desired.values().all(|&d| d == 2), "{desired:?}");
    eprintln!(
        "kill: b held every shard {moved:?} after SIGKILL; {} writes since",
        writes.len()
    );
}
