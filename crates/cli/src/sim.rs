//! `tidal sim`: replay a trace through the policy; `tidal sim generate`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use tidal_autoscale::Policy;
use tidal_autoscale::sim;
use tidal_autoscale::trace::Trace;
use tidal_types::{AutoscalingSettings, ClusterSettings, DEFAULT_PER_DEPLOYMENT_REPLICA_LIMIT};

use crate::{Failure, generate, read_input, table, write_stdout};

const LONG_ABOUT: &str = "\
Replay a traffic trace through the autoscaling policy and report what it
would have done.

Each second of the trace, the policy records that second's concurrency and
decides how many replicas the deployment should have, as the controller does:
the average concurrency over the last `autoscaling_window` seconds divided by
`concurrency_target × target_utilization_percentage / 100`, rounded up; a
scale-down waits until the lower number has held for `scale_down_delay`
seconds; the result stays within [min_replica, max_replica]. Before second 0
the deployment has `min_replica` replicas.

SETTINGS.json is a Baseten `autoscaling_settings` object, for example

    {\"min_replica\": 0, \"max_replica\": 5, \"autoscaling_window\": 60,
     \"scale_down_delay\": 300, \"concurrency_target\": 2,
     \"target_utilization_percentage\": 70}

Absent fields take Baseten's defaults (min_replica 0, max_replica 1,
autoscaling_window 60, scale_down_delay 900, concurrency_target 1,
target_utilization_percentage 70). Unknown fields and values out of range are
errors.

TRACE.csv has the header `second,concurrency` and then one row per second,
from 0 and in order: the average number of requests in flight during that
second, a decimal ≥ 0. Blank lines are skipped. For example

    second,concurrency
    0,0
    1,2.5
    2,3

`tidal sim generate` writes such traces.

With --format table (the default) it prints the settings in force, every
change of the desired replicas, and a summary. With --format json it prints
one JSON object on one line:

    {\"timeline\":[{\"second\":0,\"concurrency\":0.0,\"desired_replicas\":0},…],
     \"summary\":{\"replica_seconds\":0,\"max_replicas\":0,
                \"scale_up_events\":0,\"scale_down_events\":0}}

With --cold-start, each step also has \"ready_replicas\" and the summary has
\"cold_start_wait_request_seconds\".

Exit status: 0 on success; 2 for invalid input (the message names the file,
and for a trace the line); 1 when the output cannot be written.";

/// Replay a traffic trace through the autoscaling policy.
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    arg_required_else_help = true,
    long_about = LONG_ABOUT
)]
pub(crate) struct SimArgs {
    #[command(subcommand)]
    command: Option<SimCommand>,

    /// Baseten `autoscaling_settings` as JSON; `{}` gives the defaults.
    #[arg(long, value_name = "SETTINGS.json", required = true)]
    settings: Option<PathBuf>,

    /// The traffic: CSV `second,concurrency`, one row per second.
    #[arg(long, value_name = "TRACE.csv", required = true)]
    trace: Option<PathBuf>,

    /// How to print the result.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,

    /// Seconds a new replica takes to become ready.
    ///
    /// Adds the ready replicas per second and the request-seconds that
    /// waited on cold starts.
    #[arg(long, value_name = "SECONDS")]
    cold_start: Option<u32>,

    /// The cluster's per-deployment replica limit.
    ///
    /// The highest `max_replica` the settings may ask for.
    #[arg(
        long,
        value_name = "N",
        default_value_t = DEFAULT_PER_DEPLOYMENT_REPLICA_LIMIT,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    replica_limit: u32,
}

#[derive(Debug, Subcommand)]
enum SimCommand {
    Generate(generate::GenerateArgs),
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// For people: settings, changes of desired replicas, summary.
    Table,
    /// One JSON object: the timeline, second by second, and a summary.
    Json,
}

pub(crate) fn run(args: SimArgs) -> Result<(), Failure> {
    if let Some(SimCommand::Generate(generate)) = args.command {
        return generate::run(generate);
    }
    // clap requires both unless a subcommand is given.
    let (Some(settings_path), Some(trace_path)) = (args.settings, args.trace) else {
        return Err(Failure::Other(anyhow::anyhow!(
            "--settings and --trace are required"
        )));
    };
    let cluster = ClusterSettings {
        per_deployment_replica_limit: args.replica_limit,
    };
    let policy = load_policy(&settings_path, &cluster)?;
    let trace =
        Trace::parse_csv(&read_input(&trace_path)?).map_err(|e| Failure::input(&trace_path, e))?;
    let report = sim::simulate(policy, &trace, args.cold_start);
    match args.format {
        Format::Json => {
            let json = serde_json::to_string(&report).map_err(|e| Failure::Other(e.into()))?;
            write_stdout(|out| writeln!(out, "{json}"))
        }
        Format::Table => write_stdout(|out| table::render(out, &policy, &report, args.cold_start)),
    }
}

/// Reads and validates the settings; every problem names its field.
fn load_policy(path: &Path, cluster: &ClusterSettings) -> Result<Policy, Failure> {
    let settings: AutoscalingSettings =
        serde_json::from_str(&read_input(path)?).map_err(|e| Failure::input(path, e))?;
    Policy::new(settings, cluster).map_err(|e| Failure::input(path, e))
}
