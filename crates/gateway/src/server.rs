//! The gateway's HTTP surface (Baseten's inference paths):
//!
//! ```text
//! POST /v1/models/{model_id}/production/predict         (and …/wake)
//! POST /v1/models/{model_id}/development/predict        (and …/wake)
//! POST /v1/models/{model_id}/deployment/{id}/predict    (and …/wake)
//! POST /v1/models/{model_id}/environments/{env}/predict (and …/wake)
//! GET  /health, GET /metrics
//! ```
//!
//! `predict` is forwarded to a Ready replica's `/predict`; `wake` answers
//! 202 Accepted at once and asks the controller to scale the deployment up
//! from zero. Errors are JSON: `{"error": {"code": …, "message": …}}`.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::activator::{ActivateError, Activator};
use crate::meter::Meters;
use crate::metrics::Metrics;
use crate::proxy::{ProxyError, ReplicaClient, forward};
use crate::routes::{Routes, Target};

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct Shared {
    /// API keys, when requests need one with the `inference` scope.
    pub keys: Option<tidal_auth::KeyRing>,
    /// The routing table.
    pub routes: Routes,
    /// Concurrency meters.
    pub meters: Meters,
    /// The activator.
    pub activator: Activator,
    /// The pooled replica client.
    pub client: ReplicaClient,
    /// Prometheus series.
    pub metrics: Metrics,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
}

/// An error answer: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

/// The router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/models/{model}/production/{action}", post(production))
        .route("/v1/models/{model}/development/{action}", post(development))
        .route("/v1/models/{model}/deployment/{id}/{action}", post(deployment))
        .route("/v1/models/{model}/environments/{env}/{action}", post(environment))
        .route("/health", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(|State(shared): State<Arc<Shared>>| async move { shared.metrics.encode() }),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such path; inference paths are /v1/models/{model_id}/{production|development|deployment/{id}|environments/{name}}/{predict|wake}",
            )
        })
        .with_state(shared)
}

async fn production(
    State(s): State<Arc<Shared>>,
    Path((model, action)): Path<(String, String)>,
    request: axum::extract::Request,
) -> Response {
    handle(s, model, Target::Production, action, request).await
}

async fn development(
    State(s): State<Arc<Shared>>,
    Path((model, action)): Path<(String, String)>,
    request: axum::extract::Request,
) -> Response {
    handle(s, model, Target::Development, action, request).await
}

async fn deployment(
    State(s): State<Arc<Shared>>,
    Path((model, id, action)): Path<(String, String, String)>,
    request: axum::extract::Request,
) -> Response {
    handle(s, model, Target::Deployment(id), action, request).await
}

async fn environment(
    State(s): State<Arc<Shared>>,
    Path((model, env, action)): Path<(String, String, String)>,
    request: axum::extract::Request,
) -> Response {
    handle(s, model, Target::Environment(env), action, request).await
}

async fn handle(
    shared: Arc<Shared>,
    model: String,
    target: Target,
    action: String,
    request: axum::extract::Request,
) -> Response {
    let authorized = match &shared.keys {
        None => Ok(()),
        Some(keys) => {
            let header = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            keys.verify(header, tidal_auth::Scope::Inference)
                .map(|_| ())
                .map_err(|e| {
                    let status =
                        StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
                    ApiError::new(status, e.code(), e.to_string())
                })
        }
    };
    let result = match (authorized, action.as_str()) {
        (Err(e), _) => Err(e),
        (Ok(()), "predict") => predict(&shared, &model, &target, request).await,
        (Ok(()), "wake") => wake(&shared, &model, &target),
        (Ok(()), _) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("unknown action {action:?}; use predict or wake"),
        )),
    };
    let response = result.unwrap_or_else(IntoResponse::into_response);
    shared.metrics.answered(response.status().as_u16());
    response
}

fn resolve(
    shared: &Shared,
    model: &str,
    target: &Target,
) -> Result<crate::routes::DeploymentRoute, ApiError> {
    let route = shared
        .routes
        .resolve(model, target)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "deployment_not_found", e.to_string()))?;
    if route.inactive {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "deployment_inactive",
            format!(
                "deployment {} of model {model} is inactive; activate it with `tidal activate {model} {}` \
                 or POST /v1/models/{model}/deployments/{}/activate",
                route.id, route.id, route.id
            ),
        ));
    }
    Ok(route)
}

fn wake(shared: &Shared, model: &str, target: &Target) -> Result<Response, ApiError> {
    let route = resolve(shared, model, target)?;
    let activator = shared.activator.clone();
    let deployment = route.id.clone();
    tokio::spawn(async move { activator.wake(&deployment).await });
    let body = serde_json::json!({ "deployment_id": route.id, "status": "waking" });
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

async fn predict(
    shared: &Shared,
    model: &str,
    target: &Target,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let route = resolve(shared, model, target)?;
    let mut in_flight = shared.meters.start(&route.id);
    let (parts, body) = request.into_parts();
    let body: Bytes = axum::body::to_bytes(Body::new(body), shared.max_body_bytes)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the request body could not be read (limit {} bytes): {e}",
                    shared.max_body_bytes
                ),
            )
        })?;
    // A replica that cannot be reached was sent nothing: try another.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let backend = shared
            .activator
            .backend(&route.id)
            .await
            .map_err(|e| match e {
                ActivateError::QueueFull {
                    retry_after_secs, ..
                } => ApiError {
                    retry_after: Some(retry_after_secs),
                    ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "queue_full", e.to_string())
                },
                ActivateError::Timeout { .. } => ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "no_ready_replica",
                    e.to_string(),
                ),
            })?;
        match forward(
            &shared.client,
            backend,
            &parts,
            body.clone(),
            "/predict",
            in_flight,
        )
        .await
        {
            Ok(response) => return Ok(response),
            Err((ProxyError::Unreachable { .. }, guard)) if attempt < 3 => in_flight = guard,
            Err((e, _)) => {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "replica_failed",
                    e.to_string(),
                ));
            }
        }
    }
}
