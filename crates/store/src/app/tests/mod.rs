//! Unit tests of the state machine, each on its own redb file.

mod events;
mod group;
mod kv;
mod leases;
mod snapshot;

use redb::{Database, ReadTransaction, ReadableDatabase};

use super::events as app_events;
use super::{
    KeyValueRecord, Limits, Outcome, Precondition, Rejection, Request, Table, exec, get,
    init_tables,
};

/// A state machine on a temporary file, applying one command per write
/// transaction at consecutive revisions from 1.
pub(super) struct Store {
    _dir: tempfile::TempDir,
    pub db: Database,
    /// The revision the next command gets.
    pub next: u64,
    pub limits: Limits,
}

impl Store {
    pub fn new() -> Store {
        Store::with_limits(Limits::DEFAULT)
    }

    pub fn with_limits(limits: Limits) -> Store {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("state.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        init_tables(&txn).unwrap();
        txn.commit().unwrap();
        Store {
            _dir: dir,
            db,
            next: 1,
            limits,
        }
    }

    /// Applies `request` as is (no stamping) at the next revision.
    pub fn apply_raw(&mut self, request: &Request) -> Outcome {
        let txn = self.db.begin_write().unwrap();
        let response = exec::apply(&txn, self.next, request, &self.limits).unwrap();
        txn.commit().unwrap();
        self.next += 1;
        response.outcome().unwrap()
    }

    /// Applies `request` stamped with leader time `now_ms`.
    pub fn apply(&mut self, now_ms: u64, request: Request) -> Outcome {
        self.apply_raw(&request.stamped(now_ms).unwrap())
    }

    /// Records a blank entry at the next revision (what `apply_empty` does,
    /// with this store's limits).
    pub fn blank(&mut self) {
        let txn = self.db.begin_write().unwrap();
        app_events::finish(&txn, self.next, Vec::new(), &self.limits).unwrap();
        txn.commit().unwrap();
        self.next += 1;
    }

    /// The revision of the last command applied.
    pub fn last(&self) -> u64 {
        self.next - 1
    }

    pub fn read<T>(&self, f: impl FnOnce(&ReadTransaction) -> T) -> T {
        f(&self.db.begin_read().unwrap())
    }

    pub fn get(&self, table: Table, key: &str) -> Option<KeyValueRecord> {
        self.read(|txn| get(txn, table, key).unwrap())
    }

    /// Puts unconditionally at time 1000.
    pub fn put(&mut self, table: Table, key: &str, value: &[u8]) -> Outcome {
        self.apply(
            1000,
            Request::put(table, key, value, Precondition::None, None),
        )
    }
}

/// The rejection in `outcome`, or a panic.
pub(super) fn rejected(outcome: Outcome) -> Rejection {
    match outcome {
        Outcome::Rejected(r) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}
