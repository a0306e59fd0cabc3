//! Frozen bytes of openraft's own records as tidal persists and sends them
//! (a format-version byte, then postcard).
//!
//! NEVER EDIT THE EXPECTED BYTES. If one of these tests fails, the change
//! breaks existing data directories or mixed-version clusters: keep the old
//! format readable (a new version byte) instead.

use openraft::{BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, Vote};
use tidal_store::codec::{decode, encode};
use tidal_store::{NodeId, Request, TypeConfig};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn log_id(term: u64, node: NodeId, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

#[test]
fn vote_bytes_are_frozen() {
    let vote = Vote::new_committed(3, 2);
    let bytes = encode(&vote).unwrap();
    assert_eq!(hex(&bytes), "01030201");
    assert_eq!(decode::<Vote<NodeId>>(&bytes).unwrap(), vote);
}

#[test]
fn log_id_bytes_are_frozen() {
    let id = Some(log_id(3, 2, 300));
    let bytes = encode(&id).unwrap();
    assert_eq!(hex(&bytes), "01010302ac02");
    assert_eq!(decode::<Option<LogId<NodeId>>>(&bytes).unwrap(), id);
}

#[test]
fn normal_entry_bytes_are_frozen() {
    let entry: Entry<TypeConfig> = Entry {
        log_id: log_id(1, 1, 7),
        payload: EntryPayload::Normal(Request(vec![0x08, 0x01])),
    };
    let bytes = encode(&entry).unwrap();
    assert_eq!(hex(&bytes), "0101010701020801");
    let back: Entry<TypeConfig> = decode(&bytes).unwrap();
    assert_eq!(back.log_id, entry.log_id);
    assert!(matches!(back.payload, EntryPayload::Normal(Request(ref b)) if b == &[0x08, 0x01]));
}

#[test]
fn membership_entry_bytes_are_frozen() {
    let nodes = std::collections::BTreeMap::from([(
        1,
        BasicNode {
            addr: "127.0.0.1:7001".to_owned(),
        },
    )]);
    let membership = Membership::new(vec![std::collections::BTreeSet::from([1])], nodes);
    let entry: Entry<TypeConfig> = Entry {
        log_id: log_id(1, 1, 1),
        payload: EntryPayload::Membership(membership),
    };
    let bytes = encode(&entry).unwrap();
    let expected = "010101010201010101010e3132372e302e302e313a37303031";
    assert_eq!(hex(&bytes), expected);
    let back: Entry<TypeConfig> = decode(&bytes).unwrap();
    assert_eq!(back.log_id, entry.log_id);
}
