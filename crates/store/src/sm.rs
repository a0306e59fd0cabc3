//! The state machine's Raft side, in redb: last applied log id, membership,
//! the current snapshot, and the application tables (`crate::app`), all in one
//! database so that applying a batch and recording `last_applied` are one
//! transaction.
//!
//! Applying does not fsync every batch: the log already holds every applied
//! entry durably, and after a crash openraft re-applies the entries after the
//! last durable `last_applied`. A batch is made durable at least every
//! [`DURABLE_EVERY`] entries (so a restart re-applies little), and snapshot
//! builds and installs always are (the log is purged only up to a snapshot).

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageIOError, StoredMembership,
};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::codec::{decode, encode};
use crate::{NodeId, OpenError, Response, StorageError, TypeConfig, app, open_checked};

const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");

const APPLIED: &str = "last_applied";
const MEMBERSHIP: &str = "membership";
const SNAPSHOT: &str = "snapshot";

type Membership = StoredMembership<NodeId, openraft::BasicNode>;
type Meta = SnapshotMeta<NodeId, openraft::BasicNode>;

/// Applied entries between fsynced state-machine commits, at most.
pub const DURABLE_EVERY: u64 = 1_000;

/// A stored snapshot: its metadata and the application tables' export.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: Meta,
    data: Vec<u8>,
}

/// The state machine of one node. Cheap to clone: clones share the database.
#[derive(Debug, Clone)]
pub struct StateMachineStore {
    db: Arc<Database>,
    applied: watch::Sender<u64>,
    /// The last applied index known durable.
    durable: Arc<AtomicU64>,
}

fn err<E: std::error::Error + 'static>(e: E) -> AnyError {
    AnyError::new(&e)
}

fn read_err<E: std::error::Error + 'static>(e: E) -> StorageError {
    StorageIOError::read_state_machine(err(e)).into()
}

fn write_err<E: std::error::Error + 'static>(e: E) -> StorageError {
    StorageIOError::write_state_machine(err(e)).into()
}

impl StateMachineStore {
    /// Opens or creates the state machine at `path`.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let db = open_checked(path)?;
        let txn = db.begin_write().map_err(|e| OpenError::new(path, e))?;
        txn.open_table(SM_META)
            .map_err(|e| OpenError::new(path, e))?;
        app::init_tables(&txn).map_err(|e| OpenError::new(path, e))?;
        txn.commit().map_err(|e| OpenError::new(path, e))?;
        let this = Self {
            db: Arc::new(db),
            applied: watch::Sender::new(0),
            durable: Arc::default(),
        };
        let applied = this
            .read_meta::<Option<LogId<NodeId>>>(APPLIED)
            .map_err(|e| OpenError::new(path, e))?
            .flatten();
        let applied = applied.map_or(0, |id| id.index);
        this.applied.send_replace(applied);
        this.durable.store(applied, Ordering::Relaxed);
        Ok(this)
    }

    /// The database holding the application tables, for reads.
    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }

    /// The last applied revision (log index), observable: watchers wake when it moves.
    pub fn applied_revision(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(SM_META).map_err(read_err)?;
        let Some(bytes) = table.get(key).map_err(read_err)? else {
            return Ok(None);
        };
        decode(bytes.value()).map(Some).map_err(read_err)
    }
}

fn put_meta<T: Serialize>(
    txn: &redb::WriteTransaction,
    key: &str,
    value: &T,
) -> Result<(), StorageError> {
    let bytes = encode(value).map_err(write_err)?;
    let mut table = txn.open_table(SM_META).map_err(write_err)?;
    table.insert(key, bytes.as_slice()).map_err(write_err)?;
    Ok(())
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // One read transaction: the export and the metadata agree.
        let txn = self.db.begin_read().map_err(read_err)?;
        let data = app::export(&txn).map_err(read_err)?;
        let (applied, membership) = {
            let table = txn.open_table(SM_META).map_err(read_err)?;
            let get = |key: &str| -> Result<Option<Vec<u8>>, StorageError> {
                Ok(table
                    .get(key)
                    .map_err(read_err)?
                    .map(|v| v.value().to_vec()))
            };
            let applied: Option<LogId<NodeId>> = match get(APPLIED)? {
                Some(b) => decode::<Option<LogId<NodeId>>>(&b).map_err(read_err)?,
                None => None,
            };
            let membership: Membership = match get(MEMBERSHIP)? {
                Some(b) => decode(&b).map_err(read_err)?,
                None => Membership::default(),
            };
            (applied, membership)
        };
        drop(txn);
        let snapshot_id = match applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        let meta = Meta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id,
        };
        let stored = encode(&StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        })
        .map_err(write_err)?;
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut table = txn.open_table(SM_META).map_err(write_err)?;
            table
                .insert(SNAPSHOT, stored.as_slice())
                .map_err(write_err)?;
        }
        txn.commit().map_err(write_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership), StorageError> {
        let applied = self.read_meta::<Option<LogId<NodeId>>>(APPLIED)?.flatten();
        let membership = self.read_meta(MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut txn = self.db.begin_write().map_err(write_err)?;
        let mut responses = Vec::new();
        let mut last = None;
        for entry in entries {
            let index = entry.log_id.index;
            let apply_err = |e: app::AppError| -> StorageError {
                StorageIOError::apply(entry.log_id, err(e)).into()
            };
            let response = match &entry.payload {
                EntryPayload::Blank => {
                    app::apply_empty(&txn, index).map_err(apply_err)?;
                    Response::default()
                }
                EntryPayload::Normal(request) => {
                    app::apply(&txn, index, request).map_err(apply_err)?
                }
                EntryPayload::Membership(membership) => {
                    put_meta(
                        &txn,
                        MEMBERSHIP,
                        &Membership::new(Some(entry.log_id), membership.clone()),
                    )?;
                    app::apply_empty(&txn, index).map_err(apply_err)?;
                    Response::default()
                }
            };
            responses.push(response);
            last = Some(entry.log_id);
        }
        let durable = self.durable.load(Ordering::Relaxed);
        let make_durable = last.is_some_and(|l| l.index >= durable + DURABLE_EVERY);
        if let Some(last) = last {
            put_meta(&txn, APPLIED, &Some(last))?;
        }
        if !make_durable {
            txn.set_durability(Durability::None).map_err(write_err)?;
        }
        txn.commit().map_err(write_err)?;
        if let Some(last) = last {
            if make_durable {
                self.durable.store(last.index, Ordering::Relaxed);
            }
            self.applied.send_replace(last.index);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let signature = Some(meta.signature());
        let snap_err = |e: AnyError| -> StorageError {
            StorageIOError::write_snapshot(signature.clone(), e).into()
        };
        let revision = meta.last_log_id.map_or(0, |id| id.index);
        let stored = encode(&StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        })
        .map_err(|e| snap_err(err(e)))?;
        let txn = self.db.begin_write().map_err(|e| snap_err(err(e)))?;
        app::import(&txn, &data, revision).map_err(|e| snap_err(err(e)))?;
        put_meta(&txn, APPLIED, &meta.last_log_id)?;
        put_meta(&txn, MEMBERSHIP, &meta.last_membership)?;
        {
            let mut table = txn.open_table(SM_META).map_err(|e| snap_err(err(e)))?;
            table
                .insert(SNAPSHOT, stored.as_slice())
                .map_err(|e| snap_err(err(e)))?;
        }
        txn.commit().map_err(|e| snap_err(err(e)))?;
        self.durable.store(revision, Ordering::Relaxed);
        self.applied.send_replace(revision);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(stored) = self.read_meta::<StoredSnapshot>(SNAPSHOT)? else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{BasicNode, CommittedLeaderId, Membership, StoredMembership as Membership_};

    /// NEVER EDIT THE EXPECTED BYTES: the stored snapshot record must stay
    /// readable by later versions (add a new format version instead).
    #[test]
    fn stored_snapshot_bytes_are_frozen() {
        let log_id = LogId::new(CommittedLeaderId::new(2, 1), 9);
        let nodes = std::collections::BTreeMap::from([(
            1,
            BasicNode {
                addr: "a:1".to_owned(),
            },
        )]);
        let membership = Membership::new(vec![std::collections::BTreeSet::from([1])], nodes);
        let stored = StoredSnapshot {
            meta: Meta {
                last_log_id: Some(log_id),
                last_membership: Membership_::new(Some(log_id), membership),
                snapshot_id: "2-9-3".to_owned(),
            },
            data: vec![1, 2, 3],
        };
        let bytes = encode(&stored).unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "010102010901020109010101010103613a3105322d392d3303010203"
        );
        let back: StoredSnapshot = decode(&bytes).unwrap();
        assert_eq!(back.meta, stored.meta);
        assert_eq!(back.data, stored.data);
    }
}
