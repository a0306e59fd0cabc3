//! One `tidal-model` process at a time: started with its output read line
//! by line, killed and reaped when dropped; and one timed `serve` load.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// How long one `tidal-model serve` gets from spawn to ready.
const LOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// What `tidal-model serve` prints once the model is in memory, before the ms.
const COLDBOOST: &str = "[Coldboost] Completed model.load() execution in ";
/// What it prints once it listens, before the address.
const LISTENING: &str = "listening on http://";
/// Lines of a child's output kept for error messages.
const TAIL_LINES: usize = 15;

/// One load's times.
#[derive(Debug)]
pub(super) struct Timing {
    pub(super) load_ms: u64,
    pub(super) load_line: Duration,
    pub(super) ready: Duration,
}

/// Starts `tidal-model serve` on `dir`, waits for the `[Coldboost]` line and
/// a 200 from `/health`, then kills it.
pub(super) async fn load_once(bin: &Path, dir: &Path) -> anyhow::Result<Timing> {
    let mut command = Command::new(bin);
    command
        .args(["serve", "--port", "0", "--model-dir"])
        .arg(dir)
        .env("TIDAL_MODEL_HOST", "127.0.0.1")
        .env("NO_COLOR", "1");
    let deadline = tokio::time::Instant::now() + LOAD_TIMEOUT;
    let started = Instant::now();
    let mut child = Running::spawn("tidal-model serve", command)?;
    let mut load = None;
    let addr = loop {
        let Some((at, line)) = child.next_line(deadline).await? else {
            bail!("{}", child.failure("closed its output before it listened"));
        };
        if let Some(ms) = parse_coldboost(&line) {
            load = Some((ms, at.duration_since(started)));
        } else if let Some(addr) = parse_listening(&line) {
            break addr;
        }
    };
    let Some((load_ms, load_line)) = load else {
        bail!("{}", child.failure("listened without a [Coldboost] line"));
    };
    loop {
        let answer = health(addr).await;
        if answer == Ok(200) {
            break;
        }
        child.check_alive()?;
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{}",
                child.failure(&format!("GET /health never answered 200 ({answer:?})"))
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready = started.elapsed();
    child.stop();
    Ok(Timing {
        load_ms,
        load_line,
        ready,
    })
}

/// The milliseconds of a `[Coldboost] Completed model.load() execution in N ms` line.
fn parse_coldboost(line: &str) -> Option<u64> {
    let (_, rest) = line.split_once(COLDBOOST)?;
    rest.trim().strip_suffix("ms")?.trim().parse().ok()
}

/// The address of a `listening on http://ADDR` line.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    line.trim().strip_prefix(LISTENING)?.parse().ok()
}

/// The status code of an HTTP/1.x response's first line.
fn parse_status(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    words.next()?.parse().ok()
}

/// `GET /health`'s status code.
async fn health(addr: SocketAddr) -> Result<u16, String> {
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        let mut buf = [0u8; 256];
        while !response.contains(&b'\n') {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            response.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .map_err(|_| "no answer within 2 s".to_owned())?
        .map_err(|e| e.to_string())?;
    parse_status(&response).ok_or_else(|| {
        format!(
            "not an HTTP response: {:?}",
            String::from_utf8_lossy(&response)
        )
    })
}

/// A line of a child's output and when it was read.
pub(super) type Line = (Instant, String);

/// A child process, killed and reaped when dropped, whose stdout and stderr
/// lines arrive on a channel (read by one thread each).
#[derive(Debug)]
pub(super) struct Running {
    label: &'static str,
    child: Child,
    lines: mpsc::UnboundedReceiver<Line>,
    tail: VecDeque<String>,
}

impl Running {
    pub(super) fn spawn(label: &'static str, mut command: Command) -> anyhow::Result<Self> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {label} ({:?})", command.get_program()))?;
        let (tx, lines) = mpsc::unbounded_channel();
        if let Some(out) = child.stdout.take() {
            forward(out, tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            forward(err, tx);
        }
        Ok(Self {
            label,
            child,
            lines,
            tail: VecDeque::new(),
        })
    }

    /// The next line, or `None` once both pipes are closed.
    pub(super) async fn next_line(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<Option<Line>> {
        match tokio::time::timeout_at(deadline, self.lines.recv()).await {
            Ok(Some(line)) => {
                self.remember(&line.1);
                Ok(Some(line))
            }
            Ok(None) => Ok(None),
            Err(_) => bail!("{}", self.failure("timed out")),
        }
    }

    fn remember(&mut self, line: &str) {
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_owned());
    }

    /// Fails if the child has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => bail!("{}", self.failure(&format!("exited ({status})"))),
            _ => Ok(()),
        }
    }

    /// Waits for the child to exit, until `deadline`.
    pub(super) async fn wait(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<ExitStatus> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{}", self.failure("did not exit in time"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// "LABEL WHAT; its last lines: …", with the lines not yet read.
    pub(super) fn failure(&mut self, what: &str) -> String {
        while let Ok((_, line)) = self.lines.try_recv() {
            self.remember(&line);
        }
        let tail: Vec<&str> = self.tail.iter().map(String::as_str).collect();
        format!(
            "{} {what}; its last lines:\n{}",
            self.label,
            tail.join("\n")
        )
    }

    /// Kills and reaps the child.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends each line of `pipe` (lossy UTF-8) with the time it was read.
fn forward(pipe: impl Read + Send + 'static, tx: mpsc::UnboundedSender<Line>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                    if tx.send((Instant::now(), line)).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coldboost_line_gives_its_milliseconds() {
        let line = "[Coldboost] Completed model.load() execution in 1866 ms";
        assert_eq!(parse_coldboost(line), Some(1866));
        assert_eq!(parse_coldboost(&format!("{line}\r")), Some(1866));
        assert_eq!(
            parse_coldboost("[Coldboost] Completed model.load() execution in ms"),
            None
        );
        assert_eq!(
            parse_coldboost("[Coldboost] Completed model.load() execution in 12 s"),
            None
        );
        assert_eq!(parse_coldboost("listening on http://127.0.0.1:1"), None);
    }

    #[test]
    fn listening_line_gives_the_address() {
        assert_eq!(
            parse_listening("listening on http://127.0.0.1:35587"),
            Some("127.0.0.1:35587".parse().expect("address"))
        );
        assert_eq!(parse_listening("listening on http://nowhere"), None);
        assert_eq!(parse_listening("model loaded"), None);
    }

    #[test]
    fn http_status_line() {
        assert_eq!(
            parse_status(b"HTTP/1.1 200 OK\r\ncontent-length: 2"),
            Some(200)
        );
        assert_eq!(
            parse_status(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }
}
