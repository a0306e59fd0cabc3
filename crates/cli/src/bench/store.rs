//! tidal under the load: three `tidal server` processes (this binary) on
//! 127.0.0.1, made one cluster with `initialize` and two voter joins, the
//! clients writing through `tidal_store::client::Client` to the leader.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use tidal_store::Request;
use tidal_store::app::{Outcome, Precondition, Table};
use tidal_store::client::Client;

use super::Cluster;
use super::load::Writer;
use super::procs::{Procs, free_ports, wait_until};

/// How long one write may take, retries included, before it counts as failed.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// How long the nodes get to start and form the cluster.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The table the benchmark writes to (any non-lease table would do).
const TABLE: Table = Table::Models;

/// A running three-node tidal cluster; dropping it kills the nodes and
/// removes their data.
#[derive(Debug)]
pub(crate) struct TidalCluster {
    procs: Procs,
    leader: String,
}

pub(crate) fn client(addr: &str, deadline: Duration) -> anyhow::Result<Client> {
    Client::new([addr], deadline).with_context(|| format!("store client for {addr}"))
}

/// Waits until the `tidal server` at `addr` (started by `procs`) answers.
pub(crate) async fn wait_for_node(procs: &mut Procs, addr: &str) -> anyhow::Result<()> {
    let probe = client(addr, Duration::from_millis(500))?;
    wait_until(
        procs,
        &format!("tidal server at {addr}"),
        START_TIMEOUT,
        || {
            let probe = probe.clone();
            async move {
                probe
                    .status()
                    .await
                    .map(|_| Some(()))
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await?;
    Ok(())
}

/// Waits for the `tidal server` at `addr`, makes it a one-node cluster and
/// waits for it to lead (the controller and gateway benchmarks' store).
pub(crate) async fn start_one_node(procs: &mut Procs, addr: &str) -> anyhow::Result<Client> {
    wait_for_node(procs, addr).await?;
    let client = client(addr, Duration::from_secs(10))?;
    client
        .initialize()
        .await
        .context("tidal cluster init failed")?;
    wait_until(procs, "the store node to lead", START_TIMEOUT, || {
        let client = client.clone();
        async move {
            let status = client.status().await.map_err(|e| e.to_string())?;
            Ok((status.leader != 0).then_some(()))
        }
    })
    .await?;
    Ok(client)
}

impl TidalCluster {
    /// Starts the nodes (data under a new directory in `parent`) and forms
    /// the cluster.
    pub(crate) async fn start(parent: Option<&Path>) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the tidal binary to start")?;
        // Start the very file this process runs, even if a build has replaced
        // `exe` since (Linux); `ps` still shows `exe`.
        let image = Path::new("/proc/self/exe");
        let program = if image.exists() { image } else { exe.as_path() };
        let mut procs = Procs::new(parent, "tidal-bench-store-")?;
        let addrs: Vec<String> = free_ports(3)?
            .into_iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        for (id, addr) in (1u64..).zip(&addrs) {
            let mut command = Command::new(program);
            command
                .arg0(&exe)
                .arg("server")
                .arg("--node-id")
                .arg(id.to_string())
                .arg("--data-dir")
                .arg(procs.dir().join(format!("node{id}")))
                .arg("--listen")
                .arg(addr);
            procs.spawn(&format!("tidal-{id}"), command)?;
        }
        for addr in &addrs {
            wait_for_node(&mut procs, addr).await?;
        }
        let first = client(&addrs[0], START_TIMEOUT)?;
        first
            .initialize()
            .await
            .context("tidal cluster init failed")?;
        for (id, addr) in (2u64..).zip(&addrs[1..]) {
            first
                .add_member(id, addr, true)
                .await
                .with_context(|| format!("tidal cluster join of node {id} failed"))?;
        }
        let all = Client::new(&addrs, Duration::from_secs(2))?;
        let leader = wait_until(
            &mut procs,
            "tidal cluster of 3 voters with a leader",
            START_TIMEOUT,
            || {
                let all = all.clone();
                async move {
                    let s = all.status().await.map_err(|e| e.to_string())?;
                    let voters = s.members.iter().filter(|m| m.voter).count();
                    Ok(s.members
                        .iter()
                        .find(|m| m.node_id == s.leader && voters == 3)
                        .map(|m| m.addr.clone()))
                }
            },
        )
        .await?;
        Ok(Self { procs, leader })
    }

    /// The leader's address.
    pub(crate) fn leader(&self) -> &str {
        &self.leader
    }
}

impl Cluster for TidalCluster {
    type Writer = TidalWriter;

    /// Each writer has its own client, hence its own connection, to the leader.
    async fn writers(&self, n: usize) -> anyhow::Result<Vec<TidalWriter>> {
        (0..n)
            .map(|_| Ok(TidalWriter(client(&self.leader, WRITE_DEADLINE)?)))
            .collect()
    }

    fn procs(&mut self) -> &mut Procs {
        &mut self.procs
    }
}

/// One client's puts.
#[derive(Debug)]
pub(crate) struct TidalWriter(Client);

impl Writer for TidalWriter {
    async fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        let request = Request::put(TABLE, key, value, Precondition::None, None);
        let written = self.0.write(&request).await.map_err(|e| e.to_string())?;
        match written.outcome {
            Outcome::Written { .. } => Ok(()),
            other => Err(format!("put not written: {other:?}")),
        }
    }
}
