//! tidal's worker agent (in progress): the pieces a node agent builds on.
//!
//! - [`agent`] — registration: the node's record and its node lease, renewed
//!   every second.
//! - [`gpu`] — the node's GPU inventory: detected from `nvidia-smi`, or
//!   declared with `--gpus 2xH100-80GB` on a machine without GPUs.
//! - [`cache`] — the node's weight cache: fetch by URL, verify size and
//!   sha256, reuse across replicas, evict least recently used unused files.
//! - [`process`] — a replica's process: start it from the spec, wait until
//!   its health endpoint answers, keep its output, stop it (drain, TERM, KILL).

pub mod agent;
pub mod cache;
pub mod gpu;
pub mod process;
