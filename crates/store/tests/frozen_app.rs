//! Frozen bytes of the state machine's replicated and persisted encodings:
//! commands in the Raft log, answers forwarded between members, snapshots.
//!
//! NEVER EDIT THE EXPECTED BYTES OR THE VALUES IN THIS FILE. Raft logs and
//! snapshots written by an older tidal must be read by a newer one, and
//! during a rolling upgrade members of both versions read each other's
//! entries. If a change to `store.proto`, to prost or to the constructors in
//! `tidal_store::app` makes one of these tests fail, that change would break
//! an upgrade. Fix the change, not the test. A new field or command gets a
//! new test with its own frozen bytes.

use prost::Message;
use redb::{Database, ReadableDatabase};
use tidal_proto::pb;
use tidal_store::app::{
    self, Fence, KeyValueRecord, LeaseKind, Outcome, Precondition, Rejection, Request, Response,
    SNAPSHOT_FORMAT_VERSION, Table,
};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

const NOW_MS: u64 = 1_750_000_000_000;

const PUT: &str = concat!(
    "0880b883a1f732", // 1 now_ms = 1_750_000_000_000
    "1205",           // 2 fence {
    "0811",           //   1 shard = 17
    "10ac02",         //   2 epoch = 300 }
    "2210",           // 4 put {
    "0802",           //   1 table = DEPLOYMENTS
    "1206",           //   2 key =
    "6465705f3778",   //     "dep_7x"
    "1a027631",       //   3 value = "v1"
    "2029",           //   4 expected_mod_revision = 41 }
);

#[test]
fn fenced_compare_and_set_put_bytes_are_frozen() {
    let put = Request::put(
        Table::Deployments,
        "dep_7x",
        b"v1".to_vec(),
        Precondition::ModRevision(41),
        Some(Fence {
            shard: 17,
            epoch: 300,
        }),
    )
    .stamped(NOW_MS)
    .unwrap();
    assert_eq!(hex(&put.0), PUT);
    let decoded = Request(unhex(PUT)).decode().unwrap();
    assert_eq!(decoded.now_ms, NOW_MS);
    assert_eq!(
        decoded.fence,
        Some(pb::Fence {
            shard: 17,
            epoch: 300
        })
    );
    let Some(pb::store_command::Command::Put(p)) = decoded.command else {
        panic!("not a put: {decoded:?}");
    };
    assert_eq!(p.expected_mod_revision, Some(41));
}

// Must-not-exist is expected_mod_revision = 0, present; no fence, unstamped.
const CREATE: &str = concat!(
    "2207",   // 4 put {
    "0802",   //   1 table = DEPLOYMENTS
    "120164", //   2 key = "d"; 3 value empty, not written
    "2000",   //   4 expected_mod_revision = 0 (present) }
);

#[test]
fn must_not_exist_put_bytes_are_frozen() {
    let put = Request::put(
        Table::Deployments,
        "d",
        Vec::new(),
        Precondition::MustNotExist,
        None,
    );
    assert_eq!(hex(&put.0), CREATE);
}

const GRANT: &str = concat!(
    "0880b883a1f732", // 1 now_ms = 1_750_000_000_000
    "3a10",           // 7 grant_lease {
    "0802",           //   1 kind = SHARD
    "12023137",       //   2 name = "17"
    "1a0563746c2d61", //   3 holder = "ctl-a"
    "20904e",         //   4 ttl_ms = 10_000 }
);

#[test]
fn grant_lease_bytes_are_frozen() {
    let grant = Request::grant_lease(LeaseKind::Shard, "17", "ctl-a", 10_000)
        .stamped(NOW_MS)
        .unwrap();
    assert_eq!(hex(&grant.0), GRANT);
    assert!(Request(unhex(GRANT)).validate().is_ok());
}

const CONFLICT: &str = concat!(
    "3a09",   // 7 rejected {
    "0a07",   //   1 conflict {
    "0802",   //     1 table = DEPLOYMENTS
    "120164", //     2 key = "d"
    "182a",   //     3 current_mod_revision = 42 } }
);

#[test]
fn rejection_response_bytes_are_frozen() {
    let conflict = Outcome::Rejected(Rejection::Conflict {
        table: Table::Deployments,
        key: "d".into(),
        current_mod_revision: 42,
    });
    assert_eq!(hex(&Response::from_outcome(conflict.clone()).0), CONFLICT);
    assert_eq!(Response(unhex(CONFLICT)).outcome().unwrap(), conflict);
}

// A group of two members (the CREATE and GRANT commands above, as bytes).
const GROUP: &str = concat!(
    "1802", // 3 requires_version = 2
    "5a26", // 11 group {
    "0a09", //   1 commands = CREATE (9 bytes)
    "220708021201642000",
    "0a19", //   1 commands = GRANT (25 bytes) }
    "0880b883a1f7323a100802120231371a0563746c2d6120904e",
);

#[test]
fn group_bytes_are_frozen() {
    let create = Request::put(
        Table::Deployments,
        "d",
        Vec::new(),
        Precondition::MustNotExist,
        None,
    );
    let grant = Request::grant_lease(LeaseKind::Shard, "17", "ctl-a", 10_000)
        .stamped(NOW_MS)
        .unwrap();
    let group = Request::group(vec![create, grant]);
    assert_eq!(hex(&group.0), GROUP);
    assert!(Request(unhex(GROUP)).is_group());
    assert!(Request(unhex(GROUP)).validate().is_ok());
}

// A group's result: Written at revision 7, then the CONFLICT rejection above.
const GROUP_RESULT: &str = concat!(
    "4213",     // 8 group {
    "0a04",     //   1 results = (4 bytes)
    "0a020807", //     written { revision = 7 }
    "0a0b",     //   1 results = CONFLICT (11 bytes) }
    "3a090a070802120164182a",
);

#[test]
fn group_result_bytes_are_frozen() {
    let conflict = Outcome::Rejected(Rejection::Conflict {
        table: Table::Deployments,
        key: "d".into(),
        current_mod_revision: 42,
    });
    let result = Response::group(vec![
        Response::from_outcome(Outcome::Written { revision: 7 }),
        Response::from_outcome(conflict.clone()),
    ]);
    assert_eq!(hex(&result.0), GROUP_RESULT);
    let members = Response(unhex(GROUP_RESULT)).group_members().unwrap();
    assert_eq!(
        members[0].outcome().unwrap(),
        Outcome::Written { revision: 7 }
    );
    assert_eq!(members[1].outcome().unwrap(), conflict);
}

const SNAPSHOT: &str = concat!(
    "01",       // format version 1, then a StoreSnapshot:
    "0801",     // 1 revision = 1
    "1211",     // 2 tables {
    "0801",     //   1 table = MODELS
    "120d",     //   2 entries {
    "0a026d31", //     1 key = "m1"
    "1207",     //     2 value {
    "0801",     //       1 create_revision = 1
    "1001",     //       2 mod_revision = 1
    "1a0178",   //       3 value = "x" } } }
);

#[test]
fn snapshot_bytes_are_frozen() {
    assert_eq!(SNAPSHOT_FORMAT_VERSION, 1);
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join("a.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    app::init_tables(&txn).unwrap();
    let put = Request::put(
        Table::Models,
        "m1",
        b"x".to_vec(),
        Precondition::MustNotExist,
        None,
    );
    app::apply(&txn, 1, &put).unwrap();
    txn.commit().unwrap();
    let exported = app::export(&db.begin_read().unwrap()).unwrap();
    assert_eq!(hex(&exported), SNAPSHOT);

    let other = Database::create(dir.path().join("b.redb")).unwrap();
    let txn = other.begin_write().unwrap();
    app::init_tables(&txn).unwrap();
    app::import(&txn, &unhex(SNAPSHOT), 1).unwrap();
    txn.commit().unwrap();
    let txn = other.begin_read().unwrap();
    assert_eq!(
        app::get(&txn, Table::Models, "m1").unwrap(),
        Some(KeyValueRecord {
            create_revision: 1,
            mod_revision: 1,
            value: b"x".to_vec()
        })
    );
    assert_eq!(app::current_revision(&txn).unwrap(), 1);
    // The payload is a plain StoreSnapshot message.
    assert_eq!(
        pb::StoreSnapshot::decode(&unhex(SNAPSHOT)[1..])
            .unwrap()
            .revision,
        1
    );
}
