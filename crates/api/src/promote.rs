//! Promotion: a deployment becomes its environment's current deployment
//! (production's, through `…/deployments/{id}/promote`; any
//! environment's, through `…/environments/{env}/promote`).
//!
//! One all-or-none store batch, compare-and-set on everything read:
//! - the promoted deployment gets the environment (production: also
//!   `is_production`), stops being a development deployment, and its
//!   settings by the route's rule ([`SettingsRule`]);
//! - the environment's previous deployment loses `is_production` and
//!   `environment`, and with `scale_down_previous_*` is deactivated
//!   (INACTIVE);
//! - the environment record (`<model>/<env>` in ENVIRONMENTS) names the new
//!   current deployment and its settings; an environment the promoted
//!   deployment leaves no longer names it.
//!
//! An INACTIVE deployment is refused (409): activate it first, as on
//! Baseten. tidal promotes in place: no new deployment is built.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use serde_json::Value;
use tidal_proto::pb;
use tidal_store::app::{BatchOp, Precondition, Table};
use tidal_types::{
    Deployment, DeploymentError, DeploymentStatus, EnvironmentName, ModelId,
    UpdateAutoscalingSettings,
};

use crate::body;
use crate::error::HttpError;
use crate::server::Ctx;
use crate::store::{
    CAS_ATTEMPTS, DeploymentRef, contended, domain, environment_key, environment_name, find,
    in_environment, model_id,
};
use crate::views;

/// Where the promoted deployment's autoscaling settings come from.
#[derive(Debug, Clone)]
pub(crate) enum SettingsRule {
    /// Its own, with these fields overridden (`…/deployments/{id}/promote`:
    /// settings carry over unless overridden).
    Carry(Option<UpdateAutoscalingSettings>),
    /// The environment's: those of its current deployment, else those
    /// stored on the environment, else the deployment's own
    /// (`…/environments/{env}/promote`, Baseten's environment semantics).
    Environment,
}

/// POST /v1/models/{model_id}/deployments/{ref}/promote:
/// `{scale_down_previous_production, preserve_env_instance_type,
/// autoscaling_settings}` (all optional) → the promoted `DeploymentV1`.
pub(crate) async fn promote_deployment(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((model, reference)): UrlPath<(String, String)>,
    bytes: Bytes,
) -> Result<Json<Value>, HttpError> {
    let model = model_id(&model)?;
    let object = body::object(&bytes)?;
    body::only(
        &object,
        &[
            "scale_down_previous_production",
            "preserve_env_instance_type",
            "autoscaling_settings",
        ],
        "",
    )?;
    let scale_down = body::boolean(&object, "scale_down_previous_production", true)?;
    // tidal has no instance types: accepted (Baseten's default is true) and
    // without effect.
    body::boolean(&object, "preserve_env_instance_type", true)?;
    let overrides = match object.get("autoscaling_settings") {
        None | Some(Value::Null) => None,
        Some(v) => Some(body::settings_update(v, "autoscaling_settings.")?),
    };
    let d = promote_to_production(&ctx, &model, &reference, scale_down, overrides).await?;
    Ok(Json(views::deployment_json(&d)?))
}

/// Promotes a deployment (id, `development` or `production`) of `model`
/// to production: its settings carry over, with `overrides` applied (a
/// field out of range is named `autoscaling_settings.<field>`).
pub(crate) async fn promote_to_production(
    ctx: &Ctx,
    model: &ModelId,
    reference: &str,
    scale_down_previous: bool,
    overrides: Option<UpdateAutoscalingSettings>,
) -> Result<Deployment, HttpError> {
    promote(
        ctx,
        model,
        &DeploymentRef::parse(reference),
        &EnvironmentName::production(),
        &SettingsRule::Carry(overrides),
        scale_down_previous,
    )
    .await
}

/// POST /v1/models/{model_id}/environments/{env_name}/promote:
/// `{deployment_id, scale_down_previous_deployment, preserve_env_instance_type}`
/// → the promoted `DeploymentV1`. Promoting to an environment that does not
/// exist yet creates it.
pub(crate) async fn promote_to_environment(
    State(ctx): State<Arc<Ctx>>,
    UrlPath((model, env)): UrlPath<(String, String)>,
    bytes: Bytes,
) -> Result<Json<Value>, HttpError> {
    let model = model_id(&model)?;
    let env = environment_name(&env, "env_name")?;
    let object = body::object(&bytes)?;
    body::only(
        &object,
        &[
            "deployment_id",
            "scale_down_previous_deployment",
            "preserve_env_instance_type",
        ],
        "",
    )?;
    let Some(deployment) = body::string(&object, "deployment_id")? else {
        return Err(HttpError::invalid(
            "deployment_id",
            "deployment_id is required: the id of the deployment to promote",
        ));
    };
    let scale_down = body::boolean(&object, "scale_down_previous_deployment", true)?;
    body::boolean(&object, "preserve_env_instance_type", true)?;
    let d = promote(
        &ctx,
        &model,
        &DeploymentRef::Id(deployment.to_owned()),
        &env,
        &SettingsRule::Environment,
        scale_down,
    )
    .await?;
    Ok(Json(views::deployment_json(&d)?))
}

fn settings_error(e: DeploymentError) -> HttpError {
    match e {
        DeploymentError::InvalidSettings(e) => HttpError::settings(&e, "autoscaling_settings."),
        other => HttpError::bad_request(other.to_string()),
    }
}

/// Promotes `reference` of `model` to `env` (see the module docs).
pub(crate) async fn promote(
    ctx: &Ctx,
    model: &ModelId,
    reference: &DeploymentRef,
    env: &EnvironmentName,
    rule: &SettingsRule,
    scale_down_previous: bool,
) -> Result<Deployment, HttpError> {
    for _ in 0..CAS_ATTEMPTS {
        let deployments = ctx.store.existing_model(model).await?;
        let target = find(&deployments, model, reference)?;
        let current = domain(&target.value, &target.key)?;
        if matches!(
            current.status,
            DeploymentStatus::Inactive | DeploymentStatus::Deactivating
        ) {
            return Err(HttpError::conflict(format!(
                "deployment {} is {}: activate it (POST /v1/models/{model}/deployments/{}/activate) \
                 before promoting it",
                target.key,
                if current.status == DeploymentStatus::Inactive {
                    "INACTIVE"
                } else {
                    "DEACTIVATING"
                },
                target.key
            )));
        }
        let cluster = ctx.cluster().await?.settings();
        let previous: Vec<_> = deployments
            .iter()
            .filter(|s| s.key != target.key && in_environment(&s.value, env.as_str()))
            .collect();
        let env_record = ctx.store.environment(model, env.as_str()).await?;
        let promoted = match rule {
            SettingsRule::Carry(overrides) => current
                .promote(env.clone(), overrides.as_ref(), &cluster)
                .map_err(settings_error)?,
            SettingsRule::Environment => {
                let inherited = match previous.first() {
                    Some(p) => Some(domain(&p.value, &p.key)?.autoscaling_settings),
                    None => env_record
                        .as_ref()
                        .and_then(|e| e.value.autoscaling_settings)
                        .map(Into::into),
                };
                let mut promoted = current
                    .promote(env.clone(), None, &cluster)
                    .map_err(settings_error)?;
                if let Some(settings) = inherited {
                    settings
                        .validate(&cluster)
                        .map_err(|e| HttpError::settings(&e, "autoscaling_settings."))?;
                    promoted.autoscaling_settings = settings;
                }
                promoted
            }
        };

        let mut ops = Vec::new();
        let mut record = target.value.clone();
        record.deployment = Some(promoted.clone().into());
        ops.push(target.put(Table::Deployments, &record));
        for p in &previous {
            let mut demoted = p.value.clone();
            if let Some(d) = demoted.deployment.as_mut() {
                d.is_production = false;
                d.environment = None;
                if scale_down_previous {
                    d.status = pb::DeploymentStatus::Inactive.into();
                }
            }
            ops.push(p.put(Table::Deployments, &demoted));
        }
        let settings: pb::AutoscalingSettings = promoted.autoscaling_settings.into();
        match &env_record {
            Some(stored) => {
                let mut e = stored.value.clone();
                e.current_deployment_id.clone_from(&target.key);
                e.autoscaling_settings = Some(settings);
                ops.push(stored.put(Table::Environments, &e));
            }
            None => ops.push(BatchOp::Put {
                table: Table::Environments,
                key: environment_key(model, env.as_str()),
                value: prost::Message::encode_to_vec(&pb::Environment {
                    model_id: model.to_string(),
                    name: env.to_string(),
                    created_at: views::rfc3339_now(),
                    current_deployment_id: target.key.clone(),
                    autoscaling_settings: Some(settings),
                    promotion_settings: None,
                }),
                precondition: Precondition::MustNotExist,
            }),
        }
        // The environment the deployment leaves no longer names it.
        if let Some(old) = current.environment.as_ref().filter(|old| *old != env)
            && let Some(stored) = ctx.store.environment(model, old.as_str()).await?
            && stored.value.current_deployment_id == target.key
        {
            let mut e = stored.value.clone();
            e.current_deployment_id.clear();
            ops.push(stored.put(Table::Environments, &e));
        }
        if ctx.store.commit(&ops).await? {
            tracing::info!(deployment = %target.key, model = %model, environment = %env, "promoted");
            let mut stored = target.clone();
            stored.value = record;
            let ready = ctx.store.ready_counts().await?;
            return views::deployment(&stored, &ready);
        }
    }
    Err(contended("the model's deployments"))
}
