//! tidal's management API: Baseten's REST paths, methods, field names and
//! response shapes, over the store; and the same operations as the gRPC
//! service `tidal.v1.Management` (`proto/tidal/v1/management.proto`, what
//! the `tidal` CLI calls), served on the same port: axum serves HTTP/1.1
//! and h2c, and `/tidal.v1.Management/*` goes to the gRPC service.
//!
//! [`Api::start`]`(`[`ApiOptions`]`)` → a handle with [`Api::addr`] and
//! [`Api::shutdown`]. Every route needs an API key with the `management`
//! scope, as `Authorization: Bearer <key>` or `Authorization: Api-Key
//! <key>` (see `tidal-auth`; the first key comes from `tidal keys create`).
//!
//! Baseten's routes (`{deployment_id}` may also be `development` or
//! `production`):
//!
//! | method | path | body → answer |
//! |---|---|---|
//! | GET | `/v1/models/{model_id}/deployments` | → `{"deployments": [DeploymentV1]}` |
//! | GET | `/v1/models/{model_id}/deployments/{deployment_id}` | → `DeploymentV1` |
//! | PATCH | `/v1/models/{model_id}/deployments/{deployment_id}/autoscaling_settings` | `UpdateAutoscalingSettingsV1` → `{status, message}` |
//! | POST | `/v1/models/{model_id}/deployments/{deployment_id}/promote` | `{scale_down_previous_production, preserve_env_instance_type, autoscaling_settings}` → `DeploymentV1` |
//! | POST | `/v1/models/{model_id}/deployments/{deployment_id}/activate` | → `{"success": true}` |
//! | POST | `/v1/models/{model_id}/deployments/{deployment_id}/deactivate` | → `{"success": true}` |
//! | DELETE | `/v1/models/{model_id}/deployments/{deployment_id}/replicas/{replica_id}` | → `{"success": true}` |
//! | GET | `/v1/models/{model_id}/environments/{env_name}` | → `EnvironmentV1` |
//! | PATCH | `/v1/models/{model_id}/environments/{env_name}` | `{autoscaling_settings, promotion_settings}` → `{status, message}` |
//! | POST | `/v1/models/{model_id}/environments/{env_name}/promote` | `{deployment_id, scale_down_previous_deployment, preserve_env_instance_type}` → `DeploymentV1` |
//!
//! tidal's own:
//!
//! | method | path | body → answer |
//! |---|---|---|
//! | POST | `/v1/models/{model_id}/deployments` | a deployment spec (as `tidal deploy` reads it; weights by `url`, `size_bytes`, `sha256`) → 201 `DeploymentV1` |
//! | PUT | `/v1/models/{model_id}/deployments/{deployment_id}` | a deployment spec → `DeploymentV1` with its spec replaced (desired replicas, status and promotion kept; running replicas not restarted) |
//! | GET | `/v1/models` | → `{"models": [{id, deployment_ids, production_deployment_id, development_deployment_id, environments}]}` |
//! | GET | `/v1/models/{model_id}/deployments/{deployment_id}/replicas` | → `{"replicas": [{id, phase, worker_id, endpoint, reason, history, …}]}` |
//! | GET | `/v1/replicas/{replica_id}/logs?tail=N` | → `{replica_id, worker_id, lines, truncated}` (from the worker; 502 if it is gone) |
//! | GET | `/v1/workers` | → `{"workers": [{id, address, live, …}]}` |
//! | GET | `/v1/cluster/status` | → `{store: {members, leader, …}, controllers, workers, deployments}` |
//! | GET, PATCH | `/v1/cluster/settings` | `{max_replica_limit, deactivate_development_after_secs, deactivate_production_after_secs}` |
//! | POST | `/v1/keys` | `{name, scopes}` → 201 with the key (shown only here) |
//! | GET | `/v1/keys` | → `{"keys": [{id, name, scopes, created_at_ms, revoked}]}` |
//! | DELETE | `/v1/keys/{key_id}` | → the revoked key |
//!
//! Errors are `{"error": {"code": …, "message": …, "field": <name or
//! null>}}`: 400 for a bad body (the field named, nested ones as
//! `autoscaling_settings.max_replica`; unknown fields refused), 401 for a
//! missing, unknown or revoked key, 403 for a key without the
//! `management` scope, 404 naming the model, deployment, environment or
//! replica not found, 409 when the state forbids the change, 502 when a
//! worker does not answer, 503 when the store does not.
//!
//! Semantics worth knowing:
//! - A development deployment's autoscaling settings are fixed: a PATCH is
//!   refused (400 `development_deployment`) with the reason.
//! - `…/deployments/{id}/promote` makes the deployment production's; its
//!   autoscaling settings carry over unless `autoscaling_settings`
//!   overrides fields. The previous production deployment loses
//!   `is_production` and `environment`, and is deactivated when
//!   `scale_down_previous_production` (default true). An INACTIVE
//!   deployment must be activated first (409).
//! - `…/environments/{env}/promote` gives the deployment the environment's
//!   settings (its current deployment's, else those stored on it, else
//!   the deployment keeps its own) and creates the environment if needed.
//! - Deactivate sets status INACTIVE (no replica runs); activate sets
//!   ACTIVE. Terminating a replica sets its `stop_requested` with the
//!   reason "terminated through the API"; its worker drains and stops it.
//! - `preserve_env_instance_type` is accepted and has no effect (tidal has
//!   no instance types); promotion settings asking for a redeploy, a
//!   ramp-up or a rolling deploy are refused (tidal promotes at once).
//!
//! gRPC: the RPCs and the REST routes call the same function per
//! operation, so validation, lifecycle rules and errors are the same. The
//! key is read from the `authorization` metadata (same forms, same ring);
//! a missing, unknown or revoked key is `UNAUTHENTICATED`, a key without
//! the scope `PERMISSION_DENIED`. Errors map 400 → `INVALID_ARGUMENT`, 404
//! → `NOT_FOUND`, 409 → `FAILED_PRECONDITION` (`ALREADY_EXISTS` for a
//! deployment id in use), 502/503 → `UNAVAILABLE`, 500 → `INTERNAL`; the
//! message is the same sentence, and the stable code and the field at
//! fault ride in the [`ERROR_CODE_KEY`] and [`FIELD_KEY`] metadata.
//!
//! **Architecture invariant:** the API keeps no state of its own: every
//! answer is read from the store (keys through the [`tidal_auth::KeyRing`]),
//! and every change is one compare-and-set write (several records: one
//! all-or-none batch), retried on a concurrent change. It never decides
//! replica counts.

mod api;
mod body;
mod cluster;
mod config;
mod deployments;
mod environments;
mod error;
mod grpc;
mod keys;
mod promote;
mod server;
mod specs;
mod store;
pub mod views;

pub use api::{Api, ApiError, ApiOptions};
pub use config::{CLUSTER_CONFIG_KEY, ClusterConfig};
pub use deployments::TERMINATED_REASON;
pub use error::HttpError;
pub use grpc::{ERROR_CODE_KEY, FIELD_KEY};
