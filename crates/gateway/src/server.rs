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

use axum::body::Bytes;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use crate::activator::{ActivateError, Activator};
use crate::meter::Meters;
use crate::metrics::Metrics;
use crate::proxy::{Failure, ProxyError, ReplicaClient, forward};
use crate::routes::{Routes, Target};

/// What every handler shares (one per serving thread: each has its own
/// replica connection pool, the rest is shared).
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

/// Where a request goes: matched on the path as sent (ids are
/// `[A-Za-z0-9_-]`, so no segment needs decoding).
#[derive(Debug, PartialEq, Eq)]
enum Path<'a> {
    /// An inference path.
    Inference {
        model: &'a str,
        target: Target<'a>,
        action: &'a str,
    },
    Health,
    Metrics,
    NotFound,
}

/// Parses `/v1/models/{model}/{production|development|deployment/{id}|environments/{env}}/{action}`,
/// `/health` and `/metrics`.
fn parse(path: &str) -> Path<'_> {
    match path {
        "/health" => return Path::Health,
        "/metrics" => return Path::Metrics,
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/v1/models/") else {
        return Path::NotFound;
    };
    let mut segments = rest.split('/');
    let mut next = || segments.next().filter(|s| !s.is_empty());
    let (Some(model), Some(kind)) = (next(), next()) else {
        return Path::NotFound;
    };
    let target = match kind {
        "production" => Some(Target::Production),
        "development" => Some(Target::Development),
        "deployment" => next().map(Target::Deployment),
        "environments" => next().map(Target::Environment),
        _ => None,
    };
    match (target, next(), next()) {
        (Some(target), Some(action), None) => Path::Inference {
            model,
            target,
            action,
        },
        _ => Path::NotFound,
    }
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such path; inference paths are /v1/models/{model_id}/{production|development|deployment/{id}|environments/{name}}/{predict|wake}",
    )
}

fn method_not_allowed(allowed: Method) -> Response {
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("this path takes {allowed}"),
    )
    .into_response();
    if let Ok(value) = HeaderValue::from_str(allowed.as_str()) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// Answers one request (the gateway's whole HTTP surface).
pub async fn serve(
    shared: Arc<Shared>,
    request: hyper::Request<hyper::body::Incoming>,
) -> Response {
    // A cheap clone (shared bytes), so the path can be borrowed while the
    // request moves on.
    let (method, uri) = (request.method().clone(), request.uri().clone());
    match (parse(uri.path()), method) {
        (Path::Health, Method::GET) => "ok".into_response(),
        (Path::Metrics, Method::GET) => shared.metrics.encode().into_response(),
        (Path::Health | Path::Metrics, _) => method_not_allowed(Method::GET),
        (
            Path::Inference {
                model,
                target,
                action,
            },
            Method::POST,
        ) => handle(&shared, model, target, action, request).await,
        (Path::Inference { .. }, _) => method_not_allowed(Method::POST),
        (Path::NotFound, _) => not_found().into_response(),
    }
}

async fn handle(
    shared: &Shared,
    model: &str,
    target: Target<'_>,
    action: &str,
    request: hyper::Request<hyper::body::Incoming>,
) -> Response {
    let authorized = match &shared.keys {
        None => Ok(()),
        Some(keys) => {
            let header = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            keys.authorize(header, tidal_auth::Scope::Inference)
                .map_err(|e| {
                    let status =
                        StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
                    ApiError::new(status, e.code(), e.to_string())
                })
        }
    };
    let result = match (authorized, action) {
        (Err(e), _) => Err(e),
        (Ok(()), "predict") => predict(shared, model, &target, request).await,
        (Ok(()), "wake") => wake(shared, model, &target),
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
    target: &Target<'_>,
) -> Result<Arc<crate::routes::DeploymentRoute>, ApiError> {
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

fn wake(shared: &Shared, model: &str, target: &Target<'_>) -> Result<Response, ApiError> {
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
    target: &Target<'_>,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<Response, ApiError> {
    let route = resolve(shared, model, target)?;
    let mut in_flight = shared.meters.start(&route.id);
    let (mut parts, body) = request.into_parts();
    let body = read_body(body, shared.max_body_bytes).await?;
    crate::proxy::strip_for_replica(&mut parts.headers);
    parts.extensions = axum::http::Extensions::new();
    let mut request = hyper::Request::from_parts(parts, http_body_util::Full::new(body));
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
        match forward(&shared.client, backend, request, in_flight).await {
            Ok(response) => return Ok(response),
            Err(Failure {
                error: ProxyError::Unreachable { .. },
                in_flight: guard,
                request: Some(unsent),
            }) if attempt < 3 => (in_flight, request) = (guard, unsent),
            Err(failure) => {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "replica_failed",
                    failure.error.to_string(),
                ));
            }
        }
    }
}

/// Reads a request body of at most `limit` bytes (one frame, the usual
/// case, is kept as it came, without a copy).
async fn read_body(body: hyper::body::Incoming, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than the gateway's limit of {limit} bytes"),
        )
    };
    let unreadable = |e: hyper::Error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "body_unreadable",
            format!("the request body could not be read: {e}"),
        )
    };
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut rest: Option<Vec<u8>> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(unreadable)?.into_data() else {
            continue; // trailers: not forwarded
        };
        let len = first.as_ref().map_or(0, Bytes::len) + rest.as_ref().map_or(0, Vec::len);
        if len + data.len() > limit {
            return Err(too_large());
        }
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(head), None) => {
                let mut joined = Vec::with_capacity(head.len() + data.len());
                joined.extend_from_slice(head);
                joined.extend_from_slice(&data);
                rest = Some(joined);
            }
            (Some(_), Some(joined)) => joined.extend_from_slice(&data),
        }
    }
    Ok(match (first, rest) {
        (_, Some(joined)) => Bytes::from(joined),
        (Some(one), None) => one,
        (None, None) => Bytes::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_into_targets() {
        let inference = |model, target, action| Path::Inference {
            model,
            target,
            action,
        };
        assert_eq!(
            parse("/v1/models/m/production/predict"),
            inference("m", Target::Production, "predict")
        );
        assert_eq!(
            parse("/v1/models/m/development/wake"),
            inference("m", Target::Development, "wake")
        );
        assert_eq!(
            parse("/v1/models/m/deployment/d1/predict"),
            inference("m", Target::Deployment("d1"), "predict")
        );
        assert_eq!(
            parse("/v1/models/m/environments/staging/predict"),
            inference("m", Target::Environment("staging"), "predict")
        );
        // Unknown actions parse; the handler names them.
        assert_eq!(
            parse("/v1/models/m/production/explain"),
            inference("m", Target::Production, "explain")
        );
        assert_eq!(parse("/health"), Path::Health);
        assert_eq!(parse("/metrics"), Path::Metrics);
        for bad in [
            "/",
            "/v1/models",
            "/v1/models/",
            "/v1/models/m",
            "/v1/models/m/production",
            "/v1/models/m/production/",
            "/v1/models/m/production/predict/more",
            "/v1/models//production/predict",
            "/v1/models/m/deployment/predict",
            "/v1/models/m/deployment//predict",
            "/v1/models/m/staging/predict",
            "/v2/models/m/production/predict",
        ] {
            assert_eq!(parse(bad), Path::NotFound, "{bad}");
        }
    }
}
