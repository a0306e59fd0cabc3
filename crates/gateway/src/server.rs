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

use bytes::Bytes;

use crate::activator::{ActivateError, Activator};
use crate::http1::{self, Method};
use crate::meter::{InFlight, Meters};
use crate::metrics::Metrics;
use crate::proxy::{Answer, Outgoing, ProxyError, ReplicaClient, forward};
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

/// How a request is answered.
#[derive(Debug)]
pub enum Reply {
    /// By the gateway itself.
    Local(Local),
    /// By a replica, whose answer's body is still to be passed on; the
    /// request counts in its deployment's meter until `in_flight` drops.
    Proxied {
        /// The replica's answer.
        answer: Answer,
        /// The meter's guard.
        in_flight: InFlight,
    },
}

/// An answer the gateway makes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// The status.
    pub status: u16,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Bytes,
    /// `Allow`, for 405.
    pub allow: Option<&'static str>,
    /// `Retry-After` in seconds, for 503.
    pub retry_after: Option<u64>,
}

impl Local {
    fn new(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
            allow: None,
            retry_after: None,
        }
    }

    fn json(status: u16, body: &serde_json::Value) -> Self {
        Self::new(
            status,
            "application/json",
            serde_json::to_vec(body).unwrap_or_default(),
        )
    }

    /// Appends the answer's head: status line, `content-type`,
    /// `content-length`, `date`, then `allow`, `retry-after` and
    /// `connection` as needed, and the empty line.
    pub fn push_head(&self, out: &mut Vec<u8>, minor: u8, close: bool) {
        http1::push_status_line(out, self.status, http1::reason(self.status).as_bytes());
        out.extend_from_slice(b"content-type: ");
        out.extend_from_slice(self.content_type.as_bytes());
        out.extend_from_slice(b"\r\ncontent-length: ");
        http1::push_decimal(out, self.body.len() as u64);
        out.extend_from_slice(b"\r\n");
        http1::push_date(out);
        if let Some(allow) = self.allow {
            out.extend_from_slice(b"allow: ");
            out.extend_from_slice(allow.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if let Some(secs) = self.retry_after {
            out.extend_from_slice(b"retry-after: ");
            http1::push_decimal(out, secs);
            out.extend_from_slice(b"\r\n");
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        } else if minor == 0 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// An error answer: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: u16,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `status`, a stable `code` and a message for people.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The answer: `{"error": {"code": …, "message": …}}`.
    pub fn into_local(self) -> Local {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        Local {
            retry_after: self.retry_after,
            ..Local::json(self.status, &body)
        }
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
        404,
        "not_found",
        "no such path; inference paths are /v1/models/{model_id}/{production|development|deployment/{id}|environments/{name}}/{predict|wake}",
    )
}

fn method_not_allowed(allowed: &'static str) -> Local {
    Local {
        allow: Some(allowed),
        ..ApiError::new(
            405,
            "method_not_allowed",
            format!("this path takes {allowed}"),
        )
        .into_local()
    }
}

/// Answers one request whose body has been read (the gateway's whole HTTP
/// surface).
pub async fn answer(shared: &Shared, request: &http1::Request, body: Bytes) -> Reply {
    let local = match (parse(request.path()), request.method) {
        (Path::Health, Method::Get | Method::Head) => {
            Local::new(200, "text/plain; charset=utf-8", "ok")
        }
        (Path::Metrics, Method::Get | Method::Head) => Local::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.encode(),
        ),
        (Path::Health | Path::Metrics, _) => method_not_allowed("GET"),
        (
            Path::Inference {
                model,
                target,
                action,
            },
            Method::Post,
        ) => return handle(shared, model, target, action, request, body).await,
        (Path::Inference { .. }, _) => method_not_allowed("POST"),
        (Path::NotFound, _) => not_found().into_local(),
    };
    Reply::Local(local)
}

async fn handle(
    shared: &Shared,
    model: &str,
    target: Target<'_>,
    action: &str,
    request: &http1::Request,
    body: Bytes,
) -> Reply {
    let authorized = match &shared.keys {
        None => Ok(()),
        Some(keys) => {
            let header = request
                .head
                .get("authorization")
                .and_then(|v| std::str::from_utf8(v).ok());
            keys.authorize(header, tidal_auth::Scope::Inference)
                .map_err(|e| ApiError::new(e.status(), e.code(), e.to_string()))
        }
    };
    let result = match (authorized, action) {
        (Err(e), _) => Err(e),
        (Ok(()), "predict") => predict(shared, model, &target, request, body).await,
        (Ok(()), "wake") => wake(shared, model, &target).map(Reply::Local),
        (Ok(()), _) => Err(ApiError::new(
            404,
            "not_found",
            format!("unknown action {action:?}; use predict or wake"),
        )),
    };
    let reply = result.unwrap_or_else(|e| Reply::Local(e.into_local()));
    shared.metrics.answered(match &reply {
        Reply::Local(local) => local.status,
        Reply::Proxied { answer, .. } => answer.status(),
    });
    reply
}

fn resolve(
    shared: &Shared,
    model: &str,
    target: &Target<'_>,
) -> Result<Arc<crate::routes::DeploymentRoute>, ApiError> {
    let route = shared
        .routes
        .resolve(model, target)
        .map_err(|e| ApiError::new(404, "deployment_not_found", e.to_string()))?;
    if route.inactive {
        return Err(ApiError::new(
            400,
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

fn wake(shared: &Shared, model: &str, target: &Target<'_>) -> Result<Local, ApiError> {
    let route = resolve(shared, model, target)?;
    let activator = shared.activator.clone();
    let deployment = route.id.clone();
    tokio::spawn(async move { activator.wake(&deployment).await });
    let body = serde_json::json!({ "deployment_id": route.id, "status": "waking" });
    Ok(Local::json(202, &body))
}

async fn predict(
    shared: &Shared,
    model: &str,
    target: &Target<'_>,
    request: &http1::Request,
    body: Bytes,
) -> Result<Reply, ApiError> {
    let route = resolve(shared, model, target)?;
    let in_flight = shared.meters.start(&route.id);
    let outgoing = Outgoing::new(request, body);
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
                    ..ApiError::new(503, "queue_full", e.to_string())
                },
                ActivateError::Timeout { .. } => {
                    ApiError::new(504, "no_ready_replica", e.to_string())
                }
            })?;
        match forward(&shared.client, &backend, &outgoing).await {
            Ok(answer) => return Ok(Reply::Proxied { answer, in_flight }),
            Err(ProxyError::Unreachable { .. }) if attempt < 3 => {}
            Err(e) => return Err(ApiError::new(502, "replica_failed", e.to_string())),
        }
    }
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
