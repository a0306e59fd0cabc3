//! `tidal-model`: generate a model file, or serve one. See the library docs.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tidal_model::generate::generate;
use tidal_model::serve::{ServeOptions, serve, shutdown_signal};

/// The reference model replica: an MLP loaded from safetensors, served over HTTP.
#[derive(Debug, Parser)]
#[command(name = "tidal-model", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write DIR/model.safetensors and DIR/config.json: a deterministic MLP
    /// (input 16, output 4, hidden = max(1, (N - 4) / 21)) of about N parameters.
    Generate {
        /// Approximate parameter count N.
        #[arg(long)]
        params: u64,
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Seed of the pseudo-random weights; same N and seed give identical files.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Load DIR/model.safetensors, print "[Coldboost] Completed model.load()
    /// execution in N ms", then serve GET /health and POST /predict
    /// ({"input": [16 numbers]} -> {"output": [4 numbers]}) until Ctrl-C/SIGTERM.
    Serve {
        /// Port to listen on (0 picks a free one; the "listening on" line says which).
        #[arg(long, env = "PORT", default_value_t = 8080)]
        port: u16,
        /// Address to listen on.
        #[arg(long, env = "TIDAL_MODEL_HOST", default_value = "0.0.0.0")]
        host: IpAddr,
        /// Directory holding model.safetensors.
        #[arg(long, env = "TIDAL_MODEL_DIR", default_value = ".")]
        model_dir: PathBuf,
        /// Sleep this many milliseconds (asynchronously) in every /predict.
        #[arg(long, env = "TIDAL_MODEL_DELAY_MS", default_value_t = 0)]
        delay_ms: u64,
    },
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
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidal-model: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate { params, out, seed } => {
            let g = generate(&out, params, seed)
                .map_err(|e| anyhow::anyhow!("cannot write the model to {}: {e}", out.display()))?;
            println!(
                "wrote {}: {} bytes, {} parameters (input {}, hidden {}, output {})",
                g.model.display(),
                g.bytes,
                g.config.params,
                g.config.input,
                g.config.hidden,
                g.config.output
            );
            Ok(())
        }
        Command::Serve {
            port,
            host,
            model_dir,
            delay_ms,
        } => {
            let opts = ServeOptions {
                addr: SocketAddr::new(host, port),
                model_dir,
                delay: Duration::from_millis(delay_ms),
            };
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(serve(opts, shutdown_signal()))?;
            Ok(())
        }
    }
}
