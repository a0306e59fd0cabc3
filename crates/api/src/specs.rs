//! Deployments from a spec (what `tidal deploy` reads): create a new one
//! (POST /v1/models/{model_id}/deployments) or replace an existing one's
//! spec (PUT /v1/models/{model_id}/deployments/{deployment_id}).
//!
//! A spec comes as its JSON object (the gRPC service builds the same
//! object from its typed message), so both transports are read by the one
//! strict reader in `tidal-types` and name the same field paths. Weights
//! must be URLs with `size_bytes` and `sha256`: a local `path` is a `tidal
//! deploy` convenience.

use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use serde_json::Value;
use tidal_proto::{SpecRecordError, deployment_record, replace_spec};
use tidal_store::app::{BatchOp, Precondition, Table};
use tidal_types::{Deployment, DeploymentSpec, ModelId};

use crate::body::{self, Object};
use crate::error::HttpError;
use crate::server::Ctx;
use crate::store::{CAS_ATTEMPTS, DeploymentRef, Stored, contended, find, model_id};
use crate::views;

/// POST /v1/models/{model_id}/deployments: a spec (`model` may be left
/// out) → 201 and the new `DeploymentV1`.
pub(crate) async fn create(
    State(ctx): State<Arc<Ctx>>,
    UrlPath(model): UrlPath<String>,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), HttpError> {
    let d = create_deployment(&ctx, &model, body::object(&bytes)?).await?;
    Ok((StatusCode::CREATED, Json(views::deployment_json(&d)?)))
}

/// PUT /v1/models/{model_id}/deployments/{deployment_id}: a spec (`model`
/// and `deployment` may be left out) → the `DeploymentV1` with its spec
/// replaced.
pub(crate) async fn replace(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((model, id)): UrlPath<(String, String)>,
    bytes: Bytes,
) -> Result<Json<Value>, HttpError> {
    let d = replace_deployment(&ctx, &model, &id, body::object(&bytes)?).await?;
    Ok(Json(views::deployment_json(&d)?))
}

/// Creates a deployment from a spec; an id in use is refused (409
/// `already_exists`, field `deployment`).
pub(crate) async fn create_deployment(
    ctx: &Ctx,
    model: &str,
    object: Object,
) -> Result<Deployment, HttpError> {
    let model = model_id(model)?;
    let spec = read(ctx, &model, object).await?;
    let record = deployment_record(&spec, &views::rfc3339_now())
        .map_err(|e| HttpError::bad_request(e.to_string()))?;
    let id = spec.deployment.to_string();
    let put = BatchOp::Put {
        table: Table::Deployments,
        key: id.clone(),
        value: prost::Message::encode_to_vec(&record),
        precondition: Precondition::MustNotExist,
    };
    if !ctx.store.commit(&[put]).await? {
        return Err(HttpError::already_exists(format!(
            "deployment {id} already exists; choose another `deployment` id, or replace its \
             spec (PUT /v1/models/{model}/deployments/{id})"
        ))
        .with_field("deployment"));
    }
    tracing::info!(deployment = %id, model = %model, "deployment created through the API");
    let stored = Stored {
        key: id,
        value: record,
        mod_revision: 0,
    };
    views::deployment(&stored, &Default::default())
}

/// Replaces deployment `id`'s spec (`tidal_proto::replace_spec`): what its
/// controller decided, its status, promotion and creation time are kept;
/// its running replicas are not restarted. 404 when it does not exist; a
/// development deployment's settings stay fixed (400
/// `development_deployment`).
pub(crate) async fn replace_deployment(
    ctx: &Ctx,
    model: &str,
    id: &str,
    mut object: Object,
) -> Result<Deployment, HttpError> {
    let model = model_id(model)?;
    from_path(&mut object, "deployment", id)?;
    let spec = read(ctx, &model, object).await?;
    let new = deployment_record(&spec, &views::rfc3339_now())
        .map_err(|e| HttpError::bad_request(e.to_string()))?;
    for _ in 0..CAS_ATTEMPTS {
        let deployments = ctx.store.existing_model(&model).await?;
        let stored = find(&deployments, &model, &DeploymentRef::Id(id.to_owned()))?;
        let record = replace_spec(&stored.value, new.clone()).map_err(|e| match e {
            SpecRecordError::DevelopmentFixed(_) => HttpError::new(
                StatusCode::BAD_REQUEST,
                "development_deployment",
                e.to_string(),
            )
            .with_field("autoscaling_settings"),
            other => HttpError::conflict(other.to_string()),
        })?;
        let mut replaced = stored.clone();
        replaced.value = record;
        if replaced.value == stored.value
            || ctx
                .store
                .commit(&[stored.put(Table::Deployments, &replaced.value)])
                .await?
        {
            tracing::info!(deployment = %id, model = %model, "deployment spec replaced through the API");
            return views::deployment(&replaced, &ctx.store.ready_counts().await?);
        }
    }
    Err(contended("the deployment"))
}

/// `key` of a spec may be left out (it is then the path's) or must be the
/// path's.
fn from_path(object: &mut Object, key: &str, path: &str) -> Result<(), HttpError> {
    match object.get(key) {
        None | Some(Value::Null) => {
            object.insert(key.to_owned(), Value::String(path.to_owned()));
            Ok(())
        }
        Some(Value::String(given)) if given == path => Ok(()),
        Some(other) => Err(HttpError::invalid(
            key,
            format!("{key} must be the {key} in the path ({path}) or left out; got {other}"),
        )),
    }
}

/// The spec in `object`, checked against the cluster's limits.
async fn read(ctx: &Ctx, model: &ModelId, mut object: Object) -> Result<DeploymentSpec, HttpError> {
    from_path(&mut object, "model", model.as_str())?;
    let cluster = ctx.cluster().await?;
    let text = Value::Object(object).to_string();
    let spec = DeploymentSpec::from_json(&text, Path::new("/"), &cluster.settings())
        .map_err(|e| HttpError::spec(&e))?;
    if let Some(i) = spec.weights.iter().position(|w| w.local_path.is_some()) {
        return Err(HttpError::invalid(
            format!("weights[{i}].path"),
            format!(
                "weights[{i}].path: a local path is a `tidal deploy` convenience (it measures \
                 the file on your machine); through the API give `url` (http://, https:// or \
                 file:/// on the workers), `size_bytes` and `sha256`"
            ),
        ));
    }
    Ok(spec)
}
