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
pub mod proposer;
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

/// The log's file in a data directory.
pub const LOG_FILE: &str = "raft-log.redb";
/// The state machine's file in a data directory.
pub const STATE_FILE: &str = "state.redb";

/// A database file that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot open {path}: {message}. If the file is damaged, this node's copy is lost: \
     remove its data directory, `tidal cluster leave` it, and add it back as a new node \
     (the other members hold the data)"
)]
pub struct OpenError {
    /// The file.
    pub path: std::path::PathBuf,
    /// What went wrong.
    pub message: String,
}

impl OpenError {
    fn new(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        Self {
            path: path.to_owned(),
            message: e.to_string(),
        }
    }
}

/// Opens (creating if needed) a redb file, checking its integrity first: a
/// file altered since redb last wrote it is refused instead of trusted.
fn open_checked(path: &std::path::Path) -> Result<redb::Database, OpenError> {
    redb::Database::builder()
        .set_check_integrity_on_open(true)
        .create(path)
        .map_err(|e| OpenError::new(path, e))
}

/// Opens (creating if needed) the log and state machine of one node under `dir`.
pub fn open(dir: &std::path::Path) -> Result<(LogStore, StateMachineStore), OpenError> {
    let log = LogStore::open(&dir.join(LOG_FILE))?;
    let sm = StateMachineStore::open(&dir.join(STATE_FILE))?;
    Ok((log, sm))
}

#[cfg(test)]
mod suite_test;
