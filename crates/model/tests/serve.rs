//! End to end: `tidal-model generate`, then `tidal-model serve` as a real
//! process on 127.0.0.1, talked to with hand-written HTTP/1.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tidal_model::Mlp;

const BIN: &str = env!("CARGO_BIN_EXE_tidal-model");
const TIMEOUT: Duration = Duration::from_secs(30);

/// Kills the server when the test ends, also on panic.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One request on a fresh connection; returns (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {response:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// Polls `cond` until it is true or `timeout` passes.
fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn generate(dir: &Path) {
    let out = Command::new(BIN)
        .args(["generate", "--params", "5000", "--seed", "3", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("4981 parameters"), "{stdout}");
}

#[test]
fn serve_answers_health_and_predict_like_the_library() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    let mlp = Mlp::load(&dir.path().join("model.safetensors")).unwrap();

    let mut child = Command::new(BIN)
        .args(["serve", "--host", "127.0.0.1", "--port", "0", "--model-dir"])
        .arg(dir.path())
        .env_remove("PORT")
        .env_remove("TIDAL_MODEL_DELAY_MS")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut guard = KillOnDrop(child);

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + TIMEOUT;
    let mut lines = Vec::new();
    let addr: SocketAddr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no 'listening on' line ({e}); stdout so far: {lines:?}"));
        if let Some(a) = line.strip_prefix("listening on http://") {
            break a.parse().unwrap();
        }
        lines.push(line);
    };
    let coldboost = lines
        .iter()
        .find(|l| l.starts_with("[Coldboost] Completed model.load() execution in "))
        .unwrap_or_else(|| panic!("no Coldboost line in {lines:?}"));
    let ms = coldboost
        .strip_prefix("[Coldboost] Completed model.load() execution in ")
        .and_then(|r| r.strip_suffix(" ms"))
        .unwrap();
    ms.parse::<u64>().unwrap();

    assert!(
        wait_until(TIMEOUT, || matches!(
            http(addr, "GET", "/health", ""),
            Ok((200, ref b)) if b == "ok"
        )),
        "/health never answered 200 ok"
    );

    let input: Vec<f32> = (0..16u8).map(|i| f32::from(i) / 4.0 - 1.5).collect();
    let body = serde_json::json!({ "input": input }).to_string();
    let (status, reply) = http(addr, "POST", "/predict", &body).unwrap();
    assert_eq!(status, 200, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    let output: Vec<f32> = serde_json::from_value(reply["output"].clone()).unwrap();
    assert_eq!(output, mlp.predict(&input));

    let (status, reply) = http(addr, "POST", "/predict", r#"{"input":[1,2,3]}"#).unwrap();
    assert_eq!(status, 400);
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert!(reply["error"].as_str().unwrap().contains("16"), "{reply}");

    let (status, reply) = http(addr, "POST", "/predict", "{nope").unwrap();
    assert_eq!(status, 400);
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert!(reply["error"].as_str().unwrap().contains("JSON"), "{reply}");

    // SIGTERM: a clean exit with status 0.
    let pid = guard.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut status = None;
    assert!(
        wait_until(TIMEOUT, || {
            status = guard.0.try_wait().unwrap();
            status.is_some()
        }),
        "serve did not exit on SIGTERM"
    );
    assert!(status.unwrap().success(), "{status:?}");
}

#[test]
fn serve_exits_1_with_the_error_when_the_model_cannot_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.safetensors"), b"short").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--host", "127.0.0.1", "--port", "0", "--model-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("model.safetensors") && stderr.contains("shorter than"),
        "{stderr}"
    );
}
