//! Conversions between the `tidal.v1` messages and `tidal-types`.
//!
//! Domain → message is `From` and cannot fail. Message → domain is
//! `TryFrom` wherever a message can hold what the domain type cannot (an
//! UNSPECIFIED or unknown enum value, an invalid id, a missing required
//! message) and `From` where it cannot: every `AutoscalingSettings`,
//! `UpdateAutoscalingSettings` or `ClusterSettings` message has a domain
//! value (ranges are checked later by `AutoscalingSettings::validate`).

use tidal_types::{
    AutoscalingSettings, ClusterSettings, Deployment, DeploymentId, DeploymentStatus,
    EnvironmentName, IdError, ModelId, UpdateAutoscalingResponse, UpdateAutoscalingSettings,
    UpdateStatus,
};

use crate::pb;

/// A message that has no `tidal-types` value. `field` is the message and
/// field at fault, e.g. `Deployment.status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    /// A message field the domain type requires is absent.
    #[error("{field} is missing; it must always be set")]
    Missing {
        /// The field at fault.
        field: &'static str,
    },
    /// An enum field holds its UNSPECIFIED value (0).
    #[error("{field} is unspecified (0); it must be one of its named values")]
    Unspecified {
        /// The field at fault.
        field: &'static str,
    },
    /// An enum field holds a number this version of tidal does not know.
    #[error(
        "{field} has unknown value {value}; it may have been written by a newer version of tidal"
    )]
    UnknownEnumValue {
        /// The field at fault.
        field: &'static str,
        /// The number found.
        value: i32,
    },
    /// An id or name failed validation.
    #[error("{field} is invalid: {source}")]
    InvalidId {
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        #[source]
        source: IdError,
    },
}

impl ConversionError {
    /// The message and field at fault, e.g. `Deployment.status`.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Missing { field }
            | Self::Unspecified { field }
            | Self::UnknownEnumValue { field, .. }
            | Self::InvalidId { field, .. } => field,
        }
    }
}

// --- AutoscalingSettings ---------------------------------------------------

impl From<AutoscalingSettings> for pb::AutoscalingSettings {
    fn from(s: AutoscalingSettings) -> Self {
        Self {
            min_replica: s.min_replica,
            max_replica: s.max_replica,
            autoscaling_window: s.autoscaling_window,
            scale_down_delay: s.scale_down_delay,
            concurrency_target: s.concurrency_target,
            target_utilization_percentage: s.target_utilization_percentage,
            max_scale_down_rate: s.max_scale_down_rate,
            target_in_flight_tokens: s.target_in_flight_tokens,
            burst_window: s.burst_window,
            burst_threshold_percentage: s.burst_threshold_percentage,
        }
    }
}

impl From<pb::AutoscalingSettings> for AutoscalingSettings {
    fn from(s: pb::AutoscalingSettings) -> Self {
        Self {
            min_replica: s.min_replica,
            max_replica: s.max_replica,
            autoscaling_window: s.autoscaling_window,
            scale_down_delay: s.scale_down_delay,
            concurrency_target: s.concurrency_target,
            target_utilization_percentage: s.target_utilization_percentage,
            max_scale_down_rate: s.max_scale_down_rate,
            target_in_flight_tokens: s.target_in_flight_tokens,
            burst_window: s.burst_window,
            burst_threshold_percentage: s.burst_threshold_percentage,
        }
    }
}

// --- UpdateAutoscalingSettings ---------------------------------------------

/// An optional feature's update: `None` keeps it, `Some(None)` turns it off.
fn feature_to_pb(update: Option<Option<u32>>) -> Option<pb::OptionalU32> {
    update.map(|value| pb::OptionalU32 { value })
}

fn feature_from_pb(update: Option<pb::OptionalU32>) -> Option<Option<u32>> {
    update.map(|wrapper| wrapper.value)
}

impl From<UpdateAutoscalingSettings> for pb::UpdateAutoscalingSettings {
    fn from(u: UpdateAutoscalingSettings) -> Self {
        Self {
            min_replica: u.min_replica,
            max_replica: u.max_replica,
            autoscaling_window: u.autoscaling_window,
            scale_down_delay: u.scale_down_delay,
            concurrency_target: u.concurrency_target,
            target_utilization_percentage: u.target_utilization_percentage,
            max_scale_down_rate: feature_to_pb(u.max_scale_down_rate),
            target_in_flight_tokens: feature_to_pb(u.target_in_flight_tokens),
            burst_window: feature_to_pb(u.burst_window),
            burst_threshold_percentage: feature_to_pb(u.burst_threshold_percentage),
        }
    }
}

impl From<pb::UpdateAutoscalingSettings> for UpdateAutoscalingSettings {
    fn from(u: pb::UpdateAutoscalingSettings) -> Self {
        Self {
            min_replica: u.min_replica,
            max_replica: u.max_replica,
            autoscaling_window: u.autoscaling_window,
            scale_down_delay: u.scale_down_delay,
            concurrency_target: u.concurrency_target,
            target_utilization_percentage: u.target_utilization_percentage,
            max_scale_down_rate: feature_from_pb(u.max_scale_down_rate),
            target_in_flight_tokens: feature_from_pb(u.target_in_flight_tokens),
            burst_window: feature_from_pb(u.burst_window),
            burst_threshold_percentage: feature_from_pb(u.burst_threshold_percentage),
        }
    }
}

// --- ClusterSettings -------------------------------------------------------

impl From<ClusterSettings> for pb::ClusterSettings {
    fn from(c: ClusterSettings) -> Self {
        Self {
            per_deployment_replica_limit: c.per_deployment_replica_limit,
        }
    }
}

impl From<pb::ClusterSettings> for ClusterSettings {
    fn from(c: pb::ClusterSettings) -> Self {
        Self {
            per_deployment_replica_limit: c.per_deployment_replica_limit,
        }
    }
}

// --- DeploymentStatus ------------------------------------------------------

impl From<DeploymentStatus> for pb::DeploymentStatus {
    fn from(status: DeploymentStatus) -> Self {
        match status {
            DeploymentStatus::Building => Self::Building,
            DeploymentStatus::Deploying => Self::Deploying,
            DeploymentStatus::DeployFailed => Self::DeployFailed,
            DeploymentStatus::LoadingModel => Self::LoadingModel,
            DeploymentStatus::Active => Self::Active,
            DeploymentStatus::Unhealthy => Self::Unhealthy,
            DeploymentStatus::BuildFailed => Self::BuildFailed,
            DeploymentStatus::BuildStopped => Self::BuildStopped,
            DeploymentStatus::Deactivating => Self::Deactivating,
            DeploymentStatus::Inactive => Self::Inactive,
            DeploymentStatus::Failed => Self::Failed,
            DeploymentStatus::Updating => Self::Updating,
            DeploymentStatus::ScaledToZero => Self::ScaledToZero,
            DeploymentStatus::WakingUp => Self::WakingUp,
        }
    }
}

/// `status` as a domain value; `field` names it in errors.
fn deployment_status(
    field: &'static str,
    status: pb::DeploymentStatus,
) -> Result<DeploymentStatus, ConversionError> {
    Ok(match status {
        pb::DeploymentStatus::Unspecified => return Err(ConversionError::Unspecified { field }),
        pb::DeploymentStatus::Building => DeploymentStatus::Building,
        pb::DeploymentStatus::Deploying => DeploymentStatus::Deploying,
        pb::DeploymentStatus::DeployFailed => DeploymentStatus::DeployFailed,
        pb::DeploymentStatus::LoadingModel => DeploymentStatus::LoadingModel,
        pb::DeploymentStatus::Active => DeploymentStatus::Active,
        pb::DeploymentStatus::Unhealthy => DeploymentStatus::Unhealthy,
        pb::DeploymentStatus::BuildFailed => DeploymentStatus::BuildFailed,
        pb::DeploymentStatus::BuildStopped => DeploymentStatus::BuildStopped,
        pb::DeploymentStatus::Deactivating => DeploymentStatus::Deactivating,
        pb::DeploymentStatus::Inactive => DeploymentStatus::Inactive,
        pb::DeploymentStatus::Failed => DeploymentStatus::Failed,
        pb::DeploymentStatus::Updating => DeploymentStatus::Updating,
        pb::DeploymentStatus::ScaledToZero => DeploymentStatus::ScaledToZero,
        pb::DeploymentStatus::WakingUp => DeploymentStatus::WakingUp,
    })
}

impl TryFrom<pb::DeploymentStatus> for DeploymentStatus {
    type Error = ConversionError;

    fn try_from(status: pb::DeploymentStatus) -> Result<Self, ConversionError> {
        deployment_status("DeploymentStatus", status)
    }
}

// --- Deployment ------------------------------------------------------------

impl From<Deployment> for pb::Deployment {
    fn from(d: Deployment) -> Self {
        Self {
            id: d.id.into(),
            created_at: d.created_at,
            name: d.name,
            model_id: d.model_id.into(),
            is_production: d.is_production,
            is_development: d.is_development,
            status: pb::DeploymentStatus::from(d.status).into(),
            active_replica_count: d.active_replica_count,
            autoscaling_settings: Some(d.autoscaling_settings.into()),
            instance_type_name: d.instance_type_name,
            environment: d.environment.map(String::from),
            labels: d.labels,
        }
    }
}

/// An enum field's number as its generated enum; unknown numbers are refused.
fn known<E: TryFrom<i32>>(field: &'static str, value: i32) -> Result<E, ConversionError> {
    E::try_from(value).map_err(|_| ConversionError::UnknownEnumValue { field, value })
}

/// Wraps an id's validation error with the field it came from.
fn id<T>(field: &'static str, parsed: Result<T, IdError>) -> Result<T, ConversionError> {
    parsed.map_err(|source| ConversionError::InvalidId { field, source })
}

impl TryFrom<pb::Deployment> for Deployment {
    type Error = ConversionError;

    fn try_from(d: pb::Deployment) -> Result<Self, ConversionError> {
        const STATUS: &str = "Deployment.status";
        Ok(Self {
            id: id("Deployment.id", DeploymentId::new(d.id))?,
            created_at: d.created_at,
            name: d.name,
            model_id: id("Deployment.model_id", ModelId::new(d.model_id))?,
            is_production: d.is_production,
            is_development: d.is_development,
            status: deployment_status(STATUS, known(STATUS, d.status)?)?,
            active_replica_count: d.active_replica_count,
            autoscaling_settings: d
                .autoscaling_settings
                .ok_or(ConversionError::Missing {
                    field: "Deployment.autoscaling_settings",
                })?
                .into(),
            instance_type_name: d.instance_type_name,
            environment: d
                .environment
                .map(|name| id("Deployment.environment", EnvironmentName::new(name)))
                .transpose()?,
            labels: d.labels,
        })
    }
}

// --- UpdateStatus and UpdateAutoscalingResponse ----------------------------

impl From<UpdateStatus> for pb::UpdateStatus {
    fn from(status: UpdateStatus) -> Self {
        match status {
            UpdateStatus::Accepted => Self::Accepted,
            UpdateStatus::Queued => Self::Queued,
            UpdateStatus::Unchanged => Self::Unchanged,
        }
    }
}

/// `status` as a domain value; `field` names it in errors.
fn update_status(
    field: &'static str,
    status: pb::UpdateStatus,
) -> Result<UpdateStatus, ConversionError> {
    match status {
        pb::UpdateStatus::Unspecified => Err(ConversionError::Unspecified { field }),
        pb::UpdateStatus::Accepted => Ok(UpdateStatus::Accepted),
        pb::UpdateStatus::Queued => Ok(UpdateStatus::Queued),
        pb::UpdateStatus::Unchanged => Ok(UpdateStatus::Unchanged),
    }
}

impl TryFrom<pb::UpdateStatus> for UpdateStatus {
    type Error = ConversionError;

    fn try_from(status: pb::UpdateStatus) -> Result<Self, ConversionError> {
        update_status("UpdateStatus", status)
    }
}

impl From<UpdateAutoscalingResponse> for pb::UpdateAutoscalingResponse {
    fn from(r: UpdateAutoscalingResponse) -> Self {
        Self {
            status: pb::UpdateStatus::from(r.status).into(),
            message: r.message,
        }
    }
}

impl TryFrom<pb::UpdateAutoscalingResponse> for UpdateAutoscalingResponse {
    type Error = ConversionError;

    fn try_from(r: pb::UpdateAutoscalingResponse) -> Result<Self, ConversionError> {
        const STATUS: &str = "UpdateAutoscalingResponse.status";
        Ok(Self {
            status: update_status(STATUS, known(STATUS, r.status)?)?,
            message: r.message,
        })
    }
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
