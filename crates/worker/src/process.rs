//! A replica's process: started from the deployment spec, Ready when its
//! health endpoint answers 200, its output kept per replica, and stopped by
//! draining, SIGTERM, then SIGKILL.
//!
//! A replica is started with `PORT`, `TIDAL_MODEL_DIR`, `TIDAL_REPLICA_ID` and
//! `CUDA_VISIBLE_DEVICES` set (these win over the same names in the spec's
//! env). It runs in its own process group, so the signals that stop it reach
//! the processes it started too. Its stdout and stderr go, line by line, to
//! `<log_dir>/<replica_id>.log`, which is rotated to `.log.1` when it would
//! pass [`LOG_LIMIT_BYTES`]; the last [`LAST_LINES`] lines are also kept in
//! memory for failure reports.
//!
//! **Architecture Invariant:** this module knows nothing of deployments,
//! routing or in-flight accounting; the caller stops sending requests and
//! hands [`Replica::stop`] a counter of what is still in flight.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::Empty;
use hyper::StatusCode;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, warn};

/// The size a replica's log file may reach before it is rotated to `.log.1`.
pub const LOG_LIMIT_BYTES: u64 = 1024 * 1024;
/// How many of a replica's last output lines are kept in memory.
pub const LAST_LINES: usize = 50;
/// How often [`Replica::wait_ready`] asks the health endpoint.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// The longest one health probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long to wait, after the process exits, for the rest of its output
/// (a process it started may still hold the pipes open).
const LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest line kept in memory; the log file gets the whole line.
const MAX_LINE_CHARS: usize = 4096;

/// What to start for one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// The program to run (a path, or a name looked up in `PATH`).
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables from the deployment spec.
    pub env: BTreeMap<String, String>,
    /// The port the replica must listen on (set as `PORT`).
    pub port: u16,
    /// Where the model's weights are (set as `TIDAL_MODEL_DIR`).
    pub model_dir: PathBuf,
    /// The replica's id (set as `TIDAL_REPLICA_ID`, and names the log file).
    pub replica_id: String,
    /// The GPUs the replica may use (set as `CUDA_VISIBLE_DEVICES`, a comma
    /// list, empty when there are none).
    pub gpus: Vec<u32>,
    /// The folder that holds the replica's log file.
    pub log_dir: PathBuf,
    /// The health endpoint's path, such as `/health`.
    pub health_path: String,
}

/// What went wrong starting a replica or waiting for it to be ready.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The command could not be started (not found, not executable, ...).
    #[error("cannot start replica command `{command}`: {reason}; check the deployment's command")]
    Spawn {
        /// The command as given in the spec.
        command: String,
        /// Why it could not be started.
        reason: String,
    },
    /// The replica's log file could not be created.
    #[error("cannot create the replica log {}: {source}", path.display())]
    Log {
        /// The log file (or its folder).
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The process exited before it was ready.
    #[error("replica exited before it was ready ({}); last output:\n{}", describe(*status, *signal), last_lines.join("\n"))]
    Exited {
        /// Its exit code, when it exited on its own.
        status: Option<i32>,
        /// The signal that ended it, if one did.
        signal: Option<i32>,
        /// Its last output lines.
        last_lines: Vec<String>,
    },
    /// The health endpoint did not answer 200 in time.
    #[error("replica was not ready after {waited:?} (its health endpoint never answered 200); last output:\n{}", last_lines.join("\n"))]
    NotReady {
        /// How long it was given.
        waited: Duration,
        /// Its last output lines.
        last_lines: Vec<String>,
    },
    /// Waiting on the process failed.
    #[error("cannot wait on the replica process: {0}")]
    Wait(#[source] io::Error),
}

/// How a replica's process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitReport {
    /// Its exit code, when it exited on its own.
    pub status: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Its last output lines.
    pub last_lines: Vec<String>,
}

/// What made a stopped replica end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoppedBy {
    /// It had already exited before SIGTERM was sent.
    AlreadyExited,
    /// It exited within the grace period after SIGTERM.
    Term,
    /// It was still running after the grace period and got SIGKILL.
    Kill,
}

/// The outcome of [`Replica::stop`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReport {
    /// What made it end.
    pub stopped_by: StoppedBy,
    /// How it ended.
    pub exit: ExitReport,
}

/// A running (or exited) replica process. Dropping it kills the process.
#[derive(Debug)]
pub struct Replica {
    child: Child,
    pid: Option<u32>,
    port: u16,
    health_path: String,
    log: Arc<Mutex<LogSink>>,
    readers: Vec<JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

/// Starts a replica's process; see the [module docs](self).
pub async fn start(spec: ProcessSpec) -> Result<Replica, ProcessError> {
    start_with_log_limit(spec, LOG_LIMIT_BYTES).await
}

pub(crate) async fn start_with_log_limit(
    spec: ProcessSpec,
    log_limit: u64,
) -> Result<Replica, ProcessError> {
    let log_path = spec.log_dir.join(format!("{}.log", spec.replica_id));
    let sink = LogSink::open(log_path, log_limit)?;
    let gpus = spec
        .gpus
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut command = Command::new(&spec.command);
    command
        .args(&spec.args)
        .envs(&spec.env)
        .env("PORT", spec.port.to_string())
        .env("TIDAL_MODEL_DIR", &spec.model_dir)
        .env("TIDAL_REPLICA_ID", &spec.replica_id)
        .env("CUDA_VISIBLE_DEVICES", gpus)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|err| ProcessError::Spawn {
        command: spec.command.clone(),
        reason: err.to_string(),
    })?;
    let log = Arc::new(Mutex::new(sink));
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(copy_lines(out, Arc::clone(&log))));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(copy_lines(err, Arc::clone(&log))));
    }
    debug!(replica = %spec.replica_id, pid = ?child.id(), "replica started");
    Ok(Replica {
        pid: child.id(),
        child,
        port: spec.port,
        health_path: spec.health_path,
        log,
        readers,
        exited: None,
    })
}

impl Replica {
    /// The process id, while it was running when started.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The last output lines (stdout and stderr interleaved), oldest first.
    pub fn last_lines(&self) -> Vec<String> {
        lock(&self.log).last.iter().cloned().collect()
    }

    /// Polls the health endpoint every 100 ms until it answers 200.
    ///
    /// Fails with [`ProcessError::Exited`] when the process exits first, and
    /// [`ProcessError::NotReady`] when `limit` passes.
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<(), ProcessError> {
        let started = Instant::now();
        let deadline = started + limit;
        loop {
            if let Some(status) = self.child.try_wait().map_err(ProcessError::Wait)? {
                return Err(self.exited_error(status).await);
            }
            let probe = timeout(PROBE_TIMEOUT, probe(self.port, &self.health_path));
            if matches!(probe.await, Ok(Ok(true))) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ProcessError::NotReady {
                    waited: limit,
                    last_lines: self.last_lines(),
                });
            }
            tokio::select! {
                status = self.child.wait() => {
                    let status = status.map_err(ProcessError::Wait)?;
                    return Err(self.exited_error(status).await);
                }
                () = sleep_until(deadline.min(now + PROBE_INTERVAL)) => {}
            }
        }
    }

    /// Waits until the process exits, however long that takes.
    pub async fn wait_exit(&mut self) -> ExitReport {
        let status = match self.exited {
            Some(status) => Ok(status),
            None => self.child.wait().await,
        };
        self.report(status).await
    }

    /// Stops the replica: waits until `in_flight` reads 0 (or `drain`
    /// passes, or it closes), sends SIGTERM to its process group, waits up to
    /// `grace`, then sends SIGKILL.
    ///
    /// The caller must already have stopped sending it requests (Draining).
    pub async fn stop(
        &mut self,
        in_flight: Option<watch::Receiver<usize>>,
        drain: Duration,
        grace: Duration,
    ) -> StopReport {
        if let Some(mut in_flight) = in_flight {
            tokio::select! {
                _ = timeout(drain, in_flight.wait_for(|n| *n == 0)) => {}
                status = self.child.wait() => {
                    self.exited = status.ok();
                }
            }
        }
        let already = self.exited.is_some() || matches!(self.child.try_wait(), Ok(Some(_)));
        if already {
            return StopReport {
                stopped_by: StoppedBy::AlreadyExited,
                exit: self.wait_exit().await,
            };
        }
        self.signal("TERM").await;
        if let Ok(status) = timeout(grace, self.child.wait()).await {
            return StopReport {
                stopped_by: StoppedBy::Term,
                exit: self.report(status).await,
            };
        }
        self.signal("KILL").await;
        if let Err(err) = self.child.start_kill() {
            debug!(%err, "SIGKILL to the replica leader failed");
        }
        StopReport {
            stopped_by: StoppedBy::Kill,
            exit: self.wait_exit().await,
        }
    }

    /// Sends `sig` to the replica's process group (it is the group leader).
    /// Only called while the child is not yet reaped, so the id is still its.
    async fn signal(&self, sig: &str) {
        let Some(pid) = self.pid else { return };
        let result = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg("--")
            .arg(format!("-{pid}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        match result {
            Ok(status) if status.success() => {}
            Ok(status) => debug!(pid, sig, %status, "kill found no process to signal"),
            Err(err) => warn!(pid, sig, %err, "cannot run `kill`"),
        }
    }

    async fn exited_error(&mut self, status: ExitStatus) -> ProcessError {
        let report = self.report(Ok(status)).await;
        ProcessError::Exited {
            status: report.status,
            signal: report.signal,
            last_lines: report.last_lines,
        }
    }

    /// Records the exit, waits (briefly) for the rest of the output and
    /// reports how the process ended.
    async fn report(&mut self, status: io::Result<ExitStatus>) -> ExitReport {
        let status = match status {
            Ok(status) => Some(status),
            Err(err) => {
                warn!(%err, pid = ?self.pid, "cannot wait on the replica process");
                None
            }
        };
        self.exited = self.exited.or(status);
        for reader in self.readers.drain(..) {
            if timeout(LOG_FLUSH_TIMEOUT, reader).await.is_err() {
                debug!(pid = ?self.pid, "replica output still open after it exited");
            }
        }
        ExitReport {
            status: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
            last_lines: self.last_lines(),
        }
    }
}

/// Whether `GET http://127.0.0.1:<port><path>` answers 200.
async fn probe(port: u16, path: &str) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            debug!(%err, "health probe connection ended with an error");
        }
    });
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, format!("127.0.0.1:{port}"))
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    Ok(response.status() == StatusCode::OK)
}

fn describe(status: Option<i32>, signal: Option<i32>) -> String {
    match (status, signal) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "exit status unknown".to_owned(),
    }
}

fn lock(log: &Mutex<LogSink>) -> std::sync::MutexGuard<'_, LogSink> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn copy_lines(pipe: impl AsyncRead + Unpin, log: Arc<Mutex<LogSink>>) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) => return,
            Ok(_) => lock(&log).push(&line),
            Err(err) => {
                debug!(%err, "reading replica output failed");
                return;
            }
        }
    }
}

/// A replica's log: a file rotated at a size limit, plus its last lines.
#[derive(Debug)]
struct LogSink {
    path: PathBuf,
    file: Option<File>,
    written: u64,
    limit: u64,
    last: VecDeque<String>,
}

impl LogSink {
    fn open(path: PathBuf, limit: u64) -> Result<Self, ProcessError> {
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| ProcessError::Log { path, source }
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(err(dir))?;
        }
        let file = File::create(&path).map_err(err(&path))?;
        Ok(Self {
            path,
            file: Some(file),
            written: 0,
            limit,
            last: VecDeque::with_capacity(LAST_LINES),
        })
    }

    fn push(&mut self, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim_end_matches(['\n', '\r']);
        if self.last.len() == LAST_LINES {
            self.last.pop_front();
        }
        self.last
            .push_back(text.chars().take(MAX_LINE_CHARS).collect());
        let len = text.len() as u64 + 1;
        if self.written > 0 && self.written + len > self.limit {
            self.rotate();
        }
        if let Some(file) = &mut self.file {
            match writeln!(file, "{text}") {
                Ok(()) => self.written += len,
                Err(err) => {
                    warn!(%err, path = %self.path.display(), "cannot write the replica log");
                    self.file = None;
                }
            }
        }
    }

    fn rotate(&mut self) {
        let mut rotated = self.path.clone().into_os_string();
        rotated.push(".1");
        self.file = None;
        let reopened = fs::rename(&self.path, &rotated).and_then(|()| File::create(&self.path));
        match reopened {
            Ok(file) => {
                self.file = Some(file);
                self.written = 0;
            }
            Err(err) => warn!(%err, path = %self.path.display(), "cannot rotate the replica log"),
        }
    }
}

#[cfg(test)]
#[path = "process_tests.rs"]
mod tests;
