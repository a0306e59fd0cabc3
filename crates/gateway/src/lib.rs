//! tidal's gateway: the data plane.
//!
//! - [`routes`] — deployments by model and target, and each deployment's
//!   Ready replicas with their in-flight counts (least outstanding requests).
//! - [`sync`] — keeps the routes in step with the store (list + watch).
//! - [`meter`] — per-deployment time-weighted concurrency, queued requests
//!   included, in 1-second samples.
//! - [`controllers`] — reports the samples to each deployment's owning
//!   controller every second (following redirects) and sends wakes.
//! - [`activator`] — holds requests for a deployment with no Ready replica
//!   in a bounded queue, pokes its controller, releases them in order.
//! - [`activity`] — writes when a deployment last had a request (at most
//!   once a minute), for deactivating idle deployments.
//! - [`http1`] — the gateway's own HTTP/1.1: heads parsed with `httparse`,
//!   body framing, chunked bodies, answers written with `writev`.
//! - [`conn`] — one client connection: its requests, one after another.
//! - [`proxy`] — forwards one request to one replica over a pooled
//!   connection and streams the answer back.
//! - [`server`] — Baseten's inference paths (`predict`, `wake`), `/metrics`.
//! - [`threads`] — the serving threads (one single-threaded runtime per
//!   core, each owning its connections) and the acceptor.
//! - [`gateway`] — `Gateway::start(options)`.
//!
//! **Architecture Invariant:** the gateway never decides replica counts; it
//! measures, reports and routes. It holds no state the store and fresh
//! measurements cannot rebuild.

pub mod activator;
pub mod activity;
pub mod conn;
pub mod controllers;
pub mod gateway;
pub mod http1;
pub mod meter;
pub mod metrics;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod sync;
pub mod threads;

pub use gateway::{Gateway, GatewayError, GatewayOptions};
