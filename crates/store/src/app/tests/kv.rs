//! Puts, deletes, compare-and-set, batches, limits and bad commands.

use prost::Message;
use tidal_proto::pb;

use super::{Store, rejected};
use crate::app::{
    BatchOp, KeyValueRecord, Limits, MAX_KEY_BYTES, MAX_VALUE_BYTES, Outcome, Precondition,
    Rejection, Request, Table, current_revision, list, list_after,
};

#[test]
fn put_then_get_keeps_create_and_mod_revisions() {
    let mut s = Store::new();
    assert_eq!(
        s.put(Table::Models, "m1", b"a"),
        Outcome::Written { revision: 1 }
    );
    assert_eq!(
        s.put(Table::Models, "m2", b"b"),
        Outcome::Written { revision: 2 }
    );
    assert_eq!(
        s.put(Table::Models, "m1", b"c"),
        Outcome::Written { revision: 3 }
    );
    assert_eq!(
        s.get(Table::Models, "m1"),
        Some(KeyValueRecord {
            create_revision: 1,
            mod_revision: 3,
            value: b"c".to_vec()
        })
    );
    // Tables are separate.
    assert_eq!(s.get(Table::Deployments, "m1"), None);
    assert_eq!(s.read(|t| current_revision(t).unwrap()), 3);
}

#[test]
fn list_returns_keys_with_the_prefix_in_order_up_to_the_limit() {
    let mut s = Store::new();
    for key in [
        "rep/b/2", "rep/a/1", "rep/a/3", "rep/a/2", "rep/ab", "rer", "req",
    ] {
        s.put(Table::Replicas, key, key.as_bytes());
    }
    let keys = |v: Vec<(String, KeyValueRecord)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    let all_a = s.read(|t| list(t, Table::Replicas, "rep/a/", 10).unwrap());
    assert_eq!(keys(all_a), ["rep/a/1", "rep/a/2", "rep/a/3"]);
    let two = s.read(|t| list(t, Table::Replicas, "rep/", 2).unwrap());
    assert_eq!(keys(two), ["rep/a/1", "rep/a/2"]);
    let next = s.read(|t| list_after(t, Table::Replicas, "rep/", Some("rep/a/2"), 10).unwrap());
    assert_eq!(keys(next), ["rep/a/3", "rep/ab", "rep/b/2"]);
    assert_eq!(
        s.read(|t| list(t, Table::Replicas, "", 100).unwrap()).len(),
        7
    );
    assert!(
        s.read(|t| list(t, Table::Models, "", 100).unwrap())
            .is_empty()
    );
}

#[test]
fn compare_and_set_succeeds_on_the_expected_revision_and_conflicts_otherwise() {
    let mut s = Store::new();
    let cas = |pre| Request::put(Table::Deployments, "d", b"x".to_vec(), pre, None);
    assert_eq!(
        s.apply(1, cas(Precondition::MustNotExist)),
        Outcome::Written { revision: 1 }
    );
    assert_eq!(
        rejected(s.apply(1, cas(Precondition::MustNotExist))),
        Rejection::Conflict {
            table: Table::Deployments,
            key: "d".into(),
            current_mod_revision: 1
        }
    );
    assert_eq!(
        s.apply(1, cas(Precondition::ModRevision(1))),
        Outcome::Written { revision: 3 }
    );
    let stale = rejected(s.apply(1, cas(Precondition::ModRevision(1))));
    assert!(matches!(
        stale,
        Rejection::Conflict {
            current_mod_revision: 3,
            ..
        }
    ));
    // A rejected command used its revision but wrote nothing.
    assert_eq!(s.get(Table::Deployments, "d").unwrap().mod_revision, 3);
    assert_eq!(s.read(|t| current_revision(t).unwrap()), 4);
}

#[test]
fn delete_reports_existence_and_honours_its_precondition() {
    let mut s = Store::new();
    s.put(Table::WorkerNodes, "n1", b"x");
    let del = |pre| Request::delete(Table::WorkerNodes, "n1", pre, None);
    let conflict = rejected(s.apply(1, del(Precondition::ModRevision(7))));
    assert!(matches!(
        conflict,
        Rejection::Conflict {
            current_mod_revision: 1,
            ..
        }
    ));
    assert!(s.get(Table::WorkerNodes, "n1").is_some());
    assert_eq!(
        s.apply(1, del(Precondition::ModRevision(1))),
        Outcome::Deleted {
            revision: 3,
            existed: true
        }
    );
    assert_eq!(s.get(Table::WorkerNodes, "n1"), None);
    assert_eq!(
        s.apply(1, del(Precondition::None)),
        Outcome::Deleted {
            revision: 4,
            existed: false
        }
    );
    // Recreated: a new create_revision.
    s.put(Table::WorkerNodes, "n1", b"y");
    assert_eq!(s.get(Table::WorkerNodes, "n1").unwrap().create_revision, 5);
}

#[test]
fn a_batch_applies_all_or_nothing() {
    let mut s = Store::new();
    s.put(Table::Replicas, "r1", b"old");
    let ops = |pre| {
        [
            BatchOp::Put {
                table: Table::Deployments,
                key: "d".into(),
                value: b"desired=2".to_vec(),
                precondition: Precondition::None,
            },
            BatchOp::Delete {
                table: Table::Replicas,
                key: "r1".into(),
                precondition: pre,
            },
        ]
    };
    let bad = rejected(s.apply(1, Request::batch(&ops(Precondition::ModRevision(9)), None)));
    assert!(matches!(
        bad,
        Rejection::Conflict {
            table: Table::Replicas,
            ..
        }
    ));
    assert_eq!(
        s.get(Table::Deployments, "d"),
        None,
        "nothing of a refused batch is written"
    );
    let ok = s.apply(1, Request::batch(&ops(Precondition::ModRevision(1)), None));
    assert_eq!(ok, Outcome::Written { revision: 3 });
    assert_eq!(s.get(Table::Deployments, "d").unwrap().mod_revision, 3);
    assert_eq!(s.get(Table::Replicas, "r1"), None);

    let twice = [
        ops(Precondition::None)[0].clone(),
        ops(Precondition::None)[0].clone(),
    ];
    assert!(matches!(
        rejected(s.apply(1, Request::batch(&twice, None))),
        Rejection::Invalid { .. }
    ));
    assert!(matches!(
        rejected(s.apply(1, Request::batch(&[], None))),
        Rejection::Invalid { .. }
    ));
}

#[test]
fn oversized_values_and_keys_are_refused_and_nothing_is_written() {
    let mut s = Store::new();
    let big = vec![7u8; MAX_VALUE_BYTES + 1];
    let r = rejected(s.put(Table::Models, "m", &big));
    assert_eq!(
        r,
        Rejection::TooLarge {
            what: "value".into(),
            size: (MAX_VALUE_BYTES + 1) as u64,
            limit: MAX_VALUE_BYTES as u64
        }
    );
    assert_eq!(s.get(Table::Models, "m"), None);
    let long_key = "k".repeat(MAX_KEY_BYTES + 1);
    assert!(matches!(
        rejected(s.put(Table::Models, &long_key, b"v")),
        Rejection::TooLarge { .. }
    ));
    assert!(matches!(
        rejected(s.put(Table::Models, "", b"v")),
        Rejection::Invalid { .. }
    ));
    // The largest allowed value is fine.
    assert!(matches!(
        s.put(Table::Models, "m", &big[..MAX_VALUE_BYTES]),
        Outcome::Written { .. }
    ));
    // validate() refuses the same before anything is proposed.
    let req = Request::put(Table::Models, "m", big, Precondition::None, None);
    assert!(matches!(req.validate(), Err(Rejection::TooLarge { .. })));
}

#[test]
fn batch_size_limits_are_enforced() {
    let limits = Limits {
        max_batch_ops: 2,
        max_batch_bytes: 10,
        ..Limits::DEFAULT
    };
    let mut s = Store::with_limits(limits);
    let put = |key: &str, value: &[u8]| BatchOp::Put {
        table: Table::Models,
        key: key.into(),
        value: value.to_vec(),
        precondition: Precondition::None,
    };
    let three = [put("a", b""), put("b", b""), put("c", b"")];
    assert!(matches!(
        rejected(s.apply(1, Request::batch(&three, None))),
        Rejection::TooLarge { what, size: 3, limit: 2 } if what == "batch operations"
    ));
    let heavy = [put("a", b"12345"), put("b", b"12345")];
    assert!(matches!(
        rejected(s.apply(1, Request::batch(&heavy, None))),
        Rejection::TooLarge { what, size: 12, limit: 10 } if what == "batch bytes"
    ));
    assert_eq!(s.get(Table::Models, "a"), None);
}

#[test]
fn undecodable_or_empty_commands_are_rejected_not_fatal() {
    let mut s = Store::new();
    for bytes in [vec![0xff, 0xff, 0xff], vec![0x0a], Vec::new()] {
        let r = rejected(s.apply_raw(&Request(bytes)));
        assert!(matches!(r, Rejection::Invalid { .. }), "{r:?}");
    }
    // The state machine goes on.
    assert_eq!(
        s.put(Table::Models, "m", b"v"),
        Outcome::Written { revision: 4 }
    );
    assert!(Request(vec![0xff]).decode().is_err());
    assert!(Request(vec![0xff]).stamped(5).is_err());
}

#[test]
fn unknown_tables_and_lease_tables_are_refused_for_plain_writes() {
    let mut s = Store::new();
    let mut cmd = Request::put(Table::Models, "m", b"v".to_vec(), Precondition::None, None)
        .decode()
        .unwrap();
    if let Some(pb::store_command::Command::Put(p)) = &mut cmd.command {
        p.table = 99;
    }
    let r = rejected(s.apply_raw(&Request(cmd.encode_to_vec())));
    assert!(matches!(r, Rejection::Invalid { .. }));
    for table in [Table::NodeLeases, Table::ShardLeases] {
        assert!(matches!(
            rejected(s.put(table, "0", b"v")),
            Rejection::Invalid { .. }
        ));
        let del = Request::delete(table, "0", Precondition::None, None);
        assert!(matches!(
            rejected(s.apply(1, del)),
            Rejection::Invalid { .. }
        ));
    }
}

#[test]
fn a_command_needing_a_newer_state_machine_is_fatal() {
    let mut cmd = Request::expire_leases().decode().unwrap();
    cmd.requires_version = crate::app::APP_VERSION + 1;
    cmd.now_ms = 5;
    let s = Store::new();
    let txn = s.db.begin_write().unwrap();
    let err = crate::app::apply(&txn, 1, &Request(cmd.encode_to_vec())).unwrap_err();
    assert!(err.0.contains("upgrade this node"), "{err}");
}
