//! `tidal bench gateway`: the gateway's requests/s and added latency against
//! the same replica reached directly and through nginx, on this machine, in
//! one run, with one load client (`tidal load`'s engine).
//!
//! Processes, all on 127.0.0.1 and all stopped at the end, on error and on
//! Ctrl-C: one replica (`tidal model serve`, a generated ~20,000-parameter
//! model, no delay); a one-node store (`tidal server`) holding a deployment
//! and a Ready replica record written directly (no controller or worker),
//! and a `tidal gateway` routing to it; nginx as a keep-alive reverse proxy
//! to the replica, once with `worker_processes 1` and once with `auto`.

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
/// proxy to the replica, with `worker_processes 1` and then `auto`. Each
/// target gets the same closed-loop load (`tidal load`'s engine): POST of
/// 16 floats at --concurrency, --warmup-seconds, then --seconds measured.
/// Progress goes to stderr; the table (or --json) to stdout.
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

/// One target's figures.
#[derive(Debug, Serialize)]
struct TargetResult {
    target: String,
    path: String,
    requests: u64,
    seconds: f64,
    requests_per_s: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    /// Requests not answered 2xx (by outcome in `outcomes`).
    errors: u64,
    outcomes: std::collections::BTreeMap<String, u64>,
    /// CPU of the proxy's processes over the measured period, % of one core.
    proxy_cpu_percent: Option<f64>,
    /// Sum of VmHWM over the proxy's processes, KiB.
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
}

/// What the run measured.
#[derive(Debug, Serialize)]
struct Report {
    cpu: String,
    cores: usize,
    concurrency: usize,
    warmup_seconds: u64,
    seconds: u64,
    params: u64,
    nginx_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nginx_skipped: Option<String>,
    targets: Vec<TargetResult>,
}

pub(crate) fn run(args: GatewayArgs) -> Result<(), Failure> {
    if args.seconds == 0 || args.concurrency == 0 {
        return Err(Failure::Usage(
            "--seconds and --concurrency must be at least 1".to_owned(),
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
    let ports = free_ports(5)?;
    let replica = format!("127.0.0.1:{}", ports[0]);
    let store = format!("127.0.0.1:{}", ports[1]);
    let nginx_port = ports[2];

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
        (GATEWAY, ports[3], "0"),
        (GATEWAY_ONE_THREAD, ports[4], "1"),
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

    let replica_pid = child_pid(&["model", "serve"])?;
    let mut targets = Vec::new();
    let load = |label: &'static str, url: String, proxies: Vec<u32>| Target {
        label,
        url,
        proxies,
    };
    targets.push(
        measure(
            args,
            &mut procs,
            &load("direct", direct, vec![]),
            &auth,
            replica_pid,
        )
        .await?,
    );
    for (label, url, pid) in gateways {
        targets.push(
            measure(
                args,
                &mut procs,
                &load(label, url, vec![pid]),
                &auth,
                replica_pid,
            )
            .await?,
        );
    }
    if nginx_version.is_ok() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        for workers in ["1", "auto"] {
            let label = if workers == "auto" {
                format!("nginx (workers auto = {cores})")
            } else {
                "nginx (workers 1)".to_owned()
            };
            let prefix = procs.dir().join(format!("nginx-{workers}"));
            let nginx = Nginx::start(&args.nginx_bin, &prefix, nginx_port, &replica, workers)?;
            let url = format!("http://127.0.0.1:{nginx_port}/predict");
            wait_answers(&mut procs, "nginx", &url, &auth).await?;
            let target = Target {
                label: &label,
                url,
                proxies: nginx.pids(),
            };
            let result = measure(args, &mut procs, &target, &auth, replica_pid).await;
            nginx.check_log()?;
            drop(nginx);
            targets.push(result?);
        }
    }
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
        params: args.params,
        nginx_version,
        nginx_skipped,
        targets,
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
    label: &'a str,
    url: String,
    /// The proxy's processes (none for direct access).
    proxies: Vec<u32>,
}

/// One target: warm-up, then the measured period.
async fn measure(
    args: &GatewayArgs,
    procs: &mut Procs,
    target: &Target<'_>,
    authorization: &HeaderValue,
    replica_pid: u32,
) -> anyhow::Result<TargetResult> {
    let (label, url, proxy_pids) = (target.label, target.url.as_str(), &target.proxies[..]);
    eprintln!(
        "{label}: {} in flight, {} s warm-up + {} s measured (POST {url})",
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
        cpu(proxy_pids),
        cpu(&[replica_pid]),
        cpu(&[me]),
        machine_busy_seconds(),
    );
    engine.measure_from_now();
    let started = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let totals: Stats = engine.totals();
    let seconds = started.elapsed().as_secs_f64();
    let after = (
        cpu(proxy_pids),
        cpu(&[replica_pid]),
        cpu(&[me]),
        machine_busy_seconds(),
    );
    drop(engine);
    procs.check_alive()?;
    let percent = |b: Option<f64>, a: Option<f64>| Some((a? - b?) / seconds * 100.0);
    let requests = totals.requests();
    let proxy_cpu_percent = if proxy_pids.is_empty() {
        None
    } else {
        percent(before.0, after.0)
    };
    let replica_cpu_percent = percent(before.1, after.1);
    let client_cpu_percent = percent(before.2, after.2);
    let machine_cpu_percent = percent(before.3, after.3);
    let ours = [proxy_cpu_percent, replica_cpu_percent, client_cpu_percent]
        .iter()
        .map(|p| p.unwrap_or(0.0))
        .sum::<f64>();
    let result = TargetResult {
        target: label.to_owned(),
        path: url.to_owned(),
        requests,
        seconds,
        requests_per_s: requests as f64 / seconds,
        p50_ms: totals.quantile_ms(0.5),
        p99_ms: totals.quantile_ms(0.99),
        max_ms: totals.max_ms(),
        errors: totals.not_ok(),
        outcomes: totals.outcome_counts(),
        proxy_cpu_percent,
        proxy_cpu_us_per_request: proxy_cpu_percent
            .filter(|_| requests > 0)
            .map(|p| p / 100.0 * seconds / requests as f64 * 1e6),
        proxy_peak_rss_kib: proxy_pids
            .iter()
            .map(|p| super::procs::vm_hwm_kib(*p))
            .sum::<Option<u64>>()
            .filter(|_| !proxy_pids.is_empty()),
        proxy_processes: proxy_pids.len(),
        replica_cpu_percent,
        client_cpu_percent,
        machine_cpu_percent,
        other_cpu_percent: machine_cpu_percent.map(|m| (m - ours).max(0.0)),
    };
    eprintln!(
        "{label}: {:.0} req/s, p50 {} ms, p99 {} ms, max {} ms, {} error(s)",
        result.requests_per_s,
        fmt_ms(result.p50_ms),
        fmt_ms(result.p99_ms),
        fmt_ms(result.max_ms),
        result.errors
    );
    if result.errors > 0 {
        eprintln!("{label}: answers by outcome: {:?}", result.outcomes);
    }
    if requests == 0 {
        bail!("{label}: no request was answered");
    }
    Ok(result)
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
         {} in flight, {} s measured after {} s warm-up per target, all on 127.0.0.1",
        r.params, r.concurrency, r.seconds, r.warmup_seconds
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
        "CPU: % of one core over the measured period (user + system, all threads; nginx: master + workers); \
         other CPU: the machine's busy time (/proc/stat) outside the proxy, replica and client; \
         proxy peak RSS: sum of VmHWM over the proxy's processes"
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
    }

    #[test]
    fn gateway_goal_needs_throughput_and_p99() {
        let nginx = target("nginx (workers 1)", 1000.0, 5.0);
        assert!(goal(&target("g", 1000.0, 5.0), &nginx).contains(": met"));
        assert!(goal(&target("g", 999.0, 4.0), &nginx).contains("not met: fewer req/s ("));
        assert!(goal(&target("g", 2000.0, 6.0), &nginx).contains("not met: higher p99"));
    }
}
