//! The application state machine: tidal's typed tables in redb.
//!
//! The raft layer (`crate::sm`) calls [`apply`], [`apply_empty`], [`export`]
//! and [`import`] inside its own redb write transaction, the one that records
//! `last_applied`, so the tables, the revision and the events move together.
//!
//! - **Tables** ([`Table`]): key = UTF-8 string, value = the caller's
//!   protobuf-encoded record, kept with its `create_revision` and
//!   `mod_revision` ([`KeyValueRecord`]).
//! - **Commands** ([`Request`], protobuf `tidal.v1.StoreCommand`): put and
//!   delete with compare-and-set, all-or-none batches, and lease grant, renew,
//!   release and expiry. Any command may carry a [`Fence`]: it then applies
//!   only while that shard lease is live with that epoch.
//! - **Time**: a command carries the leader's clock (`now_ms`, set by
//!   [`Request::stamped`] when the leader proposes it). `apply` never reads a
//!   clock.
//! - **Revisions**: each log entry's index is its revision. Every change is
//!   a [`ChangeEvent`] stored under its revision; [`events_since`] reads them
//!   for watchers, and answers [`EventsError::Compacted`] ("re-list") for
//!   revisions older than the retained history.
//! - **Outcomes** ([`Response`] → [`Outcome`]): refusals (CAS conflict, stale
//!   epoch, lease held, …) are answers, not errors. [`AppError`] is kept for
//!   what must stop the node: storage failures, corrupt stored data, and a
//!   command that needs a newer state machine.
//!
//! **Architecture invariant:** apply is deterministic: its result depends
//! only on the stored state, the revision and the request bytes. A refusal
//! is decided before the first write, so a refused command changes nothing
//! but the current revision.
//!
//! Bad commands: bytes that do not decode, or a command with no operation or
//! with invalid fields, are answered `Rejected(Invalid)` — every node decides
//! the same, so a buggy client cannot wedge the log. A command whose
//! `requires_version` exceeds [`APP_VERSION`] is the exception: a newer
//! leader proposed it, and this node stops with an [`AppError`] rather than
//! apply it differently from the others (upgrade it to go on).

mod command;
mod events;
mod exec;
mod leases;
mod outcome;
mod parse;
mod read;
mod snapshot;
mod tables;
mod types;

#[cfg(test)]
mod tests;

use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};

pub use command::BatchOp;
pub use events::{EventFilter, EventsError, EventsPage, events_page, events_since};
pub use outcome::{Outcome, Rejection};
pub use read::{compacted_revision, current_revision, get, get_lease, leases, list, list_after};
pub use snapshot::SNAPSHOT_FORMAT_VERSION;
pub use types::{
    ChangeEvent, EventKind, Fence, KeyValueRecord, Lease, LeaseKind, Precondition, Table,
};

/// The state machine's version. A command with a higher `requires_version`
/// stops this node (see the module docs).
pub const APP_VERSION: u32 = 2;
/// The state-machine version that introduced groups (`StoreCommand.Group`):
/// a node older than this stops on one rather than misapply it.
pub const GROUP_VERSION: u32 = 2;
/// The longest key, lease name or lease holder, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// The largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// The most operations in one batch.
pub const MAX_BATCH_OPS: usize = 1024;
/// The most key and value bytes in one batch.
pub const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024;
/// The longest lease ttl: one hour.
pub const MAX_LEASE_TTL_MS: u64 = 3_600_000;
/// How many revisions of change events are kept for watchers.
pub const EVENT_RETENTION_REVISIONS: u64 = 100_000;
/// At most this many bytes of encoded change events are kept (the oldest
/// revisions go first), whatever [`EVENT_RETENTION_REVISIONS`] allows.
pub const EVENT_RETENTION_BYTES: u64 = 256 * 1024 * 1024;

/// The limits `apply` enforces; tests shrink them.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_batch_ops: usize,
    pub max_batch_bytes: usize,
    pub max_ttl_ms: u64,
    pub event_revisions: u64,
    pub event_bytes: u64,
}

impl Limits {
    pub(crate) const DEFAULT: Limits = Limits {
        max_key_bytes: MAX_KEY_BYTES,
        max_value_bytes: MAX_VALUE_BYTES,
        max_batch_ops: MAX_BATCH_OPS,
        max_batch_bytes: MAX_BATCH_BYTES,
        max_ttl_ms: MAX_LEASE_TTL_MS,
        event_revisions: EVENT_RETENTION_REVISIONS,
        event_bytes: EVENT_RETENTION_BYTES,
    };
}

/// A command in the raft log (openraft's `D`): protobuf bytes of
/// `tidal.v1.StoreCommand`, so that older nodes skip fields they do not know.
/// Build one with the constructors ([`Request::put`], …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// What applying a command answered (openraft's `R`): protobuf bytes of
/// `tidal.v1.StoreResult`; read it with [`Response::outcome`]. Blank and
/// membership entries answer the empty default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Response(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// Fatal state-machine errors (storage failures, undecodable data).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AppError(pub String);

/// Creates the application tables if they do not exist.
pub fn init_tables(txn: &WriteTransaction) -> Result<(), AppError> {
    tables::create_all(txn)
}

/// Applies one command at `revision` (its log index) inside the caller's write
/// transaction. Rejections (CAS conflict, stale epoch, lease held, …) are
/// answered in the `Response`, not as errors: apply is deterministic.
pub fn apply(
    txn: &WriteTransaction,
    revision: u64,
    request: &Request,
) -> Result<Response, AppError> {
    exec::apply(txn, revision, request, &Limits::DEFAULT)
}

/// Records that `revision` was a blank or membership entry (no app change).
pub fn apply_empty(txn: &WriteTransaction, revision: u64) -> Result<(), AppError> {
    events::finish(txn, revision, Vec::new(), &Limits::DEFAULT)
}

/// Serializes every application table (the snapshot's payload).
pub fn export(txn: &ReadTransaction) -> Result<Vec<u8>, AppError> {
    snapshot::export(txn)
}

/// Replaces every application table with `data` from [`export`], as of `revision`.
pub fn import(txn: &WriteTransaction, data: &[u8], revision: u64) -> Result<(), AppError> {
    snapshot::import(txn, data, revision)
}
