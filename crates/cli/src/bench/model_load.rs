//! `tidal bench model-load`: how long the reference replica (`tidal-model
//! serve`) takes to load about 1 GiB of weights from a cold page cache and
//! from a warm one. The baseline that cold-start work is measured against.
//!
//! It generates one model with `tidal-model generate` into a temporary
//! directory on the disk being measured, then runs rounds of one cold load
//! and one warm load. Before a cold load the file is evicted from the page
//! cache without root (`dd … oflag=nocache`, which calls
//! `posix_fadvise(DONTNEED)`; also `/proc/sys/vm/drop_caches` when writable)
//! and `fincore` must show it (almost) not resident; otherwise a fresh file
//! with another seed replaces it, is evicted and checked again, and the load
//! is marked unverified unless that check passes. A warm
//! load follows a load of the same file. Each load is one `tidal-model
//! serve` process: its `[Coldboost]` line gives the load time, and the time
//! from spawn to the first `GET /health` answered 200 is the start-to-ready
//! time. Every process is killed and reaped, and the directory removed, at
//! the end, on error and on Ctrl-C too.

mod page_cache;
mod replica;

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;

use crate::Failure;
use page_cache::{DROP_CACHES, dd_nocache, fincore, is_cold, is_warm, mount_of, write_drop_caches};
use replica::{Running, load_once};

/// About 1 GiB of f32 weights (2^28 parameters × 4 bytes).
const DEFAULT_PARAMS: u64 = 268_435_456;
/// How long `tidal-model generate` gets.
const GENERATE_TIMEOUT: Duration = Duration::from_secs(600);

/// The reference replica's model load from a cold and a warm page cache.
///
/// Generates one model of --params f32 parameters (about 1 GiB by default)
/// with `tidal-model generate`, then runs --rounds rounds of one cold and one
/// warm load. Cold: the file is evicted from the page cache (drop_caches when
/// writable, then `dd oflag=nocache`, i.e. posix_fadvise DONTNEED) and
/// `fincore` must show at most 0.1 % of it resident; if not, a fresh file with
/// another seed is generated, evicted and checked, and the load is marked
/// unverified unless that check passes. Warm: right
/// after a load. Each load starts `tidal-model serve --port 0` on 127.0.0.1,
/// reads its `[Coldboost] … N ms` line, times spawn → `GET /health` 200, and
/// kills it. Progress goes to stderr; the table (or `--json`) to stdout.
#[derive(Debug, Args)]
pub(crate) struct ModelLoadArgs {
    /// Approximate parameter count of the generated model (4 bytes each).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PARAMS)]
    params: u64,
    /// Rounds, each one cold load then one warm load.
    #[arg(long, value_name = "N", default_value_t = 5)]
    rounds: usize,
    /// Where to put the model's temporary directory (default: the system's
    /// temp dir). It must be on the disk to measure, not a tmpfs.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// The `tidal-model` binary (default: `tidal-model` next to this `tidal`).
    #[arg(long, value_name = "PATH")]
    model_bin: Option<PathBuf>,
    /// Never write /proc/sys/vm/drop_caches, even when writable: evict the
    /// model file alone (the binary and its libraries stay cached).
    #[arg(long)]
    no_drop_caches: bool,
    /// Keep the generated model directory (its path goes to stderr).
    #[arg(long)]
    keep: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Cold or warm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    Cold,
    Warm,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Cold => "cold",
            Mode::Warm => "warm",
        })
    }
}

/// One `tidal-model serve` run.
#[derive(Debug, Clone, Serialize)]
struct LoadResult {
    round: usize,
    mode: Mode,
    /// The seed of the file loaded.
    seed: u64,
    /// How the page cache was prepared.
    method: String,
    /// `fincore`'s resident bytes of the file just before the spawn.
    resident_before_bytes: Option<u64>,
    /// fincore confirmed the mode: cold ≤ 0.1 % resident, warm ≥ 99 %.
    verified: bool,
    /// From the `[Coldboost]` line.
    load_ms: u64,
    /// File bytes / load time, MB = 10^6 bytes.
    mb_per_s: f64,
    /// Spawn → the `[Coldboost]` line read.
    spawn_to_load_line_ms: f64,
    /// Spawn → the first `GET /health` answered 200.
    spawn_to_ready_ms: f64,
}

/// One mode's figures.
#[derive(Debug, Clone, Serialize)]
struct ModeSummary {
    loads: usize,
    median_load_ms: f64,
    min_load_ms: u64,
    max_load_ms: u64,
    /// File bytes / median load time, MB = 10^6 bytes.
    mb_per_s: f64,
    median_spawn_to_ready_ms: f64,
    /// Median resident share of the file before the loads, %.
    median_resident_before_percent: Option<f64>,
    /// The methods used, each once.
    methods: Vec<String>,
    /// Loads whose mode fincore confirmed.
    verified: usize,
}

/// What the run measured.
#[derive(Debug, Serialize)]
struct Report {
    cpu: String,
    cores: usize,
    model_bin: PathBuf,
    work_dir: PathBuf,
    /// Filesystem type and device holding the model.
    filesystem: String,
    params: u64,
    file_bytes: u64,
    rounds: usize,
    /// Whether drop_caches was used, and why not.
    drop_caches: String,
    cold: ModeSummary,
    warm: ModeSummary,
    loads: Vec<LoadResult>,
}

pub(crate) fn run(args: ModelLoadArgs) -> Result<(), Failure> {
    if args.rounds == 0 {
        return Err(Failure::Usage("--rounds must be at least 1".to_owned()));
    }
    if args.params == 0 {
        return Err(Failure::Usage("--params must be at least 1".to_owned()));
    }
    let model_bin = model_bin(args.model_bin.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(e.into()))?;
    let report = runtime.block_on(async {
        // On Ctrl-C or SIGTERM the future is dropped: the running child is
        // killed and reaped, and the directory removed.
        tokio::select! {
            report = measure(&args, model_bin) => report,
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

/// The given binary, or `tidal-model` next to this executable; it must exist.
fn model_bin(given: Option<&Path>) -> Result<PathBuf, Failure> {
    let path = match given {
        Some(path) => path.to_owned(),
        None => std::env::current_exe()
            .map_err(|e| Failure::Other(anyhow::anyhow!("cannot find this executable: {e}")))?
            .with_file_name("tidal-model"),
    };
    if !path.is_file() {
        return Err(Failure::Usage(format!(
            "the tidal-model binary is not at {}; build it with `cargo build --release -p \
             tidal-model` (it goes next to tidal), or pass --model-bin PATH",
            path.display()
        )));
    }
    Ok(path)
}

/// The model file being loaded.
#[derive(Debug)]
struct ModelFile {
    dir: PathBuf,
    file: PathBuf,
    seed: u64,
    bytes: u64,
    params: u64,
}

async fn measure(args: &ModelLoadArgs, bin: PathBuf) -> anyhow::Result<Report> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("tidal-bench-model-load-");
    let mut tmp = match &args.work_dir {
        Some(parent) => builder.tempdir_in(parent),
        None => builder.tempdir(),
    }
    .context("cannot create the benchmark's temporary directory")?;
    tmp.disable_cleanup(args.keep);
    let work_dir = tmp.path().canonicalize()?;
    let filesystem = match std::fs::read_to_string("/proc/self/mounts") {
        Ok(mounts) => match mount_of(&mounts, &work_dir) {
            Some((fs, _)) if ["tmpfs", "ramfs"].contains(&fs.as_str()) => bail!(
                "{} is on a {fs}: a file there never leaves memory; pass --work-dir DIR on the \
                 disk to measure",
                work_dir.display()
            ),
            Some((fs, source)) => format!("{fs} on {source}"),
            None => "unknown".to_owned(),
        },
        Err(e) => format!("unknown ({e})"),
    };
    eprintln!(
        "model-load: {} ({filesystem}); {}",
        work_dir.display(),
        bin.display()
    );

    let mut model = generate(&bin, &work_dir, args.params, 0).await?;
    let mut drop_caches = if args.no_drop_caches {
        Err("not used (--no-drop-caches)".to_owned())
    } else {
        Ok(())
    };
    let mut loads = Vec::new();
    for round in 1..=args.rounds {
        for mode in [Mode::Cold, Mode::Warm] {
            let (method, resident, verified) = match mode {
                Mode::Cold => {
                    make_cold(&bin, &work_dir, &mut model, args, &mut drop_caches).await?
                }
                Mode::Warm => {
                    let resident = fincore(&model.file).await.ok();
                    let full = resident.is_some_and(|r| is_warm(r, model.bytes));
                    ("none: right after a load".to_owned(), resident, full)
                }
            };
            let timing = load_once(&bin, &model.dir).await?;
            let result = LoadResult {
                round,
                mode,
                seed: model.seed,
                method,
                resident_before_bytes: resident,
                verified,
                load_ms: timing.load_ms,
                mb_per_s: mb_per_s(model.bytes, timing.load_ms as f64),
                spawn_to_load_line_ms: ms(timing.load_line),
                spawn_to_ready_ms: ms(timing.ready),
            };
            eprintln!(
                "model-load: round {round}/{} {mode}: {} ({}); load {} ms ({:.0} MB/s), spawn → ready {:.0} ms",
                args.rounds,
                result.method,
                resident_text(resident, model.bytes),
                result.load_ms,
                result.mb_per_s,
                result.spawn_to_ready_ms
            );
            loads.push(result);
        }
    }
    if args.keep {
        eprintln!("model-load: kept {}", work_dir.display());
    } else {
        drop(tmp);
        eprintln!("model-load: removed {}", work_dir.display());
    }
    let summary = |mode| summarize(&loads, mode, model.bytes);
    Ok(Report {
        cpu: super::cpu_model(),
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        model_bin: bin,
        work_dir,
        filesystem,
        params: model.params,
        file_bytes: model.bytes,
        rounds: args.rounds,
        drop_caches: match drop_caches {
            Ok(()) => "used before every cold load".to_owned(),
            Err(why) => why,
        },
        cold: summary(Mode::Cold),
        warm: summary(Mode::Warm),
        loads,
    })
}

/// Evicts the model file and checks it with fincore; if that cannot be
/// verified, replaces the model by a fresh file with the next seed. Returns
/// the method, the resident bytes, and whether the file is verified cold.
async fn make_cold(
    bin: &Path,
    work_dir: &Path,
    model: &mut ModelFile,
    args: &ModelLoadArgs,
    drop_caches: &mut Result<(), String>,
) -> anyhow::Result<(String, Option<u64>, bool)> {
    let mut steps = Vec::new();
    if drop_caches.is_ok() {
        match write_drop_caches() {
            Ok(()) => steps.push("drop_caches"),
            Err(e) => {
                eprintln!(
                    "model-load: {DROP_CACHES} is not writable ({e}); evicting the file alone"
                );
                *drop_caches = Err(format!("not writable: {e}"));
            }
        }
    }
    match dd_nocache(&model.file).await {
        Ok(()) => steps.push("dd nocache"),
        Err(e) => eprintln!("model-load: {e}"),
    }
    let resident = fincore(&model.file).await;
    let why = match &resident {
        Ok(r) if is_cold(*r, model.bytes) && !steps.is_empty() => {
            return Ok((steps.join(" + "), Some(*r), true));
        }
        Ok(r) => format!("{r} bytes still resident"),
        Err(e) => e.to_string(),
    };
    let seed = model.seed + 1;
    eprintln!(
        "model-load: cannot verify the eviction ({why}); generating a fresh file with seed {seed} instead"
    );
    let fresh = generate(bin, work_dir, args.params, seed).await?;
    let old = std::mem::replace(model, fresh);
    std::fs::remove_dir_all(&old.dir)
        .with_context(|| format!("cannot remove {}", old.dir.display()))?;
    let mut method = format!("fresh file (seed {seed})");
    if dd_nocache(&model.file).await.is_ok() {
        method.push_str(" + dd nocache");
    }
    let resident = fincore(&model.file).await.ok();
    let cold = resident.is_some_and(|r| is_cold(r, model.bytes));
    if !cold {
        method.push_str(", NOT verified cold");
    }
    Ok((method, resident, cold))
}

/// Runs `tidal-model generate` into `work_dir/model-seed<seed>`.
async fn generate(
    bin: &Path,
    work_dir: &Path,
    params: u64,
    seed: u64,
) -> anyhow::Result<ModelFile> {
    let dir = work_dir.join(format!("model-seed{seed}"));
    eprintln!(
        "model-load: generating about {params} parameters (seed {seed}) into {}",
        dir.display()
    );
    let started = Instant::now();
    let mut command = Command::new(bin);
    command
        .args(["generate", "--params", &params.to_string()])
        .args(["--seed", &seed.to_string(), "--out"])
        .arg(&dir);
    let mut child = Running::spawn("tidal-model generate", command)?;
    let deadline = tokio::time::Instant::now() + GENERATE_TIMEOUT;
    while let Some((_, line)) = child.next_line(deadline).await? {
        eprintln!("model-load: tidal-model: {line}");
    }
    let status = child.wait(deadline).await?;
    if !status.success() {
        bail!("{}", child.failure(&format!("exited ({status})")));
    }
    let file = dir.join("model.safetensors");
    let bytes = std::fs::metadata(&file)
        .with_context(|| format!("tidal-model generate wrote no {}", file.display()))?
        .len();
    let config = std::fs::read_to_string(dir.join("config.json"))?;
    let params = serde_json::from_str::<serde_json::Value>(&config)?["params"]
        .as_u64()
        .context("config.json has no params")?;
    eprintln!(
        "model-load: {bytes} bytes ({:.3} GiB, {params} parameters) in {:.1} s",
        gib(bytes),
        started.elapsed().as_secs_f64()
    );
    Ok(ModelFile {
        dir,
        file,
        seed,
        bytes,
        params,
    })
}

/// The median; 0 for none.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Bytes per second in MB (10^6 bytes).
fn mb_per_s(bytes: u64, ms: f64) -> f64 {
    if ms <= 0.0 {
        return f64::INFINITY;
    }
    bytes as f64 / 1e6 / (ms / 1000.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

/// One mode's summary over `loads`.
fn summarize(loads: &[LoadResult], mode: Mode, file_bytes: u64) -> ModeSummary {
    let of_mode: Vec<&LoadResult> = loads.iter().filter(|l| l.mode == mode).collect();
    let mut load: Vec<f64> = of_mode.iter().map(|l| l.load_ms as f64).collect();
    let mut ready: Vec<f64> = of_mode.iter().map(|l| l.spawn_to_ready_ms).collect();
    let mut resident: Vec<f64> = of_mode
        .iter()
        .filter_map(|l| l.resident_before_bytes)
        .map(|r| r as f64 * 100.0 / file_bytes.max(1) as f64)
        .collect();
    let methods: BTreeSet<&str> = of_mode.iter().map(|l| l.method.as_str()).collect();
    let median_load_ms = median(&mut load);
    ModeSummary {
        loads: of_mode.len(),
        median_load_ms,
        min_load_ms: of_mode.iter().map(|l| l.load_ms).min().unwrap_or(0),
        max_load_ms: of_mode.iter().map(|l| l.load_ms).max().unwrap_or(0),
        mb_per_s: mb_per_s(file_bytes, median_load_ms),
        median_spawn_to_ready_ms: median(&mut ready),
        median_resident_before_percent: (!resident.is_empty()).then(|| median(&mut resident)),
        methods: methods.into_iter().map(str::to_owned).collect(),
        verified: of_mode.iter().filter(|l| l.verified).count(),
    }
}

fn resident_text(resident: Option<u64>, file_bytes: u64) -> String {
    match resident {
        Some(r) => format!(
            "{r} bytes resident, {:.1} %",
            r as f64 * 100.0 / file_bytes.max(1) as f64
        ),
        None => "residency unknown".to_owned(),
    }
}

fn render(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    writeln!(
        out,
        "tidal bench model-load: tidal-model serve loading {} bytes ({:.3} GiB, {} f32 \
         parameters), {} round(s) of one cold then one warm load",
        r.file_bytes,
        gib(r.file_bytes),
        r.params,
        r.rounds
    )?;
    writeln!(out, "machine: {}, {} cores", r.cpu, r.cores)?;
    writeln!(
        out,
        "model file: {} ({})",
        r.work_dir.display(),
        r.filesystem
    )?;
    writeln!(out, "tidal-model: {}", r.model_bin.display())?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<4} | {:>5} | {:>14} {:>7} {:>7} | {:>13} | {:>18} | {:>17} | verified",
        "mode",
        "loads",
        "load ms median",
        "min",
        "max",
        "MB/s (median)",
        "spawn→ready median",
        "resident before"
    )?;
    for (mode, s) in [(Mode::Cold, &r.cold), (Mode::Warm, &r.warm)] {
        let resident = s
            .median_resident_before_percent
            .map_or_else(|| "?".to_owned(), |p| format!("{p:.1} %"));
        writeln!(
            out,
            "{mode:<4} | {:>5} | {:>14.0} {:>7} {:>7} | {:>13.0} | {:>15.0} ms | {resident:>17} | {} of {}",
            s.loads,
            s.median_load_ms,
            s.min_load_ms,
            s.max_load_ms,
            s.mb_per_s,
            s.median_spawn_to_ready_ms,
            s.verified,
            s.loads
        )?;
    }
    writeln!(out)?;
    writeln!(out, "cold: {}", r.cold.methods.join("; "))?;
    writeln!(out, "warm: {}", r.warm.methods.join("; "))?;
    writeln!(out, "drop_caches: {}", r.drop_caches)?;
    writeln!(
        out,
        "verified: fincore showed ≤ 0.1 % of the file resident before a cold load, ≥ 99 % before a warm one"
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "round mode load ms   MB/s spawn→ready ms  resident before"
    )?;
    for l in &r.loads {
        writeln!(
            out,
            "{:>5} {:<4} {:>7} {:>6.0} {:>14.0}  {}",
            l.round,
            l.mode,
            l.load_ms,
            l.mb_per_s,
            l.spawn_to_ready_ms,
            resident_text(l.resident_before_bytes, r.file_bytes)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_takes_medians_per_mode() {
        let load = |round, mode, load_ms, ready| LoadResult {
            round,
            mode,
            seed: 0,
            method: "m".to_owned(),
            resident_before_bytes: Some(if mode == Mode::Cold { 0 } else { 2_000_000 }),
            verified: true,
            load_ms,
            mb_per_s: 0.0,
            spawn_to_load_line_ms: 0.0,
            spawn_to_ready_ms: ready,
        };
        let loads = [
            load(1, Mode::Cold, 4000, 4100.0),
            load(1, Mode::Warm, 500, 600.0),
            load(2, Mode::Cold, 2000, 2100.0),
            load(2, Mode::Warm, 700, 800.0),
            load(3, Mode::Cold, 3000, 3100.0),
        ];
        let cold = summarize(&loads, Mode::Cold, 2_000_000);
        assert_eq!(
            (cold.loads, cold.min_load_ms, cold.max_load_ms),
            (3, 2000, 4000)
        );
        assert_eq!(cold.median_load_ms, 3000.0);
        assert_eq!(cold.mb_per_s, 2.0 / 3.0);
        assert_eq!(cold.median_spawn_to_ready_ms, 3100.0);
        assert_eq!(cold.median_resident_before_percent, Some(0.0));
        let warm = summarize(&loads, Mode::Warm, 2_000_000);
        assert_eq!(warm.median_load_ms, 600.0);
        assert_eq!(warm.mb_per_s, 2.0 / 0.6);
        assert_eq!(warm.median_resident_before_percent, Some(100.0));
    }
}
