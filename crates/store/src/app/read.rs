//! Reads of the application tables, in a caller's read transaction (one
//! transaction gives one consistent revision).

use std::ops::Bound;

use redb::ReadTransaction;

use super::AppError;
use super::tables::{self, COMPACTED_REVISION, CURRENT_REVISION};
use super::types::{KeyValueRecord, Lease, LeaseKind, Table};

/// The record at `key` in `table`.
pub fn get(
    txn: &ReadTransaction,
    table: Table,
    key: &str,
) -> Result<Option<KeyValueRecord>, AppError> {
    let Some(t) = tables::open_read(txn, table.definition())? else {
        return Ok(None);
    };
    let Some(guard) = t.get(key)? else {
        return Ok(None);
    };
    Ok(Some(tables::decode_kv(table, key, guard.value())?.into()))
}

/// Up to `limit` records of `table` whose keys start with `prefix`, in key
/// order.
pub fn list(
    txn: &ReadTransaction,
    table: Table,
    prefix: &str,
    limit: usize,
) -> Result<Vec<(String, KeyValueRecord)>, AppError> {
    list_after(txn, table, prefix, None, limit)
}

/// Like [`list`], starting after key `start_after` (the last key of the
/// previous page). Read every page in one transaction for a consistent list.
pub fn list_after(
    txn: &ReadTransaction,
    table: Table,
    prefix: &str,
    start_after: Option<&str>,
    limit: usize,
) -> Result<Vec<(String, KeyValueRecord)>, AppError> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let Some(t) = tables::open_read(txn, table.definition())? else {
        return Ok(out);
    };
    let lower = match start_after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    };
    for entry in t.range::<&str>((lower, Bound::Unbounded))? {
        let (key, value) = entry?;
        let key = key.value();
        if !key.starts_with(prefix) {
            break;
        }
        out.push((
            key.to_owned(),
            tables::decode_kv(table, key, value.value())?.into(),
        ));
        if out.len() == limit {
            break;
        }
    }
    Ok(out)
}

/// The revision of the last applied log entry (0 before any).
pub fn current_revision(txn: &ReadTransaction) -> Result<u64, AppError> {
    tables::read_meta(txn, CURRENT_REVISION)
}

/// The lowest revision whose events are still kept: a watch from an older
/// revision must re-list.
pub fn compacted_revision(txn: &ReadTransaction) -> Result<u64, AppError> {
    tables::read_meta(txn, COMPACTED_REVISION)
}

/// The lease `name` of `kind`, expired or not (until `ExpireLeases` removes
/// it); check [`Lease::is_live`] against the leader's time.
pub fn get_lease(
    txn: &ReadTransaction,
    kind: LeaseKind,
    name: &str,
) -> Result<Option<Lease>, AppError> {
    let table = kind.table();
    let Some(kv) = get(txn, table, name)? else {
        return Ok(None);
    };
    Ok(Some(tables::decode_lease(table, name, &kv.value)?.into()))
}

/// Every lease of `kind`, by name.
pub fn leases(txn: &ReadTransaction, kind: LeaseKind) -> Result<Vec<(String, Lease)>, AppError> {
    let table = kind.table();
    list(txn, table, "", usize::MAX)?
        .into_iter()
        .map(|(name, kv)| {
            let lease = tables::decode_lease(table, &name, &kv.value)?.into();
            Ok((name, lease))
        })
        .collect()
}
