//! `tidal bench gateway`: the gateway's requests/s and added latency against
//! the same replica reached directly and through nginx, on this machine, in
//! one run, with one load client (`tidal load`'s engine).
//!
//! Processes, all on 127.0.0.1 and all stopped at the end, on error and on
//! Ctrl-C: one replica (`tidal model serve`, a generated ~20,000-parameter
//! model, no delay); a one-node store (`tidal server`) holding a deployment
//! and a Ready replica record written directly (no controller or worker),
//! and two `tidal gateway`s routing to it (threads auto and 1); two nginx
//! instances as keep-alive reverse proxies to the replica, one with
//! `worker_processes 1` and one with `auto`, each on its own port.
//! Everything runs for the whole run (an idle proxy uses no CPU).
//!
//! Throughput on a shared machine drifts over minutes, so the targets are
//! measured in --rounds rounds, each measuring every target once (warm-up,
//! then the measured period); round r (0-based) starts at target r % n and
//! goes on in order, wrapping, so that no target is always first or last.
//! Each target's rounds are pooled into one row: total requests over total
//! measured seconds, p50/p99/max of the merged latency histogram, CPU as
//! total CPU seconds over total measured seconds; each round's req/s and
//! p99 are kept too (`rounds`).

mod nginx;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Method, Uri};
use prost::Message;
use serde::Serialize;
use tidal_proto::pb;
use tidal_store::Request;
use tidal_store::app::{Outcome, Precondition, Table};
use tidal_store::client::Client;

use super::procs::{Procs, free_ports, wait_until};
use crate::Failure;
use crate::load::engine::{Engine, RequestTemplate, Stats};
use nginx::{Nginx, child_pid, cpu_seconds, machine_busy_seconds, nginx_version};

const MODEL: &str = "bench";
const DEPLOYMENT: &str = "bench-v1";
const REPLICA: &str = "bench-v1-r1";
/// 16 floats, the reference model's input.
const BODY: &str = r#"{"input":[0.5,-1.25,2.0,0.75,-0.5,1.5,-2.25,0.125,3.0,-0.875,1.0,0.25,-1.5,2.5,-0.625,0.0]}"#;
const GATEWAY: &str = "tidal gateway (threads auto)";
const GATEWAY_ONE_THREAD: &str = "tidal gateway (threads 1)";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The gateway against direct access and nginx: requests/s, p50/p99/max
/// latency, errors, and the proxy's CPU and peak RSS.
///
/// Starts on 127.0.0.1: one replica (`tidal model serve`, a generated
/// model of --params parameters, no delay); a one-node store and a `tidal
/// gateway` whose routing table holds that replica as Ready (records
/// written directly; no controller or worker); and nginx (from PATH or
/// --nginx-bin; skipped with a note if absent) as a keep-alive reverse
/// proxy to the replica, one with `worker_processes 1` and one with `auto`,
/// each on its own port; all run throughout. Each target gets the same
/// closed-loop load (`tidal load`'s engine): POST of 16 floats at
/// --concurrency, --warmup-seconds, then --seconds measured. This is done
/// in --rounds rounds, each measuring every target once; round r (0-based)
/// starts at target r % (number of targets) and wraps, so that no target
/// is always first or last while the machine's speed drifts. A target's
/// row pools its rounds (total requests / total seconds, percentiles of the
/// merged latencies, CPU time-weighted), and each round's req/s and p99 are
/// shown too. Progress goes to stderr; the tables (or --json) to stdout.
#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// Requests kept in flight.
    #[arg(long, value_name = "N", default_value_t = 64)]
    concurrency: usize,
    /// Measured seconds per target.
    #[arg(long, value_name = "N", default_value_t = 10)]
    seconds: u64,
    /// Unmeasured warm-up seconds before each measurement.
    #[arg(long, value_name = "N", default_value_t = 2)]
    warmup_seconds: u64,
    /// Rounds, each measuring every target once, in rotated order; each
    /// target's figures pool its rounds.
    #[arg(long, value_name = "N", default_value_t = 3)]
    rounds: usize,
    /// The nginx binary.
    #[arg(long, value_name = "PATH", default_value = "nginx")]
    nginx_bin: PathBuf,
    /// Leave nginx out.
    #[arg(long)]
    skip_nginx: bool,
    /// Parameters of the generated model.
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    params: u64,
    /// Where the temporary directory (model, store, logs) goes (default:
    /// the system's temp dir).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One target's figures, pooled over its rounds.
#[derive(Debug, Serialize)]
struct TargetResult {
    target: String,
    path: String,
    /// Over every round.
    requests: u64,
    /// Measured seconds, over every round.
    seconds: f64,
    /// `requests` / `seconds`.
    requests_per_s: f64,
    /// Of the latencies of every round together.
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    /// Requests not answered 2xx (by outcome in `outcomes`).
    errors: u64,
    outcomes: std::collections::BTreeMap<String, u64>,
    /// CPU of the proxy's processes over the measured periods, % of one
    /// core (total CPU seconds / total measured seconds; the same for the
    /// other CPU figures).
    proxy_cpu_percent: Option<f64>,
    /// Sum of VmHWM over the proxy's processes, KiB; the largest of the
    /// rounds.
    proxy_peak_rss_kib: Option<u64>,
    /// Number of proxy processes (nginx: master + workers).
    proxy_processes: usize,
    replica_cpu_percent: Option<f64>,
    /// This process (the load client).
    client_cpu_percent: Option<f64>,
    /// The proxy's CPU time per answered request, µs.
    proxy_cpu_us_per_request: Option<f64>,
    /// Every core's busy time (`/proc/stat`), % of one core.
    machine_cpu_percent: Option<f64>,
    /// The machine's busy time outside the proxy, the replica and the client
    /// (other processes, and kernel work not charged to a process).
    other_cpu_percent: Option<f64>,
    /// Each round's figures, in round order.
    rounds: Vec<RoundFigures>,
}

/// One round of one target.
#[derive(Debug, Clone, Copy, Serialize)]
struct RoundFigures {
    req_per_s: f64,
    p99_ms: Option<f64>,
}

/// What the run measured.
#[derive(Debug, Serialize)]
struct Report {
    cpu: String,
    cores: usize,
    concurrency: usize,
    /// Per target and round.
    warmup_seconds: u64,
    /// Measured, per target and round.
    seconds: u64,
    rounds: usize,
    params: u64,
    nginx_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nginx_skipped: Option<String>,
    targets: Vec<TargetResult>,
}

pub(crate) fn run(args: GatewayArgs) -> Result<(), Failure> {
    if args.seconds == 0 || args.concurrency == 0 || args.rounds == 0 {
        return Err(Failure::Usage(
            "--seconds, --concurrency and --rounds must be at least 1".to_owned(),
        ));
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| Failure::Other(e.into()))?;
    let report = runtime.block_on(async {
        // On Ctrl-C or SIGTERM the future is dropped: the guards stop every
        // process and remove the directory.
        tokio::select! {
            report = measure_all(&args) => report,
            () = crate::load::interrupted() => Err(anyhow::anyhow!("interrupted; every process it started is stopped")),
        }
    });
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

/// This binary, to start as the replica, the store and the gateway.
fn tidal(subcommand: &str) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("cannot find the tidal binary to start")?;
    // Start the very file this process runs, even if a build has replaced
    // `exe` since (Linux); `ps` still shows `exe`.
    let image = Path::new("/proc/self/exe");
    let mut command = Command::new(if image.exists() { image } else { &exe });
    command.arg0(&exe).arg(subcommand).env_remove("RUST_LOG");
    Ok(command)
}

async fn measure_all(args: &GatewayArgs) -> anyhow::Result<Report> {
    let nginx_version = if args.skip_nginx {
        Err("--skip-nginx".to_owned())
    } else {
        nginx_version(&args.nginx_bin)
    };
    if let Err(reason) = &nginx_version {
        eprintln!("nginx: will not be measured: {reason}");
    }
    let mut procs = Procs::new(args.work_dir.as_deref(), "tidal-bench-gateway-")?;
    // The replica, the store, two gateways, two nginx.
    let ports = free_ports(6)?;
    let replica = format!("127.0.0.1:{}", ports[0]);
    let store = format!("127.0.0.1:{}", ports[1]);

    let model_dir = procs.dir().join("model");
    tidal_model::generate::generate(&model_dir, args.params, 0)
        .map_err(|e| anyhow::anyhow!("generating the model in {}: {e}", model_dir.display()))?;
    let mut command = tidal("model")?;
    command
        .arg("serve")
        .env("PORT", ports[0].to_string())
        .env("TIDAL_MODEL_DIR", &model_dir)
        .env("TIDAL_MODEL_HOST", "127.0.0.1")
        .env("TIDAL_MODEL_DELAY_MS", "0");
    procs.spawn("replica", command)?;
    let direct = format!("http://{replica}/predict");
    // Before the key exists: the replica ignores the header anyway.
    let no_key = HeaderValue::from_static("Bearer none");
    wait_answers(&mut procs, "the replica", &direct, &no_key).await?;
    eprintln!("replica: serving at {replica}");

    let mut command = tidal("server")?;
    command
        .args(["--node-id", "1", "--listen", &store, "--data-dir"])
        .arg(procs.dir().join("store"));
    procs.spawn("store", command)?;
    let client = super::store::start_one_node(&mut procs, &store).await?;
    write_records(&client, &replica).await?;
    // Every target gets the same request, with an inference key (only the
    // gateway reads it).
    let key = tidal_auth::create(&client, "bench", &[tidal_auth::Scope::Inference])
        .await
        .context("creating an inference API key")?
        .key;
    let auth = HeaderValue::try_from(format!("Bearer {key}")).context("the API key")?;
    // Both check every request's key. One has a serving thread per core
    // (the default), one a single thread: nginx's `worker_processes auto`
    // and `1`.
    let mut gateways = Vec::new();
    for (label, port, threads) in [
        (GATEWAY, ports[2], "0"),
        (GATEWAY_ONE_THREAD, ports[3], "1"),
    ] {
        let listen = format!("127.0.0.1:{port}");
        let mut command = tidal("gateway")?;
        command.args(["--store", &store, "--listen", &listen, "--threads", threads]);
        procs.spawn(&format!("gateway-{port}"), command)?;
        let url = format!("http://{listen}/v1/models/{MODEL}/production/predict");
        wait_answers(&mut procs, label, &url, &auth).await?;
        let pid = child_pid(&["gateway", "--store", &store, "--listen", &listen])?;
        eprintln!("{label}: serving at {listen}, routing to the replica");
        gateways.push((label, url, pid));
    }

    // Both nginx instances run from here to the end, on their own ports
    // with their own prefix directories, so that the rounds can measure
    // them in any order. Declared after `procs`: dropped (stopped) before
    // the directory is removed, on error and on Ctrl-C too.
    let mut nginxes: Vec<(String, String, Nginx)> = Vec::new();
    if nginx_version.is_ok() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        for (workers, port) in [("1", ports[4]), ("auto", ports[5])] {
            let label = if workers == "auto" {
                format!("nginx (workers auto = {cores})")
            } else {
                "nginx (workers 1)".to_owned()
            };
            let prefix = procs.dir().join(format!("nginx-{workers}"));
            let nginx = Nginx::start(&args.nginx_bin, &prefix, port, &replica, workers)?;
            let url = format!("http://127.0.0.1:{port}/predict");
            // Kept before waiting, so that a failed wait stops it too.
            nginxes.push((label.clone(), url.clone(), nginx));
            wait_answers(&mut procs, &label, &url, &auth).await?;
            eprintln!("{label}: serving at 127.0.0.1:{port}, proxying to the replica");
        }
    }

    let replica_pid = child_pid(&["model", "serve"])?;
    let mut targets = vec![Target {
        label: "direct".to_owned(),
        url: direct,
        proxies: Proxies::None,
    }];
    for (label, url, pid) in gateways {
        targets.push(Target {
            label: label.to_owned(),
            url,
            proxies: Proxies::Process(pid),
        });
    }
    for (label, url, nginx) in &nginxes {
        targets.push(Target {
            label: label.clone(),
            url: url.clone(),
            proxies: Proxies::Nginx(nginx),
        });
    }
    let mut measured: Vec<Vec<Round>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        for i in round_order(targets.len(), round) {
            let target = &targets[i];
            let progress = format!("round {}/{}: {}", round + 1, args.rounds, target.label);
            match measure(args, &mut procs, target, &progress, &auth, replica_pid).await {
                Ok(r) => measured[i].push(r),
                Err(e) => {
                    // nginx's own error, if it logged one, says more.
                    if let Proxies::Nginx(nginx) = target.proxies {
                        nginx.check_log()?;
                    }
                    return Err(e);
                }
            }
        }
    }
    for (_, _, nginx) in &nginxes {
        nginx.check_log()?;
    }
    let rows: Vec<TargetResult> = targets
        .iter()
        .zip(&measured)
        .map(|(target, rounds)| pool(&target.label, &target.url, rounds))
        .collect();
    drop(targets);
    drop(nginxes);
    drop(procs);
    eprintln!("stopped; directory removed");
    let (nginx_version, nginx_skipped) = match nginx_version {
        Ok(v) => (Some(v), None),
        Err(reason) => (None, Some(reason)),
    };
    Ok(Report {
        cpu: super::cpu_model(),
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        concurrency: args.concurrency,
        warmup_seconds: args.warmup_seconds,
        seconds: args.seconds,
        rounds: args.rounds,
        params: args.params,
        nginx_version,
        nginx_skipped,
        targets: rows,
    })
}

/// The request for `url`, with `authorization`.
fn template(url: &str, authorization: &HeaderValue) -> anyhow::Result<RequestTemplate> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(AUTHORIZATION, authorization.clone());
    Ok(RequestTemplate {
        method: Method::POST,
        uri: url.parse::<Uri>().with_context(|| format!("URL {url}"))?,
        headers,
        body: Bytes::from_static(BODY.as_bytes()),
    })
}

/// Waits until one POST to `url` is answered 200.
async fn wait_answers(
    procs: &mut Procs,
    what: &str,
    url: &str,
    authorization: &HeaderValue,
) -> anyhow::Result<()> {
    let client = crate::load::engine::http_client(1);
    let template = template(url, authorization)?;
    wait_until(procs, what, START_TIMEOUT, || {
        let mut request = hyper::Request::new(http_body_util::Full::new(template.body.clone()));
        *request.method_mut() = template.method.clone();
        *request.uri_mut() = template.uri.clone();
        *request.headers_mut() = template.headers.clone();
        let client = client.clone();
        async move {
            let answer = tokio::time::timeout(Duration::from_secs(2), client.request(request))
                .await
                .map_err(|_| "no answer within 2 s".to_owned())?
                .map_err(|e| e.to_string())?;
            let status = answer.status();
            if status.is_success() {
                Ok(Some(()))
            } else {
                Err(format!("answered {status}"))
            }
        }
    })
    .await
}

/// What the load goes to.
#[derive(Debug)]
struct Target<'a> {
    label: String,
    url: String,
    proxies: Proxies<'a>,
}

/// The proxy's processes, whose CPU and memory are measured.
#[derive(Debug)]
enum Proxies<'a> {
    /// Direct access.
    None,
    /// A gateway.
    Process(u32),
    /// nginx: the master and its workers, read at each measurement.
    Nginx(&'a Nginx),
}

impl Proxies<'_> {
    fn pids(&self) -> Vec<u32> {
        match self {
            Proxies::None => Vec::new(),
            Proxies::Process(pid) => vec![*pid],
            Proxies::Nginx(nginx) => nginx.pids(),
        }
    }
}

/// The targets' indices in the order round `round` (0-based) measures
/// them: all `n`, starting at `round % n`, wrapping.
fn round_order(n: usize, round: usize) -> Vec<usize> {
    (0..n).map(|i| (round + i) % n).collect()
}

/// What one round measured of one target.
#[derive(Debug, Clone)]
struct Round {
    /// The answers that ended in the measured period.
    stats: Stats,
    /// The measured period, s.
    seconds: f64,
    /// CPU seconds (user + system) over the measured period: the proxy's
    /// processes (`None` without a proxy), the replica, this process, and
    /// every core's busy time.
    proxy_cpu_s: Option<f64>,
    replica_cpu_s: Option<f64>,
    client_cpu_s: Option<f64>,
    machine_cpu_s: Option<f64>,
    /// Sum of VmHWM over the proxy's processes after the period, KiB.
    proxy_peak_rss_kib: Option<u64>,
    proxy_processes: usize,
}

impl Round {
    fn figures(&self) -> RoundFigures {
        RoundFigures {
            req_per_s: self.stats.requests() as f64 / self.seconds,
            p99_ms: self.stats.quantile_ms(0.99),
        }
    }
}

/// One target's rounds as one row: counts and seconds summed, percentiles
/// of the merged latencies, CPU % as total CPU seconds over total measured
/// seconds, the largest peak RSS.
fn pool(label: &str, url: &str, rounds: &[Round]) -> TargetResult {
    let mut stats = Stats::default();
    for round in rounds {
        stats.add(&round.stats);
    }
    let seconds: f64 = rounds.iter().map(|r| r.seconds).sum();
    let requests = stats.requests();
    let total = |cpu: fn(&Round) -> Option<f64>| rounds.iter().map(cpu).sum::<Option<f64>>();
    let percent = |cpu_s: Option<f64>| cpu_s.map(|s| s / seconds * 100.0);
    let proxy_s = total(|r| r.proxy_cpu_s);
    let replica_s = total(|r| r.replica_cpu_s);
    let client_s = total(|r| r.client_cpu_s);
    let machine_s = total(|r| r.machine_cpu_s);
    let ours_s = [proxy_s, replica_s, client_s]
        .iter()
        .map(|s| s.unwrap_or(0.0))
        .sum::<f64>();
    TargetResult {
        target: label.to_owned(),
        path: url.to_owned(),
        requests,
        seconds,
        requests_per_s: requests as f64 / seconds,
        p50_ms: stats.quantile_ms(0.5),
        p99_ms: stats.quantile_ms(0.99),
        max_ms: stats.max_ms(),
        errors: stats.not_ok(),
        outcomes: stats.outcome_counts(),
        proxy_cpu_percent: percent(proxy_s),
        proxy_cpu_us_per_request: proxy_s
            .filter(|_| requests > 0)
            .map(|s| s / requests as f64 * 1e6),
        proxy_peak_rss_kib: rounds.iter().filter_map(|r| r.proxy_peak_rss_kib).max(),
        proxy_processes: rounds.iter().map(|r| r.proxy_processes).max().unwrap_or(0),
        replica_cpu_percent: percent(replica_s),
        client_cpu_percent: percent(client_s),
        machine_cpu_percent: percent(machine_s),
        other_cpu_percent: percent(machine_s.map(|m| (m - ours_s).max(0.0))),
        rounds: rounds.iter().map(Round::figures).collect(),
    }
}

/// One target, once: warm-up, then the measured period. `progress` starts
/// its lines on stderr.
async fn measure(
    args: &GatewayArgs,
    procs: &mut Procs,
    target: &Target<'_>,
    progress: &str,
    authorization: &HeaderValue,
    replica_pid: u32,
) -> anyhow::Result<Round> {
    let url = target.url.as_str();
    let proxy_pids = target.proxies.pids();
    eprintln!(
        "{progress}: {} in flight, {} s warm-up + {} s measured (POST {url})",
        args.concurrency, args.warmup_seconds, args.seconds
    );
    let engine = Engine::start(
        template(url, authorization)?,
        args.concurrency,
        REQUEST_TIMEOUT,
    );
    engine.set_concurrency(args.concurrency);
    tokio::time::sleep(Duration::from_secs(args.warmup_seconds)).await;
    let me = std::process::id();
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).sum::<Option<f64>>();
    let before = (
        cpu(&proxy_pids),
        cpu(&[replica_pid]),
        cpu(&[me]),
        machine_busy_seconds(),
    );
    engine.measure_from_now();
    let started = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let stats: Stats = engine.totals();
    let seconds = started.elapsed().as_secs_f64();
    let after = (
        cpu(&proxy_pids),
        cpu(&[replica_pid]),
        cpu(&[me]),
        machine_busy_seconds(),
    );
    drop(engine);
    procs.check_alive()?;
    let used = |b: Option<f64>, a: Option<f64>| Some(a? - b?);
    let round = Round {
        seconds,
        proxy_cpu_s: if proxy_pids.is_empty() {
            None
        } else {
            used(before.0, after.0)
        },
        replica_cpu_s: used(before.1, after.1),
        client_cpu_s: used(before.2, after.2),
        machine_cpu_s: used(before.3, after.3),
        proxy_peak_rss_kib: proxy_pids
            .iter()
            .map(|p| super::procs::vm_hwm_kib(*p))
            .sum::<Option<u64>>()
            .filter(|_| !proxy_pids.is_empty()),
        proxy_processes: proxy_pids.len(),
        stats,
    };
    let stats = &round.stats;
    eprintln!(
        "{progress}: {:.0} req/s, p50 {} ms, p99 {} ms, max {} ms, {} error(s)",
        round.figures().req_per_s,
        fmt_ms(stats.quantile_ms(0.5)),
        fmt_ms(stats.quantile_ms(0.99)),
        fmt_ms(stats.max_ms()),
        stats.not_ok()
    );
    if stats.not_ok() > 0 {
        eprintln!(
            "{progress}: answers by outcome: {:?}",
            stats.outcome_counts()
        );
    }
    if stats.requests() == 0 {
        bail!("{progress}: no request was answered");
    }
    Ok(round)
}

/// The deployment (production of model `bench`) and its Ready replica.
async fn write_records(client: &Client, endpoint: &str) -> anyhow::Result<()> {
    let deployment = pb::DeploymentRecord {
        deployment: Some(pb::Deployment {
            id: DEPLOYMENT.into(),
            model_id: MODEL.into(),
            is_production: true,
            status: pb::DeploymentStatus::Active.into(),
            ..Default::default()
        }),
        desired_replicas: 1,
        ..Default::default()
    };
    let replica = pb::Replica {
        id: REPLICA.into(),
        deployment_id: DEPLOYMENT.into(),
        phase: pb::ReplicaPhase::Ready.into(),
        endpoint: endpoint.to_owned(),
        ..Default::default()
    };
    for (table, key, value) in [
        (Table::Deployments, DEPLOYMENT, deployment.encode_to_vec()),
        (Table::Replicas, REPLICA, replica.encode_to_vec()),
    ] {
        let put = Request::put(table, key, value, Precondition::MustNotExist, None);
        let written = client
            .write(&put)
            .await
            .with_context(|| format!("writing {key}"))?;
        if !matches!(written.outcome, Outcome::Written { .. }) {
            bail!("writing {key}: {:?}", written.outcome);
        }
    }
    Ok(())
}

fn fmt_ms(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

fn fmt_pct(p: Option<f64>) -> String {
    p.map_or_else(|| "-".to_owned(), |v| format!("{v:.0} %"))
}

fn fmt_mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "-".to_owned(),
        |k| format!("{:.1} MiB", k as f64 / 1024.0),
    )
}

/// Whether the gateway meets the goal against one nginx row.
fn goal(gateway: &TargetResult, nginx: &TargetResult) -> String {
    let throughput = gateway.requests_per_s >= nginx.requests_per_s;
    let p99 = match (gateway.p99_ms, nginx.p99_ms) {
        (Some(g), Some(n)) => g <= n,
        _ => false,
    };
    let verdict = match (throughput, p99) {
        (true, true) => "met",
        (false, true) => "not met: fewer req/s",
        (true, false) => "not met: higher p99",
        (false, false) => "not met: fewer req/s and higher p99",
    };
    format!(
        "{} against {} (at least its req/s, p99 no worse): {verdict} ({:.0} vs {:.0} req/s = {:.0} %, p99 {} vs {} ms)",
        gateway.target,
        nginx.target,
        gateway.requests_per_s,
        nginx.requests_per_s,
        gateway.requests_per_s / nginx.requests_per_s * 100.0,
        fmt_ms(gateway.p99_ms),
        fmt_ms(nginx.p99_ms)
    )
}

fn render(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    writeln!(
        out,
        "tidal bench gateway: POST of 16 floats to one `tidal model serve` replica ({} params, no delay), \
         {} in flight, {} s measured after {} s warm-up per target and round, {} round(s) in rotated order \
         pooled per target, all on 127.0.0.1",
        r.params, r.concurrency, r.seconds, r.warmup_seconds, r.rounds
    )?;
    writeln!(
        out,
        "machine: {}, {} cores; nginx {}",
        r.cpu,
        r.cores,
        r.nginx_version.as_deref().unwrap_or("not measured")
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<26} | {:>8} | {:>7} | {:>7} | {:>7} | {:>6}",
        "target", "req/s", "p50 ms", "p99 ms", "max ms", "errors"
    )?;
    for t in &r.targets {
        writeln!(
            out,
            "{:<26} | {:>8.0} | {:>7} | {:>7} | {:>7} | {:>6}",
            t.target,
            t.requests_per_s,
            fmt_ms(t.p50_ms),
            fmt_ms(t.p99_ms),
            fmt_ms(t.max_ms),
            t.errors,
        )?;
    }
    writeln!(out)?;
    let by_round: Vec<(String, String)> = r
        .targets
        .iter()
        .map(|t| {
            let join = |f: &dyn Fn(&RoundFigures) -> String| {
                t.rounds.iter().map(f).collect::<Vec<_>>().join(" / ")
            };
            (
                join(&|f| format!("{:.0}", f.req_per_s)),
                join(&|f| fmt_ms(f.p99_ms)),
            )
        })
        .collect();
    let rps_header = "req/s by round";
    let width = by_round
        .iter()
        .map(|(rps, _)| rps.chars().count())
        .chain([rps_header.len()])
        .max()
        .unwrap_or(0);
    writeln!(
        out,
        "{:<26} | {:<width$} | p99 ms by round",
        "target", rps_header
    )?;
    for (t, (rps, p99)) in r.targets.iter().zip(&by_round) {
        writeln!(out, "{:<26} | {:<width$} | {}", t.target, rps, p99)?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<26} | {:>9} | {:>12} | {:>14} | {:>11} | {:>10} | {:>9}",
        "target",
        "proxy CPU",
        "proxy µs/req",
        "proxy peak RSS",
        "replica CPU",
        "client CPU",
        "other CPU"
    )?;
    for t in &r.targets {
        writeln!(
            out,
            "{:<26} | {:>9} | {:>12} | {:>14} | {:>11} | {:>10} | {:>9}",
            t.target,
            fmt_pct(t.proxy_cpu_percent),
            t.proxy_cpu_us_per_request
                .map_or_else(|| "-".to_owned(), |us| format!("{us:.0}")),
            fmt_mib(t.proxy_peak_rss_kib),
            fmt_pct(t.replica_cpu_percent),
            fmt_pct(t.client_cpu_percent),
            fmt_pct(t.other_cpu_percent),
        )?;
    }
    writeln!(out)?;
    let direct = r.targets.iter().find(|t| t.target == "direct");
    let gateway = r.targets.iter().find(|t| t.target == GATEWAY);
    if let (Some(d), Some(g)) = (direct, gateway) {
        let added = |a: Option<f64>, b: Option<f64>| fmt_ms(a.zip(b).map(|(a, b)| a - b));
        writeln!(
            out,
            "gateway vs direct: {:.0} % of direct's req/s; added p50 {} ms, p99 {} ms",
            g.requests_per_s / d.requests_per_s * 100.0,
            added(g.p50_ms, d.p50_ms),
            added(g.p99_ms, d.p99_ms)
        )?;
    }
    for g in r
        .targets
        .iter()
        .filter(|t| t.target.starts_with("tidal gateway"))
    {
        for n in r.targets.iter().filter(|t| t.target.starts_with("nginx")) {
            writeln!(out, "{}", goal(g, n))?;
        }
    }
    if let Some(reason) = &r.nginx_skipped {
        writeln!(out, "nginx not measured: {reason}")?;
    }
    writeln!(
        out,
        "CPU: % of one core over the measured periods (user + system, all threads; nginx: master + workers); \
         other CPU: the machine's busy time (/proc/stat) outside the proxy, replica and client; \
         proxy peak RSS: sum of VmHWM over the proxy's processes"
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::engine::Outcome;

    fn target(name: &str, rps: f64, p99: f64) -> TargetResult {
        TargetResult {
            target: name.to_owned(),
            path: String::new(),
            requests: 1,
            seconds: 1.0,
            requests_per_s: rps,
            p50_ms: Some(1.0),
            p99_ms: Some(p99),
            max_ms: Some(p99),
            errors: 0,
            outcomes: Default::default(),
            proxy_cpu_percent: None,
            proxy_peak_rss_kib: None,
            proxy_processes: 1,
            replica_cpu_percent: None,
            client_cpu_percent: None,
            proxy_cpu_us_per_request: None,
            machine_cpu_percent: None,
            other_cpu_percent: None,
            rounds: Vec::new(),
        }
    }

    #[test]
    fn gateway_goal_needs_throughput_and_p99() {
        let nginx = target("nginx (workers 1)", 1000.0, 5.0);
        assert!(goal(&target("g", 1000.0, 5.0), &nginx).contains(": met"));
        assert!(goal(&target("g", 999.0, 4.0), &nginx).contains("not met: fewer req/s ("));
        assert!(goal(&target("g", 2000.0, 6.0), &nginx).contains("not met: higher p99"));
    }

    #[test]
    fn rounds_rotate_the_first_target() {
        assert_eq!(round_order(5, 0), [0, 1, 2, 3, 4]);
        assert_eq!(round_order(5, 1), [1, 2, 3, 4, 0]);
        assert_eq!(round_order(5, 2), [2, 3, 4, 0, 1]);
        assert_eq!(round_order(5, 7), [2, 3, 4, 0, 1]);
        assert_eq!(round_order(3, 3), [0, 1, 2]);
        assert_eq!(round_order(1, 4), [0]);
        assert!(round_order(0, 2).is_empty());
    }

    /// A round of `seconds` with `latencies` (ms, count) answered 200, and
    /// `errors` of them answered 503 instead.
    fn round(seconds: f64, latencies: &[(u64, u64)], errors: u64, cpu: [f64; 4]) -> Round {
        let mut stats = Stats::default();
        for (ms, n) in latencies {
            stats.latency_us.record_n(ms * 1000, *n).unwrap();
        }
        let answers: u64 = latencies.iter().map(|(_, n)| n).sum();
        stats
            .outcomes
            .insert(Outcome::Status(200), answers - errors);
        if errors > 0 {
            stats.outcomes.insert(Outcome::Status(503), errors);
        }
        Round {
            stats,
            seconds,
            proxy_cpu_s: Some(cpu[0]),
            replica_cpu_s: Some(cpu[1]),
            client_cpu_s: Some(cpu[2]),
            machine_cpu_s: Some(cpu[3]),
            proxy_peak_rss_kib: Some(if seconds > 2.0 { 2048 } else { 1024 }),
            proxy_processes: 1,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn rounds_pool_by_totals_and_merged_latencies() {
        // 150 answers in 1 s at 1 ms; 200 in 4 s, 197 at 2 ms and 3 at
        // 50 ms, one a 503.
        let first = round(1.0, &[(1, 150)], 0, [0.5, 0.6, 0.4, 1.6]);
        let second = round(4.0, &[(2, 197), (50, 3)], 1, [3.0, 2.4, 2.0, 8.0]);
        let row = pool("g", "http://x/", &[first, second]);
        assert_eq!(row.requests, 350);
        assert!(close(row.seconds, 5.0));
        // 350 / 5 s, not the mean of 150 and 50 req/s.
        assert!(close(row.requests_per_s, 70.0), "{}", row.requests_per_s);
        // Of the 350 latencies together: the 347th is 2 ms, where the
        // rounds' own p99 are 1 and 50 ms.
        assert!(close(row.p99_ms.unwrap(), 2.0), "{:?}", row.p99_ms);
        assert!(close(row.p50_ms.unwrap(), 2.0), "{:?}", row.p50_ms);
        assert!((49.9..50.1).contains(&row.max_ms.unwrap()));
        assert_eq!(row.errors, 1);
        assert_eq!(row.outcomes.get("200"), Some(&349));
        assert_eq!(row.outcomes.get("503"), Some(&1));
        // 3.5 CPU s over 5 s, not the mean of 50 % and 75 %.
        assert!(close(row.proxy_cpu_percent.unwrap(), 70.0));
        assert!(close(row.replica_cpu_percent.unwrap(), 60.0));
        assert!(close(row.client_cpu_percent.unwrap(), 48.0));
        assert!(close(row.machine_cpu_percent.unwrap(), 192.0));
        // 9.6 busy s less 3.5 + 3.0 + 2.4 = 0.7 s over 5 s.
        assert!(close(row.other_cpu_percent.unwrap(), 14.0));
        assert!(close(
            row.proxy_cpu_us_per_request.unwrap(),
            3.5 / 350.0 * 1e6
        ));
        assert_eq!(row.proxy_peak_rss_kib, Some(2048));
        assert_eq!(row.proxy_processes, 1);
        let by_round: Vec<(f64, f64)> = row
            .rounds
            .iter()
            .map(|r| (r.req_per_s, r.p99_ms.unwrap()))
            .collect();
        assert_eq!(by_round.len(), 2);
        assert!(close(by_round[0].0, 150.0) && close(by_round[0].1, 1.0));
        assert!(close(by_round[1].0, 50.0) && (49.9..50.1).contains(&by_round[1].1));
    }

    #[test]
    fn pooled_direct_access_has_no_proxy_figures() {
        let mut first = round(1.0, &[(1, 10)], 0, [0.0, 0.5, 0.5, 1.0]);
        first.proxy_cpu_s = None;
        first.proxy_peak_rss_kib = None;
        first.proxy_processes = 0;
        let row = pool("direct", "http://x/", &[first]);
        assert_eq!(row.proxy_cpu_percent, None);
        assert_eq!(row.proxy_cpu_us_per_request, None);
        assert_eq!(row.proxy_peak_rss_kib, None);
        assert!(close(row.requests_per_s, 10.0));
        assert!(close(row.other_cpu_percent.unwrap(), 0.0));
    }
}
