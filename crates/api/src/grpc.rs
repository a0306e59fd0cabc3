//! The `tidal.v1.Management` gRPC service (`proto/tidal/v1/management.proto`):
//! the REST routes' operations, served on the same port (h2c), for the CLI.
//!
//! Each RPC turns its typed request into the arguments of the function the
//! REST handler calls (in `deployments.rs`, `specs.rs`, `promote.rs`,
//! `cluster.rs`, `keys.rs`) and its answer into messages: the validation, the lifecycle
//! rules and the errors are theirs. A deployment spec is turned into the
//! spec's JSON object, so it is read by the one strict reader and its
//! errors name the same field paths as through REST.
//!
//! Every call passes [`authorize`] first: the `authorization` metadata
//! (`Bearer …` / `Api-Key …`) must hold a live key with the `management`
//! scope. Errors become [`Status`]es by [`status`]: the code from the HTTP
//! status, the message as it is, and the stable code and the field at fault
//! in the `tidal-error-code` and `tidal-field` metadata.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use tidal_auth::{KeyInfo, KeyRing, Scope};
use tidal_proto::pb;
use tidal_proto::pb::management_server::{Management, ManagementServer};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Request, Response, Status};

use crate::cluster;
use crate::config::ClusterPatch;
use crate::deployments;
use crate::error::HttpError;
use crate::keys;
use crate::promote;
use crate::server::Ctx;
use crate::specs;
use crate::store::model_id;

/// The metadata key carrying an error's stable code (`not_found`,
/// `invalid_field`, `development_deployment`, …).
pub const ERROR_CODE_KEY: &str = "tidal-error-code";
/// The metadata key carrying the field at fault, when there is one.
pub const FIELD_KEY: &str = "tidal-field";

/// The service behind the key check, ready to mount on the API's router
/// at `/tidal.v1.Management/*`.
pub(crate) type Service = InterceptedService<ManagementServer<ManagementService>, Authorize>;

/// The key check every call passes.
#[derive(Debug, Clone)]
pub(crate) struct Authorize(KeyRing);

impl tonic::service::Interceptor for Authorize {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let key = authorize(&self.0, request.metadata())?;
        tracing::debug!(key = %key.id, "api grpc request");
        Ok(request)
    }
}

/// The service with its key check.
pub(crate) fn service(ctx: Arc<Ctx>) -> Service {
    let ring = ctx.ring.clone();
    ManagementServer::with_interceptor(ManagementService { ctx }, Authorize(ring))
}

/// Refuses a call without a live key holding the `management` scope:
/// UNAUTHENTICATED (missing, malformed, unknown, revoked), PERMISSION_DENIED
/// (another scope), UNAVAILABLE (keys not loaded yet).
pub(crate) fn authorize(ring: &KeyRing, metadata: &MetadataMap) -> Result<KeyInfo, Status> {
    let header = metadata
        .get("authorization")
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    ring.verify(header, Scope::Management)
        .map_err(|e| status(HttpError::from(e)))
}

/// The gRPC status of an API error: the code from its HTTP status, its
/// message, and its stable code and field as metadata.
pub(crate) fn status(e: HttpError) -> Status {
    let code = match e.status.as_u16() {
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 if e.code == "already_exists" => Code::AlreadyExists,
        409 => Code::FailedPrecondition,
        502..=504 => Code::Unavailable,
        _ => Code::Internal,
    };
    if e.status.is_server_error() {
        tracing::warn!(status = e.status.as_u16(), code = e.code, message = %e.message, "api error (grpc)");
    }
    let mut metadata = MetadataMap::new();
    metadata.insert(ERROR_CODE_KEY, MetadataValue::from_static(e.code));
    if let Some(field) = e.field.as_deref().and_then(|f| f.parse().ok()) {
        metadata.insert(FIELD_KEY, field);
    }
    Status::with_metadata(code, e.message, metadata)
}

type Answer<T> = Result<Response<T>, Status>;

fn reply<T>(result: Result<T, HttpError>) -> Answer<T> {
    result.map(Response::new).map_err(status)
}

/// A nested deployment reference that must be present.
fn required(which: Option<pb::DeploymentRef>) -> Result<pb::DeploymentRef, HttpError> {
    which.ok_or_else(|| {
        HttpError::invalid(
            "deployment",
            "deployment is required: the model_id and a deployment_id (or `production` / \
             `development`)",
        )
    })
}

/// The management service.
#[derive(Debug)]
pub(crate) struct ManagementService {
    ctx: Arc<Ctx>,
}

impl ManagementService {
    async fn deployment(&self, which: &pb::DeploymentRef) -> Result<pb::Deployment, HttpError> {
        let d =
            deployments::get_deployment(&self.ctx, &which.model_id, &which.deployment_id).await?;
        Ok(d.into())
    }
}

#[tonic::async_trait]
impl Management for ManagementService {
    async fn list_models(
        &self,
        _: Request<pb::ListModelsRequest>,
    ) -> Answer<pb::ListModelsResponse> {
        reply(
            cluster::list_models(&self.ctx)
                .await
                .map(|models| pb::ListModelsResponse { models }),
        )
    }

    async fn list_deployments(
        &self,
        request: Request<pb::ListDeploymentsRequest>,
    ) -> Answer<pb::ListDeploymentsResponse> {
        let model = request.into_inner().model_id;
        reply(
            deployments::list_deployments(&self.ctx, &model)
                .await
                .map(|list| pb::ListDeploymentsResponse {
                    deployments: list.into_iter().map(Into::into).collect(),
                }),
        )
    }

    async fn get_deployment(&self, request: Request<pb::DeploymentRef>) -> Answer<pb::Deployment> {
        reply(self.deployment(request.get_ref()).await)
    }

    async fn create_deployment(
        &self,
        request: Request<pb::CreateDeploymentRequest>,
    ) -> Answer<pb::Deployment> {
        let request = request.into_inner();
        let object = spec_object(request.spec.unwrap_or_default());
        reply(
            specs::create_deployment(&self.ctx, &request.model_id, object)
                .await
                .map(Into::into),
        )
    }

    async fn replace_deployment(
        &self,
        request: Request<pb::ReplaceDeploymentRequest>,
    ) -> Answer<pb::Deployment> {
        let request = request.into_inner();
        let object = spec_object(request.spec.unwrap_or_default());
        reply(
            specs::replace_deployment(&self.ctx, &request.model_id, &request.deployment_id, object)
                .await
                .map(Into::into),
        )
    }

    async fn get_autoscaling_settings(
        &self,
        request: Request<pb::DeploymentRef>,
    ) -> Answer<pb::AutoscalingSettings> {
        reply(
            self.deployment(request.get_ref())
                .await
                .map(|d| d.autoscaling_settings.unwrap_or_default()),
        )
    }

    async fn update_autoscaling_settings(
        &self,
        request: Request<pb::UpdateAutoscalingSettingsRequest>,
    ) -> Answer<pb::UpdateAutoscalingResponse> {
        let request = request.into_inner();
        let result = async {
            let which = required(request.deployment)?;
            let model = model_id(&which.model_id)?;
            let patch = request.settings.unwrap_or_default().into();
            deployments::update_settings(&self.ctx, &model, &which.deployment_id, &patch).await
        };
        reply(result.await.map(Into::into))
    }

    async fn promote_deployment(
        &self,
        request: Request<pb::PromoteDeploymentRequest>,
    ) -> Answer<pb::Deployment> {
        let request = request.into_inner();
        let result = async {
            let which = required(request.deployment)?;
            let model = model_id(&which.model_id)?;
            // preserve_env_instance_type: accepted without effect (tidal
            // has no instance types), as through REST.
            promote::promote_to_production(
                &self.ctx,
                &model,
                &which.deployment_id,
                request.scale_down_previous_production.unwrap_or(true),
                request.autoscaling_settings.map(Into::into),
            )
            .await
        };
        reply(result.await.map(Into::into))
    }

    async fn activate_deployment(
        &self,
        request: Request<pb::DeploymentRef>,
    ) -> Answer<pb::Deployment> {
        let which = request.into_inner();
        let result = async {
            deployments::activate_deployment(&self.ctx, &which.model_id, &which.deployment_id)
                .await?;
            self.deployment(&which).await
        };
        reply(result.await)
    }

    async fn deactivate_deployment(
        &self,
        request: Request<pb::DeploymentRef>,
    ) -> Answer<pb::Deployment> {
        let which = request.into_inner();
        let result = async {
            deployments::deactivate_deployment(&self.ctx, &which.model_id, &which.deployment_id)
                .await?;
            self.deployment(&which).await
        };
        reply(result.await)
    }

    async fn list_replicas(
        &self,
        request: Request<pb::DeploymentRef>,
    ) -> Answer<pb::ListReplicasResponse> {
        let which = request.into_inner();
        reply(
            deployments::list_replicas(&self.ctx, &which.model_id, &which.deployment_id)
                .await
                .map(|replicas| pb::ListReplicasResponse { replicas }),
        )
    }

    async fn terminate_replica(
        &self,
        request: Request<pb::TerminateReplicaRequest>,
    ) -> Answer<pb::TerminateReplicaResponse> {
        let request = request.into_inner();
        let result = async {
            let which = required(request.deployment)?;
            deployments::terminate(
                &self.ctx,
                &which.model_id,
                &which.deployment_id,
                &request.replica_id,
            )
            .await
        };
        reply(result.await.map(|()| pb::TerminateReplicaResponse {}))
    }

    async fn replica_logs(
        &self,
        request: Request<pb::ReplicaLogsQuery>,
    ) -> Answer<pb::ReplicaLogsAnswer> {
        let request = request.into_inner();
        reply(cluster::replica_logs(&self.ctx, &request.replica_id, request.tail).await)
    }

    async fn list_workers(
        &self,
        _: Request<pb::ListWorkersRequest>,
    ) -> Answer<pb::ListWorkersResponse> {
        reply(
            cluster::list_workers(&self.ctx)
                .await
                .map(|list| pb::ListWorkersResponse { workers: list }),
        )
    }

    async fn cluster_status(
        &self,
        _: Request<pb::ClusterStatusRequest>,
    ) -> Answer<pb::ClusterStatusResponse> {
        reply(cluster::cluster_status(&self.ctx).await)
    }

    async fn get_cluster_settings(
        &self,
        _: Request<pb::GetClusterSettingsRequest>,
    ) -> Answer<pb::ClusterConfig> {
        reply(self.ctx.cluster().await.map(|c| c.to_record()))
    }

    async fn update_cluster_settings(
        &self,
        request: Request<pb::UpdateClusterSettingsRequest>,
    ) -> Answer<pb::ClusterConfig> {
        let r = request.into_inner();
        let patch = ClusterPatch {
            max_replica_limit: r.max_replica_limit,
            deactivate_development_after_secs: r.deactivate_development_after_secs,
            deactivate_production_after_secs: r.deactivate_production_after_secs,
        };
        reply(
            cluster::update_settings(&self.ctx, &patch)
                .await
                .map(|c| c.to_record()),
        )
    }

    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Answer<pb::CreateKeyResponse> {
        let r = request.into_inner();
        let scopes = (!r.scopes.is_empty()).then_some(r.scopes.as_slice());
        reply(
            keys::create_key(&self.ctx, &r.name, scopes)
                .await
                .map(|new| pb::CreateKeyResponse {
                    info: Some(key_info(new.info)),
                    key: new.key,
                }),
        )
    }

    async fn list_keys(&self, _: Request<pb::ListKeysRequest>) -> Answer<pb::ListKeysResponse> {
        reply(
            keys::list_keys(&self.ctx)
                .await
                .map(|keys| pb::ListKeysResponse {
                    keys: keys.into_iter().map(key_info).collect(),
                }),
        )
    }

    async fn revoke_key(&self, request: Request<pb::RevokeKeyRequest>) -> Answer<pb::KeyInfo> {
        reply(
            keys::revoke_key(&self.ctx, &request.get_ref().id)
                .await
                .map(key_info),
        )
    }
}

/// A typed spec as the spec's JSON object: only what is present, so absent
/// fields take the same defaults as in a spec file.
fn spec_object(spec: pb::DeploymentSpec) -> Map<String, Value> {
    let mut object = Map::new();
    let mut put = |key: &str, value: Value| {
        object.insert(key.to_owned(), value);
    };
    if let Some(id) = spec.deployment {
        put("deployment", json!(id));
    }
    if let Some(s) = spec.autoscaling_settings {
        let mut settings = Map::new();
        let numbers = [
            ("min_replica", s.min_replica),
            ("max_replica", s.max_replica),
            ("autoscaling_window", s.autoscaling_window),
            ("scale_down_delay", s.scale_down_delay),
            ("concurrency_target", s.concurrency_target),
            (
                "target_utilization_percentage",
                s.target_utilization_percentage,
            ),
        ];
        let toggles = [
            ("max_scale_down_rate", s.max_scale_down_rate),
            ("target_in_flight_tokens", s.target_in_flight_tokens),
            ("burst_window", s.burst_window),
            ("burst_threshold_percentage", s.burst_threshold_percentage),
        ];
        for (key, value) in numbers {
            if let Some(v) = value {
                settings.insert(key.to_owned(), json!(v));
            }
        }
        for (key, value) in toggles {
            if let Some(v) = value {
                settings.insert(key.to_owned(), json!(v.value));
            }
        }
        put("autoscaling_settings", Value::Object(settings));
    }
    if let Some(r) = spec.resources {
        let mut resources = Map::new();
        let mut field = |key: &str, value: Option<Value>| {
            if let Some(v) = value {
                resources.insert(key.to_owned(), v);
            }
        };
        field("region", r.region.map(Value::from));
        field("gpu_type", r.gpu_type.map(Value::from));
        field("gpu_count", r.gpu_count.map(Value::from));
        field("cpu_millis", r.cpu_millis.map(Value::from));
        field("memory_bytes", r.memory_bytes.map(Value::from));
        put("resources", Value::Object(resources));
    }
    if !spec.command.is_empty() {
        put("command", json!(spec.command));
    }
    if !spec.env.is_empty() {
        put("env", json!(spec.env));
    }
    if let Some(path) = spec.health_path {
        put("health_path", json!(path));
    }
    if let Some(secs) = spec.ready_timeout_secs {
        put("ready_timeout_secs", json!(secs));
    }
    if let Some(secs) = spec.stop_grace_secs {
        put("stop_grace_secs", json!(secs));
    }
    if !spec.weights.is_empty() {
        let weights: Vec<Value> = spec
            .weights
            .into_iter()
            .map(|w| {
                json!({
                    "name": w.name, "url": w.url, "size_bytes": w.size_bytes, "sha256": w.sha256,
                })
            })
            .collect();
        put("weights", Value::Array(weights));
    }
    object
}

fn key_info(k: KeyInfo) -> pb::KeyInfo {
    pb::KeyInfo {
        scopes: k.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        id: k.id,
        name: k.name,
        created_at_ms: k.created_at_ms,
        revoked: k.revoked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn errors_keep_their_code_and_field() {
        let s = status(HttpError::invalid(
            "autoscaling_settings.max_replica",
            "too many",
        ));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "too many");
        assert_eq!(s.metadata().get(ERROR_CODE_KEY).unwrap(), "invalid_field");
        assert_eq!(
            s.metadata().get(FIELD_KEY).unwrap(),
            "autoscaling_settings.max_replica"
        );
        let cases = [
            (HttpError::not_found("x"), Code::NotFound),
            (HttpError::conflict("x"), Code::FailedPrecondition),
            (HttpError::already_exists("x"), Code::AlreadyExists),
            (HttpError::bad_gateway("x"), Code::Unavailable),
            (
                HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "x"),
                Code::Unavailable,
            ),
            (HttpError::corrupt("d", "bad"), Code::Internal),
        ];
        for (e, code) in cases {
            assert_eq!(status(e.clone()).code(), code, "{e}");
            assert!(status(e).metadata().get(FIELD_KEY).is_none());
        }
    }

    #[test]
    fn a_spec_becomes_its_json_object_with_only_what_is_present() {
        let spec = pb::DeploymentSpec {
            command: vec!["serve".into()],
            autoscaling_settings: Some(pb::UpdateAutoscalingSettings {
                max_replica: Some(3),
                max_scale_down_rate: Some(pb::OptionalU32 { value: None }),
                ..Default::default()
            }),
            resources: Some(pb::SpecResources {
                cpu_millis: Some(250),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            Value::Object(spec_object(spec)),
            json!({
                "command": ["serve"],
                "autoscaling_settings": {"max_replica": 3, "max_scale_down_rate": null},
                "resources": {"cpu_millis": 250},
            })
        );
        assert!(spec_object(pb::DeploymentSpec::default()).is_empty());
    }
}
