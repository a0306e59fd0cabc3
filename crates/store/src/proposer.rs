//! Write coalescing: concurrent writes share log entries.
//!
//! openraft 0.9 appends and fsyncs one log entry per `client_write`, in
//! series on its core task, and replicates only after that append is on
//! disk. A leader under N concurrent writers would pay N fsyncs one after
//! another. The proposer queues the writes this node proposes and sends what
//! has queued as one entry — a `Group` when there is more than one — keeping
//! at most [`MAX_IN_FLIGHT`] entries in flight: while one is appended and
//! replicated, the next group forms. Each writer gets its own result and the
//! entry's log id, which is its revision.
//!
//! Order: a writer waits for its write before sending the next, so its
//! writes stay in order; writes in flight together have no order between
//! them, in a group or not.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, LogId, Raft};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::{NodeId, Request, Response, TypeConfig};

/// Entries proposed and not yet answered, at most. Two lets the next group's
/// append start while the previous entry is still being replicated.
pub const MAX_IN_FLIGHT: usize = 2;
/// Commands in one group, at most.
pub const MAX_GROUP: usize = 256;
/// A group stops taking commands once it holds this many command bytes (a
/// single larger command is still proposed, alone).
pub const MAX_GROUP_BYTES: usize = 1024 * 1024;
/// Writes waiting for a group, at most; more wait for room.
const QUEUE: usize = 4096;

/// An applied write: its result and the log id of its entry.
#[derive(Debug, Clone)]
pub struct Written {
    /// What applying it answered.
    pub response: Response,
    /// The entry's log id; its index is the write's revision.
    pub log_id: LogId<NodeId>,
}

/// Why a write was not applied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// openraft refused or failed it (not the leader, stopped, …).
    #[error(transparent)]
    Raft(#[from] RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>),
    /// The proposer has stopped (the node is shutting down).
    #[error("the node is shutting down")]
    Stopped,
    /// A group's answer did not hold one result per member (a bug).
    #[error("{0}")]
    Internal(String),
}

type Reply = oneshot::Sender<Result<Written, ProposeError>>;

/// Queues writes for the local Raft node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Proposer {
    tx: mpsc::Sender<(Request, Reply)>,
}

impl Proposer {
    /// Starts the proposer task for `raft`; it ends when every clone is dropped.
    pub fn start(raft: Raft<TypeConfig>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(raft, rx));
        Self { tx }
    }

    /// Proposes `request` (stamped already) and waits until it is applied.
    pub async fn write(&self, request: Request) -> Result<Written, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((request, reply))
            .await
            .map_err(|_| ProposeError::Stopped)?;
        answer.await.map_err(|_| ProposeError::Stopped)?
    }
}

async fn run(raft: Raft<TypeConfig>, mut rx: mpsc::Receiver<(Request, Reply)>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Wait for a slot before collecting: writes that arrive meanwhile join
        // this group.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut bytes = first.0.0.len();
        let mut group = vec![first];
        while group.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += next.0.0.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        tokio::spawn(propose(raft.clone(), group, slot));
    }
}

async fn propose(
    raft: Raft<TypeConfig>,
    mut group: Vec<(Request, Reply)>,
    _slot: OwnedSemaphorePermit,
) {
    if group.len() == 1 {
        let (request, reply) = group.remove(0);
        let result = raft
            .client_write(request)
            .await
            .map(|w| Written {
                response: w.data,
                log_id: w.log_id,
            })
            .map_err(ProposeError::from);
        let _ = reply.send(result);
        return;
    }
    let (requests, replies): (Vec<Request>, Vec<Reply>) = group.into_iter().unzip();
    let members = requests.len();
    match raft.client_write(Request::group(requests)).await {
        Ok(written) => match written.data.group_members() {
            Some(responses) if responses.len() == members => {
                for (response, reply) in responses.into_iter().zip(replies) {
                    let _ = reply.send(Ok(Written {
                        response,
                        log_id: written.log_id,
                    }));
                }
            }
            _ => {
                let error = ProposeError::Internal(format!(
                    "the group at {} did not answer one result per member ({members})",
                    written.log_id
                ));
                tracing::error!(%error);
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        },
        Err(e) => {
            let error = ProposeError::from(e);
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
