//! The `generate` and `serve` commands, shared by the `tidal-model` binary
//! and `tidal model` (so one `tidal` binary can also play the replica).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use crate::generate::generate;
use crate::serve::{ServeOptions, serve, shutdown_signal};

/// A `tidal-model` command.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
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

/// Runs a command; errors are for the user.
pub fn run(command: ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::Generate { params, out, seed } => {
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
        ModelCommand::Serve {
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
