//! What the handlers read and write in the store: deployment records
//! found by model and reference (`development`, `production` or an id),
//! environments, replicas, and compare-and-set writes of several records
//! at once.

use std::collections::HashMap;

use prost::Message;
use tidal_proto::pb;
use tidal_store::Request;
use tidal_store::app::{BatchOp, Outcome, Precondition, Rejection, Table};
use tidal_store::client::Client;
use tidal_types::{Deployment, EnvironmentName, ModelId};

use crate::error::HttpError;

/// How many times a change is re-read and retried when a concurrent
/// writer (a controller, a worker, another request) got in first.
pub(crate) const CAS_ATTEMPTS: usize = 8;

/// A decoded record and the `mod_revision` it was read at.
#[derive(Debug, Clone)]
pub(crate) struct Stored<T> {
    pub key: String,
    pub value: T,
    pub mod_revision: u64,
}

impl<T: Message> Stored<T> {
    /// A put of `value` that applies only if the record is unchanged.
    pub(crate) fn put(&self, table: Table, value: &T) -> BatchOp {
        BatchOp::Put {
            table,
            key: self.key.clone(),
            value: value.encode_to_vec(),
            precondition: Precondition::ModRevision(self.mod_revision),
        }
    }
}

/// The deployment a path names: `development`, `production`, or an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeploymentRef {
    Development,
    Production,
    Id(String),
}

impl DeploymentRef {
    pub(crate) fn parse(text: &str) -> DeploymentRef {
        match text {
            "development" => DeploymentRef::Development,
            "production" => DeploymentRef::Production,
            id => DeploymentRef::Id(id.to_owned()),
        }
    }
}

/// A model id from a path, checked.
pub(crate) fn model_id(text: &str) -> Result<ModelId, HttpError> {
    ModelId::new(text).map_err(|e| HttpError::invalid("model_id", e.to_string()))
}

/// An environment name from a path or body, checked.
pub(crate) fn environment_name(text: &str, field: &str) -> Result<EnvironmentName, HttpError> {
    EnvironmentName::new(text).map_err(|e| HttpError::invalid(field, e.to_string()))
}

/// The key of an environment record.
pub(crate) fn environment_key(model: &ModelId, name: &str) -> String {
    format!("{model}/{name}")
}

fn decode<T: Message + Default>(
    what: impl std::fmt::Display,
    bytes: &[u8],
) -> Result<T, HttpError> {
    T::decode(bytes).map_err(|e| HttpError::corrupt(what, e))
}

/// The domain view of a record's deployment.
pub(crate) fn domain(record: &pb::DeploymentRecord, key: &str) -> Result<Deployment, HttpError> {
    let d = record
        .deployment
        .clone()
        .ok_or_else(|| HttpError::corrupt(format_args!("deployment {key}"), "no deployment"))?;
    Deployment::try_from(d).map_err(|e| HttpError::corrupt(format_args!("deployment {key}"), e))
}

/// Reads and writes through the store client.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    pub client: Client,
}

impl Store {
    /// Every deployment record (key = id).
    pub(crate) async fn all_deployments(
        &self,
    ) -> Result<Vec<Stored<pb::DeploymentRecord>>, HttpError> {
        let (rows, _) = self.client.list(Table::Deployments, "").await?;
        rows.into_iter()
            .map(|(key, kv)| {
                Ok(Stored {
                    value: decode(format_args!("deployment {key}"), &kv.value)?,
                    key,
                    mod_revision: kv.mod_revision,
                })
            })
            .collect()
    }

    /// The deployment records of `model`, by id.
    pub(crate) async fn model_deployments(
        &self,
        model: &ModelId,
    ) -> Result<Vec<Stored<pb::DeploymentRecord>>, HttpError> {
        let mut all = self.all_deployments().await?;
        all.retain(|s| model_of(&s.value) == model.as_str());
        Ok(all)
    }

    /// The model's deployments, or 404 naming the model when it has none.
    pub(crate) async fn existing_model(
        &self,
        model: &ModelId,
    ) -> Result<Vec<Stored<pb::DeploymentRecord>>, HttpError> {
        let deployments = self.model_deployments(model).await?;
        if deployments.is_empty() {
            return Err(no_model(model));
        }
        Ok(deployments)
    }

    /// The deployment `reference` names in `model`, or 404 naming both.
    pub(crate) async fn resolve(
        &self,
        model: &ModelId,
        reference: &DeploymentRef,
    ) -> Result<Stored<pb::DeploymentRecord>, HttpError> {
        let deployments = self.existing_model(model).await?;
        find(&deployments, model, reference).cloned()
    }

    /// The environment record `model/name`, if any.
    pub(crate) async fn environment(
        &self,
        model: &ModelId,
        name: &str,
    ) -> Result<Option<Stored<pb::Environment>>, HttpError> {
        let key = environment_key(model, name);
        let (kv, _) = self.client.get(Table::Environments, &key).await?;
        kv.map(|kv| {
            Ok(Stored {
                value: decode(format_args!("environment {key}"), &kv.value)?,
                key,
                mod_revision: kv.mod_revision,
            })
        })
        .transpose()
    }

    /// A replica record, if any.
    pub(crate) async fn replica(&self, id: &str) -> Result<Option<Stored<pb::Replica>>, HttpError> {
        let (kv, _) = self.client.get(Table::Replicas, id).await?;
        kv.map(|kv| {
            Ok(Stored {
                value: decode(format_args!("replica {id}"), &kv.value)?,
                key: id.to_owned(),
                mod_revision: kv.mod_revision,
            })
        })
        .transpose()
    }

    /// Every replica record.
    pub(crate) async fn replicas(&self) -> Result<Vec<pb::Replica>, HttpError> {
        let (rows, _) = self.client.list(Table::Replicas, "").await?;
        rows.into_iter()
            .map(|(key, kv)| decode(format_args!("replica {key}"), &kv.value))
            .collect()
    }

    /// Ready replicas per deployment id.
    pub(crate) async fn ready_counts(&self) -> Result<HashMap<String, u32>, HttpError> {
        let mut counts = HashMap::new();
        for r in self.replicas().await? {
            if r.phase == i32::from(pb::ReplicaPhase::Ready) && !r.stop_requested {
                *counts.entry(r.deployment_id).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }

    /// Applies `ops` together. `Ok(false)` when a record changed since it
    /// was read (re-read and retry).
    pub(crate) async fn commit(&self, ops: &[BatchOp]) -> Result<bool, HttpError> {
        let request = match ops {
            [
                BatchOp::Put {
                    table,
                    key,
                    value,
                    precondition,
                },
            ] => Request::put(*table, key.as_str(), value.clone(), *precondition, None),
            ops => Request::batch(ops, None),
        };
        match self.client.write(&request).await?.outcome {
            Outcome::Written { .. } | Outcome::Deleted { .. } => Ok(true),
            Outcome::Rejected(Rejection::Conflict { .. }) => Ok(false),
            other => Err(HttpError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "store_refused",
                format!("the store refused the write: {other:?}"),
            )),
        }
    }
}

/// The deployment `reference` names among `deployments` (all of
/// `model`), or 404 naming both.
pub(crate) fn find<'a>(
    deployments: &'a [Stored<pb::DeploymentRecord>],
    model: &ModelId,
    reference: &DeploymentRef,
) -> Result<&'a Stored<pb::DeploymentRecord>, HttpError> {
    let found = deployments.iter().find(|s| {
        let d = s.value.deployment.as_ref();
        match reference {
            DeploymentRef::Development => d.is_some_and(|d| d.is_development),
            DeploymentRef::Production => d.is_some_and(|d| d.is_production),
            DeploymentRef::Id(id) => s.key == *id,
        }
    });
    found.ok_or_else(|| {
        HttpError::not_found(match reference {
            DeploymentRef::Development => format!("model {model} has no development deployment"),
            DeploymentRef::Production => format!(
                "model {model} has no production deployment; promote one with POST \
                 /v1/models/{model}/deployments/{{deployment_id}}/promote"
            ),
            DeploymentRef::Id(id) => format!(
                "model {model} has no deployment {id}; GET /v1/models/{model}/deployments \
                 lists them"
            ),
        })
    })
}

/// Whether a record's deployment is in environment `name` (production:
/// promoted to production).
pub(crate) fn in_environment(record: &pb::DeploymentRecord, name: &str) -> bool {
    record.deployment.as_ref().is_some_and(|d| {
        d.environment.as_deref() == Some(name)
            || (name == EnvironmentName::PRODUCTION && d.is_production)
    })
}

/// A record's model id.
pub(crate) fn model_of(record: &pb::DeploymentRecord) -> &str {
    record
        .deployment
        .as_ref()
        .map_or("", |d| d.model_id.as_str())
}

/// 404 for a model without deployments.
pub(crate) fn no_model(model: &ModelId) -> HttpError {
    HttpError::not_found(format!(
        "no model {model}: it has no deployments; GET /v1/models lists the models"
    ))
}

/// 409 when a change kept losing to concurrent writers.
pub(crate) fn contended(what: impl std::fmt::Display) -> HttpError {
    HttpError::conflict(format!(
        "{what} kept changing while this request applied ({CAS_ATTEMPTS} attempts); try again"
    ))
}
