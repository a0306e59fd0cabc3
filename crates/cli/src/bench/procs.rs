//! The benchmark's processes and their temporary directory, cleaned up by
//! `Drop` whatever happens: every child is killed and reaped, then the
//! directory (data and logs) is removed.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tempfile::TempDir;

/// Child processes sharing one temporary directory.
#[derive(Debug)]
pub(crate) struct Procs {
    children: Vec<(String, Child)>,
    dir: TempDir,
}

impl Procs {
    /// A new, empty temporary directory under `parent` (the system's temp dir
    /// if `None`). It must be on the disk being measured: not a tmpfs.
    pub(crate) fn new(parent: Option<&Path>, prefix: &str) -> anyhow::Result<Self> {
        let mut builder = tempfile::Builder::new();
        builder.prefix(prefix);
        let dir = match parent {
            Some(parent) => builder.tempdir_in(parent),
            None => builder.tempdir(),
        }
        .context("cannot create the benchmark's temporary directory")?;
        Ok(Self {
            children: Vec::new(),
            dir,
        })
    }

    /// The temporary directory.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self, label: &str) -> PathBuf {
        self.dir.path().join(format!("{label}.log"))
    }

    /// Starts `command` as `label`, its stdout and stderr going to `label.log`
    /// in the directory.
    pub(crate) fn spawn(&mut self, label: &str, mut command: Command) -> anyhow::Result<()> {
        let log = File::create(self.log_path(label))
            .with_context(|| format!("cannot create the log file of {label}"))?;
        let err = log.try_clone().context("cannot duplicate a log file")?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {label} ({:?})", command.get_program()))?;
        self.children.push((label.to_owned(), child));
        Ok(())
    }

    /// The last lines of `label`'s log, for error messages.
    pub(crate) fn log_tail(&self, label: &str) -> String {
        let text = std::fs::read_to_string(self.log_path(label)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Fails if a child has exited, with the end of its log.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        let mut dead = None;
        for (label, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                dead = Some((label.clone(), status));
                break;
            }
        }
        if let Some((label, status)) = dead {
            bail!(
                "{label} exited ({status}); the end of its log:\n{}",
                self.log_tail(&label)
            );
        }
        Ok(())
    }

    /// The largest peak resident set (VmHWM) among the children, in KiB.
    pub(crate) fn peak_rss_kib(&self) -> Option<u64> {
        self.children
            .iter()
            .filter_map(|(_, child)| vm_hwm_kib(child.id()))
            .max()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
        }
        for (_, child) in &mut self.children {
            let _ = child.wait();
        }
        // `dir` is removed when the field drops, after the children are gone.
    }
}

/// `VmHWM` (peak resident set) of process `pid`, in KiB, from `/proc`.
pub(crate) fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `n` distinct free TCP ports on 127.0.0.1 (all bound at once, then released).
pub(crate) fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot find a free port on 127.0.0.1")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Waits until `ready` answers `Ok(Some(_))`, checking that the children
/// still run; fails after `timeout` with the last error.
pub(crate) async fn wait_until<T, F, Fut>(
    procs: &mut Procs,
    what: &str,
    timeout: Duration,
    mut ready: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    loop {
        procs.check_alive()?;
        match ready().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last = e,
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{what}: not ready after {timeout:?} ({last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
