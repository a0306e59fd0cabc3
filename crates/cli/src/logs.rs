//! `tidal logs REPLICA`: a replica's output, read from its worker through
//! the management API (`ReplicaLogs`).

use clap::Args;
use serde_json::Value;
use tidal_proto::pb;

use crate::Failure;
use crate::client::{Connect, EXIT_CODES, print};
use crate::mgmt::{Mgmt, print_json};

/// Print a replica's output (stdout and stderr), as kept by its worker
/// (`ReplicaLogs`)
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub(crate) struct LogsArgs {
    /// The replica's id (from `tidal replicas MODEL DEPLOYMENT`).
    replica: String,
    /// Only the last N lines [default: every line the worker keeps].
    #[arg(long, value_name = "N")]
    tail: Option<u32>,
    #[command(flatten)]
    api: Connect,
    /// Print JSON: `{replica_id, worker_id, lines, truncated}`, as `GET
    /// /v1/replicas/REPLICA/logs` answers.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: LogsArgs) -> Result<(), Failure> {
    crate::client::block_on(async move {
        let api = Mgmt::connect(&args.api)?;
        let query = pb::ReplicaLogsQuery {
            replica_id: args.replica.clone(),
            tail: args.tail.unwrap_or(0),
        };
        let answer = api
            .call("ReplicaLogs", query, |mut c, r| async move {
                c.replica_logs(r).await
            })
            .await?;
        let value = tidal_api::views::logs(&answer);
        if args.json {
            return print_json(&value);
        }
        if value["truncated"] == Value::Bool(true) {
            eprintln!(
                "(older lines of replica {} were rotated away or cut by --tail)",
                args.replica
            );
        }
        let mut text = String::new();
        for line in value["lines"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            text.push_str(line.as_str().unwrap_or_default());
            text.push('\n');
        }
        print(&text)
    })
}
