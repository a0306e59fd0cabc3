//! A [`DeploymentSpec`] as the store keeps it: the `DeploymentRecord` a new
//! deployment starts with, and the record an existing deployment gets when
//! its spec is replaced (what the controller decided is kept); and as the
//! management API's `CreateDeployment` takes it ([`spec_message`]).

use tidal_types::{DeploymentSpec, DeploymentStatus, UpdateAutoscalingSettings};

use crate::pb;

/// Why a spec cannot become a record, or cannot replace a stored one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecRecordError {
    /// A local weight file's size or digest was not computed yet.
    #[error(
        "weights[{index}] ({name}) has no size_bytes or sha256 yet; the loader computes them \
         from the local file before the spec is stored"
    )]
    Unmeasured {
        /// Its index in `weights`.
        index: usize,
        /// Its name.
        name: String,
    },
    /// The stored deployment with this id belongs to another model.
    #[error(
        "deployment {deployment} already exists for model {stored}, not {given}; choose another \
         `deployment` id"
    )]
    OtherModel {
        /// The deployment id.
        deployment: String,
        /// The stored record's model.
        stored: String,
        /// The spec's model.
        given: String,
    },
    /// The stored deployment is a development deployment, whose autoscaling
    /// settings are fixed.
    #[error(
        "deployment {0} is a development deployment: its autoscaling_settings are fixed; \
         leave them as they are (promote it to change them)"
    )]
    DevelopmentFixed(String),
}

/// The spec's weights with their size and sha256, which must be measured.
fn weight_files(spec: &DeploymentSpec) -> Result<Vec<pb::WeightFile>, SpecRecordError> {
    spec.weights
        .iter()
        .enumerate()
        .map(|(index, w)| match (w.size_bytes, &w.sha256) {
            (Some(size_bytes), Some(sha256)) => Ok(pb::WeightFile {
                url: w.url.clone(),
                size_bytes,
                sha256: sha256.clone(),
                name: w.name.clone(),
            }),
            _ => Err(SpecRecordError::Unmeasured {
                index,
                name: w.name.clone(),
            }),
        })
        .collect()
}

/// The record a new deployment of `spec` starts with: status DEPLOYING, no
/// desired replicas yet (its controller decides), created at `created_at`
/// (RFC 3339). A spec's deployment is never a development deployment: it
/// carries its own autoscaling settings.
///
/// `resources.weights` (the scheduler's warm-node preference) holds the
/// weights' sha256 digests, the names the worker's cache keeps them under.
pub fn deployment_record(
    spec: &DeploymentSpec,
    created_at: &str,
) -> Result<pb::DeploymentRecord, SpecRecordError> {
    let weight_files = weight_files(spec)?;
    let (command, args) = match spec.command.split_first() {
        Some((program, args)) => (program.clone(), args.to_vec()),
        None => (String::new(), Vec::new()),
    };
    let r = &spec.resources;
    Ok(pb::DeploymentRecord {
        deployment: Some(pb::Deployment {
            id: spec.deployment.to_string(),
            created_at: created_at.to_owned(),
            name: spec.deployment.to_string(),
            model_id: spec.model.to_string(),
            is_production: false,
            is_development: false,
            status: pb::DeploymentStatus::from(DeploymentStatus::Deploying).into(),
            active_replica_count: 0,
            autoscaling_settings: Some(spec.autoscaling_settings.into()),
            instance_type_name: None,
            environment: None,
            labels: Default::default(),
        }),
        resources: Some(pb::DeploymentResources {
            region: r.region.clone().unwrap_or_default(),
            gpu_type: r.gpu_type.clone().unwrap_or_default(),
            gpu_count: r.gpu_count,
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
            image: String::new(),
            weights: weight_files.iter().map(|w| w.sha256.clone()).collect(),
            weight_files,
            command,
            args,
            env: spec.env.clone().into_iter().collect(),
            health_path: spec.health_path.clone(),
            ready_timeout_secs: spec.ready_timeout_secs,
            stop_grace_secs: spec.stop_grace_secs,
        }),
        desired_replicas: 0,
        status_reason: String::new(),
        decision_reason: String::new(),
        last_request_at_ms: 0,
    })
}

/// `stored` with its spec replaced by `new`'s (a record from
/// [`deployment_record`]): the model, name, autoscaling settings and every
/// resource come from `new`; what the cluster decided or observed stays as
/// stored — desired replicas, status, status and decision reasons, active
/// replicas — and so do creation time, promotion (production, environment),
/// development flag, labels and instance type.
///
/// Refused when `stored` belongs to another model, or is a development
/// deployment whose settings would change.
pub fn replace_spec(
    stored: &pb::DeploymentRecord,
    new: pb::DeploymentRecord,
) -> Result<pb::DeploymentRecord, SpecRecordError> {
    let mut record = stored.clone();
    let new_deployment = new.deployment.unwrap_or_default();
    let deployment = record.deployment.get_or_insert_with(Default::default);
    if !deployment.model_id.is_empty() && deployment.model_id != new_deployment.model_id {
        return Err(SpecRecordError::OtherModel {
            deployment: new_deployment.id,
            stored: deployment.model_id.clone(),
            given: new_deployment.model_id,
        });
    }
    if deployment.is_development
        && deployment.autoscaling_settings != new_deployment.autoscaling_settings
    {
        return Err(SpecRecordError::DevelopmentFixed(new_deployment.id));
    }
    if deployment.created_at.is_empty() {
        deployment.created_at = new_deployment.created_at;
    }
    if deployment.status == i32::from(pb::DeploymentStatus::Unspecified) {
        deployment.status = new_deployment.status;
    }
    deployment.id = new_deployment.id;
    deployment.name = new_deployment.name;
    deployment.model_id = new_deployment.model_id;
    deployment.autoscaling_settings = new_deployment.autoscaling_settings;
    record.resources = new.resources;
    Ok(record)
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;

/// The `tidal.v1.DeploymentSpec` of a measured spec (every weight with its
/// size and sha256), for the management API's `CreateDeployment`: every
/// field is given, so the API reads the deployment the file describes
/// (and checks it again, against the cluster's limits).
pub fn spec_message(spec: &DeploymentSpec) -> Result<pb::DeploymentSpec, SpecRecordError> {
    let s = &spec.autoscaling_settings;
    let settings = UpdateAutoscalingSettings {
        min_replica: Some(s.min_replica),
        max_replica: Some(s.max_replica),
        autoscaling_window: Some(s.autoscaling_window),
        scale_down_delay: Some(s.scale_down_delay),
        concurrency_target: Some(s.concurrency_target),
        target_utilization_percentage: Some(s.target_utilization_percentage),
        max_scale_down_rate: s.max_scale_down_rate.map(Some),
        target_in_flight_tokens: s.target_in_flight_tokens.map(Some),
        burst_window: s.burst_window.map(Some),
        burst_threshold_percentage: s.burst_threshold_percentage.map(Some),
    };
    let weights = weight_files(spec)?
        .into_iter()
        .map(|w| pb::SpecWeight {
            name: w.name,
            url: w.url,
            size_bytes: w.size_bytes,
            sha256: w.sha256,
        })
        .collect();
    let r = &spec.resources;
    Ok(pb::DeploymentSpec {
        deployment: Some(spec.deployment.to_string()),
        autoscaling_settings: Some(settings.into()),
        resources: Some(pb::SpecResources {
            region: r.region.clone(),
            gpu_type: r.gpu_type.clone(),
            gpu_count: Some(r.gpu_count),
            cpu_millis: Some(r.cpu_millis),
            memory_bytes: Some(r.memory_bytes),
        }),
        command: spec.command.clone(),
        env: spec.env.clone().into_iter().collect(),
        health_path: Some(spec.health_path.clone()),
        ready_timeout_secs: Some(spec.ready_timeout_secs),
        stop_grace_secs: Some(spec.stop_grace_secs),
        weights,
    })
}
