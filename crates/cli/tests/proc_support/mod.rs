//! What the process tests of workers, `tidal deploy`, `tidal up` and the CLI
//! share: waiting on a condition, one HTTP exchange, the prediction body,
//! and `tidal up` as a process that is stopped (with every replica it
//! started) when dropped.

#![allow(dead_code)] // each test file uses a part of it

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Generates the reference model's weights (5,000 parameters) in `dir` and
/// writes there the spec of deployment `mlp-v1` of model `mlp`, whose
/// replicas are `tidal model serve` (this test's binary) on 127.0.0.1, with
/// `autoscaling_settings`, extra `env` and `stop_grace_secs`; its path.
pub fn mlp_spec(
    binary: &Path,
    dir: &Path,
    autoscaling_settings: serde_json::Value,
    env: &[(&str, &str)],
    stop_grace_secs: u64,
) -> PathBuf {
    let out = Command::new(binary)
        .args(["model", "generate", "--params", "5000", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut vars = serde_json::Map::new();
    vars.insert("TIDAL_MODEL_HOST".into(), "127.0.0.1".into());
    for (k, v) in env {
        vars.insert((*k).into(), (*v).into());
    }
    let spec = serde_json::json!({
        "model": "mlp",
        "deployment": "mlp-v1",
        "autoscaling_settings": autoscaling_settings,
        "resources": {"cpu_millis": 100, "memory_bytes": 67_108_864},
        "command": [binary.display().to_string(), "model", "serve"],
        "env": vars,
        "ready_timeout_secs": 60,
        "stop_grace_secs": stop_grace_secs,
        "weights": [{"name": "model.safetensors", "path": "model.safetensors"}]
    });
    let path = dir.join("deployment.json");
    fs::write(&path, spec.to_string()).unwrap();
    path
}

/// A request body for `tidal model serve`'s `/predict` (16 inputs).
pub const PREDICT: &str = r#"{"input":[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]}"#;

/// Polls `probe` every 25 ms until it answers; fails the test after `within`.
pub async fn wait_for<T>(
    what: &str,
    within: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(answer) = probe().await {
            return answer;
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One HTTP/1.1 exchange (`Connection: close`): status and body.
pub async fn http(addr: &str, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    let answer = String::from_utf8(answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Kills (SIGKILL) every process marked as a replica of worker `id`.
pub fn kill_replicas_of(id: &str) {
    for pid in tidal_worker::orphans::find(id) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// `tidal up` as a process; SIGINT then SIGKILL on drop, and any replica
/// process it left is killed (by its TIDAL_WORKER_ID mark). Its log's tail
/// is printed if the test failed.
pub struct Up {
    pub child: Option<Child>,
    pub log: PathBuf,
    pub worker_id: String,
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Replicas carry this test's worker id: anything left is ours.
        kill_replicas_of(&self.worker_id);
        if std::thread::panicking() {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            eprintln!("----- tidal up log (last 80 lines) -----\n{tail}");
        }
    }
}
