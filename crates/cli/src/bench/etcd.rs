//! etcd under the same load: three `etcd` processes (Debian's `etcd-server`,
//! 3.4) on 127.0.0.1 with fresh data directories, the clients writing
//! through the `etcd-client` crate to the leader.
//!
//! Compiled only with the `bench-etcd` feature: `etcd-client`'s build script
//! needs `protoc`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use etcd_client::{Client, ConnectOptions};

use super::Cluster;
use super::load::Writer;
use super::procs::{Procs, free_ports, wait_until};

/// How long the members get to start and elect a leader.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one write may take before it counts as failed.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// A running three-member etcd cluster; dropping it kills the members and
/// removes their data.
#[derive(Debug)]
pub(crate) struct EtcdCluster {
    procs: Procs,
    leader: String,
}

/// etcd's version, e.g. `3.4.23`, from the first line of `etcd --version`
/// (`etcd Version: 3.4.23`).
pub(crate) fn version(bin: &Path) -> anyhow::Result<String> {
    let output = Command::new(bin).arg("--version").output().with_context(|| {
        format!(
            "cannot run {}: install etcd 3.4 with `apt-get install -y etcd-server etcd-client`, \
             pass --etcd-bin, or skip the comparison with --skip-etcd",
            bin.display()
        )
    })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let first = text.lines().next().unwrap_or_default().trim().to_owned();
    if !output.status.success() || first.is_empty() {
        bail!("`{} --version` failed: {}", bin.display(), output.status);
    }
    Ok(first
        .strip_prefix("etcd Version:")
        .map_or(first.as_str(), str::trim)
        .to_owned())
}

async fn connect(url: &str, timeout: Duration) -> Result<Client, String> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(timeout);
    Client::connect([url], Some(options))
        .await
        .map_err(|e| e.to_string())
}

impl EtcdCluster {
    /// Starts the members (data under a new directory in `parent`) and waits
    /// for a leader.
    pub(crate) async fn start(bin: &Path, parent: Option<&Path>) -> anyhow::Result<Self> {
        let mut procs = Procs::new(parent, "tidal-bench-etcd-")?;
        let ports = free_ports(6)?;
        let names = ["e1", "e2", "e3"];
        let client_urls: Vec<String> = ports[..3]
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        let peer_urls: Vec<String> = ports[3..]
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        let initial_cluster = names
            .iter()
            .zip(&peer_urls)
            .map(|(name, url)| format!("{name}={url}"))
            .collect::<Vec<_>>()
            .join(",");
        for ((name, client_url), peer_url) in names.iter().zip(&client_urls).zip(&peer_urls) {
            let mut command = Command::new(bin);
            command
                .arg("--name")
                .arg(name)
                .arg("--data-dir")
                .arg(procs.dir().join(name))
                .arg("--listen-client-urls")
                .arg(client_url)
                .arg("--advertise-client-urls")
                .arg(client_url)
                .arg("--listen-peer-urls")
                .arg(peer_url)
                .arg("--initial-advertise-peer-urls")
                .arg(peer_url)
                .arg("--initial-cluster")
                .arg(&initial_cluster)
                .arg("--initial-cluster-state")
                .arg("new")
                .arg("--initial-cluster-token")
                .arg("tidal-bench");
            procs.spawn(&format!("etcd-{name}"), command)?;
        }
        // Each member's status names the leader by member id; the member
        // whose own id that is gives the leader's client URL.
        let leader = wait_until(
            &mut procs,
            "etcd cluster with a leader",
            START_TIMEOUT,
            || {
                let client_urls = client_urls.clone();
                async move {
                    let mut ids = Vec::new();
                    let mut leader = 0;
                    for url in &client_urls {
                        let mut client = connect(url, Duration::from_secs(1)).await?;
                        let status = client.status().await.map_err(|e| e.to_string())?;
                        let id = status.header().map_or(0, |h| h.member_id());
                        ids.push((id, url.clone()));
                        if status.leader() != 0 {
                            leader = status.leader();
                        }
                    }
                    Ok(ids
                        .into_iter()
                        .find(|(id, _)| leader != 0 && *id == leader)
                        .map(|(_, url)| url))
                }
            },
        )
        .await?;
        Ok(Self { procs, leader })
    }

    /// The leader's client URL.
    pub(crate) fn leader(&self) -> &str {
        &self.leader
    }
}

impl Cluster for EtcdCluster {
    type Writer = EtcdWriter;

    /// Each writer has its own client, hence its own connection, to the leader.
    async fn writers(&self, n: usize) -> anyhow::Result<Vec<EtcdWriter>> {
        let mut writers = Vec::with_capacity(n);
        for _ in 0..n {
            let client = connect(&self.leader, WRITE_DEADLINE)
                .await
                .map_err(|e| anyhow::anyhow!("etcd client for {}: {e}", self.leader))?;
            writers.push(EtcdWriter(client));
        }
        Ok(writers)
    }

    fn procs(&mut self) -> &mut Procs {
        &mut self.procs
    }
}

/// One client's puts.
pub(crate) struct EtcdWriter(Client);

impl std::fmt::Debug for EtcdWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EtcdWriter")
    }
}

impl Writer for EtcdWriter {
    async fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        self.0
            .put(key, value, None)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
