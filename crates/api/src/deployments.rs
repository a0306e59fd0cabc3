//! Baseten's deployment routes (list, get, autoscaling settings,
//! activate, deactivate, terminate a replica) and tidal's (create from a
//! spec, list replicas). Promotion is in `promote.rs`.

use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use tidal_proto::{deployment_record, pb};
use tidal_store::app::{BatchOp, Precondition, Table};
use tidal_types::{DeploymentError, DeploymentSpec, DeploymentStatus};

use crate::body;
use crate::error::HttpError;
use crate::server::Ctx;
use crate::store::{CAS_ATTEMPTS, DeploymentRef, Stored, contended, domain, model_id};
use crate::views;

type Answer = Result<Json<Value>, HttpError>;

/// GET /v1/models/{model_id}/deployments
pub(crate) async fn list(State(ctx): State<Arc<Ctx>>, UrlPath(model): UrlPath<String>) -> Answer {
    let model = model_id(&model)?;
    let deployments = ctx.store.existing_model(&model).await?;
    let ready = ctx.store.ready_counts().await?;
    let list = deployments
        .iter()
        .map(|d| views::deployment(d, &ready))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "deployments": list })))
}

/// GET /v1/models/{model_id}/deployments/{deployment_id|development|production}
pub(crate) async fn get(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((model, reference)): UrlPath<(String, String)>,
) -> Answer {
    let model = model_id(&model)?;
    let stored = ctx
        .store
        .resolve(&model, &DeploymentRef::parse(&reference))
        .await?;
    let ready = ctx.store.ready_counts().await?;
    Ok(Json(views::deployment(&stored, &ready)?))
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
    let reference = DeploymentRef::parse(&reference);
    for _ in 0..CAS_ATTEMPTS {
        let stored = ctx.store.resolve(&model, &reference).await?;
        let cluster = ctx.cluster().await?;
        let mut d = domain(&stored.value, &stored.key)?;
        let answer = d
            .patch_autoscaling(&patch, &cluster.settings())
            .map_err(|e| match e {
                DeploymentError::DevelopmentFixed(_) => HttpError::new(
                    StatusCode::BAD_REQUEST,
                    "development_deployment",
                    e.to_string(),
                ),
                DeploymentError::InvalidSettings(e) => HttpError::settings(&e, ""),
            })?;
        if answer.status == tidal_types::UpdateStatus::Unchanged {
            return Ok(Json(json!(answer)));
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
            return Ok(Json(json!(answer)));
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
) -> Answer {
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
            return Ok(Json(json!({ "success": true })));
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
            return Ok(Json(json!({ "success": true })));
        }
    }
    Err(contended("the deployment"))
}

/// POST …/deployments/{ref}/activate → `{"success": true}`: an INACTIVE
/// (or DEACTIVATING) deployment becomes ACTIVE; any other status is left
/// as it is (a deployment still deploying stays DEPLOYING).
pub(crate) async fn activate(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((model, reference)): UrlPath<(String, String)>,
) -> Answer {
    let inactive = |s| {
        matches!(
            s,
            pb::DeploymentStatus::Inactive | pb::DeploymentStatus::Deactivating
        )
    };
    set_status(&ctx, &model, &reference, DeploymentStatus::Active, inactive).await
}

/// POST …/deployments/{ref}/deactivate → `{"success": true}` (status
/// INACTIVE: no replica runs until it is activated).
pub(crate) async fn deactivate(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((model, reference)): UrlPath<(String, String)>,
) -> Answer {
    set_status(&ctx, &model, &reference, DeploymentStatus::Inactive, |_| {
        true
    })
    .await
}

/// The reason written on a replica terminated through the API.
pub const TERMINATED_REASON: &str = "terminated through the API";

/// DELETE …/deployments/{ref}/replicas/{replica_id} → `{"success": true}`:
/// asks the replica's worker to drain and stop it.
pub(crate) async fn terminate_replica(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((model, reference, replica)): UrlPath<(String, String, String)>,
) -> Answer {
    let model = model_id(&model)?;
    let reference = DeploymentRef::parse(&reference);
    for _ in 0..CAS_ATTEMPTS {
        let deployment = ctx.store.resolve(&model, &reference).await?;
        let stored = ctx
            .store
            .replica(&replica)
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
            return Ok(Json(json!({ "success": true })));
        }
        record.stop_requested = true;
        record.reason = TERMINATED_REASON.to_owned();
        if ctx
            .store
            .commit(&[stored.put(Table::Replicas, &record)])
            .await?
        {
            return Ok(Json(json!({ "success": true })));
        }
    }
    Err(contended("the replica"))
}

/// GET …/deployments/{ref}/replicas → `{"replicas": [...]}`, oldest first.
pub(crate) async fn replicas(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((model, reference)): UrlPath<(String, String)>,
) -> Answer {
    let model = model_id(&model)?;
    let deployment = ctx
        .store
        .resolve(&model, &DeploymentRef::parse(&reference))
        .await?;
    let mut replicas: Vec<pb::Replica> = ctx
        .store
        .replicas()
        .await?
        .into_iter()
        .filter(|r| r.deployment_id == deployment.key)
        .collect();
    replicas.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
    let list: Vec<Value> = replicas.iter().map(views::replica).collect();
    Ok(Json(json!({ "replicas": list })))
}

/// POST /v1/models/{model_id}/deployments: a `DeploymentSpec` (as `tidal
/// deploy` reads it; `model` may be left out) → 201 and the new
/// `DeploymentV1`. Weights must be URLs with `size_bytes` and `sha256`.
pub(crate) async fn create(
    State(ctx): State<Arc<Ctx>>,
    UrlPath(model): UrlPath<String>,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), HttpError> {
    let model = model_id(&model)?;
    let mut object = body::object(&bytes)?;
    match object.get("model") {
        None | Some(Value::Null) => {
            object.insert("model".to_owned(), Value::String(model.to_string()));
        }
        Some(Value::String(given)) if given == model.as_str() => {}
        Some(other) => {
            return Err(HttpError::invalid(
                "model",
                format!("model must be the model in the path ({model}) or left out; got {other}"),
            ));
        }
    }
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
        return Err(HttpError::conflict(format!(
            "deployment {id} already exists; choose another `deployment` id (PATCH its \
             autoscaling_settings to change its settings)"
        ))
        .with_field("deployment"));
    }
    tracing::info!(deployment = %id, model = %model, "deployment created through the API");
    let stored = Stored {
        key: id,
        value: record,
        mod_revision: 0,
    };
    let view = views::deployment(&stored, &Default::default())?;
    Ok((StatusCode::CREATED, Json(view)))
}
