//! tidal's controller: where tidal decides.
//!
//! - [`shard`] — deployment → shard by a stable hash, and which live
//!   controller should own which shard.
//! - [`actor`] — `DeploymentActor`: one per owned deployment; keeps the
//!   window, decides every second (and at once on a wake), writes desired
//!   replicas fenced with its shard's epoch.
//! - [`port`] — what actors need from the store, as a trait.
//! - [`metrics`] — Prometheus series.
//! - [`scheduler`] — a pure function from desired and observed replicas to
//!   a plan of commands.
//! - [`inactivity`] — deactivates deployments idle past the cluster's
//!   limits (14 / 60 days by default).
//! - [`backoff`] — crash-loop backoff and the retention of finished replica
//!   records (pure).

pub mod actor;
pub mod backoff;
pub mod controller;
pub mod inactivity;
pub mod manager;
pub mod metrics;
pub mod placer;
pub mod port;
pub mod scheduler;
pub mod service;
pub mod shard;
pub mod store_port;
pub mod supervisor;
