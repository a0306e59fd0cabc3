//! Reading and changing replica records in the store (table REPLICAS).
//!
//! The placer writes a replica (PENDING), may set `stop_requested`, and marks
//! it LOST when its worker's lease expires; the worker writes every other
//! phase. Both change the same record, so every worker write is a
//! read-modify-write with compare-and-set on the record's `mod_revision`,
//! retried on conflict. A record in a terminal phase (Stopped, Failed, Lost)
//! is never changed again: the worker's update is refused and the replica's
//! process, if any, must stop.

use std::time::Duration;

use prost::Message;
use tidal_proto::pb;
use tidal_store::Request;
use tidal_store::app::{Outcome, Precondition, Rejection, Table};
use tidal_store::client::Client;

/// How many compare-and-set conflicts one update retries.
const MAX_CONFLICTS: usize = 16;

/// Whether a phase is terminal: the replica will never run again.
pub fn is_terminal(phase: pb::ReplicaPhase) -> bool {
    matches!(
        phase,
        pb::ReplicaPhase::Stopped | pb::ReplicaPhase::Failed | pb::ReplicaPhase::Lost
    )
}

/// A record's phase (UNSPECIFIED for a value outside the enum).
pub fn phase_of(replica: &pb::Replica) -> pb::ReplicaPhase {
    pb::ReplicaPhase::try_from(replica.phase).unwrap_or(pb::ReplicaPhase::Unspecified)
}

/// Moves `replica` into `phase` at `at_ms`, appending to its history.
pub fn enter(replica: &mut pb::Replica, phase: pb::ReplicaPhase, at_ms: u64) {
    replica.phase = phase.into();
    replica.phase_changed_at_ms = at_ms;
    replica.history.push(pb::PhaseChange {
        phase: phase.into(),
        at_ms,
    });
}

/// Milliseconds since the Unix epoch, by this machine's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What an update did.
#[derive(Debug, Clone, PartialEq)]
pub enum Updated {
    /// Stored; the record as written.
    Applied(pb::Replica),
    /// The record is gone (deleted).
    Gone,
    /// The record is terminal, or the change did not apply to it; it is
    /// left as it is (shown here).
    Refused(pb::Replica),
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// The store did not answer or refused.
    #[error("store: {0}")]
    Store(String),
    /// A stored value could not be decoded.
    #[error("replica {id}: undecodable record: {reason}")]
    Decode {
        /// The replica.
        id: String,
        /// Why.
        reason: String,
    },
    /// Too many concurrent writers.
    #[error("replica {0}: gave up after {MAX_CONFLICTS} write conflicts")]
    Contended(String),
}

/// Store access for replica records and the deployments they serve.
#[derive(Debug, Clone)]
pub struct Records {
    client: Client,
}

impl Records {
    /// Connects (lazily) to the store at `endpoints`.
    pub fn new(endpoints: &[String]) -> Result<Self, RecordsError> {
        let client = Client::new(endpoints, Duration::from_secs(5))
            .map_err(|e| RecordsError::Store(e.to_string()))?;
        Ok(Self { client })
    }

    /// The client, for the watch.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A deployment's record, if it exists.
    pub async fn deployment(&self, id: &str) -> Result<Option<pb::DeploymentRecord>, RecordsError> {
        let (kv, _) = self
            .client
            .get(Table::Deployments, id)
            .await
            .map_err(|e| RecordsError::Store(e.to_string()))?;
        kv.map(|kv| {
            pb::DeploymentRecord::decode(kv.value.as_slice()).map_err(|e| RecordsError::Decode {
                id: id.to_owned(),
                reason: e.to_string(),
            })
        })
        .transpose()
    }

    /// Applies `change` to replica `id`'s record with compare-and-set.
    ///
    /// `change` returns `false` to leave the record alone; it is never
    /// called on a terminal record.
    pub async fn update(
        &self,
        id: &str,
        mut change: impl FnMut(&mut pb::Replica) -> bool,
    ) -> Result<Updated, RecordsError> {
        for _ in 0..MAX_CONFLICTS {
            let (kv, _) = self
                .client
                .get(Table::Replicas, id)
                .await
                .map_err(|e| RecordsError::Store(e.to_string()))?;
            let Some(kv) = kv else {
                return Ok(Updated::Gone);
            };
            let mut replica =
                pb::Replica::decode(kv.value.as_slice()).map_err(|e| RecordsError::Decode {
                    id: id.to_owned(),
                    reason: e.to_string(),
                })?;
            if is_terminal(phase_of(&replica)) || !change(&mut replica) {
                return Ok(Updated::Refused(replica));
            }
            let put = Request::put(
                Table::Replicas,
                id,
                replica.encode_to_vec(),
                Precondition::ModRevision(kv.mod_revision),
                None,
            );
            match self.client.write(&put).await {
                Ok(w) => match w.outcome {
                    Outcome::Written { .. } => return Ok(Updated::Applied(replica)),
                    Outcome::Rejected(Rejection::Conflict { .. }) => {}
                    other => return Err(RecordsError::Store(format!("{other:?}"))),
                },
                Err(e) => return Err(RecordsError::Store(e.to_string())),
            }
        }
        Err(RecordsError::Contended(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enter_appends_to_the_history() {
        let mut r = pb::Replica::default();
        enter(&mut r, pb::ReplicaPhase::Fetching, 5);
        enter(&mut r, pb::ReplicaPhase::Starting, 9);
        assert_eq!(phase_of(&r), pb::ReplicaPhase::Starting);
        assert_eq!(r.phase_changed_at_ms, 9);
        let phases: Vec<_> = r.history.iter().map(|c| (c.phase, c.at_ms)).collect();
        assert_eq!(
            phases,
            [
                (pb::ReplicaPhase::Fetching.into(), 5),
                (pb::ReplicaPhase::Starting.into(), 9)
            ]
        );
    }

    #[test]
    fn terminal_phases() {
        use pb::ReplicaPhase as P;
        for p in [P::Stopped, P::Failed, P::Lost] {
            assert!(is_terminal(p));
        }
        for p in [
            P::Pending,
            P::Fetching,
            P::Starting,
            P::Loading,
            P::Ready,
            P::Draining,
        ] {
            assert!(!is_terminal(p));
        }
    }
}
