//! Snapshots of the application tables.
//!
//! Format: one byte, [`SNAPSHOT_FORMAT_VERSION`], then a protobuf
//! `StoreSnapshot` (the current revision and every non-empty table's
//! entries in key order). The change-event history is not included: a node
//! that installs a snapshot answers watches only from the snapshot's
//! revision + 1 on, and older ones with "re-list".

use prost::Message;
use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use tidal_proto::pb;
use tidal_proto::pb::store_snapshot;

use super::AppError;
use super::tables::{self, COMPACTED_REVISION, CURRENT_REVISION, EVENT_BYTES, EVENTS};
use super::types::Table;

/// The snapshot format this version writes and reads. A new format gets a
/// new number; a node refuses a format it does not know.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 1;

/// Serializes every application table and the current revision.
pub(crate) fn export(txn: &ReadTransaction) -> Result<Vec<u8>, AppError> {
    let mut snapshot = pb::StoreSnapshot {
        revision: tables::read_meta(txn, CURRENT_REVISION)?,
        tables: Vec::new(),
    };
    for table in Table::ALL {
        let Some(t) = tables::open_read(txn, table.definition())? else {
            continue;
        };
        let mut entries = Vec::new();
        for entry in t.iter()? {
            let (key, value) = entry?;
            let key = key.value();
            entries.push(store_snapshot::Entry {
                key: key.to_owned(),
                value: Some(tables::decode_kv(table, key, value.value())?),
            });
        }
        if !entries.is_empty() {
            snapshot.tables.push(store_snapshot::Table {
                table: table.to_proto().into(),
                entries,
            });
        }
    }
    let mut out = Vec::with_capacity(1 + snapshot.encoded_len());
    out.push(SNAPSHOT_FORMAT_VERSION);
    snapshot
        .encode(&mut out)
        .map_err(|e| AppError(format!("encoding the snapshot: {e}")))?;
    Ok(out)
}

/// Replaces every application table with the snapshot `data`, as of
/// `revision`; clears the event history (compacted revision = revision + 1).
pub(crate) fn import(txn: &WriteTransaction, data: &[u8], revision: u64) -> Result<(), AppError> {
    let (&version, payload) = data
        .split_first()
        .ok_or_else(|| AppError("the snapshot is empty: not a tidal store snapshot".into()))?;
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err(AppError(format!(
            "snapshot format {version} is unknown to this tidal (it reads format \
             {SNAPSHOT_FORMAT_VERSION}); upgrade this node"
        )));
    }
    let snapshot = pb::StoreSnapshot::decode(payload)
        .map_err(|e| AppError(format!("the snapshot is corrupt: {e}")))?;
    if snapshot.revision != revision {
        tracing::warn!(
            snapshot = snapshot.revision,
            revision,
            "snapshot data and metadata name different revisions; using the metadata's"
        );
    }
    // Check everything before changing anything.
    let mut contents = Vec::with_capacity(snapshot.tables.len());
    for t in snapshot.tables {
        let table = Table::from_proto(t.table).ok_or_else(|| {
            AppError(format!(
                "the snapshot holds table {}, unknown to this tidal; upgrade this node",
                t.table
            ))
        })?;
        contents.push((table, t.entries));
    }

    for table in Table::ALL {
        txn.delete_table(table.definition())?;
        txn.open_table(table.definition())?;
    }
    for (table, entries) in contents {
        let mut t = txn.open_table(table.definition())?;
        for entry in entries {
            let value = entry.value.unwrap_or_default().encode_to_vec();
            t.insert(entry.key.as_str(), value.as_slice())?;
        }
    }
    txn.delete_table(EVENTS)?;
    txn.open_table(EVENTS)?;
    tables::set_meta(txn, CURRENT_REVISION, revision)?;
    tables::set_meta(txn, COMPACTED_REVISION, revision.saturating_add(1))?;
    tables::set_meta(txn, EVENT_BYTES, 0)?;
    Ok(())
}
