//! Baseten's deployment routes (list, get, autoscaling settings,
//! activate, deactivate, terminate a replica) and tidal's (list replicas).
//! Promotion is in `promote.rs`; creating and replacing from a spec in
//! `specs.rs`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use tidal_proto::pb;
use tidal_store::app::Table;
use tidal_types::{
    Deployment, DeploymentError, DeploymentStatus, ModelId, UpdateAutoscalingResponse,
    UpdateAutoscalingSettings,
};

use crate::body;
use crate::error::HttpError;
use crate::server::Ctx;
use crate::store::{CAS_ATTEMPTS, DeploymentRef, contended, domain, model_id};
use crate::views;

type Answer = Result<Json<Value>, HttpError>;

/// A model's deployments (404 for a model without any).
pub(crate) async fn list_deployments(ctx: &Ctx, model: &str) -> Result<Vec<Deployment>, HttpError> {
    let model = model_id(model)?;
    let deployments = ctx.store.existing_model(&model).await?;
    let ready = ctx.store.ready_counts().await?;
    deployments
        .iter()
        .map(|d| views::deployment(d, &ready))
        .collect()
}

/// GET /v1/models/{model_id}/deployments
pub(crate) async fn list(State(ctx): State<Arc<Ctx>>, UrlPath(model): UrlPath<String>) -> Answer {
    let list = list_deployments(&ctx, &model)
        .await?
        .iter()
        .map(views::deployment_json)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "deployments": list })))
}

/// One deployment of a model, by id, `development` or `production`.
pub(crate) async fn get_deployment(
    ctx: &Ctx,
    model: &str,
    reference: &str,
) -> Result<Deployment, HttpError> {
    let model = model_id(model)?;
    let stored = ctx
        .store
        .resolve(&model, &DeploymentRef::parse(reference))
        .await?;
    let ready = ctx.store.ready_counts().await?;
    views::deployment(&stored, &ready)
}

/// GET /v1/models/{model_id}/deployments/{deployment_id|development|production}
pub(crate) async fn get(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((model, reference)): UrlPath<(String, String)>,
) -> Answer {
    let d = get_deployment(&ctx, &model, &reference).await?;
    Ok(Json(views::deployment_json(&d)?))
}

/// PATCH …/deployments/{ref}/autoscaling_settings (`UpdateAutoscalingSettingsV1`
/// → `{status, message}`).
pub(crate) async fn patch_settings(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((model, reference)): UrlPath<(String, String)>,
    bytes: Bytes,
) -> Answer {
    let model = model_id(&model)?;
    let patch = body::settings_update(&Value::Object(body::object(&bytes)?), "")?;
    let answer = update_settings(&ctx, &model, &reference, &patch).await?;
    Ok(Json(json!(answer)))
}

/// Applies `patch` to a deployment's autoscaling settings: a development
/// deployment's are fixed (400 `development_deployment`), values out of
/// range are refused naming the field.
pub(crate) async fn update_settings(
    ctx: &Ctx,
    model: &ModelId,
    reference: &str,
    patch: &UpdateAutoscalingSettings,
) -> Result<UpdateAutoscalingResponse, HttpError> {
    let reference = DeploymentRef::parse(reference);
    for _ in 0..CAS_ATTEMPTS {
        let stored = ctx.store.resolve(model, &reference).await?;
        let cluster = ctx.cluster().await?;
        let mut d = domain(&stored.value, &stored.key)?;
        let answer = d
            .patch_autoscaling(patch, &cluster.settings())
            .map_err(|e| match e {
                DeploymentError::DevelopmentFixed(_) => HttpError::new(
                    StatusCode::BAD_REQUEST,
                    "development_deployment",
                    e.to_string(),
                ),
                DeploymentError::InvalidSettings(e) => HttpError::settings(&e, ""),
            })?;
        if answer.status == tidal_types::UpdateStatus::Unchanged {
            return Ok(answer);
        }
        let mut record = stored.value.clone();
        if let Some(pd) = record.deployment.as_mut() {
            pd.autoscaling_settings = Some(d.autoscaling_settings.into());
        }
        if ctx
            .store
            .commit(&[stored.put(Table::Deployments, &record)])
            .await?
        {
            return Ok(answer);
        }
    }
    Err(contended("the deployment"))
}

/// Sets a deployment's status to `status` (activate / deactivate) when
/// `from` allows its current one; otherwise leaves it (still a success).
async fn set_status(
    ctx: &Ctx,
    model: &str,
    reference: &str,
    status: DeploymentStatus,
    from: fn(pb::DeploymentStatus) -> bool,
) -> Result<(), HttpError> {
    let model = model_id(model)?;
    let reference = DeploymentRef::parse(reference);
    for _ in 0..CAS_ATTEMPTS {
        let stored = ctx.store.resolve(&model, &reference).await?;
        let mut record = stored.value.clone();
        let Some(d) = record.deployment.as_mut() else {
            return Err(HttpError::corrupt(
                format_args!("deployment {}", stored.key),
                "no deployment",
            ));
        };
        let status = i32::from(pb::DeploymentStatus::from(status));
        let now = pb::DeploymentStatus::try_from(d.status).unwrap_or_default();
        if d.status == status || !from(now) {
            return Ok(());
        }
        d.status = status;
        if status == i32::from(pb::DeploymentStatus::Active) {
            // A fresh start for the inactivity limit, and the reason it
            // was deactivated no longer holds.
            record.last_request_at_ms = tidal_store::service::now_ms();
            record.status_reason.clear();
        }
        if ctx
            .store
            .commit(&[stored.put(Table::Deployments, &record)])
            .await?
        {
            return Ok(());
        }
    }
    Err(contended("the deployment"))
}

/// An INACTIVE (or DEACTIVATING) deployment becomes ACTIVE; any other
/// status is left as it is (a deployment still deploying stays DEPLOYING).
pub(crate) async fn activate_deployment(
    ctx: &Ctx,
    model: &str,
    reference: &str,
) -> Result<(), HttpError> {
    let inactive = |s| {
        matches!(
            s,
            pb::DeploymentStatus::Inactive | pb::DeploymentStatus::Deactivating
        )
    };
    set_status(ctx, model, reference, DeploymentStatus::Active, inactive).await
}

/// Status INACTIVE: no replica runs until it is activated.
pub(crate) async fn deactivate_deployment(
    ctx: &Ctx,
    model: &str,
    reference: &str,
) -> Result<(), HttpError> {
    set_status(ctx, model, reference, DeploymentStatus::Inactive, |_| true).await
}

/// POST …/deployments/{ref}/activate → `{"success": true}`.
pub(crate) async fn activate(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((model, reference)): UrlPath<(String, String)>,
) -> Answer {
    activate_deployment(&ctx, &model, &reference).await?;
    Ok(Json(json!({ "success": true })))
}

/// POST …/deployments/{ref}/deactivate → `{"success": true}`.
pub(crate) async fn deactivate(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((model, reference)): UrlPath<(String, String)>,
) -> Answer {
    deactivate_deployment(&ctx, &model, &reference).await?;
    Ok(Json(json!({ "success": true })))
}

/// The reason written on a replica terminated through the API.
pub const TERMINATED_REASON: &str = "terminated through the API";

/// DELETE …/deployments/{ref}/replicas/{replica_id} → `{"success": true}`.
pub(crate) async fn terminate_replica(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((model, reference, replica)): UrlPath<(String, String, String)>,
) -> Answer {
    terminate(&ctx, &model, &reference, &replica).await?;
    Ok(Json(json!({ "success": true })))
}

/// Asks a replica's worker to drain and stop it (sets `stop_requested`
/// with [`TERMINATED_REASON`]); a replica already stopping or finished is
/// left as it is.
pub(crate) async fn terminate(
    ctx: &Ctx,
    model: &str,
    reference: &str,
    replica: &str,
) -> Result<(), HttpError> {
    let model = model_id(model)?;
    let reference = DeploymentRef::parse(reference);
    for _ in 0..CAS_ATTEMPTS {
        let deployment = ctx.store.resolve(&model, &reference).await?;
        let stored = ctx
            .store
            .replica(replica)
            .await?
            .filter(|r| r.value.deployment_id == deployment.key)
            .ok_or_else(|| {
                HttpError::not_found(format!(
                    "deployment {} of model {model} has no replica {replica}; GET \
                     /v1/models/{model}/deployments/{}/replicas lists them",
                    deployment.key, deployment.key
                ))
            })?;
        let mut record = stored.value.clone();
        if record.stop_requested || views::is_terminal(record.phase) {
            return Ok(());
        }
        record.stop_requested = true;
        record.reason = TERMINATED_REASON.to_owned();
        if ctx
            .store
            .commit(&[stored.put(Table::Replicas, &record)])
            .await?
        {
            return Ok(());
        }
    }
    Err(contended("the replica"))
}

/// GET …/deployments/{ref}/replicas → `{"replicas": [...]}`, oldest first.
pub(crate) async fn replicas(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((model, reference)): UrlPath<(String, String)>,
) -> Answer {
    let list: Vec<Value> = list_replicas(&ctx, &model, &reference)
        .await?
        .iter()
        .map(views::replica)
        .collect();
    Ok(Json(json!({ "replicas": list })))
}

/// A deployment's replica records, oldest first.
pub(crate) async fn list_replicas(
    ctx: &Ctx,
    model: &str,
    reference: &str,
) -> Result<Vec<pb::Replica>, HttpError> {
    let model = model_id(model)?;
    let deployment = ctx
        .store
        .resolve(&model, &DeploymentRef::parse(reference))
        .await?;
    let mut replicas: Vec<pb::Replica> = ctx
        .store
        .replicas()
        .await?
        .into_iter()
        .filter(|r| r.deployment_id == deployment.key)
        .collect();
    replicas.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
    Ok(replicas)
}
