//! API keys through the API: POST /v1/keys (the key is in this answer
//! only), GET /v1/keys (never a key or a digest), DELETE /v1/keys/{id}.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use tidal_auth::Scope;

use crate::body;
use crate::error::HttpError;
use crate::server::Ctx;

/// POST /v1/keys `{name, scopes}` (scopes default to `["management"]`) →
/// 201 `{id, name, scopes, created_at_ms, revoked, key, warning}`.
pub(crate) async fn create(
    State(ctx): State<Arc<Ctx>>,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), HttpError> {
    let object = body::object(&bytes)?;
    body::only(&object, &["name", "scopes"], "")?;
    let name = body::string(&object, "name")?.unwrap_or_default();
    let scopes = match object.get("scopes") {
        None | Some(Value::Null) => vec![Scope::Management],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let field = format!("scopes[{i}]");
                let text = v.as_str().ok_or_else(|| {
                    HttpError::invalid(
                        field.clone(),
                        format!("{field} must be a string: `management` or `inference`"),
                    )
                })?;
                text.parse::<Scope>()
                    .map_err(|e| HttpError::invalid(field, e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(HttpError::invalid(
                "scopes",
                format!(
                    "scopes must be a list such as [\"management\"]; got {}",
                    body::kind(other)
                ),
            ));
        }
    };
    let new = tidal_auth::create(&ctx.store.client, name, &scopes).await?;
    // Usable at once through this API, before the watch brings it.
    ctx.ring.learn(new.record.clone());
    tracing::info!(key = %new.info.id, name = %new.info.name, "API key created");
    let mut view = json!(new.info);
    view["key"] = json!(new.key);
    view["warning"] = json!("this is the only time the key is shown; store it now");
    Ok((StatusCode::CREATED, Json(view)))
}

/// GET /v1/keys → `{"keys": [{id, name, scopes, created_at_ms, revoked}]}`.
pub(crate) async fn list(State(ctx): State<Arc<Ctx>>) -> Result<Json<Value>, HttpError> {
    let keys = tidal_auth::list(&ctx.store.client).await?;
    Ok(Json(json!({ "keys": keys })))
}

/// DELETE /v1/keys/{key_id} → the revoked key's `{id, name, scopes,
/// created_at_ms, revoked}`.
pub(crate) async fn revoke(
    State(ctx): State<Arc<Ctx>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, HttpError> {
    let (info, revision) = tidal_auth::revoke(&ctx.store.client, &id).await?;
    // Refused here as soon as the ring catches up with the revocation.
    ctx.ring
        .wait_for_revision(revision, std::time::Duration::from_secs(2))
        .await;
    tracing::info!(key = %info.id, "API key revoked");
    Ok(Json(json!(info)))
}
