//! `tidal workers`: the worker nodes, through the management API
//! (`ListWorkers`).

use clap::Args;
use serde_json::{Value, json};
use tidal_proto::pb;

use crate::Failure;
use crate::client::{Connect, EXIT_CODES, print};
use crate::grid::{bytes, cell, cores, table};
use crate::mgmt::{Mgmt, print_json};

/// List the worker nodes: whether each is live (its lease is current),
/// region, GPUs, CPU, memory, address
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub(crate) struct WorkersArgs {
    #[command(flatten)]
    api: Connect,
    /// Print JSON: `{"workers": [...]}`, as `GET /v1/workers` answers.
    #[arg(long)]
    json: bool,
}

pub(crate) fn workers(args: WorkersArgs) -> Result<(), Failure> {
    crate::client::block_on(async move {
        let api = Mgmt::connect(&args.api)?;
        let answer = api
            .call(
                "ListWorkers",
                pb::ListWorkersRequest {},
                |mut c, r| async move { c.list_workers(r).await },
            )
            .await?;
        let workers: Vec<Value> = answer
            .workers
            .iter()
            .map(tidal_api::views::worker)
            .collect();
        let value = json!({ "workers": workers });
        if args.json {
            return print_json(&value);
        }
        print(&workers_text(&value))
    })
}

fn workers_text(value: &Value) -> String {
    let list = value["workers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if list.is_empty() {
        return "no workers have registered; start one with `tidal worker` (or `tidal up`)\n"
            .to_owned();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|w| {
            let gpus = match (w["gpu_count"].as_u64().unwrap_or(0), w["gpu_type"].as_str()) {
                (0, _) => "-".to_owned(),
                (n, Some(t)) => format!("{n}x{t}"),
                (n, None) => n.to_string(),
            };
            let mut live = if w["live"] == Value::Bool(true) {
                "yes"
            } else {
                "no"
            }
            .to_owned();
            if w["schedulable"] == Value::Bool(false) {
                live.push_str(" (unschedulable)");
            }
            vec![
                cell(w.get("id")),
                live,
                cell(w.get("region")),
                gpus,
                w["cpu_millis"].as_u64().map_or_else(|| "-".into(), cores),
                w["memory_bytes"].as_u64().map_or_else(|| "-".into(), bytes),
                cell(w.get("address")),
            ]
        })
        .collect();
    table(
        &[
            "WORKER", "LIVE", "REGION", "GPUS", "CPU", "MEMORY", "ADDRESS",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_row_per_worker() {
        let value = json!({"workers": [{
            "id": "node-a", "region": "local", "address": "127.0.0.1:7201", "live": true,
            "schedulable": true, "gpu_type": "H100-80GB", "gpu_count": 2,
            "cpu_millis": 16000, "memory_bytes": 137_438_953_472_u64,
        }]});
        let row: Vec<String> = workers_text(&value)
            .lines()
            .nth(1)
            .unwrap()
            .split("  ")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        assert_eq!(
            row,
            [
                "node-a",
                "yes",
                "local",
                "2xH100-80GB",
                "16 cores",
                "128 GiB",
                "127.0.0.1:7201"
            ]
        );
    }
}
