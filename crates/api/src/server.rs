//! The router: every REST route behind the `management` scope check, and
//! the `tidal.v1.Management` gRPC service (`grpc.rs`) beside them.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use tidal_auth::{KeyRing, Scope};

use crate::config::{self, ClusterConfig};
use crate::error::HttpError;
use crate::store::Store;
use crate::{cluster, deployments, environments, grpc, keys, promote, specs};

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub store: Store,
    pub ring: KeyRing,
    /// The cluster's settings when the store holds none.
    pub defaults: ClusterConfig,
}

impl Ctx {
    /// The cluster's settings now (the store's, over the defaults).
    pub(crate) async fn cluster(&self) -> Result<ClusterConfig, HttpError> {
        Ok(config::read(&self.store, &self.defaults).await?.0)
    }
}

/// Refuses a request without a live key holding the `management` scope.
async fn require_management(State(ctx): State<Arc<Ctx>>, request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    match ctx.ring.verify(header, Scope::Management) {
        Ok(key) => {
            tracing::debug!(key = %key.id, method = %request.method(), path = %request.uri().path(), "api request");
            next.run(request).await
        }
        Err(e) => HttpError::from(e).into_response(),
    }
}

/// The router.
pub(crate) fn router(ctx: Arc<Ctx>) -> Router {
    const DEP: &str = "/v1/models/{model_id}/deployments/{deployment_id}";
    const ENV: &str = "/v1/models/{model_id}/environments/{env_name}";
    let routes = Router::new()
        .route("/v1/models", get(cluster::models))
        .route(
            "/v1/models/{model_id}/deployments",
            get(deployments::list).post(specs::create),
        )
        .route(DEP, get(deployments::get).put(specs::replace))
        .route(
            &format!("{DEP}/autoscaling_settings"),
            patch(deployments::patch_settings),
        )
        .route(&format!("{DEP}/promote"), post(promote::promote_deployment))
        .route(&format!("{DEP}/activate"), post(deployments::activate))
        .route(&format!("{DEP}/deactivate"), post(deployments::deactivate))
        .route(&format!("{DEP}/replicas"), get(deployments::replicas))
        .route(
            &format!("{DEP}/replicas/{{replica_id}}"),
            delete(deployments::terminate_replica),
        )
        .route(ENV, get(environments::get).patch(environments::patch))
        .route(
            &format!("{ENV}/promote"),
            post(promote::promote_to_environment),
        )
        .route("/v1/workers", get(cluster::workers))
        .route("/v1/replicas/{replica_id}/logs", get(cluster::logs))
        .route("/v1/cluster/status", get(cluster::status))
        .route(
            "/v1/cluster/settings",
            get(cluster::get_settings).patch(cluster::patch_settings),
        )
        .route("/v1/keys", get(keys::list).post(keys::create))
        .route("/v1/keys/{key_id}", delete(keys::revoke))
        .method_not_allowed_fallback(|| async {
            HttpError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this path does not take that method; the routes are listed in tidal-api's docs",
            )
        })
        .fallback(|| async {
            HttpError::not_found(
                "no such path; the management API's paths start with /v1/models, /v1/workers, \
                 /v1/replicas, /v1/cluster or /v1/keys",
            )
        });
    let grpc = grpc::service(Arc::clone(&ctx));
    routes
        .layer(middleware::from_fn_with_state(
            Arc::clone(&ctx),
            require_management,
        ))
        .with_state(ctx)
        // gRPC beside REST, on the same port (h2c); it checks keys itself
        // and answers errors as gRPC statuses.
        .route_service("/tidal.v1.Management/{*rest}", grpc)
}
