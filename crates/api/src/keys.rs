//! API keys through the API: POST /v1/keys (the key is in this answer
//! only), GET /v1/keys (never a key or a digest), DELETE /v1/keys/{id}.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use tidal_auth::{KeyInfo, Scope};

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
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str().map(str::to_owned).ok_or_else(|| {
                        HttpError::invalid(
                            format!("scopes[{i}]"),
                            format!("scopes[{i}] must be a string: `management` or `inference`"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
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
    let new = create_key(&ctx, name, scopes.as_deref()).await?;
    let mut view = json!(new.info);
    view["key"] = json!(new.key);
    view["warning"] = json!("this is the only time the key is shown; store it now");
    Ok((StatusCode::CREATED, Json(view)))
}

/// Creates a key with `scopes` (each named `scopes[i]` when it is not a
/// scope; `None` = `management`) and makes it usable here at once.
pub(crate) async fn create_key(
    ctx: &Ctx,
    name: &str,
    scopes: Option<&[String]>,
) -> Result<tidal_auth::NewKey, HttpError> {
    let scopes = match scopes {
        None => vec![Scope::Management],
        Some(scopes) => scopes
            .iter()
            .enumerate()
            .map(|(i, text)| {
                text.parse::<Scope>()
                    .map_err(|e| HttpError::invalid(format!("scopes[{i}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let new = tidal_auth::create(&ctx.store.client, name, &scopes).await?;
    // Usable at once through this API, before the watch brings it.
    ctx.ring.learn(new.record.clone());
    tracing::info!(key = %new.info.id, name = %new.info.name, "API key created");
    Ok(new)
}

/// GET /v1/keys → `{"keys": [{id, name, scopes, created_at_ms, revoked}]}`.
pub(crate) async fn list(State(ctx): State<Arc<Ctx>>) -> Result<Json<Value>, HttpError> {
    Ok(Json(json!({ "keys": list_keys(&ctx).await? })))
}

/// Every key (never a key or its digest).
pub(crate) async fn list_keys(ctx: &Ctx) -> Result<Vec<KeyInfo>, HttpError> {
    Ok(tidal_auth::list(&ctx.store.client).await?)
}

/// DELETE /v1/keys/{key_id} → the revoked key's `{id, name, scopes,
/// created_at_ms, revoked}`.
pub(crate) async fn revoke(
    State(ctx): State<Arc<Ctx>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, HttpError> {
    Ok(Json(json!(revoke_key(&ctx, &id).await?)))
}

/// Revokes a key; refused here as soon as the ring catches up (waited
/// for, up to 2 s).
pub(crate) async fn revoke_key(ctx: &Ctx, id: &str) -> Result<KeyInfo, HttpError> {
    let (info, revision) = tidal_auth::revoke(&ctx.store.client, id).await?;
    ctx.ring
        .wait_for_revision(revision, std::time::Duration::from_secs(2))
        .await;
    tracing::info!(key = %info.id, "API key revoked");
    Ok(info)
}
