//! Groups: independent commands coalesced into one log entry.

use super::{Store, rejected};
use crate::app::{
    EventFilter, EventKind, LeaseKind, Outcome, Precondition, Rejection, Request, Response, Table,
    events_since, exec,
};

impl Store {
    /// Applies `request` as is at the next revision and returns the raw response.
    fn apply_response(&mut self, request: &Request) -> Response {
        let txn = self.db.begin_write().unwrap();
        let response = exec::apply(&txn, self.next, request, &self.limits).unwrap();
        txn.commit().unwrap();
        self.next += 1;
        response
    }

    /// Applies a group and returns each member's outcome.
    fn apply_group(&mut self, members: Vec<Request>) -> Vec<Outcome> {
        let response = self.apply_response(&Request::group(members));
        assert!(
            response.outcome().is_err(),
            "a group's result is not one outcome"
        );
        response
            .group_members()
            .expect("a group's result")
            .iter()
            .map(|r| r.outcome().unwrap())
            .collect()
    }
}

fn put(key: &str, value: &[u8], precondition: Precondition) -> Request {
    Request::put(Table::Models, key, value, precondition, None)
        .stamped(1_000)
        .unwrap()
}

#[test]
fn members_apply_in_order_each_with_its_own_result_at_the_entry_revision() {
    let mut s = Store::new();
    s.put(Table::Models, "taken", b"x"); // 1
    let outcomes = s.apply_group(vec![
        put("a", b"1", Precondition::None),
        // Refused: "taken" exists. Must not affect the members around it.
        put("taken", b"y", Precondition::MustNotExist),
        // Sees the first member's write: its mod_revision is this entry's.
        put("a", b"2", Precondition::ModRevision(2)),
        Request::grant_lease(LeaseKind::Node, "n1", "n1", 10_000)
            .stamped(5_000)
            .unwrap(),
    ]); // 2
    assert_eq!(outcomes[0], Outcome::Written { revision: 2 });
    assert!(matches!(
        rejected(outcomes[1].clone()),
        Rejection::Conflict {
            current_mod_revision: 1,
            ..
        }
    ));
    assert_eq!(outcomes[2], Outcome::Written { revision: 2 });
    assert_eq!(
        outcomes[3],
        Outcome::LeaseGranted {
            epoch: 2,
            expires_at_ms: 15_000
        }
    );
    assert_eq!(s.get(Table::Models, "a").unwrap().value, b"2");
    assert_eq!(s.get(Table::Models, "taken").unwrap().value, b"x");
    let events = s.read(|t| events_since(t, 2, &EventFilter::default(), 100).unwrap());
    let summary: Vec<_> = events
        .iter()
        .map(|e| (e.revision, e.table, e.key.as_str(), e.kind))
        .collect();
    assert_eq!(
        summary,
        [
            (2, Table::Models, "a", EventKind::Put),
            (2, Table::Models, "a", EventKind::Put),
            (2, Table::NodeLeases, "n1", EventKind::Put),
        ]
    );
}

#[test]
fn a_nested_group_is_refused_alone() {
    let mut s = Store::new();
    let nested = Request::group(vec![put("inner", b"1", Precondition::None)]);
    let outcomes = s.apply_group(vec![nested, put("outer", b"1", Precondition::None)]);
    assert!(
        matches!(rejected(outcomes[0].clone()), Rejection::Invalid { message } if message.contains("nest"))
    );
    assert_eq!(outcomes[1], Outcome::Written { revision: 1 });
    assert!(s.get(Table::Models, "inner").is_none());
}

#[test]
fn an_empty_or_fenced_or_stamped_group_is_refused_whole() {
    let mut s = Store::new();
    let empty = s.apply_raw(&Request::group(Vec::new()));
    assert!(
        matches!(rejected(empty), Rejection::Invalid { message } if message.contains("at least one"))
    );
    let mut stamped = Request::group(vec![put("k", b"1", Precondition::None)])
        .decode()
        .unwrap();
    stamped.now_ms = 7;
    let outcome = s.apply_raw(&Request::from_command(&stamped));
    assert!(
        matches!(rejected(outcome), Rejection::Invalid { message } if message.contains("no fence or time"))
    );
    assert!(s.get(Table::Models, "k").is_none());
}

#[test]
fn a_member_that_is_not_a_command_is_refused_alone() {
    let mut s = Store::new();
    let outcomes = s.apply_group(vec![
        Request(vec![0xff, 0xff, 0xff]),
        put("ok", b"1", Precondition::None),
    ]);
    assert!(matches!(
        rejected(outcomes[0].clone()),
        Rejection::Invalid { .. }
    ));
    assert_eq!(outcomes[1], Outcome::Written { revision: 1 });
    assert!(Request::group(vec![put("x", b"", Precondition::None)]).is_group());
    assert!(!put("x", b"", Precondition::None).is_group());
}
