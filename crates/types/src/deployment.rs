//! Deployments (Baseten's `DeploymentV1`), their statuses, development
//! deployments' fixed settings, and promotion.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    AutoscalingSettings, ClusterSettings, DeploymentId, EnvironmentName, InvalidSettings, ModelId,
    UpdateAutoscalingSettings,
};

/// A development deployment with no traffic for this many days is deactivated.
pub const DEVELOPMENT_INACTIVITY_DAYS: u32 = 14;
/// A production deployment with no traffic for this many days is deactivated.
pub const PRODUCTION_INACTIVITY_DAYS: u32 = 60;

/// A deployment's status (Baseten's `DeploymentStatusV1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeploymentStatus {
    Building,
    Deploying,
    DeployFailed,
    LoadingModel,
    Active,
    Unhealthy,
    BuildFailed,
    BuildStopped,
    Deactivating,
    Inactive,
    Failed,
    Updating,
    ScaledToZero,
    WakingUp,
}

impl DeploymentStatus {
    /// Every status, in Baseten's order.
    pub const ALL: [DeploymentStatus; 14] = [
        Self::Building,
        Self::Deploying,
        Self::DeployFailed,
        Self::LoadingModel,
        Self::Active,
        Self::Unhealthy,
        Self::BuildFailed,
        Self::BuildStopped,
        Self::Deactivating,
        Self::Inactive,
        Self::Failed,
        Self::Updating,
        Self::ScaledToZero,
        Self::WakingUp,
    ];

    /// Whether a settings change now has to wait for the deployment to come up.
    pub fn is_in_progress(self) -> bool {
        matches!(self, Self::Building | Self::Deploying | Self::Updating)
    }
}

/// One deployment of a model (Baseten's `DeploymentV1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    pub id: DeploymentId,
    /// RFC 3339 creation time, as Baseten writes it.
    pub created_at: String,
    pub name: String,
    pub model_id: ModelId,
    pub is_production: bool,
    pub is_development: bool,
    pub status: DeploymentStatus,
    pub active_replica_count: u32,
    pub autoscaling_settings: AutoscalingSettings,
    pub instance_type_name: Option<String>,
    /// The environment the deployment is promoted to, if any.
    pub environment: Option<EnvironmentName>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The outcome of a settings PATCH (Baseten's `status` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UpdateStatus {
    /// Applied now.
    Accepted,
    /// Stored; takes effect when the deployment finishes building or deploying.
    Queued,
    /// The settings already had these values.
    Unchanged,
}

/// The body answered to a settings PATCH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateAutoscalingResponse {
    pub status: UpdateStatus,
    pub message: String,
}

/// Why a deployment change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeploymentError {
    /// A development deployment's settings are fixed.
    #[error(
        "deployment {0} is a development deployment: its autoscaling settings are fixed \
         (min 0, max 1, window 60 s, delay 900 s, target 1); promote it to change them"
    )]
    DevelopmentFixed(DeploymentId),
    /// The settings after the change would be invalid.
    #[error("{0}")]
    InvalidSettings(#[from] InvalidSettings),
}

impl Deployment {
    /// Applies a settings PATCH: only present fields change, nothing changes on error.
    pub fn patch_autoscaling(
        &mut self,
        patch: &UpdateAutoscalingSettings,
        cluster: &ClusterSettings,
    ) -> Result<UpdateAutoscalingResponse, DeploymentError> {
        if self.is_development {
            return Err(DeploymentError::DevelopmentFixed(self.id.clone()));
        }
        let next = self.autoscaling_settings.patched(patch, cluster)?;
        let (status, message) = if next == self.autoscaling_settings {
            (
                UpdateStatus::Unchanged,
                "autoscaling settings unchanged".to_owned(),
            )
        } else if self.status.is_in_progress() {
            (
                UpdateStatus::Queued,
                format!(
                    "autoscaling settings stored; they apply once deployment {} is up",
                    self.id
                ),
            )
        } else {
            (
                UpdateStatus::Accepted,
                "autoscaling settings updated".to_owned(),
            )
        };
        self.autoscaling_settings = next;
        Ok(UpdateAutoscalingResponse { status, message })
    }

    /// The deployment as it is once promoted to `environment`: its autoscaling
    /// settings are carried over unless `overrides` changes them. A promoted
    /// deployment is no longer a development deployment.
    pub fn promote(
        &self,
        environment: EnvironmentName,
        overrides: Option<&UpdateAutoscalingSettings>,
        cluster: &ClusterSettings,
    ) -> Result<Deployment, DeploymentError> {
        let settings = match overrides {
            Some(patch) => self.autoscaling_settings.patched(patch, cluster)?,
            None => self.autoscaling_settings,
        };
        Ok(Deployment {
            is_production: environment.is_production(),
            is_development: false,
            environment: Some(environment),
            autoscaling_settings: settings,
            ..self.clone()
        })
    }

    /// Days without traffic after which this deployment is deactivated.
    pub fn inactivity_limit_days(&self) -> u32 {
        if self.is_production {
            PRODUCTION_INACTIVITY_DAYS
        } else {
            DEVELOPMENT_INACTIVITY_DAYS
        }
    }

    /// Whether `idle_seconds` without traffic deactivates this deployment.
    pub fn should_deactivate(&self, idle_seconds: u64) -> bool {
        idle_seconds > u64::from(self.inactivity_limit_days()) * 86_400
    }
}

#[cfg(test)]
#[path = "deployment_tests.rs"]
mod tests;
