//! Forwarding one request to one replica, counting it on the replica
//! (least outstanding requests) until its answer's body has been sent.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use hyper::body::{Bytes, Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::meter::InFlight;
use crate::routes::Backend;

/// A pooled HTTP/1.1 client to replicas.
pub type ReplicaClient = Client<HttpConnector, http_body_util::Full<Bytes>>;

/// How long an idle pooled connection to a replica is kept. Short: a
/// draining replica waits for its connections to close before SIGTERM, and
/// under load connections are reused long before this.
pub const POOL_IDLE: Duration = Duration::from_secs(3);

/// A client keeping idle connections to replicas for [`POOL_IDLE`].
pub fn client() -> ReplicaClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(256)
        .build(connector)
}

/// Counts one request on a replica until dropped.
#[derive(Debug)]
pub struct Outstanding(Backend);

impl Outstanding {
    /// Starts counting on `backend`.
    pub fn new(backend: Backend) -> Self {
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(backend)
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A replica's response body that keeps the request counted until it ends.
#[derive(Debug)]
struct Counted {
    inner: Incoming,
    _outstanding: Outstanding,
    _in_flight: InFlight,
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The replica could not be reached; nothing was sent, so another one
    /// may be tried.
    #[error("replica {replica} at {endpoint} could not be reached: {reason}")]
    Unreachable {
        /// The replica.
        replica: String,
        /// Its endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The replica failed while handling the request (it may have run).
    #[error("replica {replica} failed while handling the request: {reason}")]
    Failed {
        /// The replica.
        replica: String,
        /// Why.
        reason: String,
    },
}

/// Sends `request` (its path replaced by `path`) to `backend`; the response
/// streams back, counted until its body ends.
pub async fn forward(
    client: &ReplicaClient,
    backend: Backend,
    parts: &axum::http::request::Parts,
    body: Bytes,
    path: &str,
    in_flight: InFlight,
) -> Result<axum::response::Response, (ProxyError, InFlight)> {
    let outstanding = Outstanding::new(backend.clone());
    let uri = format!("http://{}{path}", backend.endpoint);
    let mut request = hyper::Request::builder()
        .method(parts.method.clone())
        .uri(&uri);
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name) && name != axum::http::header::HOST {
            request = request.header(name, value);
        }
    }
    let request = match request.body(http_body_util::Full::new(body)) {
        Ok(request) => request,
        Err(e) => {
            let failed = ProxyError::Failed {
                replica: backend.replica.clone(),
                reason: e.to_string(),
            };
            return Err((failed, in_flight));
        }
    };
    let response = match client.request(request).await {
        Ok(response) => response,
        Err(e) => {
            let error = if e.is_connect() {
                ProxyError::Unreachable {
                    replica: backend.replica.clone(),
                    endpoint: backend.endpoint.clone(),
                    reason: e.to_string(),
                }
            } else {
                ProxyError::Failed {
                    replica: backend.replica.clone(),
                    reason: error_chain(&e),
                }
            };
            return Err((error, in_flight));
        }
    };
    let (mut head, incoming) = response.into_parts();
    for name in HOP_BY_HOP {
        head.headers.remove(*name);
    }
    let body = Counted {
        inner: incoming,
        _outstanding: outstanding,
        _in_flight: in_flight,
    };
    Ok(axum::response::Response::from_parts(head, Body::new(body)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Headers that belong to one connection, not to the request or response.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

fn is_hop_by_hop(name: &axum::http::HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}
