//! When each deployment last had a request, written to its record
//! (`last_request_at_ms`) at most once per [`PERSIST_EVERY`], so that
//! deployments idle for days can be deactivated (the controller's sweep).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prost::Message;
use tidal_proto::pb;
use tidal_store::Request;
use tidal_store::app::{Outcome, Precondition, Rejection, Table};
use tidal_store::client::Client;

/// The least time between two writes of one deployment's last request time.
pub const PERSIST_EVERY: Duration = Duration::from_secs(60);

/// Last-request bookkeeping. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Activity {
    client: Client,
    /// Deployment → the last time written (ms).
    written: Arc<Mutex<HashMap<String, u64>>>,
}

impl Activity {
    /// Writes through `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            written: Arc::default(),
        }
    }

    /// `deployment` had requests in the second ending at `at_ms`.
    pub fn saw(&self, deployment: &str, at_ms: u64) {
        {
            let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
            let last = written.get(deployment).copied().unwrap_or(0);
            let every = u64::try_from(PERSIST_EVERY.as_millis()).unwrap_or(u64::MAX);
            if at_ms < last.saturating_add(every) {
                return;
            }
            written.insert(deployment.to_owned(), at_ms);
        }
        let (client, deployment) = (self.client.clone(), deployment.to_owned());
        tokio::spawn(async move {
            if let Err(e) = persist(&client, &deployment, at_ms).await {
                tracing::debug!(%deployment, error = %e, "last request time not written");
            }
        });
    }
}

/// Raises the record's `last_request_at_ms` to `at_ms` (compare-and-set).
async fn persist(client: &Client, deployment: &str, at_ms: u64) -> Result<(), String> {
    for _ in 0..5 {
        let (kv, _) = client
            .get(Table::Deployments, deployment)
            .await
            .map_err(|e| e.to_string())?;
        let Some(kv) = kv else { return Ok(()) };
        let mut record =
            pb::DeploymentRecord::decode(kv.value.as_slice()).map_err(|e| e.to_string())?;
        if record.last_request_at_ms >= at_ms {
            return Ok(());
        }
        record.last_request_at_ms = at_ms;
        let put = Request::put(
            Table::Deployments,
            deployment,
            record.encode_to_vec(),
            Precondition::ModRevision(kv.mod_revision),
            None,
        );
        match client.write(&put).await.map_err(|e| e.to_string())?.outcome {
            Outcome::Written { .. } => return Ok(()),
            Outcome::Rejected(Rejection::Conflict { .. }) => {}
            other => return Err(format!("{other:?}")),
        }
    }
    Err("kept conflicting".to_owned())
}
