//! tidal's domain types.
//!
//! Everything here is plain data plus validation: autoscaling settings with
//! Baseten's field names, defaults and ranges; the partial update a PATCH
//! carries; deployments, environments and statuses; cluster-wide limits.
//!
//! **Architecture invariant:** this crate does no I/O and knows nothing of
//! tokio, ractor, tonic or openraft. Time, when it matters, is a parameter.

mod deployment;
mod ids;
mod raw;
mod settings;

pub use deployment::{
    DEVELOPMENT_INACTIVITY_DAYS, Deployment, DeploymentError, DeploymentStatus,
    PRODUCTION_INACTIVITY_DAYS, UpdateAutoscalingResponse, UpdateStatus,
};
pub use ids::{DeploymentId, EnvironmentName, IdError, ModelId};
pub use settings::{
    AutoscalingSettings, ClusterSettings, DEFAULT_BURST_THRESHOLD_PERCENTAGE,
    DEFAULT_PER_DEPLOYMENT_REPLICA_LIMIT, FieldError, InvalidSettings, UpdateAutoscalingSettings,
};
