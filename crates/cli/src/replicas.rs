//! `tidal replicas MODEL DEPLOYMENT` and `tidal replicas terminate …`: a
//! deployment's replicas through the management API.

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tidal_proto::pb;

use crate::Failure;
use crate::client::{Connect, EXIT_CODES, print};
use crate::grid::{age, cell, now_ms, table};
use crate::mgmt::{Mgmt, print_json, which};

/// List a deployment's replicas, or terminate one
///
/// `tidal replicas MODEL DEPLOYMENT` lists them, oldest first: id, phase,
/// worker, endpoint, time in that phase, and the reason of a failure or a
/// stop (`ListReplicas`). DEPLOYMENT is a deployment id,
/// `production` or `development`.
#[derive(Debug, Args)]
#[command(
    after_help = EXIT_CODES,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub(crate) struct ReplicasArgs {
    #[command(subcommand)]
    command: Option<ReplicasCommand>,
    /// The model's id.
    #[arg(required = true)]
    model: Option<String>,
    /// A deployment id, `production` or `development`.
    #[arg(required = true)]
    deployment: Option<String>,
    #[command(flatten)]
    api: Connect,
    /// Print JSON: `{"replicas": [...]}`, as `GET …/DEPLOYMENT/replicas`
    /// answers.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ReplicasCommand {
    /// Terminate a replica: its worker drains it (requests in flight
    /// finish) and stops it; the controller starts another if the
    /// deployment still needs one (`TerminateReplica`)
    #[command(after_help = EXIT_CODES)]
    Terminate {
        /// The model's id.
        model: String,
        /// A deployment id, `production` or `development`.
        deployment: String,
        /// The replica's id (from `tidal replicas MODEL DEPLOYMENT`).
        replica: String,
        #[command(flatten)]
        api: Connect,
        /// Print JSON: `{"success": true}`, as the REST API answers.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(args: ReplicasArgs) -> Result<(), Failure> {
    match args.command {
        Some(ReplicasCommand::Terminate {
            model,
            deployment,
            replica,
            api,
            json,
        }) => crate::client::block_on(async move {
            let api = Mgmt::connect(&api)?;
            let request = pb::TerminateReplicaRequest {
                deployment: Some(which(&model, &deployment)),
                replica_id: replica.clone(),
            };
            api.call("TerminateReplica", request, |mut c, r| async move {
                c.terminate_replica(r).await
            })
            .await?;
            if json {
                return print_json(&json!({ "success": true }));
            }
            print(&format!(
                "replica {replica}: stop requested; its worker drains and stops it\n"
            ))
        }),
        None => {
            let (Some(model), Some(deployment)) = (args.model, args.deployment) else {
                return Err(Failure::Usage(
                    "give MODEL and DEPLOYMENT: `tidal replicas MODEL DEPLOYMENT`".into(),
                ));
            };
            crate::client::block_on(async move {
                let api = Mgmt::connect(&args.api)?;
                let answer = api
                    .call(
                        "ListReplicas",
                        which(&model, &deployment),
                        |mut c, r| async move { c.list_replicas(r).await },
                    )
                    .await?;
                let replicas: Vec<Value> = answer
                    .replicas
                    .iter()
                    .map(tidal_api::views::replica)
                    .collect();
                let value = json!({ "replicas": replicas });
                if args.json {
                    return print_json(&value);
                }
                print(&list_text(&deployment, &value, now_ms()))
            })
        }
    }
}

/// The replicas as a table; `now_ms` dates the phases.
fn list_text(deployment: &str, value: &Value, now_ms: u64) -> String {
    let list = value["replicas"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if list.is_empty() {
        return format!("deployment {deployment} has no replicas\n");
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            let mut phase = cell(r.get("phase"));
            if r["stop_requested"] == Value::Bool(true) && !is_terminal(&phase) {
                phase.push_str(" (stopping)");
            }
            let since = r["phase_changed_at_ms"]
                .as_u64()
                .filter(|&at| at > 0)
                .map_or_else(|| "-".to_owned(), |at| age(now_ms.saturating_sub(at)));
            vec![
                cell(r.get("id")),
                phase,
                cell(r.get("worker_id")),
                cell(r.get("endpoint")),
                since,
                cell(r.get("reason")),
            ]
        })
        .collect();
    table(
        &["REPLICA", "PHASE", "WORKER", "ENDPOINT", "AGE", "REASON"],
        &rows,
    )
}

fn is_terminal(phase: &str) -> bool {
    matches!(phase, "STOPPED" | "FAILED" | "LOST")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ReplicasArgs,
    }

    #[test]
    fn list_and_terminate_parse_apart() {
        let list = Cli::parse_from(["t", "mlp", "mlp-v1", "--json"]).args;
        assert!(list.command.is_none());
        assert_eq!(list.model.as_deref(), Some("mlp"));
        assert!(list.json);
        let terminate = Cli::parse_from(["t", "terminate", "mlp", "mlp-v1", "r-1"]).args;
        assert!(matches!(
            terminate.command,
            Some(ReplicasCommand::Terminate { ref replica, .. }) if replica == "r-1"
        ));
        assert!(Cli::try_parse_from(["t", "mlp"]).is_err());
    }

    #[test]
    fn a_row_per_replica_with_its_age() {
        let value = json!({"replicas": [
            {"id": "r-1", "phase": "READY", "worker_id": "w", "endpoint": "127.0.0.1:5000",
             "reason": null, "stop_requested": true, "phase_changed_at_ms": 1_000},
            {"id": "r-2", "phase": "FAILED", "worker_id": "w", "endpoint": null,
             "reason": "exit 1", "stop_requested": false, "phase_changed_at_ms": 0},
        ]});
        let text = list_text("d", &value, 66_000);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("r-1"), "{text}");
        assert!(
            lines[1].contains("READY (stopping)") && lines[1].contains("1m05s"),
            "{text}"
        );
        assert!(
            lines[2].contains("FAILED") && lines[2].ends_with("exit 1"),
            "{text}"
        );
        assert!(list_text("d", &json!({"replicas": []}), 0).contains("no replicas"));
    }
}
