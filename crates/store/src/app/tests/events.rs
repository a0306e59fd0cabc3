//! Change events: order, filters, retention and the compacted answer.

use super::Store;
use crate::app::{
    ChangeEvent, EventFilter, EventKind, EventsError, KeyValueRecord, LeaseKind, Limits,
    Precondition, Request, Table, compacted_revision, current_revision, events_page, events_since,
};

fn all(s: &Store, from: u64) -> Vec<ChangeEvent> {
    s.read(|t| events_since(t, from, &EventFilter::default(), usize::MAX).unwrap())
}

fn summary(events: &[ChangeEvent]) -> Vec<(u64, Table, String, EventKind)> {
    events
        .iter()
        .map(|e| (e.revision, e.table, e.key.clone(), e.kind))
        .collect()
}

#[test]
fn every_change_is_an_event_at_its_revision_in_order() {
    let mut s = Store::new();
    s.put(Table::Models, "m1", b"a"); // 1
    s.put(Table::Models, "m1", b"b"); // 2
    s.blank(); // 3: no events
    s.apply(
        1,
        Request::delete(Table::Models, "m1", Precondition::None, None),
    ); // 4
    s.apply(
        1,
        Request::delete(Table::Models, "gone", Precondition::None, None),
    ); // 5: nothing
    s.apply(1_000, Request::grant_lease(LeaseKind::Node, "n1", "n1", 10)); // 6
    s.apply(2_000, Request::expire_leases()); // 7
    let events = all(&s, 0);
    assert_eq!(
        summary(&events),
        [
            (1, Table::Models, "m1".into(), EventKind::Put),
            (2, Table::Models, "m1".into(), EventKind::Put),
            (4, Table::Models, "m1".into(), EventKind::Delete),
            (6, Table::NodeLeases, "n1".into(), EventKind::Put),
            (7, Table::NodeLeases, "n1".into(), EventKind::Delete),
        ]
    );
    // A put carries the new value and the previous mod_revision.
    assert_eq!(
        events[1].value,
        KeyValueRecord {
            create_revision: 1,
            mod_revision: 2,
            value: b"b".to_vec()
        }
    );
    assert_eq!(
        (events[0].prev_mod_revision, events[1].prev_mod_revision),
        (0, 1)
    );
    // A delete carries the last value.
    assert_eq!(events[2].value.value, b"b");
    assert_eq!(events[2].prev_mod_revision, 2);
    assert_eq!(s.read(|t| current_revision(t).unwrap()), 7);
    // From a revision on.
    assert_eq!(all(&s, 4).len(), 3);
    // current + 1 is "nothing yet".
    assert!(all(&s, 8).is_empty());
}

#[test]
fn filters_select_by_table_and_key_prefix() {
    let mut s = Store::new();
    s.put(Table::Replicas, "node-a/r1", b"x");
    s.put(Table::Replicas, "node-b/r2", b"x");
    s.put(Table::Deployments, "node-a/not-a-replica", b"x");
    s.put(Table::Replicas, "node-a/r3", b"x");
    let filter = EventFilter {
        table: Some(Table::Replicas),
        key_prefix: "node-a/".into(),
    };
    let got = s.read(|t| events_since(t, 1, &filter, 100).unwrap());
    let keys: Vec<_> = got.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["node-a/r1", "node-a/r3"]);
    let by_prefix = EventFilter {
        table: None,
        key_prefix: "node-a/".into(),
    };
    assert_eq!(
        s.read(|t| events_since(t, 1, &by_prefix, 100).unwrap())
            .len(),
        3
    );
}

#[test]
fn pages_never_split_a_revision_and_say_where_to_resume() {
    let mut s = Store::new();
    let batch: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|k| crate::app::BatchOp::Put {
            table: Table::Models,
            key: (*k).into(),
            value: vec![],
            precondition: Precondition::None,
        })
        .collect();
    s.apply(1, Request::batch(&batch, None)); // 1: three events
    s.put(Table::Models, "d", b""); // 2
    s.put(Table::ApiKeys, "k", b""); // 3: filtered out below
    let filter = EventFilter {
        table: Some(Table::Models),
        key_prefix: String::new(),
    };
    let page = s.read(|t| events_page(t, 1, &filter, 2).unwrap());
    assert_eq!(page.events.len(), 3, "the whole of revision 1");
    assert_eq!(page.next_revision, 2);
    let page = s.read(|t| events_page(t, 2, &filter, 2).unwrap());
    assert_eq!(
        summary(&page.events),
        [(2, Table::Models, "d".into(), EventKind::Put)]
    );
    assert_eq!(
        page.next_revision, 4,
        "revision 3 was scanned though filtered out"
    );
}

#[test]
fn old_revisions_are_trimmed_and_answer_compacted_with_the_current_revision() {
    let limits = Limits {
        event_revisions: 5,
        ..Limits::DEFAULT
    };
    let mut s = Store::with_limits(limits);
    for i in 0..12 {
        s.put(Table::Models, &format!("m{i}"), b"x"); // revisions 1..=12
    }
    s.blank(); // 13: trimming moves with blank entries too
    // The last 5 revisions (9..=13) are kept.
    assert_eq!(s.read(|t| compacted_revision(t).unwrap()), 9);
    let kept = all(&s, 9);
    assert_eq!(kept.first().map(|e| e.revision), Some(9));
    assert_eq!(kept.len(), 4);
    let err = s.read(|t| events_since(t, 8, &EventFilter::default(), 10).unwrap_err());
    assert!(
        matches!(
            err,
            EventsError::Compacted {
                compacted: 9,
                current: 13
            }
        ),
        "{err:?}"
    );
    // A re-listing watcher resumes at current + 1.
    assert!(all(&s, 14).is_empty());
}

#[test]
fn history_is_also_capped_in_bytes() {
    let limits = Limits {
        event_bytes: 300,
        ..Limits::DEFAULT
    };
    let mut s = Store::with_limits(limits);
    for i in 0..10 {
        s.put(Table::Models, &format!("m{i}"), &[0u8; 50]); // ~70 bytes of events each
    }
    let compacted = s.read(|t| compacted_revision(t).unwrap());
    assert!(compacted > 1 && compacted <= 10, "compacted = {compacted}");
    let kept = all(&s, compacted);
    assert_eq!(kept.first().map(|e| e.revision), Some(compacted));
    assert_eq!(kept.last().map(|e| e.revision), Some(10));
    assert!(matches!(
        s.read(|t| events_since(t, compacted - 1, &EventFilter::default(), 1).unwrap_err()),
        EventsError::Compacted { .. }
    ));
}

#[test]
fn apply_empty_moves_the_current_revision_and_records_nothing() {
    let mut s = Store::new();
    s.put(Table::Models, "m", b"x"); // 1
    let txn = s.db.begin_write().unwrap();
    crate::app::apply_empty(&txn, 2).unwrap();
    txn.commit().unwrap();
    assert_eq!(s.read(|t| current_revision(t).unwrap()), 2);
    assert_eq!(all(&s, 0).len(), 1);
    assert!(all(&s, 3).is_empty());
}
