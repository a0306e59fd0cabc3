//! The redb tables behind the state machine, and the helpers that read and
//! write them.
//!
//! | redb table | key | value |
//! |---|---|---|
//! | `app_<table>` (one per [`Table`]) | the key (`&str`) | protobuf `KeyValue` |
//! | `app_events` | revision (`u64`) | protobuf `ChangeEvents`: that revision's events |
//! | `app_meta` | name (`&str`) | `u64`: `current_revision`, `compacted_revision`, `event_bytes` |
//!
//! The names are persisted: never rename one.

use prost::Message;
use redb::{
    ReadOnlyTable, ReadTransaction, ReadableTable, TableDefinition, TableError, WriteTransaction,
};
use tidal_proto::pb;

use super::AppError;
use super::outcome::Rejection;
use super::types::Table;

/// A key-value table: key → protobuf `KeyValue`.
pub(crate) type KvTable = TableDefinition<'static, &'static str, &'static [u8]>;

/// Change events: revision → protobuf `ChangeEvents`.
pub(crate) const EVENTS: TableDefinition<'static, u64, &'static [u8]> =
    TableDefinition::new("app_events");

/// Revisions and counters of the state machine.
pub(crate) const META: TableDefinition<'static, &'static str, u64> =
    TableDefinition::new("app_meta");

/// The revision of the last applied log entry.
pub(crate) const CURRENT_REVISION: &str = "current_revision";
/// The lowest revision `events_since` still answers.
pub(crate) const COMPACTED_REVISION: &str = "compacted_revision";
/// The total size of the encoded events kept.
pub(crate) const EVENT_BYTES: &str = "event_bytes";

impl Table {
    /// The redb table holding this table's records.
    pub(crate) fn definition(self) -> KvTable {
        TableDefinition::new(match self {
            Table::Models => "app_models",
            Table::Deployments => "app_deployments",
            Table::Environments => "app_environments",
            Table::WorkerNodes => "app_worker_nodes",
            Table::Replicas => "app_replicas",
            Table::NodeLeases => "app_node_leases",
            Table::ShardLeases => "app_shard_leases",
            Table::ApiKeys => "app_api_keys",
            Table::ClusterSettings => "app_cluster_settings",
        })
    }
}

impl From<redb::StorageError> for AppError {
    fn from(e: redb::StorageError) -> Self {
        AppError(format!("redb: {e}"))
    }
}

impl From<TableError> for AppError {
    fn from(e: TableError) -> Self {
        AppError(format!("redb: {e}"))
    }
}

/// Why a command stopped: refused (answered in the response) or fatal.
#[derive(Debug)]
pub(crate) enum Fail {
    Reject(Rejection),
    Fatal(AppError),
}

impl From<Rejection> for Fail {
    fn from(r: Rejection) -> Self {
        Fail::Reject(r)
    }
}

impl From<AppError> for Fail {
    fn from(e: AppError) -> Self {
        Fail::Fatal(e)
    }
}

impl From<redb::StorageError> for Fail {
    fn from(e: redb::StorageError) -> Self {
        Fail::Fatal(e.into())
    }
}

impl From<TableError> for Fail {
    fn from(e: TableError) -> Self {
        Fail::Fatal(e.into())
    }
}

/// Decodes a stored `KeyValue`; failure means a corrupt store.
pub(crate) fn decode_kv(table: Table, key: &str, bytes: &[u8]) -> Result<pb::KeyValue, AppError> {
    pb::KeyValue::decode(bytes)
        .map_err(|e| AppError(format!("stored record {table}/{key} is corrupt: {e}")))
}

/// Decodes a stored `Lease` value.
pub(crate) fn decode_lease(table: Table, key: &str, bytes: &[u8]) -> Result<pb::Lease, AppError> {
    pb::Lease::decode(bytes)
        .map_err(|e| AppError(format!("stored lease {table}/{key} is corrupt: {e}")))
}

/// Reads a key inside a write transaction.
pub(crate) fn read_kv(
    txn: &WriteTransaction,
    table: Table,
    key: &str,
) -> Result<Option<pb::KeyValue>, AppError> {
    let t = txn.open_table(table.definition())?;
    let Some(guard) = t.get(key)? else {
        return Ok(None);
    };
    decode_kv(table, key, guard.value()).map(Some)
}

/// Writes a key inside a write transaction.
pub(crate) fn write_kv(
    txn: &WriteTransaction,
    table: Table,
    key: &str,
    kv: &pb::KeyValue,
) -> Result<(), AppError> {
    let mut t = txn.open_table(table.definition())?;
    t.insert(key, kv.encode_to_vec().as_slice())?;
    Ok(())
}

/// Removes a key inside a write transaction, returning what it held.
pub(crate) fn remove_kv(
    txn: &WriteTransaction,
    table: Table,
    key: &str,
) -> Result<Option<pb::KeyValue>, AppError> {
    let mut t = txn.open_table(table.definition())?;
    let Some(guard) = t.remove(key)? else {
        return Ok(None);
    };
    decode_kv(table, key, guard.value()).map(Some)
}

/// Reads a meta counter inside a write transaction (0 if unset).
pub(crate) fn meta(txn: &WriteTransaction, name: &str) -> Result<u64, AppError> {
    let t = txn.open_table(META)?;
    Ok(t.get(name)?.map_or(0, |g| g.value()))
}

/// Sets a meta counter inside a write transaction.
pub(crate) fn set_meta(txn: &WriteTransaction, name: &str, value: u64) -> Result<(), AppError> {
    let mut t = txn.open_table(META)?;
    t.insert(name, value)?;
    Ok(())
}

/// Opens a table for reading; `None` if it was never created.
pub(crate) fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<'static, K, V>,
) -> Result<Option<ReadOnlyTable<K, V>>, AppError> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Reads a meta counter for reading (0 if unset).
pub(crate) fn read_meta(txn: &ReadTransaction, name: &str) -> Result<u64, AppError> {
    let Some(t) = open_read(txn, META)? else {
        return Ok(0);
    };
    Ok(t.get(name)?.map_or(0, |g| g.value()))
}

/// Creates every application table.
pub(crate) fn create_all(txn: &WriteTransaction) -> Result<(), AppError> {
    for table in Table::ALL {
        txn.open_table(table.definition())?;
    }
    txn.open_table(EVENTS)?;
    txn.open_table(META)?;
    Ok(())
}
