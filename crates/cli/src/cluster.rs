//! `tidal cluster …`: create, grow, shrink and inspect a store cluster.

use std::time::Duration;

use clap::{Args, Subcommand};
use tidal_store::client::Client;

use crate::Failure;

/// Manage the store cluster.
#[derive(Debug, Args)]
pub(crate) struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Make a running node the first member of a new cluster.
    Init {
        /// The node's address.
        #[arg(long, value_name = "HOST:PORT")]
        endpoint: String,
    },
    /// Add a running node to the cluster (as a voter once it has caught up).
    Join {
        /// Any member's address (comma-separated for several).
        #[arg(long, value_name = "HOST:PORT", value_delimiter = ',', required = true)]
        endpoint: Vec<String>,
        /// The new node's id (as given to its `tidal server --node-id`).
        #[arg(long, value_name = "N")]
        node_id: u64,
        /// The new node's address.
        #[arg(long, value_name = "HOST:PORT")]
        addr: String,
        /// Keep it a learner (it replicates but does not vote).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the cluster.
    Leave {
        /// Any member's address (comma-separated for several).
        #[arg(long, value_name = "HOST:PORT", value_delimiter = ',', required = true)]
        endpoint: Vec<String>,
        /// The node to remove.
        #[arg(long, value_name = "N")]
        node_id: u64,
    },
    /// Members, leader, term, last applied revision and each member's lag.
    ///
    /// With --endpoint, asks that store node. Without it, asks the
    /// management API (`ClusterStatus` over gRPC: store members, live
    /// controllers, workers, deployments), found by --api-url/--api-key,
    /// TIDAL_API_URL/TIDAL_API_KEY, --cluster-file or ./.tidal/cluster.json.
    #[command(after_help = crate::client::EXIT_CODES)]
    Status {
        /// Any member's address (comma-separated for several).
        #[arg(
            long,
            value_name = "HOST:PORT",
            value_delimiter = ',',
            conflicts_with_all = ["api_url", "api_key", "cluster_file"]
        )]
        endpoint: Vec<String>,
        #[command(flatten)]
        api: crate::client::Connect,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// How long a cluster command waits for the cluster (a join waits up to
/// 30 s for the new node to catch up).
const DEADLINE: Duration = Duration::from_secs(45);

fn client(endpoints: &[String]) -> Result<Client, Failure> {
    Client::new(endpoints, DEADLINE).map_err(|e| Failure::Usage(e.to_string()))
}

fn failed(e: impl std::fmt::Display) -> Failure {
    Failure::Other(anyhow::anyhow!("{e}"))
}

pub(crate) fn run(args: ClusterArgs) -> Result<(), Failure> {
    if let ClusterCommand::Status {
        endpoint,
        api,
        json,
    } = &args.command
        && endpoint.is_empty()
    {
        return crate::cluster_cmd::status(api, *json);
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| Failure::Other(e.into()))?;
    runtime.block_on(async {
        let status = match args.command {
            ClusterCommand::Init { endpoint } => {
                let status = client(&[endpoint])?.initialize().await.map_err(failed)?;
                println!("initialized cluster {}", status.cluster_id);
                status
            }
            ClusterCommand::Join {
                endpoint,
                node_id,
                addr,
                learner,
            } => {
                let status = client(&endpoint)?
                    .add_member(node_id, &addr, !learner)
                    .await
                    .map_err(failed)?;
                println!(
                    "node {node_id} ({addr}) joined as a {}",
                    if learner { "learner" } else { "voter" }
                );
                status
            }
            ClusterCommand::Leave { endpoint, node_id } => {
                let status = client(&endpoint)?
                    .remove_member(node_id)
                    .await
                    .map_err(failed)?;
                println!("node {node_id} left the cluster");
                status
            }
            ClusterCommand::Status { endpoint, json, .. } => {
                let status = client(&endpoint)?.status().await.map_err(failed)?;
                if json {
                    println!("{}", status_json(&status));
                    return Ok(());
                }
                status
            }
        };
        print_status(&status);
        Ok(())
    })
}

fn status_json(s: &tidal_store::client::ClusterStatus) -> serde_json::Value {
    serde_json::json!({
        "cluster_id": s.cluster_id,
        "leader": (s.leader != 0).then_some(s.leader),
        "term": s.term,
        "last_applied": s.last_applied,
        "last_log_index": s.last_log_index,
        "answered_by": s.answered_by,
        "replication_known": s.replication_known,
        "members": s.members.iter().map(|m| serde_json::json!({
            "node_id": m.node_id, "addr": m.addr, "voter": m.voter,
            "matched_index": m.matched_index, "lag": m.lag,
        })).collect::<Vec<_>>(),
    })
}

fn print_status(s: &tidal_store::client::ClusterStatus) {
    let leader = if s.leader == 0 {
        "none".to_owned()
    } else {
        s.leader.to_string()
    };
    println!(
        "cluster {}  leader {leader}  term {}  last applied revision {}",
        s.cluster_id, s.term, s.last_applied
    );
    println!(
        "{:>6}  {:<22} {:<8} {:>10} {:>6}",
        "node", "address", "role", "matched", "lag"
    );
    for m in &s.members {
        let role = if m.node_id == s.leader {
            "leader"
        } else if m.voter {
            "voter"
        } else {
            "learner"
        };
        let (matched, lag) = if s.replication_known || m.node_id == s.answered_by {
            (m.matched_index.to_string(), m.lag.to_string())
        } else {
            ("-".to_owned(), "-".to_owned())
        };
        println!(
            "{:>6}  {:<22} {:<8} {:>10} {:>6}",
            m.node_id, m.addr, role, matched, lag
        );
    }
    if !s.replication_known {
        println!(
            "(answered by node {} without the leader: replication progress unknown)",
            s.answered_by
        );
    }
}
