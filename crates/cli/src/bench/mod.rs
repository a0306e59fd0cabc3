//! `tidal bench …`: benchmarks that start real processes on this machine.
//!
//! `tidal bench store` starts a 3-node tidal cluster (this binary's `tidal
//! server`) and, with the `bench-etcd` feature, a 3-member etcd 3.4 cluster,
//! and runs the same put load against each: 1, 16 and 64 concurrent clients
//! by default, each doing sequential puts to the leader. Every process and
//! data directory it starts is removed at the end, on error and on Ctrl-C
//! too ([`procs::Procs`] cleans up on drop).
//!
//! `tidal bench controller` starts one store node and one `tidal controller`
//! and drives many deployments through it: its CPU, peak RSS, and the time
//! from a metric report to the decision stored.
//!
//! `tidal bench gateway` measures the gateway's requests/s and added latency
//! against the same replica reached directly and through nginx.
//!
//! `tidal bench model-load` times the reference replica (`tidal-model
//! serve`) loading about 1 GiB of weights from a cold and a warm page cache.

mod controller;
#[cfg(feature = "bench-etcd")]
mod etcd;
mod gateway;
mod load;
mod model_load;
mod procs;
mod store;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::Failure;
use load::{Level, LevelResult};
use procs::Procs;

/// Benchmarks that start real processes on this machine.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    Store(StoreArgs),
    Controller(controller::ControllerArgs),
    Gateway(gateway::GatewayArgs),
    ModelLoad(model_load::ModelLoadArgs),
}

/// The replicated store against etcd: writes/s, p50/p99 latency, peak RSS.
///
/// Starts three `tidal server` processes on 127.0.0.1 (fsync on), then, when
/// built with `--features bench-etcd`, three etcd 3.4 members (`apt-get
/// install -y etcd-server etcd-client`), and runs the same load against
/// each: for every client count, that many tasks doing sequential puts of
/// `--value-bytes` to the leader, each over its own connection. Progress
/// goes to stderr; the table (or `--json`) to stdout.
#[derive(Debug, Args)]
struct StoreArgs {
    /// Measured seconds per client count.
    #[arg(long, value_name = "N", default_value_t = 10)]
    seconds: u64,
    /// Unmeasured warm-up seconds before each measurement.
    #[arg(long, value_name = "N", default_value_t = 2)]
    warmup_seconds: u64,
    /// Client counts to measure, in order.
    #[arg(long, value_name = "N,…", value_delimiter = ',', default_values_t = [1, 16, 64])]
    clients: Vec<usize>,
    /// Size of each value written.
    #[arg(long, value_name = "BYTES", default_value_t = 256)]
    value_bytes: usize,
    /// Measure tidal only.
    #[arg(long)]
    skip_etcd: bool,
    /// The etcd binary (3.4).
    #[cfg(feature = "bench-etcd")]
    #[arg(long, value_name = "PATH", default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Where to put the clusters' temporary data directories (default: the
    /// system's temp dir). Use a directory on the disk to measure, not a tmpfs.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// A cluster under test.
trait Cluster {
    type Writer: load::Writer;
    /// `n` writers to the leader.
    fn writers(&self, n: usize) -> impl Future<Output = anyhow::Result<Vec<Self::Writer>>>;
    /// The cluster's processes.
    fn procs(&mut self) -> &mut Procs;
}

/// One system's figures.
#[derive(Debug, Serialize)]
struct SystemResult {
    system: &'static str,
    version: String,
    levels: Vec<LevelResult>,
    /// The largest VmHWM among the members at the end, KiB.
    peak_member_rss_kib: Option<u64>,
}

/// What the run measured.
#[derive(Debug, Serialize)]
struct Report {
    cpu: String,
    cores: usize,
    members: usize,
    value_bytes: usize,
    warmup_seconds: u64,
    seconds: u64,
    keys_per_client: u64,
    tidal: SystemResult,
    etcd: Option<SystemResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    etcd_skipped: Option<String>,
}

pub(crate) fn run(args: BenchArgs) -> Result<(), Failure> {
    match args.command {
        BenchCommand::Store(args) => store_bench(args),
        BenchCommand::Controller(args) => controller::run(args),
        BenchCommand::Gateway(args) => gateway::run(args),
        BenchCommand::ModelLoad(args) => model_load::run(args),
    }
}

fn validate(args: &StoreArgs) -> Result<(), Failure> {
    if args.seconds == 0 {
        return Err(Failure::Usage("--seconds must be at least 1".to_owned()));
    }
    if args.clients.is_empty() || args.clients.contains(&0) {
        return Err(Failure::Usage(format!(
            "--clients must list client counts of at least 1, e.g. 1,16,64; got {:?}",
            args.clients
        )));
    }
    let max = tidal_store::app::MAX_VALUE_BYTES;
    if args.value_bytes == 0 || args.value_bytes > max {
        return Err(Failure::Usage(format!(
            "--value-bytes must be between 1 and {max} (the store's value limit); got {}",
            args.value_bytes
        )));
    }
    Ok(())
}

fn store_bench(args: StoreArgs) -> Result<(), Failure> {
    validate(&args)?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| Failure::Other(e.into()))?;
    let report = runtime.block_on(async {
        // On Ctrl-C or SIGTERM the benchmark's future is dropped: its
        // clusters' guards kill their processes and remove their directories.
        tokio::select! {
            report = measure_all(&args) => report,
            () = interrupted() => Err(anyhow::anyhow!("interrupted; every process it started is stopped")),
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

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn measure_all(args: &StoreArgs) -> anyhow::Result<Report> {
    let level = |clients| Level {
        clients,
        warmup: Duration::from_secs(args.warmup_seconds),
        measure: Duration::from_secs(args.seconds),
        value_bytes: args.value_bytes,
    };
    let work_dir = args.work_dir.as_deref();

    // Check etcd before spending minutes on tidal.
    let etcd_version = etcd_version(args)?;
    if let Err(reason) = &etcd_version {
        eprintln!("etcd: will not be measured: {reason}");
    }

    eprintln!("tidal: starting 3 `tidal server` processes on 127.0.0.1");
    let mut cluster = store::TidalCluster::start(work_dir).await?;
    eprintln!("tidal: cluster formed; leader at {}", cluster.leader());
    let tidal = measure(
        "tidal",
        env!("CARGO_PKG_VERSION").to_owned(),
        &mut cluster,
        args,
        level,
    )
    .await?;
    drop(cluster);
    eprintln!("tidal: stopped; data removed");

    let (etcd, etcd_skipped) = match etcd_version {
        Ok(version) => (Some(run_etcd(args, version, level).await?), None),
        Err(reason) => (None, Some(reason)),
    };
    Ok(Report {
        cpu: cpu_model(),
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        members: 3,
        value_bytes: args.value_bytes,
        warmup_seconds: args.warmup_seconds,
        seconds: args.seconds,
        keys_per_client: load::KEYS_PER_CLIENT,
        tidal,
        etcd,
        etcd_skipped,
    })
}

/// What shows that etcd can run: its version. Without the feature, nothing can.
#[cfg(feature = "bench-etcd")]
type EtcdVersion = String;
#[cfg(not(feature = "bench-etcd"))]
type EtcdVersion = std::convert::Infallible;

/// etcd's version, or why etcd is not measured; an error if etcd was asked
/// for but cannot run.
#[cfg(feature = "bench-etcd")]
fn etcd_version(args: &StoreArgs) -> anyhow::Result<Result<EtcdVersion, String>> {
    if args.skip_etcd {
        return Ok(Err("--skip-etcd".to_owned()));
    }
    etcd::version(&args.etcd_bin).map(Ok)
}

#[cfg(not(feature = "bench-etcd"))]
fn etcd_version(args: &StoreArgs) -> anyhow::Result<Result<EtcdVersion, String>> {
    Ok(Err(if args.skip_etcd {
        "--skip-etcd".to_owned()
    } else {
        "this tidal was built without the `bench-etcd` feature; run benchmarks/store.sh \
         (or `cargo run --release -p tidal --features bench-etcd -- bench store` with PROTOC \
         set) for the etcd comparison"
            .to_owned()
    }))
}

#[cfg(feature = "bench-etcd")]
async fn run_etcd(
    args: &StoreArgs,
    version: EtcdVersion,
    level: impl Fn(usize) -> Level,
) -> anyhow::Result<SystemResult> {
    eprintln!("etcd: starting 3 members of etcd {version} on 127.0.0.1");
    let mut cluster = etcd::EtcdCluster::start(&args.etcd_bin, args.work_dir.as_deref()).await?;
    eprintln!("etcd: cluster formed; leader at {}", cluster.leader());
    let result = measure("etcd", version, &mut cluster, args, level).await?;
    drop(cluster);
    eprintln!("etcd: stopped; data removed");
    Ok(result)
}

#[cfg(not(feature = "bench-etcd"))]
async fn run_etcd(
    _args: &StoreArgs,
    version: EtcdVersion,
    _level: impl Fn(usize) -> Level,
) -> anyhow::Result<SystemResult> {
    match version {}
}

/// Runs every client count against `cluster`.
async fn measure<C: Cluster>(
    system: &'static str,
    version: String,
    cluster: &mut C,
    args: &StoreArgs,
    level: impl Fn(usize) -> Level,
) -> anyhow::Result<SystemResult> {
    let mut levels = Vec::new();
    for &clients in &args.clients {
        eprintln!(
            "{system}: {clients} client(s), {} s warm-up + {} s measured",
            args.warmup_seconds, args.seconds
        );
        let writers = cluster.writers(clients).await?;
        let result = load::run(writers, level(clients)).await;
        cluster.procs().check_alive()?;
        eprintln!(
            "{system}: {clients} client(s): {:.0} writes/s, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
            result.writes_per_s, result.p50_ms, result.p99_ms, result.max_ms
        );
        if result.errors > 0 {
            eprintln!(
                "{system}: {} write(s) failed; the first: {}",
                result.errors,
                result.first_error.as_deref().unwrap_or("?")
            );
        }
        if result.writes == 0 {
            anyhow::bail!(
                "{system}: no write succeeded with {clients} client(s): {}",
                result.first_error.as_deref().unwrap_or("no error either")
            );
        }
        levels.push(result);
    }
    Ok(SystemResult {
        system,
        version,
        levels,
        peak_member_rss_kib: cluster.procs().peak_rss_kib(),
    })
}

/// The CPU's model name as /proc/cpuinfo gives it.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "?".to_owned(),
        |k| format!("{:.1} MiB", k as f64 / 1024.0),
    )
}

/// Whether tidal meets the goal against etcd at one client count.
fn goal(tidal: &LevelResult, etcd: &LevelResult) -> &'static str {
    match (
        tidal.writes_per_s >= etcd.writes_per_s,
        tidal.p99_ms <= etcd.p99_ms,
    ) {
        (true, true) => "met",
        (false, true) => "no: fewer writes/s",
        (true, false) => "no: higher p99",
        (false, false) => "no: fewer writes/s, higher p99",
    }
}

/// The figures side by side.
fn render(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    writeln!(
        out,
        "tidal bench store: 3 members each on 127.0.0.1, fsync on, {}-byte puts to the leader, \
         {} s measured per client count after {} s warm-up",
        r.value_bytes, r.seconds, r.warmup_seconds
    )?;
    writeln!(out, "machine: {}, {} cores", r.cpu, r.cores)?;
    writeln!(
        out,
        "tidal {}; etcd {}",
        r.tidal.version,
        r.etcd
            .as_ref()
            .map_or("not measured", |e| e.version.as_str())
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:>7} | {:>14} {:>7} {:>7} | {:>14} {:>7} {:>7} | goal",
        "clients", "tidal writes/s", "p50 ms", "p99 ms", "etcd writes/s", "p50 ms", "p99 ms"
    )?;
    for t in &r.tidal.levels {
        let e = r
            .etcd
            .as_ref()
            .and_then(|e| e.levels.iter().find(|l| l.clients == t.clients));
        let (ew, e50, e99, verdict) = match e {
            Some(e) => (
                format!("{:.0}", e.writes_per_s),
                format!("{:.2}", e.p50_ms),
                format!("{:.2}", e.p99_ms),
                goal(t, e),
            ),
            None => ("-".to_owned(), "-".to_owned(), "-".to_owned(), "-"),
        };
        writeln!(
            out,
            "{:>7} | {:>14.0} {:>7.2} {:>7.2} | {:>14} {:>7} {:>7} | {verdict}",
            t.clients, t.writes_per_s, t.p50_ms, t.p99_ms, ew, e50, e99
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "peak member RSS (largest VmHWM of the 3): tidal {}, etcd {}",
        mib(r.tidal.peak_member_rss_kib),
        r.etcd
            .as_ref()
            .map_or_else(|| "-".to_owned(), |e| mib(e.peak_member_rss_kib))
    )?;
    let failed: u64 = r
        .tidal
        .levels
        .iter()
        .chain(r.etcd.iter().flat_map(|e| e.levels.iter()))
        .map(|l| l.errors)
        .sum();
    if failed > 0 {
        writeln!(out, "failed writes (not in the figures): {failed}")?;
    }
    if let Some(reason) = &r.etcd_skipped {
        writeln!(out, "etcd not measured: {reason}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(writes_per_s: f64, p99_ms: f64) -> LevelResult {
        LevelResult {
            clients: 16,
            writes: 1,
            errors: 0,
            seconds: 1.0,
            writes_per_s,
            p50_ms: 1.0,
            p99_ms,
            max_ms: p99_ms,
            first_error: None,
        }
    }

    #[test]
    fn goal_needs_both_throughput_and_p99() {
        let etcd = level(1000.0, 10.0);
        assert_eq!(goal(&level(1000.0, 10.0), &etcd), "met");
        assert_eq!(goal(&level(999.0, 9.0), &etcd), "no: fewer writes/s");
        assert_eq!(goal(&level(2000.0, 10.1), &etcd), "no: higher p99");
        assert_eq!(
            goal(&level(10.0, 50.0), &etcd),
            "no: fewer writes/s, higher p99"
        );
    }

    #[test]
    fn peak_rss_of_a_live_process_is_read_from_proc() {
        let kib = procs::vm_hwm_kib(std::process::id()).expect("VmHWM of this test");
        assert!(kib > 0);
        assert_eq!(procs::vm_hwm_kib(u32::MAX), None);
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = procs::free_ports(6).expect("free ports");
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), 6);
    }
}
