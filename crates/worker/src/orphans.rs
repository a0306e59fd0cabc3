//! Replica processes left behind by a previous incarnation of this worker.
//!
//! Every replica process is started with `TIDAL_WORKER_ID=<node id>` in its
//! environment, which the processes it starts inherit. When a worker dies
//! (SIGKILL, a crash, the machine's OOM killer), its replicas keep running,
//! but their node lease expires and the placer marks them LOST and places
//! replacements. So a restarted worker **cleans them up rather than adopting
//! them**: after it has taken its node lease (which waits out the dead
//! predecessor's, so no live twin can be using this id), it finds every
//! process of this user whose environment has `TIDAL_WORKER_ID=<its id>` in
//! `/proc/<pid>/environ`, sends SIGTERM to each one's process group, and
//! SIGKILL to what is left after the grace period.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::process::Command;

/// The environment variable that marks a worker's replica processes.
pub const WORKER_ENV: &str = "TIDAL_WORKER_ID";

/// Whether a `/proc/<pid>/environ` blob has `TIDAL_WORKER_ID=<id>`.
pub fn environ_marks(environ: &[u8], id: &str) -> bool {
    let wanted = format!("{WORKER_ENV}={id}");
    environ.split(|b| *b == 0).any(|v| v == wanted.as_bytes())
}

/// The process ids (other than this process) marked with worker `id`.
pub fn find(id: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| environ_marks(&env, id))
        })
        .collect()
}

/// The process group of `pid` (field 5 of `/proc/<pid>/stat`).
fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(2)?.parse().ok()
}

async fn kill(signal: &str, groups: &BTreeSet<u32>) {
    for group in groups {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg("--")
            .arg(format!("-{group}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
    }
}

/// Stops every process marked with worker `id`: SIGTERM to their process
/// groups, then SIGKILL after `grace` to any still there. Returns how many
/// processes were found.
pub async fn clean_up(id: &str, grace: Duration) -> usize {
    let found = find(id);
    if found.is_empty() {
        return 0;
    }
    let own = process_group(std::process::id());
    let groups: BTreeSet<u32> = found
        .iter()
        .filter_map(|pid| process_group(*pid))
        .filter(|g| Some(*g) != own && *g > 1)
        .collect();
    tracing::warn!(
        worker = id,
        processes = found.len(),
        groups = groups.len(),
        "stopping replica processes a previous run of this worker left behind"
    );
    kill("TERM", &groups).await;
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline && !find(id).is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kill("KILL", &groups).await;
    // Also any marked process outside those groups (it left its group).
    for pid in find(id) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status()
            .await;
    }
    found.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environ_matching_is_exact() {
        let env = b"PATH=/bin\0TIDAL_WORKER_ID=w1\0PORT=9\0";
        assert!(environ_marks(env, "w1"));
        assert!(!environ_marks(env, "w"));
        assert!(!environ_marks(env, "w12"));
        assert!(!environ_marks(b"XTIDAL_WORKER_ID=w1\0", "w1"));
        assert!(!environ_marks(b"", "w1"));
    }

    #[test]
    fn reads_this_process_group() {
        assert!(process_group(std::process::id()).is_some());
    }

    #[tokio::test]
    async fn finds_and_stops_marked_processes_only() {
        let id = format!("orphan-test-{}", std::process::id());
        let spawn = |marked: bool| {
            let mut c = std::process::Command::new("sleep");
            c.arg("30");
            std::os::unix::process::CommandExt::process_group(&mut c, 0);
            if marked {
                c.env(WORKER_ENV, &id);
            }
            c.spawn().unwrap()
        };
        let mut marked = spawn(true);
        let mut other = spawn(false);
        let marked_pid = marked.id();
        // A process that has just been spawned may not show its new
        // environment in /proc yet (a clean-clone CI run once read none).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while find(&id).is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(find(&id), vec![marked_pid]);
        assert_eq!(clean_up(&id, Duration::from_secs(2)).await, 1);
        let status = marked.wait().unwrap();
        assert!(
            !status.success(),
            "the marked process was stopped: {status:?}"
        );
        assert!(
            other.try_wait().unwrap().is_none(),
            "the unmarked one still runs"
        );
        other.kill().unwrap();
        other.wait().unwrap();
        assert!(find(&id).is_empty());
    }
}
