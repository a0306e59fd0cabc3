//! `tidal logs REPLICA`: a replica's output, read from its worker through
//! the management API.

use clap::Args;
use serde_json::Value;

use crate::Failure;
use crate::client::{Connect, EXIT_CODES, Http, print, print_raw, segment};

/// Print a replica's output (stdout and stderr), as kept by its worker
/// (GET /v1/replicas/REPLICA/logs)
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
    /// Print the API's JSON as it came.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: LogsArgs) -> Result<(), Failure> {
    crate::client::block_on(async move {
        let http = Http::api(&args.api)?;
        let mut path = format!("/v1/replicas/{}/logs", segment(&args.replica));
        if let Some(n) = args.tail {
            path += &format!("?tail={n}");
        }
        let (value, answer) = http.get(&path).await?;
        if args.json {
            return print_raw(&answer);
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
