//! `tidal-model serve`: loads the model, then serves `/health` and `/predict`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::error::LoadError;
use crate::mlp::Mlp;
use crate::safetensors::model_path;

/// What `serve` needs; the binary fills it from flags and environment.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    pub model_dir: PathBuf,
    /// Sleep this long (asynchronously) in every `/predict`.
    pub delay: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
}

#[derive(Debug)]
struct AppState {
    mlp: Mlp,
    delay: Duration,
}

#[derive(Debug, Deserialize)]
pub struct PredictRequest {
    pub input: Vec<f32>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PredictResponse {
    pub output: Vec<f32>,
}

/// The HTTP routes over a loaded model.
pub fn router(mlp: Mlp, delay: Duration) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/predict", post(predict))
        .with_state(Arc::new(AppState { mlp, delay }))
}

/// Loads the model (printing the `[Coldboost]` line with its wall time),
/// binds, prints `listening on http://ADDR`, and serves until `shutdown`.
pub async fn serve(
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let path = model_path(&opts.model_dir);
    let started = Instant::now();
    let mlp = tokio::task::spawn_blocking(move || Mlp::load(&path))
        .await
        .map_err(|e| ServeError::Serve(std::io::Error::other(e)))??;
    let ms = started.elapsed().as_millis();
    println!("[Coldboost] Completed model.load() execution in {ms} ms");
    tracing::info!(
        params = mlp.params(),
        input = mlp.input_len(),
        hidden = mlp.hidden_len(),
        output = mlp.output_len(),
        "model loaded"
    );
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: opts.addr,
            source,
        })?;
    let local = listener.local_addr().map_err(ServeError::Serve)?;
    println!("listening on http://{local}");
    axum::serve(listener, router(mlp, opts.delay))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServeError::Serve)
}

async fn predict(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    let req: PredictRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(format!(
                "body must be JSON {{\"input\": [{} numbers]}}: {e}",
                state.mlp.input_len()
            ));
        }
    };
    if req.input.len() != state.mlp.input_len() {
        return bad_request(format!(
            "input must have {} numbers; got {}",
            state.mlp.input_len(),
            req.input.len()
        ));
    }
    // Large models would stall the async workers; compute them on the blocking pool.
    let output = if state.mlp.params() > 1 << 20 {
        let s = Arc::clone(&state);
        match tokio::task::spawn_blocking(move || s.mlp.predict(&req.input)).await {
            Ok(out) => out,
            Err(e) => {
                let err = serde_json::json!({ "error": format!("predict failed: {e}") });
                return json(StatusCode::INTERNAL_SERVER_ERROR, &err);
            }
        }
    } else {
        state.mlp.predict(&req.input)
    };
    json(StatusCode::OK, &PredictResponse { output })
}

fn bad_request(message: String) -> Response {
    json(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({ "error": message }),
    )
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".to_owned());
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
