//! [`ScaleStore`] over the replicated store's client: deployments are
//! `DeploymentRecord`s in table DEPLOYMENTS; desired replicas are written by
//! compare-and-set on the record (the API may change its settings at the
//! same time) and fenced with the shard's epoch.

use prost::Message;
use tidal_proto::pb;
use tidal_store::Request;
use tidal_store::app::{Fence, Outcome, Precondition, Rejection, Table};
use tidal_store::client::Client;
use tidal_types::AutoscalingSettings;

use crate::port::{BoxFuture, Loaded, ScaleStore, StoreError, WriteResult};

/// How many times a write re-reads the record after losing a race.
const CAS_ATTEMPTS: usize = 8;
/// Store calls in flight from all of a controller's actors, at most. Actors
/// tick together; without a bound, 10,000 of them can open thousands of
/// concurrent calls on one HTTP/2 connection, calls time out, their resets
/// make the server drop the connection, and every call on it fails.
pub const MAX_IN_FLIGHT: usize = 64;

/// Decodes a stored deployment record.
pub fn decode_record(bytes: &[u8]) -> Result<pb::DeploymentRecord, StoreError> {
    pb::DeploymentRecord::decode(bytes)
        .map_err(|e| StoreError(format!("undecodable deployment record: {e}")))
}

/// The autoscaling settings of a stored record (defaults if absent).
pub fn settings_of(record: &pb::DeploymentRecord) -> AutoscalingSettings {
    record
        .deployment
        .as_ref()
        .and_then(|d| d.autoscaling_settings)
        .map(AutoscalingSettings::from)
        .unwrap_or_default()
}

/// The store, through its client.
#[derive(Debug, Clone)]
pub struct StorePort {
    client: Client,
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
}

impl StorePort {
    /// Uses `client`, with at most [`MAX_IN_FLIGHT`] calls at a time.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, StoreError> {
        self.in_flight
            .acquire()
            .await
            .map_err(|_| StoreError("the controller is stopping".into()))
    }

    async fn write(
        &self,
        deployment: &str,
        fence: Fence,
        desired: u32,
        reason: &str,
    ) -> Result<WriteResult, StoreError> {
        let _permit = self.permit().await?;
        for _ in 0..CAS_ATTEMPTS {
            let (kv, _) = self
                .client
                .get(Table::Deployments, deployment)
                .await
                .map_err(|e| StoreError(e.to_string()))?;
            let Some(kv) = kv else {
                return Ok(WriteResult::Gone);
            };
            let mut record = decode_record(&kv.value)?;
            record.desired_replicas = desired;
            reason.clone_into(&mut record.decision_reason);
            let put = Request::put(
                Table::Deployments,
                deployment,
                record.encode_to_vec(),
                Precondition::ModRevision(kv.mod_revision),
                Some(fence),
            );
            let written = self
                .client
                .write(&put)
                .await
                .map_err(|e| StoreError(e.to_string()))?;
            match written.outcome {
                Outcome::Written { .. } => return Ok(WriteResult::Written),
                Outcome::Rejected(Rejection::StaleEpoch { .. }) => {
                    return Ok(WriteResult::StaleEpoch);
                }
                Outcome::Rejected(Rejection::Conflict { .. }) => {}
                other => return Err(StoreError(format!("unexpected answer: {other:?}"))),
            }
        }
        Err(StoreError(format!(
            "{deployment} changed {CAS_ATTEMPTS} times while its desired replicas were written"
        )))
    }
}

impl ScaleStore for StorePort {
    fn load<'a>(
        &'a self,
        deployment: &'a str,
    ) -> BoxFuture<'a, Result<Option<Loaded>, StoreError>> {
        Box::pin(async move {
            let _permit = self.permit().await?;
            let (kv, _) = self
                .client
                .get(Table::Deployments, deployment)
                .await
                .map_err(|e| StoreError(e.to_string()))?;
            let Some(kv) = kv else {
                return Ok(None);
            };
            let record = decode_record(&kv.value)?;
            Ok(Some(Loaded {
                settings: settings_of(&record),
                desired: record.desired_replicas,
            }))
        })
    }

    fn write_desired<'a>(
        &'a self,
        deployment: &'a str,
        fence: Fence,
        desired: u32,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<WriteResult, StoreError>> {
        Box::pin(self.write(deployment, fence, desired, reason))
    }
}
