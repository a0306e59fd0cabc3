//! Leases: grant, renew, release, expiry at leader time, and fencing.

use super::{Store, rejected};
use crate::app::{
    Fence, Lease, LeaseKind, Outcome, Precondition, Rejection, Request, Table, get_lease, leases,
};

const NODE: LeaseKind = LeaseKind::Node;
const SHARD: LeaseKind = LeaseKind::Shard;

fn lease(s: &Store, kind: LeaseKind, name: &str) -> Option<Lease> {
    s.read(|t| get_lease(t, kind, name).unwrap())
}

#[test]
fn a_grant_takes_an_absent_lease_with_the_revision_as_epoch() {
    let mut s = Store::new();
    s.put(Table::Models, "m", b"x"); // revision 1
    let granted = s.apply(
        10_000,
        Request::grant_lease(NODE, "node-a", "node-a", 5_000),
    );
    assert_eq!(
        granted,
        Outcome::LeaseGranted {
            epoch: 2,
            expires_at_ms: 15_000
        }
    );
    assert_eq!(
        lease(&s, NODE, "node-a"),
        Some(Lease {
            holder: "node-a".into(),
            epoch: 2,
            granted_at_ms: 10_000,
            expires_at_ms: 15_000,
            ttl_ms: 5_000
        })
    );
    // The lease is a record of its table, with revisions, like any other.
    assert_eq!(s.get(Table::NodeLeases, "node-a").unwrap().mod_revision, 2);
    assert_eq!(
        lease(&s, SHARD, "node-a"),
        None,
        "node and shard leases are apart"
    );
}

#[test]
fn a_live_lease_is_held_against_others_until_it_expires() {
    let mut s = Store::new();
    s.apply(1_000, Request::grant_lease(SHARD, "3", "ctl-a", 1_000));
    let held = rejected(s.apply(1_999, Request::grant_lease(SHARD, "3", "ctl-b", 1_000)));
    assert_eq!(
        held,
        Rejection::LeaseHeld {
            holder: "ctl-a".into(),
            expires_at_ms: 2_000
        }
    );
    // Expired at exactly expires_at_ms: another holder may take it, with a new epoch.
    let taken = s.apply(2_000, Request::grant_lease(SHARD, "3", "ctl-b", 1_000));
    assert_eq!(
        taken,
        Outcome::LeaseGranted {
            epoch: 3,
            expires_at_ms: 3_000
        }
    );
    assert_eq!(lease(&s, SHARD, "3").unwrap().holder, "ctl-b");
}

#[test]
fn a_grant_to_the_current_holder_issues_a_new_epoch() {
    let mut s = Store::new();
    s.apply(1_000, Request::grant_lease(SHARD, "0", "ctl-a", 10_000));
    let again = s.apply(2_000, Request::grant_lease(SHARD, "0", "ctl-a", 10_000));
    assert_eq!(
        again,
        Outcome::LeaseGranted {
            epoch: 2,
            expires_at_ms: 12_000
        }
    );
    // The old epoch is fenced off.
    let put = Request::put(
        Table::Deployments,
        "d",
        b"v".to_vec(),
        Precondition::None,
        Some(Fence { shard: 0, epoch: 1 }),
    );
    assert_eq!(
        rejected(s.apply(2_001, put)),
        Rejection::StaleEpoch { current: Some(2) }
    );
}

#[test]
fn renew_needs_the_holder_the_epoch_and_a_live_lease() {
    let mut s = Store::new();
    s.apply(1_000, Request::grant_lease(NODE, "n1", "n1", 3_000)); // epoch 1, expires 4000
    let renewed = s.apply(2_000, Request::renew_lease(NODE, "n1", "n1", 1));
    assert_eq!(
        renewed,
        Outcome::LeaseRenewed {
            epoch: 1,
            expires_at_ms: 5_000
        }
    );
    assert_eq!(lease(&s, NODE, "n1").unwrap().expires_at_ms, 5_000);

    let wrong_holder = rejected(s.apply(2_100, Request::renew_lease(NODE, "n1", "n2", 1)));
    assert!(matches!(
        wrong_holder,
        Rejection::NotHolder {
            current: Some(Lease { epoch: 1, .. })
        }
    ));
    let wrong_epoch = rejected(s.apply(2_100, Request::renew_lease(NODE, "n1", "n1", 7)));
    assert!(matches!(wrong_epoch, Rejection::NotHolder { .. }));
    let absent = rejected(s.apply(2_100, Request::renew_lease(NODE, "n9", "n9", 1)));
    assert_eq!(absent, Rejection::NotHolder { current: None });
    // Expired (but not yet removed): no renewal; the holder must grant again.
    let late = rejected(s.apply(5_000, Request::renew_lease(NODE, "n1", "n1", 1)));
    assert!(matches!(late, Rejection::NotHolder { current: Some(_) }));
    assert_eq!(
        lease(&s, NODE, "n1").unwrap().expires_at_ms,
        5_000,
        "refusals write nothing"
    );
}

#[test]
fn release_removes_only_the_callers_lease_and_is_idempotent() {
    let mut s = Store::new();
    s.apply(1_000, Request::grant_lease(SHARD, "5", "ctl-a", 10_000)); // epoch 1
    let other = rejected(s.apply(1_100, Request::release_lease(SHARD, "5", "ctl-b", 1)));
    assert!(matches!(other, Rejection::NotHolder { current: Some(_) }));
    let stale = rejected(s.apply(1_100, Request::release_lease(SHARD, "5", "ctl-a", 9)));
    assert!(matches!(stale, Rejection::NotHolder { .. }));
    assert_eq!(
        s.apply(1_200, Request::release_lease(SHARD, "5", "ctl-a", 1)),
        Outcome::LeaseReleased { existed: true }
    );
    assert_eq!(lease(&s, SHARD, "5"), None);
    assert_eq!(
        s.apply(1_300, Request::release_lease(SHARD, "5", "ctl-a", 1)),
        Outcome::LeaseReleased { existed: false }
    );
    // Free again: anyone may take it.
    assert!(matches!(
        s.apply(1_400, Request::grant_lease(SHARD, "5", "ctl-b", 10)),
        Outcome::LeaseGranted { .. }
    ));
}

#[test]
fn expire_leases_removes_exactly_those_expired_at_the_leaders_time() {
    let mut s = Store::new();
    s.apply(1_000, Request::grant_lease(NODE, "n1", "n1", 1_000)); // until 2000
    s.apply(1_000, Request::grant_lease(NODE, "n2", "n2", 5_000)); // until 6000
    s.apply(1_000, Request::grant_lease(SHARD, "1", "ctl", 1_500)); // until 2500
    assert_eq!(
        s.apply(1_999, Request::expire_leases()),
        Outcome::LeasesExpired { count: 0 }
    );
    assert_eq!(
        s.apply(2_500, Request::expire_leases()),
        Outcome::LeasesExpired { count: 2 }
    );
    let names = |kind| {
        s.read(|t| leases(t, kind).unwrap())
            .into_iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>()
    };
    assert_eq!(names(NODE), ["n2"]);
    assert!(names(SHARD).is_empty());
}

#[test]
fn lease_commands_need_leader_time_and_valid_fields() {
    let mut s = Store::new();
    // Not stamped: refused, not applied with time 0.
    let r = rejected(s.apply_raw(&Request::grant_lease(NODE, "n1", "n1", 1_000)));
    assert!(matches!(r, Rejection::Invalid { .. }));
    assert!(matches!(
        rejected(s.apply_raw(&Request::expire_leases())),
        Rejection::Invalid { .. }
    ));
    for bad in [
        Request::grant_lease(NODE, "n1", "n1", 0),
        Request::grant_lease(NODE, "n1", "n1", crate::app::MAX_LEASE_TTL_MS + 1),
        Request::grant_lease(NODE, "", "n1", 10),
        Request::grant_lease(NODE, "n1", "", 10),
        Request::grant_lease(SHARD, "07", "ctl", 10),
        Request::grant_lease(SHARD, "shard-1", "ctl", 10),
    ] {
        assert!(matches!(
            rejected(s.apply(1, bad)),
            Rejection::Invalid { .. }
        ));
    }
    assert_eq!(lease(&s, NODE, "n1"), None);
}

fn fenced_put(shard: u32, epoch: u64) -> Request {
    Request::put(
        Table::Deployments,
        "d1",
        b"desired=3".to_vec(),
        Precondition::None,
        Some(Fence { shard, epoch }),
    )
}

#[test]
fn fenced_writes_apply_only_under_the_live_epoch() {
    let mut s = Store::new();
    // Absent lease.
    assert_eq!(
        rejected(s.apply(1_000, fenced_put(4, 1))),
        Rejection::StaleEpoch { current: None }
    );
    s.apply(1_000, Request::grant_lease(SHARD, "4", "ctl-a", 1_000)); // epoch 2, until 2000
    // Accepted under the live epoch.
    assert_eq!(
        s.apply(1_500, fenced_put(4, 2)),
        Outcome::Written { revision: 3 }
    );
    // Wrong epoch, or another shard's lease.
    assert_eq!(
        rejected(s.apply(1_500, fenced_put(4, 1))),
        Rejection::StaleEpoch { current: Some(2) }
    );
    assert_eq!(
        rejected(s.apply(1_500, fenced_put(5, 2))),
        Rejection::StaleEpoch { current: None }
    );
    // Expired at the command's time, even before ExpireLeases removes it.
    assert_eq!(
        rejected(s.apply(2_000, fenced_put(4, 2))),
        Rejection::StaleEpoch { current: None }
    );
    // A new holder's epoch wins; the old one is stale.
    s.apply(2_000, Request::grant_lease(SHARD, "4", "ctl-b", 1_000)); // epoch 7
    assert_eq!(
        rejected(s.apply(2_100, fenced_put(4, 2))),
        Rejection::StaleEpoch { current: Some(7) }
    );
    assert_eq!(
        s.apply(2_100, fenced_put(4, 7)),
        Outcome::Written { revision: 9 }
    );
    assert_eq!(s.get(Table::Deployments, "d1").unwrap().mod_revision, 9);
    // A fenced delete and batch are checked the same way.
    let del = Request::delete(
        Table::Deployments,
        "d1",
        Precondition::None,
        Some(Fence { shard: 4, epoch: 2 }),
    );
    assert!(matches!(
        rejected(s.apply(2_100, del)),
        Rejection::StaleEpoch { .. }
    ));
    assert!(s.get(Table::Deployments, "d1").is_some());
    // A fenced command needs the leader's time.
    assert!(matches!(
        rejected(s.apply_raw(&fenced_put(4, 7))),
        Rejection::Invalid { .. }
    ));
}
