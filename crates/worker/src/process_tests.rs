use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

use super::*;

const LONG: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn spec(dir: &Path, command: &str, args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        command: command.to_owned(),
        args: args.iter().map(|&a| a.to_owned()).collect(),
        env: BTreeMap::new(),
        port: free_port(),
        model_dir: dir.join("model"),
        replica_id: "r-1".to_owned(),
        gpus: Vec::new(),
        log_dir: dir.join("logs"),
        health_path: "/health".to_owned(),
    }
}

fn sh(dir: &Path, script: &str) -> ProcessSpec {
    spec(dir, "sh", &["-c", script])
}

#[tokio::test]
async fn exit_before_ready_reports_status_and_last_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut replica = start(sh(dir.path(), "echo one; echo two >&2; exit 3"))
        .await
        .unwrap();
    let err = replica.wait_ready(LONG).await.unwrap_err();
    let ProcessError::Exited {
        status,
        signal,
        mut last_lines,
    } = err
    else {
        panic!("expected Exited, got {err:?}");
    };
    assert_eq!((status, signal), (Some(3), None));
    last_lines.sort(); // stdout and stderr may interleave either way
    assert_eq!(last_lines, ["one", "two"]);
    let log = fs::read_to_string(dir.path().join("logs/r-1.log")).unwrap();
    assert!(log.contains("one\n") && log.contains("two\n"), "{log}");
}

#[tokio::test]
async fn crash_later_is_reported_by_wait_exit() {
    let dir = tempfile::tempdir().unwrap();
    let mut replica = start(sh(dir.path(), "sleep 0.2; echo boom; exit 7"))
        .await
        .unwrap();
    let report = replica.wait_exit().await;
    assert_eq!(report.status, Some(7));
    assert_eq!(report.last_lines, ["boom"]);
}

#[tokio::test]
async fn a_missing_command_is_a_spawn_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let err = start(spec(dir.path(), "/no/such/tidal-model-server", &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, ProcessError::Spawn { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/no/such/tidal-model-server"),
        "{err}"
    );
}

#[tokio::test]
async fn the_replica_environment_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = sh(
        dir.path(),
        "echo \"$PORT|$TIDAL_REPLICA_ID|$CUDA_VISIBLE_DEVICES|$TIDAL_MODEL_DIR|$EXTRA\"",
    );
    spec.gpus = vec![0, 3];
    spec.env.insert("EXTRA".to_owned(), "x".to_owned());
    spec.env.insert("PORT".to_owned(), "1".to_owned()); // tidal's value wins
    let expected = format!(
        "{}|r-1|0,3|{}|x",
        spec.port,
        dir.path().join("model").display()
    );
    let mut replica = start(spec).await.unwrap();
    assert_eq!(replica.wait_exit().await.last_lines, [expected]);

    let mut no_gpus = start(sh(dir.path(), "echo \"[${CUDA_VISIBLE_DEVICES-unset}]\""))
        .await
        .unwrap();
    assert_eq!(no_gpus.wait_exit().await.last_lines, ["[]"]);
}

#[tokio::test]
async fn the_log_rotates_and_only_the_last_lines_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let script = "i=0; while [ $i -lt 100 ]; do echo line-$i; i=$((i+1)); done";
    let mut replica = start_with_log_limit(sh(dir.path(), script), 200)
        .await
        .unwrap();
    let report = replica.wait_exit().await;
    assert_eq!(report.last_lines.len(), LAST_LINES);
    assert_eq!(report.last_lines.last().unwrap(), "line-99");
    assert_eq!(report.last_lines[0], "line-50");
    let current = fs::read_to_string(dir.path().join("logs/r-1.log")).unwrap();
    let rotated = fs::read_to_string(dir.path().join("logs/r-1.log.1")).unwrap();
    assert!(current.len() <= 200 && rotated.len() <= 200);
    assert!(current.ends_with("line-99\n"), "{current}");
    let last_rotated: u32 = rotated.lines().last().unwrap()[5..].parse().unwrap();
    let first_current: u32 = current.lines().next().unwrap()[5..].parse().unwrap();
    assert_eq!(last_rotated + 1, first_current);
}

#[tokio::test]
async fn stop_sends_term_and_a_replica_that_obeys_ends_by_term() {
    let dir = tempfile::tempdir().unwrap();
    let mut replica = start(sh(dir.path(), "echo up; while :; do sleep 0.05; done"))
        .await
        .unwrap();
    let (tx, rx) = watch::channel(1usize);
    let stopping = tokio::spawn(async move {
        let report = replica.stop(Some(rx), LONG, LONG).await;
        (replica, report)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !stopping.is_finished(),
        "stop must wait for in-flight requests"
    );
    tx.send(0).unwrap();
    let (_replica, report) = stopping.await.unwrap();
    assert_eq!(report.stopped_by, StoppedBy::Term);
    assert_eq!(report.exit.signal, Some(15));
    assert_eq!(report.exit.last_lines, ["up"]);
}

#[tokio::test]
async fn a_replica_that_ignores_term_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let script = "trap '' TERM; echo ignoring; while :; do sleep 0.05; done";
    let mut replica = start(sh(dir.path(), script)).await.unwrap();
    // Let the shell install its trap before it is signalled.
    while replica.last_lines().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = replica
        .stop(None, Duration::ZERO, Duration::from_millis(300))
        .await;
    assert_eq!(report.stopped_by, StoppedBy::Kill);
    assert_eq!(report.exit.signal, Some(9));
}

#[tokio::test]
async fn stopping_an_exited_replica_reports_already_exited() {
    let dir = tempfile::tempdir().unwrap();
    let mut replica = start(sh(dir.path(), "sleep 0.1; exit 0")).await.unwrap();
    // A request stays in flight; the process exiting ends the drain early.
    let (_tx, rx) = watch::channel(1usize);
    let report = replica.stop(Some(rx), LONG, LONG).await;
    assert_eq!(report.stopped_by, StoppedBy::AlreadyExited);
    assert_eq!(report.exit.status, Some(0));
}

/// A health endpoint in the test process, answering 503 until `ready_after`
/// has passed and 200 after; the replica itself is a shell that only sleeps.
async fn serve_health(ready_after: Duration) -> (u16, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let ready_at = Instant::now() + ready_after;
    let server = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = [0u8; 1024];
            let n = stream.read(&mut request).await.unwrap_or(0);
            let status = if !request[..n].starts_with(b"GET /health ") {
                "404 Not Found"
            } else if Instant::now() >= ready_at {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            let response =
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = stream.write_all(response.as_bytes()).await;
        }
    });
    (port, server)
}

const SLEEPER: &str = "echo starting; while :; do sleep 0.05; done";

#[tokio::test]
async fn ready_when_health_answers_200() {
    let dir = tempfile::tempdir().unwrap();
    let (port, server) = serve_health(Duration::from_millis(300)).await;
    let mut spec = sh(dir.path(), SLEEPER);
    spec.port = port;
    let mut replica = start(spec).await.unwrap();
    replica.wait_ready(LONG).await.unwrap();
    let report = replica.stop(None, Duration::ZERO, LONG).await;
    assert_eq!(report.stopped_by, StoppedBy::Term);
    server.abort();
}

#[tokio::test]
async fn a_wrong_health_path_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let (port, server) = serve_health(Duration::ZERO).await;
    let mut spec = sh(dir.path(), SLEEPER);
    spec.port = port;
    spec.health_path = "/healthz".to_owned();
    let mut replica = start(spec).await.unwrap();
    let err = replica.wait_ready(Duration::from_millis(300)).await;
    assert!(matches!(err, Err(ProcessError::NotReady { .. })), "{err:?}");
    replica.stop(None, Duration::ZERO, LONG).await;
    server.abort();
}

#[tokio::test]
async fn not_ready_when_health_never_answers_200() {
    let dir = tempfile::tempdir().unwrap();
    let (port, server) = serve_health(Duration::from_secs(60)).await;
    let mut spec = sh(dir.path(), SLEEPER);
    spec.port = port;
    let mut replica = start(spec).await.unwrap();
    let err = replica
        .wait_ready(Duration::from_millis(400))
        .await
        .unwrap_err();
    let ProcessError::NotReady { waited, last_lines } = err else {
        panic!("expected NotReady, got {err:?}");
    };
    assert_eq!(waited, Duration::from_millis(400));
    assert_eq!(last_lines, ["starting"]);
    replica.stop(None, Duration::ZERO, LONG).await;
    server.abort();
}

#[tokio::test]
async fn not_ready_when_nothing_listens() {
    let dir = tempfile::tempdir().unwrap();
    let mut replica = start(sh(dir.path(), SLEEPER)).await.unwrap();
    let err = replica.wait_ready(Duration::from_millis(300)).await;
    assert!(matches!(err, Err(ProcessError::NotReady { .. })), "{err:?}");
    replica.stop(None, Duration::ZERO, LONG).await;
}
