//! tidal-model, the reference replica that tidal scales in tests and demos.
//!
//! It loads a small MLP (`layer1(relu(layer0(x)))`) from a safetensors file
//! that it parses itself ([`safetensors`]: validated header, parallel
//! positional reads), and serves it over HTTP.
//!
//! ```text
//! # A model of about 1 M parameters in ./m (model.safetensors + config.json):
//! tidal-model generate --params 1000000 --out ./m --seed 7
//! # Serve it; prints "[Coldboost] Completed model.load() execution in N ms".
//! PORT=8080 TIDAL_MODEL_DIR=./m tidal-model serve --delay-ms 200
//! curl localhost:8080/health                      # ok
//! curl -d '{"input":[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]}' localhost:8080/predict
//! # {"output":[..4 numbers..]}
//! ```
//!
//! `--delay-ms` (env `TIDAL_MODEL_DELAY_MS`) sleeps asynchronously in every
//! request, so load builds up in-flight requests — and autoscaling — with
//! little CPU. A load error exits with status 1 and the message on stderr.
//!
//! **Architecture Invariant:** this crate knows nothing of tidal's control
//! plane; it is the workload, talked to only through HTTP and its stdout line.

pub mod cli;
pub mod error;
pub mod generate;
pub mod mlp;
pub mod safetensors;
pub mod serve;

pub use error::LoadError;
pub use mlp::Mlp;

#[cfg(test)]
mod tests;
