//! `tidal`: the command line.
//!
//! Thin by design: it parses options, calls the libraries, and prints. The
//! decisions themselves live in `tidal-autoscale`.

mod api;
mod autoscaling;
mod bench;
mod client;
mod cluster;
mod cluster_cmd;
mod connect;
mod controller;
mod deploy;
mod deploy_api;
mod deployments;
mod gateway;
mod generate;
mod grid;
mod keys;
mod load;
mod logs;
mod mgmt;
mod models;
mod predict;
mod replicas;
mod server;
mod sim;
mod table;
mod up;
mod worker;
mod workers;

use std::fmt;
use std::io::{self, BufWriter, StdoutLock, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// tidal: an autoscaling control plane for ML deployments.
///
/// It scales each deployment between `min_replica` and `max_replica` on the
/// concurrency its requests see, with Baseten's autoscaling settings.
#[derive(Debug, Parser)]
#[command(name = "tidal", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Sim(sim::SimArgs),
    Server(server::ServerArgs),
    Cluster(cluster::ClusterArgs),
    Controller(controller::ControllerArgs),
    Worker(worker::WorkerArgs),
    Gateway(gateway::GatewayArgs),
    Api(api::ApiArgs),
    Up(up::UpArgs),
    Deploy(deploy::DeployArgs),
    /// The reference model replica (the same as the `tidal-model` binary):
    /// generate deterministic weights, or serve them over HTTP.
    Model {
        #[command(subcommand)]
        command: tidal_model::cli::ModelCommand,
    },
    Bench(bench::BenchArgs),
    Keys(keys::KeysArgs),
    Load(load::LoadArgs),
    Models(models::ModelsArgs),
    Deployments(deployments::DeploymentsArgs),
    Autoscaling(autoscaling::AutoscalingArgs),
    Promote(deployments::PromoteArgs),
    Activate(deployments::ActivateArgs),
    Deactivate(deployments::DeactivateArgs),
    Wake(predict::WakeArgs),
    Predict(predict::PredictArgs),
    Replicas(replicas::ReplicasArgs),
    Workers(workers::WorkersArgs),
    Logs(logs::LogsArgs),
}

/// Every role of the binary allocates through mimalloc (small, short-lived
/// buffers on the gateway's request path above all; measured in
/// benchmarks/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim(args) => sim::run(args),
        Command::Server(args) => server::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::Controller(args) => controller::run(args),
        Command::Worker(args) => worker::run(args),
        Command::Gateway(args) => gateway::run(args),
        Command::Api(args) => api::run(args),
        Command::Up(args) => up::run(args),
        Command::Deploy(args) => deploy::run(args),
        Command::Model { command } => {
            init_tracing();
            tidal_model::cli::run(command).map_err(Failure::Other)
        }
        Command::Bench(args) => bench::run(args),
        Command::Keys(args) => keys::run(args),
        Command::Load(args) => load::run(args),
        Command::Models(args) => models::run(args),
        Command::Deployments(args) => deployments::run(args),
        Command::Autoscaling(args) => autoscaling::run(args),
        Command::Promote(args) => deployments::promote(args),
        Command::Activate(args) => deployments::activate(args),
        Command::Deactivate(args) => deployments::deactivate(args),
        Command::Wake(args) => predict::wake(args),
        Command::Predict(args) => predict::predict(args),
        Command::Replicas(args) => replicas::run(args),
        Command::Workers(args) => workers::workers(args),
        Command::Logs(args) => logs::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {failure}");
            failure.exit_code()
        }
    }
}

/// Why a command failed; each kind has its exit status.
#[derive(Debug)]
enum Failure {
    /// An input file is unreadable or invalid: exit 2, like clap's usage
    /// errors. Shown as `path: message`.
    Input { path: PathBuf, message: String },
    /// Options that are missing or contradict each other: exit 2.
    Usage(String),
    /// Anything else, such as an output that cannot be written: exit 1.
    Other(anyhow::Error),
}

impl Failure {
    fn input(path: &Path, message: impl fmt::Display) -> Self {
        Failure::Input {
            path: path.to_owned(),
            message: message.to_string(),
        }
    }

    fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Input { .. } | Failure::Usage(_) => ExitCode::from(2),
            Failure::Other(_) => ExitCode::FAILURE,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Input { path, message } => write!(f, "{}: {message}", path.display()),
            Failure::Usage(message) => f.write_str(message),
            Failure::Other(e) => write!(f, "{e:#}"),
        }
    }
}

/// Reads an input file as text; failure is an input error naming the file.
fn read_input(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| Failure::input(path, format!("cannot read: {e}")))
}

/// Runs `write` on a locked, buffered standard output and flushes it. A closed
/// pipe (`tidal sim … | head`) is not an error: the reader has seen enough.
fn write_stdout(
    write: impl FnOnce(&mut BufWriter<StdoutLock<'static>>) -> io::Result<()>,
) -> Result<(), Failure> {
    let mut out = BufWriter::new(io::stdout().lock());
    match write(&mut out).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::Other(
            anyhow::Error::new(e).context("cannot write to standard output"),
        )),
    }
}

/// Logs to stderr; `RUST_LOG` filters (default: info for tidal, warn for the rest).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,tidal=info,tidal_store=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .try_init();
}
