//! tidal's domain types.
//!
//! Everything here is plain data plus validation: autoscaling settings with
//! Baseten's field names, defaults and ranges; the partial update a PATCH
//! carries; deployments, environments and statuses; cluster-wide limits;
//! and the deployment spec a user writes in a JSON file (`tidal deploy`).
//!
//! **Architecture invariant:** this crate does no I/O and knows nothing of
//! tokio, ractor, tonic or openraft. Time, when it matters, is a parameter.

mod deployment;
mod ids;
mod raw;
mod settings;
mod spec;
mod spec_read;

pub mod time;

pub use deployment::{
    DEVELOPMENT_INACTIVITY_DAYS, Deployment, DeploymentError, DeploymentStatus,
    PRODUCTION_INACTIVITY_DAYS, UpdateAutoscalingResponse, UpdateStatus,
};
pub use ids::{DeploymentId, EnvironmentName, IdError, ModelId};
pub use settings::{
    AutoscalingSettings, ClusterSettings, DEFAULT_BURST_THRESHOLD_PERCENTAGE,
    DEFAULT_PER_DEPLOYMENT_REPLICA_LIMIT, FieldError, InvalidSettings, UpdateAutoscalingSettings,
};
pub use spec::{
    DEFAULT_CPU_MILLIS, DEFAULT_HEALTH_PATH, DEFAULT_MEMORY_BYTES, DEFAULT_READY_TIMEOUT_SECS,
    DEFAULT_STOP_GRACE_SECS, DeploymentSpec, InvalidSpec, READY_TIMEOUT_SECS, Resources,
    STOP_GRACE_SECS, SpecProblem, WORKER_ENV, WeightSpec, is_plain_file_name, is_sha256_hex,
};
