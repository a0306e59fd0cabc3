//! The store service (`tidal.v1.Store`): answered by every node. Writes,
//! linearizable reads and membership changes go to the leader — a follower
//! forwards them once — and watch streams are served from the local state
//! machine.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft};
use prost::Message;
use tidal_proto::pb;
use tidal_proto::pb::store_client::StoreClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use crate::app::{self, EventFilter, EventsError, Outcome, Table};
use crate::identity::{Identity, new_cluster_id};
use crate::network::MAX_MESSAGE_BYTES;
use crate::proposer::{ProposeError, Proposer};
use crate::{NodeId, Request, Response, StateMachineStore, TypeConfig};

/// Metadata marking a request a follower forwarded (forwarded only once).
const FORWARDED: &str = "x-tidal-forwarded";
/// Default and largest page of a list.
const LIST_LIMIT: usize = 1000;
/// How long a joining node may take to receive the log up to its addition.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Events per watch message, at most (plus the rest of one revision).
const WATCH_PAGE: usize = 512;

/// The leader's clock, in ms since the Unix epoch: stamped into lease and
/// fenced commands by the proposer, never read by `apply`.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The store service of one node.
#[derive(Clone)]
pub struct StoreService {
    raft: Raft<TypeConfig>,
    /// Coalesces this node's writes into shared log entries.
    proposer: Proposer,
    sm: StateMachineStore,
    identity: Identity,
    advertise: String,
    peers: Arc<Mutex<HashMap<String, StoreClient<Channel>>>>,
    /// Becomes `true` when the node shuts down: watch streams end.
    closing: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for StoreService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreService")
            .field("identity", &self.identity)
            .field("advertise", &self.advertise)
            .finish_non_exhaustive()
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

fn table(value: i32) -> Result<Table, Status> {
    Table::from_proto(value)
        .ok_or_else(|| Status::invalid_argument(format!("unknown or unspecified table {value}")))
}

fn is_forwarded<T>(request: &GrpcRequest<T>) -> bool {
    request.metadata().contains_key(FORWARDED)
}

fn forwarded<T>(message: T) -> GrpcRequest<T> {
    let mut request = GrpcRequest::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    request
}

fn result_of(response: &Response) -> Result<pb::StoreResult, Status> {
    pb::StoreResult::decode(response.0.as_slice()).map_err(internal)
}

impl StoreService {
    /// The service for one node.
    pub fn new(
        raft: Raft<TypeConfig>,
        sm: StateMachineStore,
        identity: Identity,
        advertise: String,
        closing: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            proposer: Proposer::start(raft.clone()),
            raft,
            sm,
            identity,
            advertise,
            peers: Arc::default(),
            closing,
        }
    }

    /// The tonic server, with message-size limits set.
    pub fn into_server(self) -> pb::store_server::StoreServer<Self> {
        pb::store_server::StoreServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// A client for the node at `addr` (cached).
    fn peer(&self, addr: &str) -> Result<StoreClient<Channel>, Status> {
        let mut peers = self.peers.lock().map_err(internal)?;
        if let Some(client) = peers.get(addr) {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::internal(format!("bad peer address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(1));
        let client = StoreClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        peers.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    /// The leader's client when this node is not the leader and may forward.
    fn leader(&self, forwarded: bool) -> Result<StoreClient<Channel>, Status> {
        let metrics = self.raft.metrics().borrow().clone();
        let Some(leader) = metrics.current_leader else {
            return Err(Status::unavailable("no leader is known yet; retry shortly"));
        };
        if forwarded {
            return Err(Status::unavailable(format!(
                "node {} is not the leader (node {leader} is); retry",
                self.identity.node_id()
            )));
        }
        let Some(node) = metrics.membership_config.membership().get_node(&leader) else {
            return Err(Status::unavailable(format!(
                "leader {leader} has no known address"
            )));
        };
        self.peer(&node.addr)
    }

    /// Waits until this node may answer a linearizable read, or says where to
    /// forward it.
    async fn read_barrier(&self, forwarded: bool) -> Result<Option<StoreClient<Channel>>, Status> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(None),
            Err(RaftError::APIError(_)) => self.leader(forwarded).map(Some),
            Err(RaftError::Fatal(e)) => Err(Status::unavailable(format!("Raft stopped: {e}"))),
        }
    }

    fn read_txn(&self) -> Result<redb::ReadTransaction, Status> {
        use redb::ReadableDatabase;
        self.sm.database().begin_read().map_err(internal)
    }

    /// Asks the node at `addr` who it is before adding it: it must answer,
    /// be node `id`, and belong to no cluster or to this one.
    async fn check_joining_node(&self, id: NodeId, addr: &str) -> Result<(), Status> {
        let mut peer = self.peer(addr)?;
        let mut request = forwarded(pb::StatusRequest {});
        request.set_timeout(Duration::from_secs(5));
        let theirs = match peer.status(request).await {
            Ok(answer) => answer.into_inner(),
            Err(e) => {
                return Err(Status::failed_precondition(format!(
                    "nothing answers as a tidal store node at {addr}: {}; start it with \
                     `tidal server --node-id {id} --listen {addr}` first",
                    e.message()
                )));
            }
        };
        if theirs.answered_by != id {
            return Err(Status::failed_precondition(format!(
                "the node at {addr} is node {}, not node {id}",
                theirs.answered_by
            )));
        }
        let ours = self.identity.cluster_id().unwrap_or_default();
        if !theirs.cluster_id.is_empty() && theirs.cluster_id != ours {
            return Err(Status::failed_precondition(format!(
                "node {id} at {addr} belongs to another cluster ({}); remove it from that \
                 cluster and start it on an empty data directory to add it here",
                theirs.cluster_id
            )));
        }
        Ok(())
    }

    /// The cluster's state as this node sees it (lag is the leader's view).
    fn status(&self) -> pb::ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let last_log_index = m.last_log_index.unwrap_or(0);
        let replication_known = m.replication.is_some();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(&id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).copied().flatten())
                    .map_or(0, |log_id| log_id.index);
                let matched = if id == m.id { last_log_index } else { matched };
                let lag = if replication_known || id == m.id {
                    last_log_index.saturating_sub(matched)
                } else {
                    0
                };
                pb::Member {
                    node_id: id,
                    addr: node.addr.clone(),
                    voter: voters.contains(&id),
                    matched_index: matched,
                    lag,
                }
            })
            .collect();
        pb::ClusterStatus {
            cluster_id: self.identity.cluster_id().unwrap_or_default(),
            leader: m.current_leader.unwrap_or(0),
            term: m.current_term,
            last_applied: m.last_applied.map_or(0, |id| id.index),
            last_log_index,
            members,
            answered_by: m.id,
            replication_known,
        }
    }
}

/// Makes the node the first member of a new cluster; returns the cluster id.
pub async fn initialize(
    raft: &Raft<TypeConfig>,
    identity: &Identity,
    advertise: &str,
) -> Result<String, Status> {
    if let Some(id) = identity.cluster_id() {
        return Err(Status::already_exists(format!(
            "node {} already belongs to cluster {id}",
            identity.node_id()
        )));
    }
    let cluster_id = new_cluster_id();
    identity
        .adopt(&cluster_id)
        .map_err(|e| Status::internal(e.to_string()))?;
    let members = BTreeMap::from([(
        identity.node_id(),
        BasicNode {
            addr: advertise.to_owned(),
        },
    )]);
    raft.initialize(members)
        .await
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
    // A one-node cluster elects itself at once; wait for it so the caller
    // can use the cluster as soon as this returns.
    let me = identity.node_id();
    let _ = raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.current_leader == Some(me), "leader after initialize")
        .await;
    Ok(cluster_id)
}

/// Runs a membership change, retrying for a few seconds while an earlier
/// change (such as the cluster's initial membership) is still committing.
async fn retry_in_progress<T, F, Fut>(
    mut change: F,
) -> Result<T, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>>,
{
    let mut tries = 0;
    loop {
        match change().await {
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            ))) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

#[tonic::async_trait]
impl pb::store_server::Store for StoreService {
    async fn write(
        &self,
        request: GrpcRequest<pb::WriteRequest>,
    ) -> Result<GrpcResponse<pb::WriteResponse>, Status> {
        let was_forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let Some(command) = &message.command else {
            return Err(Status::invalid_argument("WriteRequest.command is missing"));
        };
        let proposal = Request::from_command(command);
        if proposal.is_group() {
            return Err(Status::invalid_argument(
                "a group is formed by the leader from separate writes; send its commands one by one",
            ));
        }
        if let Err(rejection) = proposal.validate() {
            let result = result_of(&Response::from_outcome(Outcome::Rejected(rejection)))?;
            return Ok(GrpcResponse::new(pb::WriteResponse {
                result: Some(result),
                revision: 0,
            }));
        }
        let stamped = proposal.stamped(now_ms()).map_err(internal)?;
        match self.proposer.write(stamped).await {
            Ok(written) => Ok(GrpcResponse::new(pb::WriteResponse {
                result: Some(result_of(&written.response)?),
                revision: written.log_id.index,
            })),
            Err(ProposeError::Raft(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                let mut leader = self.leader(was_forwarded)?;
                leader.write(forwarded(message)).await
            }
            Err(ProposeError::Raft(RaftError::APIError(e))) => {
                Err(Status::failed_precondition(e.to_string()))
            }
            Err(ProposeError::Raft(RaftError::Fatal(e))) => {
                Err(Status::unavailable(format!("Raft stopped: {e}")))
            }
            Err(e @ ProposeError::Stopped) => Err(Status::unavailable(e.to_string())),
            Err(ProposeError::Internal(e)) => Err(Status::internal(e)),
        }
    }

    async fn get(
        &self,
        request: GrpcRequest<pb::GetRequest>,
    ) -> Result<GrpcResponse<pb::GetResponse>, Status> {
        let was_forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let t = table(message.table)?;
        if !message.serializable
            && let Some(mut leader) = self.read_barrier(was_forwarded).await?
        {
            return leader.get(forwarded(message)).await;
        }
        let txn = self.read_txn()?;
        let kv = app::get(&txn, t, &message.key).map_err(internal)?;
        Ok(GrpcResponse::new(pb::GetResponse {
            kv: kv.map(Into::into),
            revision: app::current_revision(&txn).map_err(internal)?,
        }))
    }

    async fn list(
        &self,
        request: GrpcRequest<pb::ListRequest>,
    ) -> Result<GrpcResponse<pb::ListResponse>, Status> {
        let was_forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let t = table(message.table)?;
        if !message.serializable
            && let Some(mut leader) = self.read_barrier(was_forwarded).await?
        {
            return leader.list(forwarded(message)).await;
        }
        let limit = match usize::try_from(message.limit).unwrap_or(LIST_LIMIT) {
            0 => LIST_LIMIT,
            n => n.min(LIST_LIMIT),
        };
        let txn = self.read_txn()?;
        let start_after = (!message.start_after.is_empty()).then_some(message.start_after.as_str());
        // One more than asked tells whether more follow.
        let mut rows =
            app::list_after(&txn, t, &message.prefix, start_after, limit + 1).map_err(internal)?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        Ok(GrpcResponse::new(pb::ListResponse {
            entries: rows
                .into_iter()
                .map(|(key, kv)| pb::ListEntry {
                    key,
                    kv: Some(kv.into()),
                })
                .collect(),
            revision: app::current_revision(&txn).map_err(internal)?,
            more,
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: GrpcRequest<pb::WatchRequest>,
    ) -> Result<GrpcResponse<WatchStream>, Status> {
        let message = request.into_inner();
        let filter = EventFilter {
            table: match message.table {
                0 => None,
                t => Some(table(t)?),
            },
            key_prefix: message.key_prefix,
        };
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        tokio::spawn(async move {
            let mut closing = this.closing.clone();
            let mut applied = this.sm.applied_revision();
            let mut next = message.from_revision;
            loop {
                applied.borrow_and_update();
                let page = match this.read_txn() {
                    Ok(txn) => {
                        if next == 0 {
                            next = app::compacted_revision(&txn).unwrap_or(0).max(1);
                        }
                        app::events_page(&txn, next, &filter, WATCH_PAGE)
                    }
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let reply = match page {
                    Ok(page) if page.events.is_empty() => {
                        next = page.next_revision;
                        None
                    }
                    Ok(page) => {
                        next = page.next_revision;
                        Some(pb::WatchResponse {
                            response: Some(pb::watch_response::Response::Events(
                                pb::ChangeEvents {
                                    events: page.events.into_iter().map(Into::into).collect(),
                                },
                            )),
                            next_revision: next,
                        })
                    }
                    Err(EventsError::Compacted { compacted, current }) => {
                        let _ = tx
                            .send(Ok(pb::WatchResponse {
                                response: Some(pb::watch_response::Response::Compacted(
                                    pb::Compacted {
                                        compacted_revision: compacted,
                                        current_revision: current,
                                    },
                                )),
                                next_revision: current + 1,
                            }))
                            .await;
                        return;
                    }
                    Err(EventsError::Store(e)) => {
                        let _ = tx.send(Err(internal(e))).await;
                        return;
                    }
                };
                if let Some(reply) = reply {
                    if tx.send(Ok(reply)).await.is_err() {
                        return;
                    }
                    continue;
                }
                // Caught up: wait for the next applied revision or the client to go.
                tokio::select! {
                    changed = applied.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                    _ = closing.changed() => {
                        let _ = tx.send(Err(Status::unavailable("the store node is shutting down; resume the watch on another node"))).await;
                        return;
                    }
                }
            }
        });
        Ok(GrpcResponse::new(ReceiverStream::new(rx)))
    }

    async fn initialize(
        &self,
        _request: GrpcRequest<pb::InitializeRequest>,
    ) -> Result<GrpcResponse<pb::ClusterStatus>, Status> {
        initialize(&self.raft, &self.identity, &self.advertise).await?;
        Ok(GrpcResponse::new(self.status()))
    }

    async fn add_member(
        &self,
        request: GrpcRequest<pb::AddMemberRequest>,
    ) -> Result<GrpcResponse<pb::ClusterStatus>, Status> {
        let was_forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let node = BasicNode {
            addr: message.addr.clone(),
        };
        self.check_joining_node(message.node_id, &message.addr)
            .await?;
        let added =
            retry_in_progress(|| self.raft.add_learner(message.node_id, node.clone(), false)).await;
        let membership_index = match added {
            Ok(written) => written.log_id.index,
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                return self
                    .leader(was_forwarded)?
                    .add_member(forwarded(message))
                    .await;
            }
            Err(e) => return Err(Status::failed_precondition(e.to_string())),
        };
        // openraft counts a learner it never reached as caught up; promoting
        // such a node would wedge the cluster. Wait until it has really
        // received the log up to its own addition.
        let id = message.node_id;
        let caught_up = self
            .raft
            .wait(Some(JOIN_TIMEOUT))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id).copied().flatten())
                        .is_some_and(|matched| matched.index >= membership_index)
                },
                "the new learner to catch up",
            )
            .await;
        if caught_up.is_err() {
            let _ = retry_in_progress(|| {
                self.raft
                    .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            })
            .await;
            return Err(Status::failed_precondition(format!(
                "node {id} at {} did not take Raft replication within {JOIN_TIMEOUT:?}; it was not added. \
                 Check that it is running, reachable at that address, started with --node-id {id}, \
                 and not a member of another cluster (its log says why it refused)",
                message.addr
            )));
        }
        if message.voter {
            let voter = BTreeSet::from([message.node_id]);
            retry_in_progress(|| {
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(voter.clone()), false)
            })
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        }
        Ok(GrpcResponse::new(self.status()))
    }

    async fn remove_member(
        &self,
        request: GrpcRequest<pb::RemoveMemberRequest>,
    ) -> Result<GrpcResponse<pb::ClusterStatus>, Status> {
        let was_forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let id = message.node_id;
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let is_voter = membership.membership().voter_ids().any(|v| v == id);
        let change = if is_voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        match retry_in_progress(|| self.raft.change_membership(change.clone(), false)).await {
            Ok(_) => Ok(GrpcResponse::new(self.status())),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                self.leader(was_forwarded)?
                    .remove_member(forwarded(message))
                    .await
            }
            Err(e) => Err(Status::failed_precondition(e.to_string())),
        }
    }

    async fn status(
        &self,
        request: GrpcRequest<pb::StatusRequest>,
    ) -> Result<GrpcResponse<pb::ClusterStatus>, Status> {
        let local = self.status();
        // Members' lag is the leader's view: ask it when this node is not it.
        if !is_forwarded(&request)
            && local.leader != 0
            && local.leader != local.answered_by
            && let Ok(mut leader) = self.leader(false)
            && let Ok(answer) = leader.status(forwarded(pb::StatusRequest {})).await
        {
            return Ok(answer);
        }
        Ok(GrpcResponse::new(local))
    }
}
