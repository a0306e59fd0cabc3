//! tidal's replicated store.
//!
//! An openraft 0.9 group (`storage-v2`) whose log ([`LogStore`]) and state
//! machine ([`StateMachineStore`]) persist in redb, one file each per node.
//! The state machine's contents — typed tables, revisions, change events and
//! leases — live in [`app`]; this crate's other modules are the Raft plumbing.
//!
//! **Architecture invariant:** the state machine never reads a clock; lease
//! times arrive in the log entries, put there by the leader.
//!
//! **Architecture invariant:** openraft is told that a vote or an appended
//! batch is stored only after redb has committed it with fsync.

// openraft's `StorageError` is large, and its traits fix it as the error type.
#![allow(clippy::result_large_err)]

pub mod app;
pub mod client;
pub mod codec;
pub mod identity;
mod log_store;
pub mod network;
pub mod node;
pub mod service;
mod sm;

use std::io::Cursor;

pub use app::{Request, Response};
pub use codec::CodecError;
pub use log_store::LogStore;
pub use sm::StateMachineStore;

/// Raft node ids.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// tidal's Raft types: commands are protobuf bytes, nodes are addressed by
    /// their gRPC address.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// openraft's storage error for our types.
pub type StorageError = openraft::StorageError<NodeId>;

/// Opens (creating if needed) the log and state machine of one node under `dir`.
pub fn open(dir: &std::path::Path) -> Result<(LogStore, StateMachineStore), StorageError> {
    let log = LogStore::open(&dir.join("raft-log.redb"))?;
    let sm = StateMachineStore::open(&dir.join("state.redb"))?;
    Ok((log, sm))
}

#[cfg(test)]
mod suite_test;
