//! Raft RPCs over tonic: the client side ([`Network`], [`Peer`]) and the
//! server side ([`RaftService`]).
//!
//! openraft's messages travel postcard-encoded (with a version byte) inside a
//! `RaftMessage` envelope that names the cluster, so a node refuses Raft
//! traffic from another cluster, and anything that is not tidal's gRPC on the
//! Raft port fails the call with a transport error rather than corrupting
//! state.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::{Serialize, de::DeserializeOwned};
use tidal_proto::pb;
use tidal_proto::pb::raft_client::RaftClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::codec::{decode, encode};
use crate::identity::Identity;
use crate::{NodeId, TypeConfig};

/// The largest gRPC message a store node sends or accepts. Snapshot chunks
/// are 1 MiB, an append batch about `MAX_APPEND_BYTES` (one entry can be a
/// 2 MiB batch command), client requests at most a 2 MiB batch: 64 MiB is far
/// above all of them while still bounding what one peer makes us buffer.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// About the most entry bytes one AppendEntries carries (at least one entry).
const MAX_APPEND_BYTES: usize = 1024 * 1024;

/// An entry's approximate encoded size.
fn entry_size(entry: &openraft::Entry<TypeConfig>) -> usize {
    match &entry.payload {
        openraft::EntryPayload::Normal(request) => request.0.len() + 32,
        _ => 256,
    }
}

/// How long to wait for a TCP connection to a peer. Short: an unreachable
/// peer should be reported quickly so openraft backs off.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Creates [`Peer`] clients for openraft.
#[derive(Debug, Clone)]
pub struct Network {
    identity: Identity,
    faults: Faults,
}

impl Network {
    /// A factory for the node with `identity`. `faults` lets tests cut links.
    pub fn new(identity: Identity, faults: Faults) -> Self {
        Self { identity, faults }
    }
}

/// Links a test has cut: Raft messages from `.0` to `.1` fail as if the peer
/// were unreachable. Empty (and free) outside tests.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<Mutex<HashSet<(NodeId, NodeId)>>>);

impl Faults {
    /// Cuts (`true`) or restores (`false`) every link to and from `node`
    /// among `nodes`.
    pub fn isolate(&self, node: NodeId, nodes: &[NodeId], cut: bool) {
        if let Ok(mut links) = self.0.lock() {
            for &other in nodes.iter().filter(|&&n| n != node) {
                for link in [(node, other), (other, node)] {
                    if cut {
                        links.insert(link);
                    } else {
                        links.remove(&link);
                    }
                }
            }
        }
    }

    fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.0.lock().is_ok_and(|links| links.contains(&(from, to)))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            identity: self.identity.clone(),
            faults: self.faults.clone(),
            client: None,
        }
    }
}

/// The Raft client for one peer. Connects lazily and reconnects after errors.
#[derive(Debug)]
pub struct Peer {
    target: NodeId,
    addr: String,
    identity: Identity,
    faults: Faults,
    client: Option<RaftClient<Channel>>,
}

#[derive(Debug, Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl Peer {
    fn client(&mut self) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let client = RaftClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        self.client = Some(client.clone());
        Ok(client)
    }

    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        request: &Req,
        option: RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if self.faults.is_cut(self.identity.node_id(), self.target) {
            let cut = std::io::Error::other(format!(
                "link {} -> {} is cut by the test",
                self.identity.node_id(),
                self.target
            ));
            return Err(RPCError::Unreachable(Unreachable::new(&cut)));
        }
        let payload = encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self
            .client()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut message = Request::new(pb::RaftMessage {
            cluster_id: self.identity.cluster_id().unwrap_or_default(),
            from: self.identity.node_id(),
            payload,
        });
        message.set_timeout(option.hard_ttl());
        let result = match rpc {
            Rpc::AppendEntries => client.append_entries(message).await,
            Rpc::Vote => client.vote(message).await,
            Rpc::InstallSnapshot => client.install_snapshot(message).await,
        };
        let reply = match result {
            Ok(reply) => reply.into_inner(),
            Err(status) => {
                // A connection that failed or dropped: back off and retry later.
                if status.code() == tonic::Code::Unavailable {
                    self.client = None;
                    return Err(RPCError::Unreachable(Unreachable::new(&status)));
                }
                return Err(RPCError::Network(NetworkError::new(&status)));
            }
        };
        let answer: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        // openraft gives each AppendEntries one heartbeat interval, and bounds
        // a batch only by its number of entries: send at most about
        // MAX_APPEND_BYTES (at least one entry) and report the prefix, so
        // large values replicate in steps instead of timing out forever.
        let mut bytes = 0;
        let mut keep = 0;
        for entry in &rpc.entries {
            let size = entry_size(entry);
            if keep > 0 && bytes + size > MAX_APPEND_BYTES {
                break;
            }
            bytes += size;
            keep += 1;
        }
        if keep == rpc.entries.len() {
            return self.call(Rpc::AppendEntries, &rpc, option).await;
        }
        rpc.entries.truncate(keep);
        let last = rpc.entries.last().map(|e| e.log_id);
        let answer = self.call(Rpc::AppendEntries, &rpc, option).await?;
        Ok(match answer {
            AppendEntriesResponse::Success => AppendEntriesResponse::PartialSuccess(last),
            other => other,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::InstallSnapshot, &rpc, option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, option).await
    }
}

/// Serves the Raft RPCs of one node.
#[derive(Clone)]
pub struct RaftService {
    raft: Raft<TypeConfig>,
    identity: Identity,
    faults: Faults,
}

impl std::fmt::Debug for RaftService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftService")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl RaftService {
    /// Serves `raft` for the node with `identity`.
    pub fn new(raft: Raft<TypeConfig>, identity: Identity, faults: Faults) -> Self {
        Self {
            raft,
            identity,
            faults,
        }
    }

    /// The tonic server for this service, with the message-size limits set.
    pub fn into_server(self) -> pb::raft_server::RaftServer<Self> {
        pb::raft_server::RaftServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Checks the envelope and decodes the payload. Only replication from a
    /// leader (`may_adopt`) may bind a node that belongs to no cluster yet;
    /// it is decoded first, so garbage cannot bind it.
    fn open<T: DeserializeOwned>(
        &self,
        message: &pb::RaftMessage,
        may_adopt: bool,
    ) -> Result<T, Status> {
        if self.faults.is_cut(message.from, self.identity.node_id()) {
            return Err(Status::unavailable("link cut by the test"));
        }
        if message.cluster_id.is_empty() {
            return Err(Status::failed_precondition(format!(
                "node {} belongs to no cluster yet and may not send Raft traffic",
                message.from
            )));
        }
        let foreign = |recorded: &str| {
            Status::failed_precondition(format!(
                "node {} sent Raft traffic from another cluster: this node belongs to cluster {recorded}, the message to {}",
                message.from, message.cluster_id
            ))
        };
        match self.identity.cluster_id() {
            Some(recorded) if recorded != message.cluster_id => return Err(foreign(&recorded)),
            Some(_) => {}
            None if !may_adopt => {
                return Err(Status::failed_precondition(format!(
                    "node {} belongs to no cluster yet; add it with `tidal cluster join` first",
                    self.identity.node_id()
                )));
            }
            None => {}
        }
        let decoded = decode(&message.payload)
            .map_err(|e| Status::invalid_argument(format!("undecodable Raft message: {e}")))?;
        // A node that belongs to no cluster yet joins the first one whose
        // leader replicates to it (that leader added it as a learner).
        self.identity.adopt(&message.cluster_id).map_err(|e| {
            Status::failed_precondition(format!(
                "node {} sent Raft traffic from another cluster: {e}",
                message.from
            ))
        })?;
        Ok(decoded)
    }

    fn reply<T: Serialize>(&self, answer: &T) -> Result<Response<pb::RaftMessage>, Status> {
        let payload = encode(answer).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::RaftMessage {
            cluster_id: self.identity.cluster_id().unwrap_or_default(),
            from: self.identity.node_id(),
            payload,
        }))
    }
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = self.open(request.get_ref(), true)?;
        self.reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc: VoteRequest<NodeId> = self.open(request.get_ref(), false)?;
        self.reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = self.open(request.get_ref(), true)?;
        self.reply(&self.raft.install_snapshot(rpc).await)
    }
}
