//! Baseten's environment routes: GET and PATCH
//! `/v1/models/{model_id}/environments/{env_name}` (promotion to an
//! environment is in `promote.rs`).
//!
//! An environment exists when its record does (`<model>/<name>` in
//! ENVIRONMENTS, written by promotion or PATCH), when a deployment is in
//! it, and — `production` — for every model with a deployment. Its
//! current deployment is the deployment in it; its autoscaling settings
//! are that deployment's (or, with none, those stored on the environment,
//! which the next deployment promoted to it takes).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use serde_json::{Value, json};
use tidal_proto::pb;
use tidal_store::app::{BatchOp, Precondition, Table};
use tidal_types::{
    AutoscalingSettings, DeploymentError, ModelId, UpdateAutoscalingResponse, UpdateStatus,
};

use crate::body::{self, Object};
use crate::error::HttpError;
use crate::server::Ctx;
use crate::store::{
    CAS_ATTEMPTS, Stored, contended, domain, environment_key, environment_name, in_environment,
    model_id, no_model,
};
use crate::views;

/// An environment as read: its record, its current deployment.
struct Env {
    record: Option<Stored<pb::Environment>>,
    current: Option<Stored<pb::DeploymentRecord>>,
}

impl Env {
    fn settings(&self) -> Result<AutoscalingSettings, HttpError> {
        if let Some(c) = &self.current {
            return Ok(domain(&c.value, &c.key)?.autoscaling_settings);
        }
        Ok(self
            .record
            .as_ref()
            .and_then(|r| r.value.autoscaling_settings)
            .map(Into::into)
            .unwrap_or_default())
    }
}

/// Reads environment `name` of `model`; 404 naming them if it does not exist.
async fn read(ctx: &Ctx, model: &ModelId, name: &str) -> Result<Env, HttpError> {
    let deployments = ctx.store.model_deployments(model).await?;
    let record = ctx.store.environment(model, name).await?;
    let current = deployments
        .iter()
        .find(|s| in_environment(&s.value, name))
        .cloned();
    let production = name == tidal_types::EnvironmentName::PRODUCTION && !deployments.is_empty();
    if record.is_none() && current.is_none() && !production {
        if deployments.is_empty() {
            return Err(no_model(model));
        }
        return Err(HttpError::not_found(format!(
            "model {model} has no environment {name}; promote a deployment to it with POST \
             /v1/models/{model}/environments/{name}/promote"
        )));
    }
    Ok(Env { record, current })
}

/// GET /v1/models/{model_id}/environments/{env_name} → `EnvironmentV1`.
pub(crate) async fn get(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((model, name)): UrlPath<(String, String)>,
) -> Result<Json<Value>, HttpError> {
    let model = model_id(&model)?;
    let name = environment_name(&name, "env_name")?;
    let env = read(&ctx, &model, name.as_str()).await?;
    let current = match &env.current {
        Some(c) => Some(views::deployment_json(&views::deployment(
            c,
            &ctx.store.ready_counts().await?,
        )?)?),
        None => None,
    };
    let created_at = env
        .record
        .as_ref()
        .map(|r| r.value.created_at.clone())
        .or_else(|| {
            env.current
                .as_ref()
                .and_then(|c| c.value.deployment.as_ref().map(|d| d.created_at.clone()))
        })
        .unwrap_or_default();
    Ok(Json(views::environment(
        model.as_str(),
        name.as_str(),
        &created_at,
        current,
        &env.settings()?,
        env.record
            .as_ref()
            .and_then(|r| r.value.promotion_settings.as_ref()),
    )))
}

const PROMOTION_FIELDS: &[&str] = &[
    "redeploy_on_promotion",
    "ramp_up_while_promoting",
    "ramp_up_duration_seconds",
    "rolling_deploy",
    "rolling_deploy_config",
    "promotion_cleanup_strategy",
];

/// `base` with an `UpdatePromotionSettingsV1` applied (null = unchanged).
/// tidal promotes at once, in place: asking for a redeploy, a ramp-up or a
/// rolling deploy is refused rather than stored and ignored.
fn promotion_update(
    base: Option<&pb::PromotionSettings>,
    value: &Value,
) -> Result<pb::PromotionSettings, HttpError> {
    const P: &str = "promotion_settings.";
    let Value::Object(map) = value else {
        return Err(HttpError::invalid(
            "promotion_settings",
            format!(
                "promotion_settings must be a JSON object; got {}",
                body::kind(value)
            ),
        ));
    };
    body::only(map, PROMOTION_FIELDS, P)?;
    let mut next = base.cloned().unwrap_or_default();
    let flag = |map: &Object, key: &str, why: &str| -> Result<Option<bool>, HttpError> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(false)) => Ok(Some(false)),
            Some(Value::Bool(true)) => Err(HttpError::invalid(
                format!("{P}{key}"),
                format!("{P}{key}: tidal does not support it ({why}); send false or null"),
            )),
            Some(other) => Err(HttpError::invalid(
                format!("{P}{key}"),
                format!("{P}{key} must be true or false; got {}", body::kind(other)),
            )),
        }
    };
    if let Some(v) = flag(
        map,
        "redeploy_on_promotion",
        "promotion reuses the deployment itself",
    )? {
        next.redeploy_on_promotion = Some(v);
    }
    if let Some(v) = flag(map, "ramp_up_while_promoting", "promotion switches at once")? {
        next.ramp_up_while_promoting = Some(v);
    }
    if let Some(v) = flag(map, "rolling_deploy", "promotion switches at once")? {
        next.rolling_deploy = Some(v);
    }
    if let Some(v) = body::whole(map, "ramp_up_duration_seconds", P)? {
        next.ramp_up_duration_seconds = Some(u32::try_from(v).map_err(|_| {
            HttpError::invalid(
                format!("{P}ramp_up_duration_seconds"),
                format!(
                    "{P}ramp_up_duration_seconds must be at most {}; got {v}",
                    u32::MAX
                ),
            )
        })?);
    }
    for key in ["rolling_deploy_config", "promotion_cleanup_strategy"] {
        if map.get(key).is_some_and(|v| !v.is_null()) {
            return Err(HttpError::invalid(
                format!("{P}{key}"),
                format!(
                    "{P}{key}: tidal does not support it (promotion switches at once); send null"
                ),
            ));
        }
    }
    Ok(next)
}

/// PATCH /v1/models/{model_id}/environments/{env_name}:
/// `{autoscaling_settings, promotion_settings}` (both optional) →
/// `{status, message}`. New autoscaling settings apply to the current
/// deployment at once and are kept for the next one promoted.
pub(crate) async fn patch(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((model, name)): UrlPath<(String, String)>,
    bytes: Bytes,
) -> Result<Json<Value>, HttpError> {
    let model = model_id(&model)?;
    let name = environment_name(&name, "env_name")?;
    let object = body::object(&bytes)?;
    body::only(&object, &["autoscaling_settings", "promotion_settings"], "")?;
    let update = match object.get("autoscaling_settings") {
        None | Some(Value::Null) => None,
        Some(v) => Some(body::settings_update(v, "autoscaling_settings.")?),
    };
    for _ in 0..CAS_ATTEMPTS {
        let env = read(&ctx, &model, name.as_str()).await?;
        let cluster = ctx.cluster().await?.settings();
        let stored_promotion = env.record.as_ref().and_then(|r| r.value.promotion_settings);
        let promotion = match object.get("promotion_settings") {
            None | Some(Value::Null) => stored_promotion,
            Some(v) => Some(promotion_update(stored_promotion.as_ref(), v)?),
        };
        let mut ops = Vec::new();
        let base = env.settings()?;
        let (settings, mut answer) = match (&env.current, &update) {
            (Some(current), Some(update)) => {
                let mut d = domain(&current.value, &current.key)?;
                let answer = d.patch_autoscaling(update, &cluster).map_err(|e| match e {
                    DeploymentError::InvalidSettings(e) => {
                        HttpError::settings(&e, "autoscaling_settings.")
                    }
                    other => HttpError::bad_request(other.to_string()),
                })?;
                if answer.status != UpdateStatus::Unchanged {
                    let mut record = current.value.clone();
                    if let Some(pd) = record.deployment.as_mut() {
                        pd.autoscaling_settings = Some(d.autoscaling_settings.into());
                    }
                    ops.push(current.put(Table::Deployments, &record));
                }
                (d.autoscaling_settings, answer)
            }
            (None, Some(update)) => {
                let next = base
                    .patched(update, &cluster)
                    .map_err(|e| HttpError::settings(&e, "autoscaling_settings."))?;
                (next, unchanged())
            }
            (_, None) => (base, unchanged()),
        };
        let stored_settings = env
            .record
            .as_ref()
            .and_then(|r| r.value.autoscaling_settings)
            .map(AutoscalingSettings::from);
        let asked = update.is_some()
            || object
                .get("promotion_settings")
                .is_some_and(|v| !v.is_null());
        let record_changed =
            asked && (stored_settings != Some(settings) || promotion != stored_promotion);
        if record_changed {
            let record = pb::Environment {
                model_id: model.to_string(),
                name: name.to_string(),
                created_at: env
                    .record
                    .as_ref()
                    .map_or_else(views::rfc3339_now, |r| r.value.created_at.clone()),
                current_deployment_id: env
                    .current
                    .as_ref()
                    .map(|c| c.key.clone())
                    .unwrap_or_default(),
                autoscaling_settings: Some(settings.into()),
                promotion_settings: promotion,
            };
            ops.push(match &env.record {
                Some(stored) => stored.put(Table::Environments, &record),
                None => BatchOp::Put {
                    table: Table::Environments,
                    key: environment_key(&model, name.as_str()),
                    value: prost::Message::encode_to_vec(&record),
                    precondition: Precondition::MustNotExist,
                },
            });
        }
        let user_visible = settings != base || promotion != stored_promotion;
        if answer.status == UpdateStatus::Unchanged && user_visible {
            answer = UpdateAutoscalingResponse {
                status: UpdateStatus::Accepted,
                message: format!("environment {name} updated"),
            };
        }
        if ops.is_empty() || ctx.store.commit(&ops).await? {
            return Ok(Json(json!(answer)));
        }
    }
    Err(contended("the environment"))
}

fn unchanged() -> UpdateAutoscalingResponse {
    UpdateAutoscalingResponse {
        status: UpdateStatus::Unchanged,
        message: "environment settings unchanged".to_owned(),
    }
}
