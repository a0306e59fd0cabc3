//! `tidal-model`: generate a model file, or serve one. See the library docs.

use std::process::ExitCode;

use clap::Parser;
use tidal_model::cli::{ModelCommand, run};

/// The reference model replica: an MLP loaded from safetensors, served over HTTP.
#[derive(Debug, Parser)]
#[command(name = "tidal-model", version)]
struct Cli {
    #[command(subcommand)]
    command: ModelCommand,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidal-model: {e}");
            ExitCode::FAILURE
        }
    }
}
