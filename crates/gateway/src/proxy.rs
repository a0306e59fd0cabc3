//! Forwarding one request to one replica, counting it on the replica
//! (least outstanding requests) until its answer's body has been sent.

use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use http_body_util::Full;
use hyper::body::{Bytes, Frame, Incoming};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::meter::InFlight;
use crate::routes::Backend;

/// How long an idle pooled connection to a replica is kept. Short: a
/// draining replica waits for its connections to close before SIGTERM, and
/// under load connections are reused long before this.
pub const POOL_IDLE: Duration = Duration::from_secs(3);

/// The most idle connections kept per replica.
const MAX_IDLE_PER_REPLICA: usize = 256;

/// How long connecting to a replica may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a pooled connection may take to be ready for the next request
/// (it is idle, so at once; longer means it is broken).
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// One HTTP/1.1 connection to a replica: the request side and the
/// connection itself, which whoever uses it drives (no task of its own).
#[derive(Debug)]
struct Conn {
    send: http1::SendRequest<Full<Bytes>>,
    driver: http1::Connection<TokioIo<TcpStream>, Full<Bytes>>,
}

impl Conn {
    /// Drives the connection once; whether it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        Pin::new(&mut self.driver)
            .poll_without_shutdown(cx)
            .is_ready()
    }

    /// Whether it can take a request (false: it has ended).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let ended = self.drive(cx);
        match self.send.poll_ready(cx) {
            Poll::Ready(result) => Poll::Ready(result.is_ok()),
            Poll::Pending if ended => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Waits until it can take a request; false if it has ended.
    async fn ready(&mut self) -> bool {
        // An idle pooled connection is ready at once: no timer for that.
        if let Poll::Ready(ready) = poll_fn(|cx| Poll::Ready(self.poll_ready(cx))).await {
            return ready;
        }
        tokio::time::timeout(READY_TIMEOUT, poll_fn(|cx| self.poll_ready(cx)))
            .await
            .unwrap_or(false)
    }
}

/// Pooled keep-alive connections to replicas, one pool per serving thread.
///
/// Unlike a general-purpose client, a connection here has no task of its
/// own: the request using it drives it (sending, reading the answer, then
/// the answer's body as the gateway streams it back), so a request is
/// handled without a hand-off between tasks. Idle connections are closed
/// after [`POOL_IDLE`] by [`ReplicaClient::sweep`].
#[derive(Debug, Clone, Default)]
pub struct ReplicaClient {
    idle: Arc<Mutex<Idle>>,
}

/// Idle connections by replica endpoint, each with when it became idle.
type Idle = HashMap<String, Vec<(Conn, Instant)>>;

/// A client with an empty pool.
pub fn client() -> ReplicaClient {
    ReplicaClient::default()
}

impl ReplicaClient {
    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle connection to `endpoint` that is ready for a request, if any.
    async fn pooled(&self, endpoint: &str) -> Option<Conn> {
        loop {
            let (mut conn, since) = self.lock().get_mut(endpoint)?.pop()?;
            if since.elapsed() < POOL_IDLE && conn.ready().await {
                return Some(conn);
            }
        }
    }

    /// A new connection to `endpoint`.
    async fn connect(endpoint: &str) -> Result<Conn, String> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint))
            .await
            .map_err(|_| format!("connecting took more than {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (send, driver) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
        let mut conn = Conn { send, driver };
        if conn.ready().await {
            Ok(conn)
        } else {
            Err("the connection closed at once".to_owned())
        }
    }

    /// Puts a connection whose exchange ended back in the pool.
    fn put(&self, endpoint: &str, conn: Conn) {
        let mut idle = self.lock();
        match idle.get_mut(endpoint) {
            Some(conns) if conns.len() >= MAX_IDLE_PER_REPLICA => {}
            Some(conns) => conns.push((conn, Instant::now())),
            None => {
                idle.insert(endpoint.to_owned(), vec![(conn, Instant::now())]);
            }
        }
    }

    /// Closes connections idle for [`POOL_IDLE`] (a draining replica
    /// waits for its connections to close), every second, forever.
    pub async fn sweep(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut idle = self.lock();
            idle.retain(|_, conns| {
                conns.retain(|(_, since)| since.elapsed() < POOL_IDLE);
                !conns.is_empty()
            });
        }
    }
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

/// A replica's response body that keeps the request counted until it ends,
/// and drives its connection; a connection whose answer was read to the
/// end goes back to the pool.
struct Counted {
    inner: Incoming,
    /// The body's last frame was read.
    ended: bool,
    conn: Option<Conn>,
    pool: ReplicaClient,
    outstanding: Outstanding,
    _in_flight: InFlight,
}

impl std::fmt::Debug for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counted").finish_non_exhaustive()
    }
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(conn) = &mut this.conn
            && conn.drive(cx)
        {
            // The connection ended; the body learns it from its channel.
            this.conn = None;
        }
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.ended = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // Read to the end: reusable. Not (the client went away mid-body):
        // dropping it closes it.
        if let Some(conn) = self.conn.take()
            && (self.ended || hyper::body::Body::is_end_stream(&self.inner))
        {
            self.pool.put(&self.outstanding.0.endpoint, conn);
        }
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

/// Removes what must not be forwarded to a replica: hop-by-hop headers and
/// `Host` (the replica's is set from its URI).
pub fn strip_for_replica(headers: &mut axum::http::HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
    headers.remove(axum::http::header::HOST);
}

/// A request on its way to a replica.
pub type ReplicaRequest = hyper::Request<Full<Bytes>>;

/// Why [`forward`] failed, the request's meter guard, and the request
/// itself when it was not sent (so another replica can take it).
#[derive(Debug)]
pub struct Failure {
    /// Why.
    pub error: ProxyError,
    /// The request's concurrency guard, still counting.
    pub in_flight: InFlight,
    /// The request, when nothing of it was sent.
    pub request: Option<ReplicaRequest>,
}

/// Sends `request` (already [stripped](strip_for_replica); its URI and
/// `Host` are set here) to `backend`'s `/predict`; the response streams
/// back, counted until its body ends.
pub async fn forward(
    client: &ReplicaClient,
    backend: Backend,
    mut request: ReplicaRequest,
    in_flight: InFlight,
) -> Result<axum::response::Response, Failure> {
    let failed = |reason: String| ProxyError::Failed {
        replica: backend.replica.clone(),
        reason,
    };
    let Some(host) = backend.host.clone() else {
        let error = failed(format!(
            "its endpoint {:?} is not host:port",
            backend.endpoint
        ));
        return Err(Failure {
            error,
            in_flight,
            request: None,
        });
    };
    *request.uri_mut() = hyper::Uri::from_static("/predict");
    request.headers_mut().insert(hyper::header::HOST, host);
    let outstanding = Outstanding::new(Backend::clone(&backend));
    let unreachable = |reason: String| ProxyError::Unreachable {
        replica: backend.replica.clone(),
        endpoint: backend.endpoint.clone(),
        reason,
    };
    // A pooled connection the replica has closed takes nothing (the request
    // comes back unsent): the next one, or a new one, is tried.
    let (response, conn) = loop {
        let (mut conn, pooled) = match client.pooled(&backend.endpoint).await {
            Some(conn) => (conn, true),
            None => match ReplicaClient::connect(&backend.endpoint).await {
                Ok(conn) => (conn, false),
                Err(reason) => {
                    return Err(Failure {
                        error: unreachable(reason),
                        in_flight,
                        request: Some(request),
                    });
                }
            },
        };
        let mut answer = std::pin::pin!(conn.send.try_send_request(request));
        let answered = poll_fn(|cx| {
            let ended = conn.drive(cx);
            match answer.as_mut().poll(cx) {
                Poll::Ready(result) => Poll::Ready(Some(result)),
                // Ended with the request unanswered.
                Poll::Pending if ended => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        let (answered, conn) = match answered {
            Some(answered) => (answered, Some(conn)),
            // Dropping the connection settles the request (given back if
            // it was never taken).
            None => {
                drop(conn);
                match tokio::time::timeout(READY_TIMEOUT, answer).await {
                    Ok(answered) => (answered, None),
                    Err(_) => {
                        return Err(Failure {
                            error: failed("the connection closed before an answer".to_owned()),
                            in_flight,
                            request: None,
                        });
                    }
                }
            }
        };
        match answered {
            Ok(response) => break (response, conn),
            Err(mut e) => {
                let reason = error_chain(e.error());
                match e.take_message() {
                    Some(unsent) if pooled => request = unsent,
                    Some(unsent) => {
                        return Err(Failure {
                            error: unreachable(reason),
                            in_flight,
                            request: Some(unsent),
                        });
                    }
                    None => {
                        return Err(Failure {
                            error: failed(reason),
                            in_flight,
                            request: None,
                        });
                    }
                }
            }
        }
    };
    let (mut head, incoming) = response.into_parts();
    for name in HOP_BY_HOP {
        head.headers.remove(*name);
    }
    let body = Counted {
        inner: incoming,
        ended: false,
        conn,
        pool: client.clone(),
        outstanding,
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use http_body_util::BodyExt;

    use super::*;
    use crate::meter::Meters;

    /// A replica answering "ok" to everything; counts the connections it
    /// accepted and those still open. With `keep_alive` off it closes each
    /// connection after its answer.
    async fn replica(keep_alive: bool) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (accepted, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, o) = (Arc::clone(&accepted), Arc::clone(&open));
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let o = Arc::clone(&o);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (addr, accepted, open)
    }

    async fn send(client: &ReplicaClient, endpoint: &str) -> Result<String, String> {
        let meters = Meters::default();
        let backend = crate::routes::backend("r1", endpoint);
        let request = hyper::Request::post("/v1/models/m/production/predict")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let response = forward(client, backend, request, meters.start("d"))
            .await
            .map_err(|f| f.error.to_string())?;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let start = Instant::now();
        while !check() {
            assert!(start.elapsed() < Duration::from_secs(10), "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_connection_is_reused_then_closed_when_idle() {
        let (endpoint, accepted, open) = replica(true).await;
        let client = client();
        for _ in 0..5 {
            assert_eq!(send(&client, &endpoint).await.unwrap(), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one pooled connection");
        tokio::spawn(client.clone().sweep());
        eventually("the idle connection to be closed", || {
            open.load(Ordering::SeqCst) == 0
        })
        .await;
        assert_eq!(send(&client, &endpoint).await.unwrap(), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// A replica that answers one request per connection, keep-alive as far
    /// as the client can tell, then closes the connection 50 ms later
    /// without a word (as a replica's idle timeout does).
    async fn silently_closing_replica() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (accepted, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, o) = (Arc::clone(&accepted), Arc::clone(&open));
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let o = Arc::clone(&o);
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    // Head, then the 2-byte body.
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") || !request.ends_with(b"{}")
                    {
                        let n = tcp.read(&mut buf).await.unwrap();
                        assert!(n > 0, "the client closed first");
                        request.extend_from_slice(&buf[..n]);
                    }
                    tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    drop(tcp);
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (addr, accepted, open)
    }

    #[tokio::test]
    async fn a_pooled_connection_the_replica_closed_is_not_used() {
        let (endpoint, accepted, open) = silently_closing_replica().await;
        let client = client();
        for n in 1..=3 {
            assert_eq!(send(&client, &endpoint).await.unwrap(), "ok");
            // The replica closed it after answering; the pool learns that
            // before sending on it, and connects again.
            eventually("the replica to close", || open.load(Ordering::SeqCst) == 0).await;
            assert_eq!(accepted.load(Ordering::SeqCst), n);
        }
    }

    #[tokio::test]
    async fn an_unreachable_replica_is_said_so() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = send(&client(), &format!("127.0.0.1:{port}"))
            .await
            .unwrap_err();
        assert!(err.contains("could not be reached"), "{err}");
    }
}
