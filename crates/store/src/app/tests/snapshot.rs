//! Snapshots: export on one database, import on another.

use super::Store;
use crate::app::{
    EventFilter, EventsError, LeaseKind, Outcome, Precondition, Request, SNAPSHOT_FORMAT_VERSION,
    Table, compacted_revision, current_revision, events_since, export, get_lease, import, list,
};

fn build() -> Store {
    let mut s = Store::new();
    s.put(Table::Models, "m1", b"model");
    s.put(Table::Deployments, "d1", b"dep-1");
    s.put(Table::Deployments, "d2", b"dep-2");
    s.put(Table::Deployments, "d1", b"dep-1b");
    s.apply(
        1,
        Request::delete(Table::Deployments, "d2", Precondition::None, None),
    );
    s.put(Table::ClusterSettings, "limit", b"10");
    s.apply(
        5_000,
        Request::grant_lease(LeaseKind::Shard, "2", "ctl", 60_000),
    );
    s
}

fn dump(s: &Store) -> Vec<(Table, String, crate::app::KeyValueRecord)> {
    s.read(|t| {
        Table::ALL
            .iter()
            .flat_map(|&table| {
                list(t, table, "", usize::MAX)
                    .unwrap()
                    .into_iter()
                    .map(move |(k, v)| (table, k, v))
            })
            .collect()
    })
}

#[test]
fn export_then_import_gives_the_same_tables_and_a_fresh_history() {
    let src = build();
    let data = src.read(|t| export(t).unwrap());
    assert_eq!(data[0], SNAPSHOT_FORMAT_VERSION);

    let mut dst = Store::new();
    dst.put(Table::Models, "stale", b"to be replaced");
    let txn = dst.db.begin_write().unwrap();
    import(&txn, &data, src.last()).unwrap();
    txn.commit().unwrap();
    dst.next = src.last() + 1;

    assert_eq!(dump(&dst), dump(&src));
    assert_eq!(dst.get(Table::Models, "stale"), None);
    assert_eq!(dst.read(|t| current_revision(t).unwrap()), 7);
    assert_eq!(
        dst.read(|t| get_lease(t, LeaseKind::Shard, "2").unwrap()),
        src.read(|t| get_lease(t, LeaseKind::Shard, "2").unwrap())
    );
    // History before the snapshot is gone: watchers must re-list.
    assert_eq!(dst.read(|t| compacted_revision(t).unwrap()), 8);
    let err = dst.read(|t| events_since(t, 7, &EventFilter::default(), 10).unwrap_err());
    assert!(matches!(
        err,
        EventsError::Compacted {
            compacted: 8,
            current: 7
        }
    ));
    assert!(
        dst.read(|t| events_since(t, 8, &EventFilter::default(), 10).unwrap())
            .is_empty()
    );
    // And it goes on from there, with the imported revisions and epochs.
    assert_eq!(
        dst.put(Table::Deployments, "d1", b"dep-1c"),
        Outcome::Written { revision: 8 }
    );
    assert_eq!(
        dst.get(Table::Deployments, "d1").unwrap().create_revision,
        2
    );
    let events = dst.read(|t| events_since(t, 8, &EventFilter::default(), 10).unwrap());
    assert_eq!(events.len(), 1);
    // Exporting again gives the same bytes as the source after the same command.
    let mut src = src;
    src.put(Table::Deployments, "d1", b"dep-1c");
    assert_eq!(
        dst.read(|t| export(t).unwrap()),
        src.read(|t| export(t).unwrap())
    );
}

#[test]
fn an_empty_store_round_trips() {
    let src = Store::new();
    let data = src.read(|t| export(t).unwrap());
    let dst = Store::new();
    let txn = dst.db.begin_write().unwrap();
    import(&txn, &data, 0).unwrap();
    txn.commit().unwrap();
    assert!(dump(&dst).is_empty());
}

#[test]
fn unknown_formats_and_corrupt_snapshots_are_refused() {
    let src = build();
    let mut data = src.read(|t| export(t).unwrap());
    let dst = Store::new();
    let txn = dst.db.begin_write().unwrap();
    assert!(import(&txn, &[], 1).is_err());
    data[0] = 2;
    let err = import(&txn, &data, 7).unwrap_err();
    assert!(err.0.contains("format 2"), "{err}");
    data[0] = SNAPSHOT_FORMAT_VERSION;
    data.truncate(data.len() - 3);
    assert!(import(&txn, &data, 7).is_err());
}
