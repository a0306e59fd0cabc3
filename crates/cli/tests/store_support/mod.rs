//! Real `tidal server` processes on 127.0.0.1 for the store's end-to-end
//! tests: each node has a data directory and a log file in one temporary
//! directory; every process is killed and waited for when the fixture is
//! dropped, also when a test panics (the logs' tails are printed then).

#![allow(dead_code)] // each test file uses a part of it

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tidal_proto::pb;
use tidal_proto::pb::store_client::StoreClient;
use tidal_store::Request;
use tidal_store::app::{Outcome, Precondition, Table};
use tidal_store::client::{Client, ClusterStatus};

/// How long any condition may take to come true.
pub const WAIT: Duration = Duration::from_secs(30);

/// Fast Raft timing, so that a failover takes about a second on a 2-core
/// machine, and a snapshot (with a log purge) every 500 entries.
pub const CONFIG: &str = "\
[tuning]
heartbeat-ms = 100
election-min-ms = 500
election-max-ms = 1000
snapshot-every = 500
logs-kept-after-snapshot = 100
";

/// The `tidal` binary under test: this build's, or `TIDAL_BIN` (e.g. a
/// release build, whose redb skips the debug-only page checks on open).
pub fn binary() -> PathBuf {
    std::env::var_os("TIDAL_BIN").map_or_else(|| env!("CARGO_BIN_EXE_tidal").into(), PathBuf::from)
}

/// A free port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// What a started server did.
#[derive(Debug)]
pub enum Started {
    /// It exited with this status and output.
    Exited(std::process::ExitStatus, String),
    /// It serves, with a leader.
    Leader,
    /// It ran without finding a leader (and was killed); its output.
    NoLeader(String),
}

/// One node: where it lives and, while it runs, its process.
#[derive(Debug)]
pub struct Node {
    /// Its Raft node id (`--node-id`).
    pub id: u64,
    pub addr: String,
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

/// A set of `tidal server` processes in one temporary directory.
#[derive(Debug)]
pub struct Procs {
    nodes: BTreeMap<u64, Node>,
    config: PathBuf,
    // Dropped last: the processes are gone by then.
    root: tempfile::TempDir,
}

impl Procs {
    /// Processes with the fast tuning of [`CONFIG`].
    pub fn new() -> Self {
        Self::with_config(CONFIG)
    }

    /// Processes started with the config file `config` (TOML).
    pub fn with_config(config: &str) -> Self {
        let root = tempfile::Builder::new()
            .prefix("tidal-store-e2e-")
            .tempdir()
            .unwrap();
        let config_text = config;
        let config = root.path().join("tidal.toml");
        fs::write(&config, config_text).unwrap();
        Procs {
            nodes: BTreeMap::new(),
            config,
            root,
        }
    }

    /// The temporary directory (for copies of data directories).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Registers node `id` with its own data directory and a free port
    /// (does not start it).
    pub fn add(&mut self, id: u64) -> &Node {
        self.add_with_dir(id, id, self.root.path().join(format!("node-{id}")))
    }

    /// Registers a process `slot` (the key used by every other method) that
    /// runs node `node_id` on `dir`, with a free port.
    pub fn add_with_dir(&mut self, slot: u64, node_id: u64, dir: PathBuf) -> &Node {
        let id = slot;
        let node = Node {
            id: node_id,
            addr: format!("127.0.0.1:{}", free_port()),
            dir,
            log: self.root.path().join(format!("node-{slot}.log")),
            child: None,
        };
        assert!(self.nodes.insert(id, node).is_none(), "node {id} twice");
        &self.nodes[&id]
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[&id]
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes.get_mut(&id).unwrap()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn addr(&self, id: u64) -> String {
        self.nodes[&id].addr.clone()
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.nodes[&id].child.is_some()
    }

    /// The `tidal server` command for process `id`, started as node `as_id`.
    fn server_command(&self, id: u64, as_id: u64) -> Command {
        let node = &self.nodes[&id];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let mut command = Command::new(binary());
        command
            .arg("server")
            .arg("--config")
            .arg(&self.config)
            .arg("--node-id")
            .arg(as_id.to_string())
            .arg("--data-dir")
            .arg(&node.dir)
            .arg("--listen")
            .arg(&node.addr)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        command
    }

    /// Starts node `id` on its data directory and port (it must not be running).
    pub fn start(&mut self, id: u64) {
        assert!(!self.is_running(id), "node {id} is already running");
        let child = self.server_command(id, self.nodes[&id].id).spawn().unwrap();
        self.nodes.get_mut(&id).unwrap().child = Some(child);
    }

    /// Runs `tidal server` on process `id`'s directory and port as node
    /// `as_id`, expecting it to refuse to start: returns its exit status and
    /// what it wrote. Fails the test if it is still running after [`WAIT`].
    pub fn start_expecting_exit(
        &mut self,
        id: u64,
        as_id: u64,
    ) -> (std::process::ExitStatus, String) {
        let before = self.log_len(id);
        let mut child = self.server_command(id, as_id).spawn().unwrap();
        let Some(status) = exit_within(&mut child, WAIT) else {
            panic!(
                "`tidal server --node-id {as_id}` on node {id}'s data directory kept running; \
                 its log:\n{}",
                self.log_tail(id, 40)
            );
        };
        (status, self.log_since(id, before))
    }

    /// Starts process `id` and waits until it exits, or serves with a
    /// leader, or `within` passes (then it is killed).
    pub async fn start_or_exit(&mut self, id: u64, within: Duration) -> Started {
        let before = self.log_len(id);
        self.start(id);
        let client = self.client(&[id], Duration::from_millis(500));
        let deadline = Instant::now() + within;
        loop {
            let node = self.nodes.get_mut(&id).unwrap();
            if let Some(status) = node.child.as_mut().unwrap().try_wait().unwrap() {
                node.child = None;
                return Started::Exited(status, self.log_since(id, before));
            }
            if client.status().await.is_ok_and(|s| s.leader != 0) {
                return Started::Leader;
            }
            if Instant::now() > deadline {
                self.kill(id);
                return Started::NoLeader(self.log_since(id, before));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_len(&self, id: u64) -> u64 {
        fs::metadata(&self.nodes[&id].log).map_or(0, |m| m.len())
    }

    /// What process `id` logged after byte `offset` of its log.
    pub fn log_since(&self, id: u64, offset: u64) -> String {
        let text = fs::read(&self.nodes[&id].log).unwrap_or_default();
        let start = usize::try_from(offset).unwrap_or(0).min(text.len());
        String::from_utf8_lossy(&text[start..]).into_owned()
    }

    /// Kills node `id` with SIGKILL (`Child::kill`) and reaps it.
    pub fn kill(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        let mut child = node.child.take().expect("node is running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Stops node `id` with SIGTERM (a graceful shutdown) and returns once it
    /// has exited; fails the test if it exits non-zero or takes over [`WAIT`].
    pub fn stop(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        let mut child = node.child.take().expect("node is running");
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM {}", child.id());
        let Some(status) = exit_within(&mut child, WAIT) else {
            panic!("node {id} did not stop within {WAIT:?} of SIGTERM");
        };
        assert!(
            status.success(),
            "node {id} exited with {status} on SIGTERM; its log:\n{}",
            self.log_tail(id, 40)
        );
    }

    /// Fails the test if node `id`'s process has exited.
    pub fn assert_alive(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        if let Some(child) = node.child.as_mut()
            && let Some(status) = child.try_wait().unwrap()
        {
            node.child = None;
            panic!(
                "node {id} exited with {status}; its log:\n{}",
                self.log_tail(id, 40)
            );
        }
    }

    /// A client of the nodes `ids`.
    pub fn client(&self, ids: &[u64], deadline: Duration) -> Client {
        Client::new(ids.iter().map(|&id| self.addr(id)), deadline).unwrap()
    }

    /// Waits until node `id` answers a status call (it is listening).
    pub async fn wait_serving(&mut self, id: u64) -> ClusterStatus {
        let client = self.client(&[id], Duration::from_millis(500));
        let deadline = Instant::now() + WAIT;
        loop {
            self.assert_alive(id);
            if let Ok(status) = client.status().await {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not answer within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until each of processes `ids` answers a status call with the
    /// same leader and term, answered by that leader itself (a follower
    /// forwards the call to the leader it knows) and the leader among `ids`;
    /// returns the leader's process.
    pub async fn agreed_leader(&mut self, ids: &[u64]) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut seen = Vec::new();
            for &id in ids {
                self.assert_alive(id);
                let answer = self
                    .client(&[id], Duration::from_millis(800))
                    .status()
                    .await;
                seen.push(answer.ok().map(|s| (s.leader, s.term, s.answered_by)));
            }
            if let Some(Some((leader, term, by))) = seen.first().copied()
                && leader != 0
                && by == leader
                && seen.iter().all(|s| *s == Some((leader, term, by)))
                && let Some(&slot) = ids.iter().find(|&&id| self.nodes[&id].id == leader)
            {
                return slot;
            }
            assert!(
                Instant::now() < deadline,
                "nodes {ids:?} did not agree on a leader within {WAIT:?}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Node `id`'s own revision (a serializable read, answered from its
    /// local state machine without asking the leader).
    pub async fn local_revision(&self, id: u64) -> Option<u64> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr(id)))
            .ok()?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(2))
            .connect()
            .await
            .ok()?;
        let answer = StoreClient::new(channel)
            .get(pb::GetRequest {
                table: Table::Deployments.to_proto().into(),
                key: String::new(),
                serializable: true,
            })
            .await
            .ok()?;
        Some(answer.into_inner().revision)
    }

    /// Waits until every node in `ids` has applied `revision`.
    pub async fn wait_applied(&self, ids: &[u64], revision: u64) {
        let deadline = Instant::now() + WAIT;
        for &id in ids {
            loop {
                let local = self.local_revision(id).await;
                if local.is_some_and(|r| r >= revision) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {id} did not apply revision {revision} within {WAIT:?} (at {local:?})"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Starts nodes `ids` (new), initializes the cluster on the first and
    /// joins the others as voters with the CLI; returns the leader.
    pub async fn form_cluster(&mut self, ids: &[u64]) -> u64 {
        for &id in ids {
            if !self.nodes.contains_key(&id) {
                self.add(id);
            }
            self.start(id);
        }
        for &id in ids {
            self.wait_serving(id).await;
        }
        let first = self.addr(ids[0]);
        let out = tidal(&["cluster", "init", "--endpoint", &first]).await;
        assert_success(&out, "cluster init");
        for &id in &ids[1..] {
            let addr = self.addr(id);
            let node_id = self.nodes[&id].id.to_string();
            let out = tidal(&[
                "cluster",
                "join",
                "--endpoint",
                &first,
                "--node-id",
                &node_id,
                "--addr",
                &addr,
            ])
            .await;
            assert_success(&out, "cluster join");
        }
        self.agreed_leader(ids).await
    }

    /// The last `lines` lines of node `id`'s log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = fs::read(&self.nodes[&id].log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for id in self.nodes.keys() {
                eprintln!(
                    "----- node {id} log (last 60 lines) -----\n{}",
                    self.log_tail(*id, 60)
                );
            }
        }
    }
}

/// Runs the `tidal` binary with `args` (at most [`WAIT`]).
pub async fn tidal(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(WAIT + Duration::from_secs(10), run).await {
        Ok(output) => output.unwrap(),
        Err(_) => panic!("`tidal {}` did not finish", args.join(" ")),
    }
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Puts `key` = `value` in deployments and expects it acknowledged; returns
/// its revision.
pub async fn put_acked(client: &Client, key: &str, value: &[u8]) -> u64 {
    let written = client
        .write(&Request::put(
            Table::Deployments,
            key,
            value.to_vec(),
            Precondition::None,
            None,
        ))
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
    assert!(
        matches!(written.outcome, Outcome::Written { .. }),
        "put {key}: {written:?}"
    );
    written.revision
}

/// Reads every deployments record of the state machine file of a stopped
/// node, opened with redb directly: what the node itself has on disk.
pub fn records_on_disk(dir: &Path) -> BTreeMap<String, tidal_store::app::KeyValueRecord> {
    let db = redb::Database::open(dir.join("state.redb"))
        .unwrap_or_else(|e| panic!("open {}/state.redb: {e}", dir.display()));
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    tidal_store::app::list(&txn, Table::Deployments, "", usize::MAX)
        .unwrap()
        .into_iter()
        .collect()
}

/// Copies a directory (no subdirectories).
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        assert!(entry.file_type().unwrap().is_file(), "{entry:?}");
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A tiny seeded generator (xorshift64*), so a failing run can be replayed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The seed from `var` if set, else from the clock; printed either way.
    pub fn from_env(var: &str) -> Self {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| {
                        d.as_secs().rotate_left(32) ^ u64::from(d.subsec_nanos())
                    })
            })
            .max(1);
        eprintln!("seed: {seed} (replay with {var}={seed})");
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// Opens `path` for writing in place.
pub fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// Waits up to `within` for `child` to exit; kills and reaps it and answers
/// `None` if it does not.
fn exit_within(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
