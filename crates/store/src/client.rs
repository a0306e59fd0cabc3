//! A store client over gRPC: talks to any node, follows the cluster when a
//! node is down, and turns answers into typed values.
//!
//! Writes are retried on another node while the cluster has no leader or a
//! node is unreachable, until the client's deadline. A write whose connection
//! broke after it reached the leader may have been applied; the retry then
//! applies it again (harmless for plain puts; a compare-and-set retry answers
//! `Conflict`, so read before deciding).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tidal_proto::pb;
use tidal_proto::pb::store_client::StoreClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

pub use tidal_proto::pb::{ClusterStatus, Member};

use crate::app::{AppError, EventFilter, KeyValueRecord, Outcome, Table};
use crate::network::MAX_MESSAGE_BYTES;
use crate::{Request, Response};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No endpoint was given, or one is not a valid address.
    #[error("bad store endpoint: {0}")]
    Endpoint(String),
    /// The cluster did not answer within the deadline.
    #[error("the store did not answer within {deadline:?}: {}", last.message())]
    Unavailable { deadline: Duration, last: Status },
    /// The store refused the request.
    #[error("the store refused the request: {}", .0.message())]
    Refused(Status),
    /// The answer could not be decoded.
    #[error(transparent)]
    Decode(#[from] AppError),
}

/// An applied write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// What applying it did (a rejection is an answer).
    pub outcome: Outcome,
    /// Its revision; 0 if it was refused before the log.
    pub revision: u64,
}

/// A client of the store cluster. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    nodes: Vec<StoreClient<Channel>>,
    next: std::sync::Arc<AtomicUsize>,
    deadline: Duration,
}

fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

impl Client {
    /// A client of the nodes at `endpoints` (`host:port`), retrying for up to
    /// `deadline` per call.
    pub fn new<S: AsRef<str>>(
        endpoints: impl IntoIterator<Item = S>,
        deadline: Duration,
    ) -> Result<Self, ClientError> {
        let mut nodes = Vec::new();
        for endpoint in endpoints {
            let addr = endpoint.as_ref();
            let channel = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| ClientError::Endpoint(format!("{addr}: {e}")))?
                .connect_timeout(Duration::from_millis(500))
                .timeout(deadline)
                .connect_lazy();
            nodes.push(
                StoreClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            );
        }
        if nodes.is_empty() {
            return Err(ClientError::Endpoint("no endpoints given".to_owned()));
        }
        Ok(Self {
            nodes,
            next: std::sync::Arc::default(),
            deadline,
        })
    }

    /// Runs `call` on one node after another until one answers, a
    /// non-retryable error comes back, or the deadline passes.
    async fn retry<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(StoreClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let start = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            let i = self.next.load(Ordering::Relaxed) % self.nodes.len();
            match call(self.nodes[i].clone()).await {
                Ok(answer) => return Ok(answer),
                Err(status) if retryable(&status) => {
                    self.next.store(i + 1, Ordering::Relaxed);
                    if start.elapsed() + pause > self.deadline {
                        return Err(ClientError::Unavailable {
                            deadline: self.deadline,
                            last: status,
                        });
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(status) => return Err(ClientError::Refused(status)),
            }
        }
    }

    /// Proposes `request` and waits until it is applied.
    pub async fn write(&self, request: &Request) -> Result<Written, ClientError> {
        // Refuse locally what the store would refuse (and what could not
        // even be sent, such as values over the message limit).
        if let Err(rejection) = request.validate() {
            return Ok(Written {
                outcome: Outcome::Rejected(rejection),
                revision: 0,
            });
        }
        let command = request.decode()?;
        let answer = self
            .retry(|mut c| {
                let command = command.clone();
                async move {
                    c.write(pb::WriteRequest {
                        command: Some(command),
                    })
                    .await
                    .map(tonic::Response::into_inner)
                }
            })
            .await?;
        let result = answer.result.unwrap_or_default();
        let outcome = Response(prost::Message::encode_to_vec(&result)).outcome()?;
        Ok(Written {
            outcome,
            revision: answer.revision,
        })
    }

    /// The record at `key` (linearizable) and the revision read.
    pub async fn get(
        &self,
        table: Table,
        key: &str,
    ) -> Result<(Option<KeyValueRecord>, u64), ClientError> {
        let answer = self
            .retry(|mut c| async move {
                c.get(pb::GetRequest {
                    table: table.to_proto().into(),
                    key: key.to_owned(),
                    serializable: false,
                })
                .await
                .map(tonic::Response::into_inner)
            })
            .await?;
        Ok((answer.kv.map(Into::into), answer.revision))
    }

    /// Every record whose key starts with `prefix` (linearizable, page by page).
    pub async fn list(
        &self,
        table: Table,
        prefix: &str,
    ) -> Result<(Vec<(String, KeyValueRecord)>, u64), ClientError> {
        let mut rows = Vec::new();
        let mut start_after = String::new();
        loop {
            let page = self
                .retry(|mut c| {
                    let start_after = start_after.clone();
                    async move {
                        c.list(pb::ListRequest {
                            table: table.to_proto().into(),
                            prefix: prefix.to_owned(),
                            start_after,
                            limit: 0,
                            serializable: false,
                        })
                        .await
                        .map(tonic::Response::into_inner)
                    }
                })
                .await?;
            if let Some(last) = page.entries.last() {
                start_after.clone_from(&last.key);
            }
            rows.extend(
                page.entries
                    .into_iter()
                    .map(|e| (e.key, e.kv.unwrap_or_default().into())),
            );
            if !page.more {
                return Ok((rows, page.revision));
            }
        }
    }

    /// A watch stream of the events from `from_revision` that pass `filter`,
    /// from one node.
    pub async fn watch(
        &self,
        from_revision: u64,
        filter: &EventFilter,
    ) -> Result<Streaming<pb::WatchResponse>, ClientError> {
        let request = pb::WatchRequest {
            from_revision,
            table: filter.table.map_or(0, |t| t.to_proto().into()),
            key_prefix: filter.key_prefix.clone(),
        };
        self.retry(|mut c| {
            let request = request.clone();
            async move { c.watch(request).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// The cluster's status (members and lag from the leader when reachable).
    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        self.retry(|mut c| async move {
            c.status(pb::StatusRequest {})
                .await
                .map(tonic::Response::into_inner)
        })
        .await
    }

    /// Adds a node: as a learner, then as a voter once it has caught up if `voter`.
    pub async fn add_member(
        &self,
        node_id: u64,
        addr: &str,
        voter: bool,
    ) -> Result<ClusterStatus, ClientError> {
        self.retry(|mut c| async move {
            c.add_member(pb::AddMemberRequest {
                node_id,
                addr: addr.to_owned(),
                voter,
            })
            .await
            .map(tonic::Response::into_inner)
        })
        .await
    }

    /// Removes a node from the cluster.
    pub async fn remove_member(&self, node_id: u64) -> Result<ClusterStatus, ClientError> {
        self.retry(|mut c| async move {
            c.remove_member(pb::RemoveMemberRequest { node_id })
                .await
                .map(tonic::Response::into_inner)
        })
        .await
    }

    /// Makes the (single) node this client talks to the first member of a new cluster.
    pub async fn initialize(&self) -> Result<ClusterStatus, ClientError> {
        self.retry(|mut c| async move {
            c.initialize(pb::InitializeRequest {})
                .await
                .map(tonic::Response::into_inner)
        })
        .await
    }
}
