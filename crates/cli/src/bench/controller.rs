//! `tidal bench controller`: one `tidal controller` process driving many
//! deployments, each receiving one metric sample a second.
//!
//! It starts one `tidal server` (this binary; one node is enough, the
//! figures are the controller's) and initializes it, creates the deployments
//! with concurrent puts, starts one `tidal controller`, and from then on
//! sends, every second, one sample per deployment (concurrency 1, so each
//! wants 1 replica) over a few long-lived `Report` streams, as gateways do.
//!
//! Once every deployment's actor has stored its first decision (seen on a
//! store watch) and the warm-up has passed, the measured period starts. Each
//! second, `--probes-per-second` deployments never probed before report
//! concurrency 9 instead of 1, so their actor's next tick raises their
//! desired replicas; the watch sees that write, and the time from sending the
//! sample to the watch event is the report → decision-stored latency. The
//! controller's and the store's CPU time (utime + stime) is read from
//! `/proc/PID/stat` at the start and the end of the measured period, and the
//! peak resident sets (VmHWM) from `/proc/PID/status` at the end.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use hdrhistogram::Histogram;
use prost::Message;
use serde::Serialize;
use tidal_proto::pb;
use tidal_store::Request;
use tidal_store::app::{EventFilter, Outcome, Precondition, Table};
use tidal_store::client::Client;
use tidal_types::AutoscalingSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::procs::{Procs, free_ports, vm_hwm_kib, wait_until};
use crate::Failure;

/// Deployment ids are this and a number.
const PREFIX: &str = "bench-";
/// Samples per `MetricReport` message.
const BATCH: usize = 1000;
/// Long-lived `Report` streams (one connection each), as from this many gateways.
const STREAMS: usize = 4;
/// Puts in flight while the deployments are created.
const CREATE_CONCURRENCY: usize = 256;
/// The steady load: concurrency 1, in millionths.
const LOAD_MICROS: u64 = 1_000_000;
/// A probe's sample: concurrency 9, in millionths.
const PROBE_MICROS: u64 = 9_000_000;
/// How long the processes get to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after the measured period late probe decisions are still awaited.
const DRAIN_SECONDS: u64 = 10;
/// When in each second the load is sent (after the whole second).
const SEND_OFFSET: Duration = Duration::from_millis(50);
/// How often progress is shown while waiting for the actors.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// The goal: the controller under this share of one core…
const GOAL_CPU_PERCENT: f64 = 25.0;
/// …and under this peak resident set (500 MB).
const GOAL_RSS_BYTES: u64 = 500_000_000;

/// One controller, many deployments: its CPU, peak RSS, and the time from a
/// metric report to the decision stored.
///
/// Starts one `tidal server` (fsync on) and one `tidal controller` on
/// 127.0.0.1, creates --deployments deployments (min 0, max 10 replicas,
/// window 10 s, scale-down delay 60 s, concurrency target 1, utilization
/// 100 %), and sends every deployment one sample a second (concurrency 1)
/// over 4 long-lived Report streams, 1,000 samples a message. Once every
/// deployment has a decision stored, and after the warm-up, it measures:
/// each second --probes-per-second fresh deployments report concurrency 9,
/// and a store watch times each one from the send to its desired-replicas
/// write. Progress goes to stderr; the table (or `--json`) to stdout.
#[derive(Debug, Args)]
pub(crate) struct ControllerArgs {
    /// Deployments the controller runs.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    deployments: usize,
    /// Measured seconds.
    #[arg(long, value_name = "N", default_value_t = 60)]
    seconds: u64,
    /// Seconds of steady load after every deployment has a decision stored,
    /// before the measurement.
    #[arg(long, value_name = "N", default_value_t = 15)]
    warmup_seconds: u64,
    /// Fresh deployments probed each measured second (each probed once).
    #[arg(long, value_name = "N", default_value_t = 100)]
    probes_per_second: usize,
    /// How long the controller gets, from its start, to store a decision for
    /// every deployment.
    #[arg(long, value_name = "N", default_value_t = 600)]
    ready_timeout_seconds: u64,
    /// Where to put the temporary data directory (default: the system's temp dir).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The controller's actors as its `/metrics` shows them.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Actors {
    /// `tidal_controller_desired_replicas` series: one per running actor.
    desired_series: usize,
    /// Those at 1.
    desired_one: usize,
    /// Shards it holds.
    shards_owned: usize,
}

/// What the run measured.
#[derive(Debug, Serialize)]
struct Report {
    cpu: String,
    cores: usize,
    deployments: usize,
    streams: usize,
    samples_per_message: usize,
    warmup_seconds: u64,
    seconds: u64,
    probes_per_second: usize,
    /// Creating the deployments.
    create_seconds: f64,
    /// From the controller's start to a decision stored for every deployment.
    ready_seconds: f64,
    actors_before: Actors,
    actors_after: Actors,
    /// The measured period as timed (wall clock).
    measured_seconds: f64,
    /// Samples sent per second in the measured period.
    reports_per_s: f64,
    /// Samples answered with a redirect in the measured period (no actor).
    redirected_samples: u64,
    controller_cpu_percent: f64,
    controller_peak_rss_kib: Option<u64>,
    store_cpu_percent: f64,
    store_peak_rss_kib: Option<u64>,
    /// This process: the load and the watch.
    bench_cpu_percent: f64,
    probes_sent: u64,
    probes_seen: u64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    /// Desired-replicas writes in the measured period other than the probes'
    /// first rises, to probed deployments (e.g. a probe scaling back down)…
    other_writes_probed: u64,
    /// …and to deployments never probed (at steady load, none are expected).
    other_writes_unprobed: u64,
    /// WARN and ERROR lines in the controller's log, and the first of them.
    controller_log_warnings: usize,
    controller_log_errors: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    controller_log_first_warning: Option<String>,
    /// Times the store watch had to be re-opened.
    watch_restarts: u64,
    goal_met: bool,
}

pub(crate) fn run(args: ControllerArgs) -> Result<(), Failure> {
    validate(&args)?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| Failure::Other(e.into()))?;
    let report = runtime.block_on(async {
        // On Ctrl-C or SIGTERM the benchmark's future is dropped: its
        // processes are killed and its directory removed.
        tokio::select! {
            report = measure(&args) => report,
            () = super::interrupted() => Err(anyhow::anyhow!("interrupted; every process it started is stopped")),
        }
    });
    drop(runtime);
    let report = report.map_err(Failure::Other)?;
    crate::write_stdout(|out| {
        if args.json {
            serde_json::to_writer_pretty(&mut *out, &report)?;
            writeln!(out)
        } else {
            render(out, &report)
        }
    })
}

fn validate(args: &ControllerArgs) -> Result<(), Failure> {
    if args.deployments == 0 {
        return Err(Failure::Usage(
            "--deployments must be at least 1".to_owned(),
        ));
    }
    if args.seconds == 0 {
        return Err(Failure::Usage("--seconds must be at least 1".to_owned()));
    }
    if args.probes_per_second == 0 {
        return Err(Failure::Usage(
            "--probes-per-second must be at least 1".to_owned(),
        ));
    }
    let probes = u64::try_from(args.probes_per_second)
        .unwrap_or(u64::MAX)
        .saturating_mul(args.seconds);
    if probes > u64::try_from(args.deployments).unwrap_or(u64::MAX) {
        return Err(Failure::Usage(format!(
            "every probe needs a fresh deployment: --probes-per-second × --seconds ({probes}) \
             must not exceed --deployments ({})",
            args.deployments
        )));
    }
    Ok(())
}

/// The settings of every benchmark deployment.
fn settings() -> AutoscalingSettings {
    AutoscalingSettings {
        min_replica: 0,
        max_replica: 10,
        autoscaling_window: 10,
        scale_down_delay: 60,
        concurrency_target: 1,
        target_utilization_percentage: 100,
        ..AutoscalingSettings::default()
    }
}

fn deployment_id(i: usize) -> String {
    format!("{PREFIX}{i:06}")
}

fn index_of(id: &str) -> Option<usize> {
    id.strip_prefix(PREFIX)?.parse().ok()
}

/// This binary, to start as the store node and the controller.
#[derive(Debug)]
struct Program {
    exe: PathBuf,
    image: PathBuf,
}

impl Program {
    fn this() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the tidal binary to start")?;
        // Start the very file this process runs, even if a build has replaced
        // `exe` since (Linux); `ps` still shows `exe`.
        let image = Path::new("/proc/self/exe");
        let image = if image.exists() {
            image.to_path_buf()
        } else {
            exe.clone()
        };
        Ok(Self { exe, image })
    }

    fn command(&self, subcommand: &str) -> Command {
        let mut command = Command::new(&self.image);
        // The default log level, whatever this shell's RUST_LOG says.
        command
            .arg0(&self.exe)
            .arg(subcommand)
            .env_remove("RUST_LOG");
        command
    }
}

/// What the load, the Report streams and the watch share.
#[derive(Debug)]
struct Shared {
    /// Each deployment's desired replicas as the watch last saw them.
    desired: Vec<u32>,
    /// Deployments whose desired replicas the watch has seen above 0.
    decided: usize,
    /// Probes sent and not yet seen: deployment → when its sample was sent.
    pending: HashMap<usize, Instant>,
    /// Deployments probed so far.
    probed: Vec<bool>,
    /// Probe latencies, µs.
    latencies: Histogram<u64>,
    /// Whether writes other than probe rises are counted.
    count_other: bool,
    /// Other writes to probed deployments, and to the others.
    other_writes: [u64; 2],
    /// Samples answered with a redirect.
    redirected: u64,
    /// Why a Report stream ended, if one did.
    stream_error: Option<String>,
    watch_restarts: u64,
    last_watch_error: Option<String>,
}

impl Shared {
    fn new(deployments: usize) -> Self {
        Self {
            desired: vec![0; deployments],
            decided: 0,
            pending: HashMap::new(),
            probed: vec![false; deployments],
            // Microseconds, 1 µs to 10 min, 3 significant digits.
            latencies: Histogram::new_with_bounds(1, 600_000_000, 3)
                .expect("valid histogram bounds"),
            count_other: false,
            other_writes: [0, 0],
            redirected: 0,
            stream_error: None,
            watch_restarts: 0,
            last_watch_error: None,
        }
    }

    /// One watch event, received at `at`.
    fn apply(&mut self, event: &pb::ChangeEvent, at: Instant) {
        let Some(i) = index_of(&event.key).filter(|i| *i < self.desired.len()) else {
            return;
        };
        if event.kind != i32::from(pb::change_event::Kind::Put) {
            return;
        }
        let Some(record) = event
            .value
            .as_ref()
            .and_then(|kv| pb::DeploymentRecord::decode(kv.value.as_slice()).ok())
        else {
            return;
        };
        let desired = record.desired_replicas;
        let before = std::mem::replace(&mut self.desired[i], desired);
        if before == 0 && desired > 0 {
            self.decided += 1;
        } else if before > 0 && desired == 0 {
            self.decided -= 1;
        }
        let probe = if desired > 1 {
            self.pending.remove(&i)
        } else {
            None
        };
        match probe {
            Some(sent) => {
                let micros = u64::try_from(at.saturating_duration_since(sent).as_micros())
                    .unwrap_or(u64::MAX);
                self.latencies.saturating_record(micros.max(1));
            }
            None if self.count_other => self.other_writes[usize::from(!self.probed[i])] += 1,
            None => {}
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn measure(args: &ControllerArgs) -> anyhow::Result<Report> {
    let n = args.deployments;
    let program = Program::this()?;
    let mut procs = Procs::new(args.work_dir.as_deref(), "tidal-bench-controller-")?;
    let ports = free_ports(2)?;
    let store_addr = format!("127.0.0.1:{}", ports[0]);
    let controller_addr = format!("127.0.0.1:{}", ports[1]);

    eprintln!("store: starting one `tidal server` at {store_addr}");
    let mut command = program.command("server");
    command
        .arg("--node-id")
        .arg("1")
        .arg("--data-dir")
        .arg(procs.dir().join("store"))
        .arg("--listen")
        .arg(&store_addr);
    procs.spawn("store", command)?;
    let client = super::store::start_one_node(&mut procs, &store_addr).await?;
    let store_pid = child_pid("server")?;

    eprintln!("store: creating {n} deployments ({CREATE_CONCURRENCY} puts in flight)");
    let ids: Arc<Vec<String>> = Arc::new((0..n).map(deployment_id).collect());
    let created = Instant::now();
    create_deployments(&client, &ids, &mut procs).await?;
    let create_seconds = created.elapsed().as_secs_f64();
    eprintln!("store: {n} deployments created in {create_seconds:.1} s");

    // Watch every deployment's writes from here on.
    let (_, revision) = client
        .get(Table::Deployments, &ids[0])
        .await
        .context("reading the store's revision")?;
    let shared = Arc::new(Mutex::new(Shared::new(n)));
    // Dropping the set aborts the background tasks, on error too.
    let mut tasks = JoinSet::new();
    tasks.spawn(watch(client.clone(), revision + 1, Arc::clone(&shared)));

    eprintln!("controller: starting one `tidal controller` at {controller_addr}");
    let mut command = program.command("controller");
    command
        .arg("--id")
        .arg("bench")
        .arg("--store")
        .arg(&store_addr)
        .arg("--listen")
        .arg(&controller_addr);
    procs.spawn("controller", command)?;
    let controller_started = Instant::now();
    wait_until(
        &mut procs,
        &format!("tidal controller at {controller_addr}"),
        START_TIMEOUT,
        || {
            let addr = controller_addr.clone();
            async move {
                tokio::net::TcpStream::connect(&addr)
                    .await
                    .map(|_| Some(()))
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await?;
    let controller_pid = child_pid("controller")?;

    let mut senders = Vec::new();
    for _ in 0..STREAMS {
        let (tx, rx) = mpsc::channel(64);
        let channel = Endpoint::from_shared(format!("http://{controller_addr}"))
            .context("the controller's address")?
            .connect_lazy();
        tasks.spawn(report_stream(channel, rx, Arc::clone(&shared)));
        senders.push(tx);
    }
    let mut load = Load {
        ids: Arc::clone(&ids),
        senders,
        last_second: 0,
        sent: 0,
    };

    eprintln!(
        "controller: sending {n} samples a second; waiting for a decision stored for every deployment"
    );
    let ready_timeout = Duration::from_secs(args.ready_timeout_seconds);
    let mut last_progress = Instant::now();
    loop {
        load.tick(&mut procs, &shared, &BTreeSet::new()).await?;
        let decided = lock(&shared).decided;
        if decided >= n {
            break;
        }
        let waited = controller_started.elapsed();
        if waited >= ready_timeout || last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            let actors = scrape(&controller_addr).await.unwrap_or_default();
            let (redirected, cpu) = (
                lock(&shared).redirected,
                cpu_seconds(controller_pid).unwrap_or(0.0),
            );
            let status = format!(
                "{decided}/{n} deployments have a decision stored after {:.0} s; the controller \
                 runs {} actors ({} at desired 1) and holds {} shards; {redirected} samples \
                 redirected so far; controller CPU so far {cpu:.1} s",
                waited.as_secs_f64(),
                actors.desired_series,
                actors.desired_one,
                actors.shards_owned,
            );
            if waited >= ready_timeout {
                bail!("controller not ready: {status}");
            }
            eprintln!("controller: {status}");
        }
    }
    let ready_seconds = controller_started.elapsed().as_secs_f64();
    let actors_before = scrape(&controller_addr).await.unwrap_or_default();
    eprintln!(
        "controller: every deployment has a decision stored after {ready_seconds:.1} s; \
         {} actors, {} shards; {} s warm-up",
        actors_before.desired_series, actors_before.shards_owned, args.warmup_seconds
    );
    for _ in 0..args.warmup_seconds {
        load.tick(&mut procs, &shared, &BTreeSet::new()).await?;
    }

    eprintln!(
        "measuring for {} s: {} probes a second",
        args.seconds, args.probes_per_second
    );
    let mut picker = Picker::new(n);
    let mut probes_sent = 0u64;
    let mut start = None;
    for k in 0..args.seconds {
        let probes = picker.pick(args.probes_per_second, &shared);
        probes_sent += probes.len() as u64;
        let at = load.wait().await;
        if k == 0 {
            let mut s = lock(&shared);
            s.count_other = true;
            start = Some(Sample::take(
                at,
                controller_pid,
                store_pid,
                s.redirected,
                load.sent,
            ));
        }
        load.send(&mut procs, &shared, &probes, at).await?;
        if (k + 1) % 10 == 0 {
            let s = lock(&shared);
            eprintln!(
                "measuring: {} s, {} of {probes_sent} probes seen",
                k + 1,
                s.latencies.len()
            );
        }
    }
    let at = load.wait().await;
    let end = {
        let mut s = lock(&shared);
        s.count_other = false;
        Sample::take(at, controller_pid, store_pid, s.redirected, load.sent)
    };
    load.send(&mut procs, &shared, &BTreeSet::new(), at).await?;
    let start = start.context("no measured second")?;
    // Late probes: keep the load on for a while.
    for _ in 0..DRAIN_SECONDS {
        if lock(&shared).pending.is_empty() {
            break;
        }
        load.tick(&mut procs, &shared, &BTreeSet::new()).await?;
    }
    let actors_after = scrape(&controller_addr).await.unwrap_or_default();
    let controller_peak_rss_kib = vm_hwm_kib(controller_pid);
    let store_peak_rss_kib = vm_hwm_kib(store_pid);
    procs.check_alive()?;
    let log = LogCounts::read(&procs.dir().join("controller.log"));

    let s = lock(&shared);
    let seconds = (end.at - start.at).as_secs_f64();
    let percent = |before: Option<f64>, after: Option<f64>| match (before, after) {
        (Some(b), Some(a)) if seconds > 0.0 => (a - b) / seconds * 100.0,
        _ => f64::NAN,
    };
    let ms = |micros: u64| micros as f64 / 1000.0;
    let seen = s.latencies.len();
    let quantile = |q: f64| (seen > 0).then(|| ms(s.latencies.value_at_quantile(q)));
    let controller_cpu_percent = percent(start.controller, end.controller);
    let goal_met = controller_cpu_percent < GOAL_CPU_PERCENT
        && controller_peak_rss_kib.is_some_and(|k| k * 1024 < GOAL_RSS_BYTES);
    if let Some(e) = &s.last_watch_error {
        eprintln!(
            "watch: re-opened {} time(s); last error: {e}",
            s.watch_restarts
        );
    }
    let report = Report {
        cpu: super::cpu_model(),
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        deployments: n,
        streams: STREAMS,
        samples_per_message: BATCH,
        warmup_seconds: args.warmup_seconds,
        seconds: args.seconds,
        probes_per_second: args.probes_per_second,
        create_seconds,
        ready_seconds,
        actors_before,
        actors_after,
        measured_seconds: seconds,
        reports_per_s: if seconds > 0.0 {
            (end.sent - start.sent) as f64 / seconds
        } else {
            0.0
        },
        redirected_samples: end.redirected - start.redirected,
        controller_cpu_percent,
        controller_peak_rss_kib,
        store_cpu_percent: percent(start.store, end.store),
        store_peak_rss_kib,
        bench_cpu_percent: percent(start.bench, end.bench),
        probes_sent,
        probes_seen: seen,
        p50_ms: quantile(0.50),
        p99_ms: quantile(0.99),
        max_ms: (seen > 0).then(|| ms(s.latencies.max())),
        other_writes_probed: s.other_writes[0],
        other_writes_unprobed: s.other_writes[1],
        controller_log_warnings: log.warnings,
        controller_log_errors: log.errors,
        controller_log_first_warning: log.first,
        watch_restarts: s.watch_restarts,
        goal_met,
    };
    drop(s);
    drop(load);
    drop(tasks);
    drop(procs);
    eprintln!("stopped; data removed");
    Ok(report)
}

/// Puts every deployment, `CREATE_CONCURRENCY` at a time, showing progress.
async fn create_deployments(
    client: &Client,
    ids: &Arc<Vec<String>>,
    procs: &mut Procs,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..CREATE_CONCURRENCY.min(ids.len()) {
        let (client, ids, next, done) = (
            client.clone(),
            Arc::clone(ids),
            Arc::clone(&next),
            Arc::clone(&done),
        );
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(id) = ids.get(i) else {
                    return anyhow::Ok(());
                };
                let record = pb::DeploymentRecord {
                    deployment: Some(pb::Deployment {
                        id: id.clone(),
                        autoscaling_settings: Some(settings().into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let put = Request::put(
                    Table::Deployments,
                    id.as_str(),
                    record.encode_to_vec(),
                    Precondition::MustNotExist,
                    None,
                );
                let written = client
                    .write(&put)
                    .await
                    .with_context(|| format!("creating deployment {id}"))?;
                if !matches!(written.outcome, Outcome::Written { .. }) {
                    bail!("creating deployment {id}: {:?}", written.outcome);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut progress = tokio::time::interval(Duration::from_secs(5));
    progress.tick().await;
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                None => return Ok(()),
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => bail!("a create task failed: {e}"),
            },
            _ = progress.tick() => {
                procs.check_alive()?;
                eprintln!(
                    "store: {}/{} deployments created",
                    done.load(Ordering::Relaxed),
                    ids.len()
                );
            }
        }
    }
}

/// Follows table DEPLOYMENTS from `from`, re-opening the watch if it ends.
async fn watch(client: Client, mut from: u64, shared: Arc<Mutex<Shared>>) {
    let filter = EventFilter {
        table: Some(Table::Deployments),
        key_prefix: PREFIX.to_owned(),
    };
    loop {
        let why = match client.watch(from, &filter).await {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(response)) => {
                        let at = Instant::now();
                        match response.response {
                            Some(pb::watch_response::Response::Events(events)) => {
                                let mut s = lock(&shared);
                                for event in &events.events {
                                    from = from.max(event.revision + 1);
                                    s.apply(event, at);
                                }
                            }
                            Some(pb::watch_response::Response::Compacted(c)) => {
                                from = c.current_revision + 1;
                                break format!(
                                    "the watch fell behind the store's history (compacted at {}); \
                                     events up to {} are lost",
                                    c.compacted_revision, c.current_revision
                                );
                            }
                            None => {}
                        }
                        from = from.max(response.next_revision);
                    }
                    Ok(None) => break "the store ended the watch".to_owned(),
                    Err(e) => break format!("the watch failed: {e}"),
                }
            },
            Err(e) => format!("cannot watch: {e}"),
        };
        {
            let mut s = lock(&shared);
            s.watch_restarts += 1;
            s.last_watch_error = Some(why);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One long-lived Report stream: sends what `reports` yields, counts the
/// redirects in the acks.
async fn report_stream(
    channel: Channel,
    reports: mpsc::Receiver<pb::MetricReport>,
    shared: Arc<Mutex<Shared>>,
) {
    let mut client = pb::controller_client::ControllerClient::new(channel);
    let result = async {
        let mut acks = client
            .report(ReceiverStream::new(reports))
            .await?
            .into_inner();
        while let Some(ack) = acks.message().await? {
            lock(&shared).redirected += ack.redirects.len() as u64;
        }
        Ok::<(), tonic::Status>(())
    }
    .await;
    let why = match result {
        Ok(()) => "the controller ended a Report stream".to_owned(),
        Err(e) => format!("a Report stream failed: {e}"),
    };
    lock(&shared).stream_error.get_or_insert(why);
}

/// The steady load: one sample per deployment per second.
#[derive(Debug)]
struct Load {
    ids: Arc<Vec<String>>,
    senders: Vec<mpsc::Sender<pb::MetricReport>>,
    /// The second the last samples covered (Unix seconds).
    last_second: u64,
    /// Samples sent.
    sent: u64,
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl Load {
    /// Waits until just after the next whole second; returns the second just
    /// ended, which the next samples cover (always a new one).
    async fn wait(&mut self) -> (u64, Instant) {
        let now = unix_now();
        let boundary = (now.as_secs() + 1).max(self.last_second + 2);
        let target = Duration::from_secs(boundary) + SEND_OFFSET;
        tokio::time::sleep(target.saturating_sub(now)).await;
        self.last_second = boundary - 1;
        (self.last_second, Instant::now())
    }

    /// Sends one sample per deployment for `second`: concurrency 9 for the
    /// `probes`, 1 for the others. A probe's send instant is recorded just
    /// before its message is handed to its stream.
    async fn send(
        &mut self,
        procs: &mut Procs,
        shared: &Mutex<Shared>,
        probes: &BTreeSet<usize>,
        (second, _): (u64, Instant),
    ) -> anyhow::Result<()> {
        procs.check_alive()?;
        if let Some(e) = &lock(shared).stream_error {
            bail!("{e}");
        }
        let n = self.ids.len();
        for (b, first) in (0..n).step_by(BATCH).enumerate() {
            let end = (first + BATCH).min(n);
            let metrics = (first..end)
                .map(|i| pb::DeploymentMetrics {
                    deployment_id: self.ids[i].clone(),
                    second,
                    concurrency_micros: if probes.contains(&i) {
                        PROBE_MICROS
                    } else {
                        LOAD_MICROS
                    },
                    requests: 1,
                    queued: 0,
                })
                .collect();
            let report = pb::MetricReport {
                gateway_id: "bench".to_owned(),
                metrics,
            };
            let mut here = probes.range(first..end).peekable();
            if here.peek().is_some() {
                let at = Instant::now();
                let mut s = lock(shared);
                for &i in here {
                    s.pending.insert(i, at);
                    s.probed[i] = true;
                }
            }
            if self.senders[b % STREAMS].send(report).await.is_err() {
                let why = lock(shared).stream_error.clone();
                bail!(
                    "a Report stream closed: {}",
                    why.as_deref().unwrap_or("no reason given")
                );
            }
            self.sent += (end - first) as u64;
        }
        Ok(())
    }

    /// One second of load with `probes`.
    async fn tick(
        &mut self,
        procs: &mut Procs,
        shared: &Mutex<Shared>,
        probes: &BTreeSet<usize>,
    ) -> anyhow::Result<()> {
        let at = self.wait().await;
        self.send(procs, shared, probes, at).await
    }
}

/// Picks fresh deployments to probe: a fixed shuffle of all of them, each
/// taken once, skipping any whose desired replicas are not 1 right now.
#[derive(Debug)]
struct Picker {
    order: Vec<usize>,
    next: usize,
}

impl Picker {
    fn new(n: usize) -> Self {
        let mut order: Vec<usize> = (0..n).collect();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in (1..n).rev() {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let j = usize::try_from(state % (i as u64 + 1)).unwrap_or(0);
            order.swap(i, j);
        }
        Self { order, next: 0 }
    }

    fn pick(&mut self, count: usize, shared: &Mutex<Shared>) -> BTreeSet<usize> {
        let s = lock(shared);
        let mut out = BTreeSet::new();
        while out.len() < count && self.next < self.order.len() {
            let i = self.order[self.next];
            self.next += 1;
            if s.desired[i] == 1 {
                out.insert(i);
            }
        }
        out
    }
}

/// CPU times at one instant of the measurement.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    controller: Option<f64>,
    store: Option<f64>,
    bench: Option<f64>,
    redirected: u64,
    sent: u64,
}

impl Sample {
    fn take(
        (_, at): (u64, Instant),
        controller: u32,
        store: u32,
        redirected: u64,
        sent: u64,
    ) -> Self {
        Self {
            at,
            controller: cpu_seconds(controller),
            store: cpu_seconds(store),
            bench: cpu_seconds(std::process::id()),
            redirected,
            sent,
        }
    }
}

/// Clock ticks per second of `/proc/PID/stat`'s times.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse::<u32>().ok())
            .filter(|ticks| *ticks > 0)
            .map_or(100.0, f64::from)
    })
}

/// The fields of `/proc/PID/stat` after the command name (field 3 first).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// CPU time (user + system, all threads) that process `pid` has used, s.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let fields = stat_fields(pid)?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// The pid of this process's child running `tidal <subcommand>`.
fn child_pid(subcommand: &str) -> anyhow::Result<u32> {
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").context("cannot read /proc")? {
        let Some(pid) = entry
            .ok()
            .and_then(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        else {
            continue;
        };
        let is_child = stat_fields(pid).is_some_and(|f| f.get(1) == Some(&me));
        if !is_child {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmdline.split(|b| *b == 0).nth(1) == Some(subcommand.as_bytes()) {
            return Ok(pid);
        }
    }
    bail!("cannot find the `tidal {subcommand}` process among this process's children")
}

/// WARN and ERROR lines in a log.
#[derive(Debug, Default)]
struct LogCounts {
    warnings: usize,
    errors: usize,
    first: Option<String>,
}

impl LogCounts {
    fn read(path: &Path) -> Self {
        let mut counts = Self::default();
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            let line = strip_ansi(line);
            // `<timestamp> <level> <target>: <message>`
            let level = line.split_whitespace().nth(1);
            let warning = level == Some("WARN");
            let error = level == Some("ERROR");
            counts.warnings += usize::from(warning);
            counts.errors += usize::from(error);
            if (warning || error) && counts.first.is_none() {
                counts.first = Some(line.chars().take(300).collect());
            }
        }
        counts
    }
}

/// `line` without its ANSI colour codes (`ESC [ … m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The controller's actors, from its `/metrics`.
async fn scrape(addr: &str) -> anyhow::Result<Actors> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
            .await?;
        let mut body = Vec::new();
        stream.read_to_end(&mut body).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&body).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .context("the controller's /metrics did not answer in 10 s")?
        .context("the controller's /metrics")?;
    Ok(count_actors(&text))
}

fn count_actors(text: &str) -> Actors {
    let mut actors = Actors::default();
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if series.starts_with("tidal_controller_desired_replicas{") {
            actors.desired_series += 1;
            if value == "1" {
                actors.desired_one += 1;
            }
        } else if series.starts_with("tidal_controller_shard_owned{") && value == "1" {
            actors.shards_owned += 1;
        }
    }
    actors
}

fn fmt_ms(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0}"))
}

fn fmt_mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "?".to_owned(),
        |k| format!("{:.1} MiB", k as f64 / 1024.0),
    )
}

/// The figures as a table.
fn render(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    writeln!(
        out,
        "tidal bench controller: one `tidal controller` and one `tidal server` (fsync on) on \
         127.0.0.1; {} deployments, one sample a second each over {} Report streams ({} samples \
         a message)",
        r.deployments, r.streams, r.samples_per_message
    )?;
    writeln!(
        out,
        "{} s measured ({:.1} s timed) after every deployment had a decision stored ({:.1} s \
         after the controller started) and {} s warm-up; {} probes a second",
        r.seconds, r.measured_seconds, r.ready_seconds, r.warmup_seconds, r.probes_per_second
    )?;
    writeln!(out, "machine: {}, {} cores", r.cpu, r.cores)?;
    writeln!(out)?;
    writeln!(
        out,
        "{:>11} | {:>9} | {:>14} | {:>18} | {:>9} | {:>6} {:>6} {:>6} | {:>16}",
        "deployments",
        "reports/s",
        "controller CPU",
        "controller peak RSS",
        "store CPU",
        "p50 ms",
        "p99 ms",
        "max ms",
        "probes seen/sent"
    )?;
    writeln!(
        out,
        "{:>11} | {:>9.0} | {:>12.1} % | {:>19} | {:>7.1} % | {:>6} {:>6} {:>6} | {:>16}",
        r.deployments,
        r.reports_per_s,
        r.controller_cpu_percent,
        fmt_mib(r.controller_peak_rss_kib),
        r.store_cpu_percent,
        fmt_ms(r.p50_ms),
        fmt_ms(r.p99_ms),
        fmt_ms(r.max_ms),
        format!("{}/{}", r.probes_seen, r.probes_sent)
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "CPU: % of one core over the measured period (utime + stime from /proc/PID/stat); \
         peak RSS: VmHWM at the end"
    )?;
    writeln!(
        out,
        "probe latency: from sending a deployment's sample of concurrency 9 to the store watch \
         event of its desired replicas rising above 1 (report → decision stored; includes the \
         wait for the actor's next 1 s tick)"
    )?;
    writeln!(
        out,
        "actors (desired_replicas series in /metrics): {} before, {} after; shards held: {} \
         before, {} after",
        r.actors_before.desired_series,
        r.actors_after.desired_series,
        r.actors_before.shards_owned,
        r.actors_after.shards_owned
    )?;
    writeln!(
        out,
        "store peak RSS {}; this process (load and watch) {:.1} % of one core; creating the \
         deployments took {:.1} s",
        fmt_mib(r.store_peak_rss_kib),
        r.bench_cpu_percent,
        r.create_seconds
    )?;
    writeln!(
        out,
        "in the measured period: {} other desired-replicas writes to probed deployments, {} to \
         the others; {} samples redirected",
        r.other_writes_probed, r.other_writes_unprobed, r.redirected_samples
    )?;
    writeln!(
        out,
        "controller log: {} WARN and {} ERROR lines{}",
        r.controller_log_warnings,
        r.controller_log_errors,
        r.controller_log_first_warning
            .as_ref()
            .map_or_else(String::new, |w| format!("; the first: {w}"))
    )?;
    if r.watch_restarts > 0 {
        writeln!(
            out,
            "the store watch was re-opened {} time(s): probes may be missed",
            r.watch_restarts
        )?;
    }
    writeln!(
        out,
        "goal (controller under {GOAL_CPU_PERCENT} % of one core and {} MB peak RSS): {}",
        GOAL_RSS_BYTES / 1_000_000,
        if r.goal_met { "met" } else { "not met" }
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        assert_eq!(index_of(&deployment_id(42)), Some(42));
        assert_eq!(index_of("other-1"), None);
    }

    #[test]
    fn probes_are_fresh_and_at_one() {
        let shared = Mutex::new(Shared::new(50));
        lock(&shared).desired.iter_mut().for_each(|d| *d = 1);
        lock(&shared).desired[7] = 2;
        let mut picker = Picker::new(50);
        let mut seen = BTreeSet::new();
        for _ in 0..10 {
            for i in picker.pick(5, &shared) {
                assert_ne!(i, 7);
                assert!(seen.insert(i), "deployment {i} probed twice");
            }
        }
        assert_eq!(seen.len(), 49);
        assert!(picker.pick(5, &shared).is_empty());
    }

    #[test]
    fn a_probe_is_timed_by_its_first_rise() {
        let mut shared = Shared::new(3);
        let sent = Instant::now();
        shared.pending.insert(1, sent);
        let event = |desired| pb::ChangeEvent {
            revision: 9,
            key: deployment_id(1),
            kind: pb::change_event::Kind::Put.into(),
            value: Some(pb::KeyValue {
                value: pb::DeploymentRecord {
                    desired_replicas: desired,
                    ..Default::default()
                }
                .encode_to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        };
        shared.count_other = true;
        shared.apply(&event(1), sent + Duration::from_millis(5));
        assert_eq!((shared.decided, shared.latencies.len()), (1, 0));
        shared.apply(&event(2), sent + Duration::from_millis(700));
        assert_eq!(shared.latencies.len(), 1);
        assert!(shared.latencies.max() >= 699_000);
        assert!(shared.pending.is_empty());
        assert_eq!(shared.other_writes, [0, 1]);
        shared.probed[1] = true;
        shared.apply(&event(1), sent + Duration::from_secs(60));
        assert_eq!(shared.other_writes, [1, 1]);
    }

    #[test]
    fn actors_are_counted_from_metrics() {
        let text = "# HELP x\n\
            tidal_controller_desired_replicas{deployment=\"a\"} 1\n\
            tidal_controller_desired_replicas{deployment=\"b\"} 0\n\
            tidal_controller_shard_owned{shard=\"0\"} 1\n\
            tidal_controller_shard_owned{shard=\"1\"} 0\n";
        let actors = count_actors(text);
        assert_eq!(
            (
                actors.desired_series,
                actors.desired_one,
                actors.shards_owned
            ),
            (2, 1, 1)
        );
    }

    #[test]
    fn log_levels_are_found_in_coloured_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.log");
        std::fs::write(
            &path,
            "2026-01-01T00:00:00Z \u{1b}[33m WARN\u{1b}[0m x: slow\n\
             2026-01-01T00:00:01Z  INFO x: WARN in a message\n\
             2026-01-01T00:00:02Z \u{1b}[31mERROR\u{1b}[0m x: broke\n",
        )
        .expect("log written");
        let counts = LogCounts::read(&path);
        assert_eq!((counts.warnings, counts.errors), (1, 1));
        assert_eq!(
            counts.first.as_deref(),
            Some("2026-01-01T00:00:00Z  WARN x: slow")
        );
    }

    #[test]
    fn this_process_has_cpu_time() {
        assert!(cpu_seconds(std::process::id()).is_some());
        assert!(cpu_seconds(u32::MAX).is_none());
    }
}
