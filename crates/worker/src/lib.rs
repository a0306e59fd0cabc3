//! tidal's worker agent: registers its node, and carries out the replicas
//! placed on it, each through its phases, as real processes.
//!
//! - [`node`] — the worker: registration, the replica watch, one actor per
//!   replica, gRPC (replica logs) and `/metrics`.
//! - [`replica`] — the replica actor: Pending → Fetching → Starting →
//!   Loading → Ready → Draining → Stopped, or Failed with a reason.
//! - [`agent`] — registration: the node's record and its node lease, renewed
//!   every second.
//! - [`gpu`] — the node's GPU inventory: detected from `nvidia-smi`, or
//!   declared with `--gpus 2xH100-80GB` on a machine without GPUs.
//! - [`cache`] — the node's weight cache: fetch by URL, verify size and
//!   sha256, reuse across replicas, evict least recently used unused files.
//! - [`process`] — a replica's process: start it from the spec, wait until
//!   its health endpoint answers, keep its output, stop it (drain, TERM, KILL).
//! - [`spec`] — what a deployment's replicas run, read from its record.
//! - [`records`] — replica records in the store (compare-and-set updates).
//! - [`conns`] — a replica's in-flight connections, for draining.
//! - [`orphans`] — replica processes a previous run left behind (cleaned up).
//! - [`service`] — the `tidal.v1.Worker` gRPC service (replica logs).
//! - [`metrics`] — phase durations and counts for Prometheus.

pub mod agent;
pub mod cache;
pub mod conns;
pub mod gpu;
pub mod metrics;
pub mod node;
pub mod orphans;
pub mod process;
pub mod records;
pub mod replica;
pub mod service;
pub mod spec;

pub use node::{Worker, WorkerError, WorkerOptions};
