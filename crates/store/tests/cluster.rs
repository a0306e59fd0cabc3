//! In-process 3-node clusters on loopback: failover, catch-up, snapshots,
//! membership changes. Links are cut with the `Faults` fixture; nodes are
//! stopped and restarted on their data directories.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tidal_store::app::{Outcome, Precondition, Table};
use tidal_store::client::Client;
use tidal_store::network::Faults;
use tidal_store::node::{NodeOptions, StoreNode, Tuning};
use tidal_store::{NodeId, Request};

const WAIT: Duration = Duration::from_secs(20);

struct Cluster {
    nodes: BTreeMap<NodeId, StoreNode>,
    addrs: BTreeMap<NodeId, SocketAddr>,
    dirs: BTreeMap<NodeId, tempfile::TempDir>,
    faults: Faults,
}

async fn wait_until<F: FnMut() -> bool>(what: &str, mut done: F) {
    let start = tokio::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Cluster {
    async fn start_node(&mut self, id: NodeId) {
        let dir = self
            .dirs
            .entry(id)
            .or_insert_with(|| tempfile::tempdir().unwrap());
        let listen = self
            .addrs
            .get(&id)
            .copied()
            .unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        let node = StoreNode::start(NodeOptions {
            node_id: id,
            data_dir: dir.path().to_owned(),
            listen,
            advertise: None,
            tuning: Tuning::fast(),
            faults: self.faults.clone(),
        })
        .await
        .unwrap();
        self.addrs.insert(id, node.addr());
        self.nodes.insert(id, node);
    }

    /// `n` nodes: node 1 initializes the cluster, the others join as voters.
    async fn new(n: NodeId) -> Self {
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            addrs: BTreeMap::new(),
            dirs: BTreeMap::new(),
            faults: Faults::default(),
        };
        for id in 1..=n {
            cluster.start_node(id).await;
        }
        cluster.nodes[&1].initialize().await.unwrap();
        let client = cluster.client_of(&[1]);
        for id in 2..=n {
            client
                .add_member(id, &cluster.addrs[&id].to_string(), true)
                .await
                .unwrap();
        }
        cluster
    }

    fn client_of(&self, ids: &[NodeId]) -> Client {
        Client::new(ids.iter().map(|id| self.addrs[id].to_string()), WAIT).unwrap()
    }

    fn client(&self) -> Client {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        self.client_of(&ids)
    }

    /// The leader that the running nodes in `among` agree on.
    async fn leader(&self, among: &[NodeId]) -> NodeId {
        let mut leader = 0;
        wait_until("a leader", || {
            let seen: Vec<Option<NodeId>> = among
                .iter()
                .map(|id| self.nodes[id].raft().metrics().borrow().current_leader)
                .collect();
            match seen[0] {
                Some(l) if among.contains(&l) && seen.iter().all(|s| *s == Some(l)) => {
                    leader = l;
                    true
                }
                _ => false,
            }
        })
        .await;
        leader
    }

    async fn stop(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).unwrap();
        node.shutdown().await.unwrap();
    }

    async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }

    /// Waits until node `id` has applied `revision`.
    async fn applied(&self, id: NodeId, revision: u64) {
        let applied = self.nodes[&id].state_machine().applied_revision();
        wait_until(&format!("node {id} to apply {revision}"), || {
            *applied.borrow() >= revision
        })
        .await;
    }

    /// The value of `key` on node `id`, read locally.
    fn local(&self, id: NodeId, key: &str) -> Option<Vec<u8>> {
        use redb::ReadableDatabase;
        let txn = self.nodes[&id]
            .state_machine()
            .database()
            .begin_read()
            .unwrap();
        tidal_store::app::get(&txn, Table::Deployments, key)
            .unwrap()
            .map(|kv| kv.value)
    }
}

/// A 3-node cluster in which one follower was stopped while `n` keys
/// (`key-000`…, value = the number) were written through the leader; returns
/// the cluster, the stopped follower and the last revision written.
async fn writes_while_a_follower_is_down(n: usize) -> (Cluster, NodeId, u64) {
    let mut cluster = Cluster::new(3).await;
    let leader = cluster.leader(&[1, 2, 3]).await;
    let follower = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    cluster.stop(follower).await;
    let client = cluster.client_of(&[leader]);
    let mut last = 0;
    for i in 0..n {
        last = put(&client, &format!("key-{i:03}"), &i.to_string()).await;
    }
    (cluster, follower, last)
}

async fn put(client: &Client, key: &str, value: &str) -> u64 {
    let written = client
        .write(&Request::put(
            Table::Deployments,
            key,
            value.as_bytes().to_vec(),
            Precondition::None,
            None,
        ))
        .await
        .unwrap();
    assert!(
        matches!(written.outcome, Outcome::Written { .. }),
        "{written:?}"
    );
    written.revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_then_a_new_leader_is_elected_and_writes_continue() {
    let mut cluster = Cluster::new(3).await;
    let client = cluster.client();
    let first = put(&client, "a", "1").await;
    let old = cluster.leader(&[1, 2, 3]).await;
    cluster.stop(old).await;
    let rest: Vec<NodeId> = [1, 2, 3].into_iter().filter(|&id| id != old).collect();
    let new = cluster.leader(&rest).await;
    assert_ne!(new, old);
    let second = put(&cluster.client(), "b", "2").await;
    assert!(second > first);
    for id in &rest {
        cluster.applied(*id, second).await;
        assert_eq!(cluster.local(*id, "a").as_deref(), Some(&b"1"[..]));
        assert_eq!(cluster.local(*id, "b").as_deref(), Some(&b"2"[..]));
    }
    // The old leader comes back as a follower and catches up.
    cluster.start_node(old).await;
    cluster.applied(old, second).await;
    assert_eq!(cluster.local(old, "b").as_deref(), Some(&b"2"[..]));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_leader_is_replaced_and_catches_up_when_healed() {
    let cluster = Cluster::new(3).await;
    let old = cluster.leader(&[1, 2, 3]).await;
    let rest: Vec<NodeId> = [1, 2, 3].into_iter().filter(|&id| id != old).collect();
    cluster.faults.isolate(old, &[1, 2, 3], true);
    let new = cluster.leader(&rest).await;
    assert_ne!(new, old);
    let revision = put(&cluster.client_of(&rest), "k", "during-partition").await;
    assert_eq!(
        cluster.local(old, "k"),
        None,
        "the isolated node saw nothing"
    );
    cluster.faults.isolate(old, &[1, 2, 3], false);
    cluster.applied(old, revision).await;
    assert_eq!(
        cluster.local(old, "k").as_deref(),
        Some(&b"during-partition"[..])
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_follower_catches_up() {
    let (mut cluster, follower, last) = writes_while_a_follower_is_down(50).await;
    cluster.start_node(follower).await;
    cluster.applied(follower, last).await;
    assert_eq!(
        cluster.local(follower, "key-049").as_deref(),
        Some(&b"49"[..])
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_promoted_to_voter_receives_a_snapshot() {
    let mut cluster = Cluster::new(3).await;
    let client = cluster.client();
    let mut last = 0;
    // Tuning::fast snapshots every 200 entries and keeps no log after it.
    for i in 0..450 {
        last = put(&client, &format!("key-{i:03}"), &i.to_string()).await;
    }
    let leader = cluster.leader(&[1, 2, 3]).await;
    wait_until("the leader to snapshot", || {
        cluster.nodes[&leader]
            .raft()
            .metrics()
            .borrow()
            .snapshot
            .is_some()
    })
    .await;
    cluster.start_node(4).await;
    let status = client
        .add_member(4, &cluster.addrs[&4].to_string(), true)
        .await
        .unwrap();
    assert!(
        status.members.iter().any(|m| m.node_id == 4 && m.voter),
        "{status:?}"
    );
    cluster.applied(4, last).await;
    let metrics = cluster.nodes[&4].raft().metrics().borrow().clone();
    assert!(
        metrics.snapshot.is_some(),
        "node 4 installed a snapshot: {metrics:?}"
    );
    assert_eq!(cluster.local(4, "key-000").as_deref(), Some(&b"0"[..]));
    assert_eq!(cluster.local(4, "key-449").as_deref(), Some(&b"449"[..]));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_shrinks_to_one_and_grows_back() {
    let mut cluster = Cluster::new(3).await;
    let client = cluster.client();
    put(&client, "before", "3 nodes").await;
    let leader = cluster.leader(&[1, 2, 3]).await;
    let others: Vec<NodeId> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    for &id in &others {
        client.remove_member(id).await.unwrap();
    }
    let status = client.status().await.unwrap();
    assert_eq!(status.members.len(), 1, "{status:?}");
    for &id in &others {
        cluster.stop(id).await;
    }
    let alone = cluster.client_of(&[leader]);
    let revision = put(&alone, "alone", "1 node").await;
    // Grow back with fresh nodes (a removed node's data dir is retired).
    for id in [4, 5] {
        cluster.start_node(id).await;
        alone
            .add_member(id, &cluster.addrs[&id].to_string(), true)
            .await
            .unwrap();
        cluster.applied(id, revision).await;
        assert_eq!(cluster.local(id, "alone").as_deref(), Some(&b"1 node"[..]));
    }
    let status = alone.status().await.unwrap();
    assert_eq!(
        status.members.iter().filter(|m| m.voter).count(),
        3,
        "{status:?}"
    );
    cluster.stop(leader).await;
    let new = cluster.leader(&[4, 5]).await;
    assert!([4, 5].contains(&new));
    put(&cluster.client_of(&[4, 5]), "after", "regrown").await;
    cluster.shutdown().await;
}

/// Reads watch messages into `seen` until `enough(seen)` holds; returns the
/// revision to resume from.
async fn watch_until(
    stream: &mut tonic::Streaming<tidal_proto::pb::WatchResponse>,
    seen: &mut Vec<(u64, String)>,
    mut next: u64,
    enough: impl Fn(&[(u64, String)]) -> bool,
) -> u64 {
    use tidal_proto::pb::watch_response::Response;
    while !enough(seen) {
        let message = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("watch stalled")
            .expect("watch failed")
            .expect("watch ended");
        match message.response {
            Some(Response::Events(events)) => {
                for event in events.events {
                    assert!(
                        event.revision >= next,
                        "event {} before {next}",
                        event.revision
                    );
                    seen.push((event.revision, event.key));
                }
                next = message.next_revision;
            }
            other => panic!("unexpected watch answer {other:?}"),
        }
    }
    next
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resumed_watch_sees_every_event_once_in_order_across_a_leader_change() {
    const N: usize = 150;
    let mut cluster = Cluster::new(3).await;
    let start = put(&cluster.client(), "start", "").await + 1;
    let leader = cluster.leader(&[1, 2, 3]).await;
    let others: Vec<NodeId> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    let (first, second) = (others[0], others[1]);

    // Keys are created with must-not-exist, so a write retried after the
    // failover cannot create a second event for the same key.
    let writer_client = cluster.client();
    let writer = tokio::spawn(async move {
        for i in 0..N {
            let request = Request::put(
                Table::Deployments,
                format!("w-{i:04}"),
                vec![1],
                Precondition::MustNotExist,
                None,
            );
            writer_client.write(&request).await.unwrap();
        }
    });

    let filter = tidal_store::app::EventFilter {
        table: Some(Table::Deployments),
        key_prefix: "w-".to_owned(),
    };
    let mut seen = Vec::new();
    let mut stream = cluster
        .client_of(&[first])
        .watch(start, &filter)
        .await
        .unwrap();
    let next = watch_until(&mut stream, &mut seen, start, |s| s.len() >= 40).await;
    drop(stream); // the watcher disconnects

    cluster.stop(leader).await;
    let new_leader = cluster.leader(&[first, second]).await;
    assert_ne!(new_leader, leader);

    // Resume from the last revision seen, on the other node.
    let mut stream = cluster
        .client_of(&[second])
        .watch(next, &filter)
        .await
        .unwrap();
    watch_until(&mut stream, &mut seen, next, |s| s.len() >= N).await;
    writer.await.unwrap();

    let keys: Vec<String> = seen.iter().map(|(_, k)| k.clone()).collect();
    let expected: Vec<String> = (0..N).map(|i| format!("w-{i:04}")).collect();
    assert_eq!(keys, expected, "every event exactly once, in order");
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "revisions increase"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_from_before_a_snapshot_is_told_to_relist() {
    use tidal_proto::pb::watch_response::Response;
    // Tuning::fast snapshots every 200 entries and keeps no log: the
    // follower comes back to a snapshot, without the history before it.
    let (mut cluster, follower, last) = writes_while_a_follower_is_down(450).await;
    cluster.start_node(follower).await;
    cluster.applied(follower, last).await;
    let filter = tidal_store::app::EventFilter::default();
    let mut stream = cluster
        .client_of(&[follower])
        .watch(1, &filter)
        .await
        .unwrap();
    let answer = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(Response::Compacted(compacted)) = answer.response else {
        panic!("expected a re-list answer, got {answer:?}");
    };
    assert!(compacted.compacted_revision > 1, "{compacted:?}");
    assert!(
        compacted.current_revision >= compacted.compacted_revision - 1,
        "{compacted:?}"
    );
    assert_eq!(answer.next_revision, compacted.current_revision + 1);
    assert!(
        stream.message().await.unwrap().is_none(),
        "the stream ends after it"
    );
    // Re-list at the current revision, then watch from the next one.
    let (rows, revision) = cluster
        .client_of(&[follower])
        .list(Table::Deployments, "key-")
        .await
        .unwrap();
    assert_eq!(rows.len(), 450);
    let stream = cluster
        .client_of(&[follower])
        .watch(revision + 1, &filter)
        .await;
    assert!(stream.is_ok());
    drop(stream);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shard_leases_fence_writes_and_expire_by_the_leaders_clock() {
    use tidal_store::app::{Fence, LeaseKind, Rejection};
    let mut cluster = Cluster::new(3).await;
    let client = cluster.client();
    let granted = client
        .write(&Request::grant_lease(
            LeaseKind::Shard,
            "7",
            "controller-a",
            4_000,
        ))
        .await
        .unwrap();
    let Outcome::LeaseGranted { epoch, .. } = granted.outcome else {
        panic!("{granted:?}");
    };
    assert_eq!(epoch, granted.revision, "the epoch is the grant's revision");
    let fenced = |epoch| {
        Request::put(
            Table::Deployments,
            "d1",
            b"desired=3".to_vec(),
            Precondition::None,
            Some(Fence { shard: 7, epoch }),
        )
    };
    let ok = client.write(&fenced(epoch)).await.unwrap();
    assert!(matches!(ok.outcome, Outcome::Written { .. }), "{ok:?}");
    let stale = client.write(&fenced(epoch - 1)).await.unwrap();
    assert!(
        matches!(stale.outcome, Outcome::Rejected(Rejection::StaleEpoch { current: Some(e) }) if e == epoch),
        "{stale:?}"
    );
    // Another controller cannot take the live lease, even after a failover.
    let leader = cluster.leader(&[1, 2, 3]).await;
    cluster.stop(leader).await;
    let rest: Vec<NodeId> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    let client = cluster.client_of(&rest);
    // Not renewed: the new leader proposes its expiry, and then the old
    // epoch no longer fences anything.
    let mut rejected = None;
    for _ in 0..300 {
        let answer = client.write(&fenced(epoch)).await.unwrap();
        if let Outcome::Rejected(r) = answer.outcome {
            rejected = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        matches!(rejected, Some(Rejection::StaleEpoch { current: None })),
        "{rejected:?}"
    );
    // Fencing goes by the command's time at once; the record itself is
    // removed by the ExpireLeases command the leader proposes soon after.
    let mut removed = false;
    for _ in 0..300 {
        let (lease, _) = client.get(Table::ShardLeases, "7").await.unwrap();
        if lease.is_none() {
            removed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        removed,
        "the expired lease was removed by an ExpireLeases command"
    );
    let regrant = client
        .write(&Request::grant_lease(
            LeaseKind::Shard,
            "7",
            "controller-b",
            1_500,
        ))
        .await
        .unwrap();
    assert!(
        matches!(regrant.outcome, Outcome::LeaseGranted { epoch: e, .. } if e > epoch),
        "{regrant:?}"
    );
    cluster.shutdown().await;
}

/// Concurrent writes to the leader are coalesced into shared log entries
/// (groups); each writer still gets its own answer, and one writer's refusal
/// does not touch the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_share_entries_and_each_gets_its_own_answer() {
    use std::collections::BTreeSet;
    let cluster = Cluster::new(3).await;
    let leader = cluster.leader(&[1, 2, 3]).await;
    let cas_base = put(&cluster.client_of(&[leader]), "cas", "base").await;
    let mut revisions_per_write = Vec::new();
    for round in 0..5 {
        let mut tasks = Vec::new();
        for i in 0..72 {
            let client = cluster.client_of(&[leader]);
            tasks.push(tokio::spawn(async move {
                let request = if i < 64 {
                    Request::put(
                        Table::Deployments,
                        format!("r{round}-k{i}"),
                        format!("{round}-{i}").into_bytes(),
                        Precondition::None,
                        None,
                    )
                } else {
                    // All of these expect the same revision: at most one
                    // (exactly one in round 0) can win.
                    Request::put(
                        Table::Deployments,
                        "cas",
                        format!("cas-{round}-{i}").into_bytes(),
                        Precondition::ModRevision(cas_base),
                        None,
                    )
                };
                (i, client.write(&request).await.unwrap())
            }));
        }
        let mut cas_wins = 0;
        let mut revisions = BTreeSet::new();
        for task in tasks {
            let (i, written) = task.await.unwrap();
            revisions.insert(written.revision);
            match (i < 64, &written.outcome) {
                (true, Outcome::Written { revision }) => assert_eq!(*revision, written.revision),
                (false, Outcome::Written { .. }) => cas_wins += 1,
                (false, Outcome::Rejected(_)) => {}
                (_, other) => panic!("write {i} of round {round}: {other:?}"),
            }
        }
        assert_eq!(cas_wins, usize::from(round == 0), "round {round}");
        let last = *revisions.iter().max().unwrap();
        cluster.applied(leader, last).await;
        for i in 0..64 {
            let key = format!("r{round}-k{i}");
            assert_eq!(
                cluster.local(leader, &key),
                Some(format!("{round}-{i}").into_bytes()),
                "{key}"
            );
        }
        revisions_per_write.push((revisions.len(), 72));
        if revisions.len() < 72 {
            break;
        }
    }
    assert!(
        revisions_per_write
            .iter()
            .any(|(entries, writes)| entries < writes),
        "72 concurrent writes never shared a log entry in 5 rounds: {revisions_per_write:?}"
    );
    // A group is formed by the leader only; a client may not send one.
    let group = Request::group(vec![Request::put(
        Table::Deployments,
        "g",
        b"1".to_vec(),
        Precondition::None,
        None,
    )]);
    let refused = cluster.client_of(&[leader]).write(&group).await;
    assert!(
        matches!(&refused, Err(tidal_store::client::ClientError::Refused(s)) if s.message().contains("group")),
        "{refused:?}"
    );
    assert_eq!(cluster.local(leader, "g"), None);
    cluster.shutdown().await;
}
