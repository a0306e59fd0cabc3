//! Forwarding one request to one replica over a pooled HTTP/1.1
//! connection, counting it on the replica (least outstanding requests)
//! until its answer's body has been passed on.
//!
//! The request goes out in one `writev` (request line, `Host`, the client's
//! end-to-end header lines as they came, `Content-Length`, body); the
//! answer's head is parsed with [`crate::http1`] and passed on with its
//! end-to-end fields, and its body streams to the client as it comes. An
//! answer whose body is already in the buffer (the usual small JSON) goes
//! out with its head in one `writev`.

use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::http1::{self, Chunked, Framing, HttpError, Piece};
use crate::routes::Backend;

/// How long an idle pooled connection to a replica is kept. Short: a
/// draining replica waits for its connections to close before SIGTERM, and
/// under load connections are reused long before this.
pub const POOL_IDLE: Duration = Duration::from_secs(3);

/// The most idle connections kept per replica.
const MAX_IDLE_PER_REPLICA: usize = 256;

/// How long connecting to a replica may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How much a streamed body reads at a time.
const STREAM_CHUNK: usize = 64 * 1024;

/// One HTTP/1.1 connection to a replica and what it has read.
#[derive(Debug)]
struct Conn {
    tcp: TcpStream,
    buf: BytesMut,
}

impl Conn {
    /// Whether the replica closed it (or sent something unasked) while it
    /// sat in the pool. Costs no syscall unless the socket has become
    /// readable.
    fn is_stale(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.tcp.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                !matches!(self.tcp.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// Pooled keep-alive connections to replicas, one pool per serving thread.
///
/// A connection has no task of its own: the request using it writes to it,
/// reads the answer and streams the body, then puts it back. Idle
/// connections are closed after [`POOL_IDLE`] by [`ReplicaClient::sweep`].
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

    /// An idle connection to `endpoint` the replica has not closed, if any.
    fn pooled(&self, endpoint: &str) -> Option<Conn> {
        let mut idle = self.lock();
        let conns = idle.get_mut(endpoint)?;
        while let Some((conn, since)) = conns.pop() {
            if since.elapsed() < POOL_IDLE && !conn.is_stale() {
                return Some(conn);
            }
        }
        None
    }

    /// A new connection to `endpoint`.
    async fn connect(endpoint: &str) -> Result<Conn, String> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint))
            .await
            .map_err(|_| format!("connecting took more than {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        Ok(Conn {
            tcp,
            buf: BytesMut::with_capacity(8 * 1024),
        })
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

/// A request ready for any replica: the client's end-to-end header lines
/// as they came, then `Content-Length` and the empty line; and the body.
#[derive(Debug)]
pub struct Outgoing {
    tail: Vec<u8>,
    body: Bytes,
}

impl Outgoing {
    /// The request to forward for `request` with `body`.
    pub fn new(request: &http1::Request, body: Bytes) -> Self {
        let mut tail = Vec::with_capacity(request.head.size() + 32);
        request.head.push_end_to_end(&mut tail);
        tail.extend_from_slice(b"content-length: ");
        http1::push_decimal(&mut tail, body.len() as u64);
        tail.extend_from_slice(b"\r\n\r\n");
        Self { tail, body }
    }
}

/// Sends `request` to `backend`'s `/predict` and reads its answer's head;
/// the body follows with [`Answer::send`].
pub async fn forward(
    client: &ReplicaClient,
    backend: &Backend,
    request: &Outgoing,
) -> Result<Answer, ProxyError> {
    let failed = |reason: String| ProxyError::Failed {
        replica: backend.replica.clone(),
        reason,
    };
    let unreachable = |reason: String| ProxyError::Unreachable {
        replica: backend.replica.clone(),
        endpoint: backend.endpoint.clone(),
        reason,
    };
    let Some(host) = &backend.host else {
        return Err(failed(format!(
            "its endpoint {:?} is not host:port",
            backend.endpoint
        )));
    };
    let outstanding = Outstanding::new(Backend::clone(backend));
    loop {
        let (mut conn, pooled) = match client.pooled(&backend.endpoint) {
            Some(conn) => (conn, true),
            None => (
                ReplicaClient::connect(&backend.endpoint)
                    .await
                    .map_err(unreachable)?,
                false,
            ),
        };
        let mut slices = [
            IoSlice::new(b"POST /predict HTTP/1.1\r\nhost: "),
            IoSlice::new(host.as_bytes()),
            IoSlice::new(b"\r\n"),
            IoSlice::new(&request.tail),
            IoSlice::new(&request.body),
        ];
        if let Err(e) = http1::write_all(&mut conn.tcp, &mut slices).await {
            // A failed write sent no whole request (its length frames it):
            // a pooled connection the replica closed; try the next.
            if pooled {
                continue;
            }
            return Err(unreachable(format!("sending the request: {e}")));
        }
        return match read_head(&mut conn).await {
            Ok(response) => Ok(Answer {
                response,
                conn,
                client: client.clone(),
                outstanding,
            }),
            Err(HttpError::Closed) => {
                Err(failed("the connection closed before an answer".to_owned()))
            }
            Err(e) => Err(failed(e.to_string())),
        };
    }
}

/// Reads an answer's head, skipping interim (1xx) ones.
async fn read_head(conn: &mut Conn) -> Result<http1::Response, HttpError> {
    let mut read_any = false;
    loop {
        if !conn.buf.is_empty() {
            match http1::parse_response(&mut conn.buf)? {
                Some(response) if (100..200).contains(&response.status) => continue,
                Some(response) => return Ok(response),
                None => {}
            }
        }
        if http1::read_more(&mut conn.tcp, &mut conn.buf).await? == 0 {
            return Err(if read_any {
                HttpError::Incomplete
            } else {
                HttpError::Closed
            });
        }
        read_any = true;
    }
}

/// A replica's answer whose head has been read; its body is still on the
/// connection. Counts the request on the replica until it is sent.
#[derive(Debug)]
pub struct Answer {
    response: http1::Response,
    conn: Conn,
    client: ReplicaClient,
    outstanding: Outstanding,
}

/// Why passing an answer on failed midway; the client's connection must
/// close, since part of the answer may have gone out.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The replica's body broke off.
    #[error("the replica's answer broke off: {0}")]
    Replica(HttpError),
    /// The client went away.
    #[error("writing to the client: {0}")]
    Client(std::io::Error),
}

/// How the body goes to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// With `Content-Length`.
    Length(u64),
    /// Chunked (an HTTP/1.1 client).
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client).
    UntilClose,
}

impl Answer {
    /// The answer's status.
    pub fn status(&self) -> u16 {
        self.response.status
    }

    /// Passes the answer on to the client on `out` (its HTTP/1.`minor`,
    /// and whether its connection closes after this), with `scratch` for
    /// the head. Whether the client's connection must close after it (an
    /// HTTP/1.0 client and a body of unknown length).
    pub async fn send<W: AsyncWrite + Unpin>(
        mut self,
        out: &mut W,
        scratch: &mut Vec<u8>,
        minor: u8,
        close: bool,
    ) -> Result<bool, SendError> {
        let endpoint = &self.outstanding.0.endpoint;
        let response = &self.response;
        scratch.clear();
        http1::push_status_line(scratch, response.status, response.reason());
        response.head.push_end_to_end(scratch);
        let mut decoder = Chunked::default();
        let mut pieces: Vec<Bytes> = Vec::new();
        // The usual case: the whole body, as one piece, is here.
        let mut one = Bytes::new();
        let mut whole = None;
        match response.framing {
            Framing::Empty => whole = Some(0),
            Framing::Length(n) if self.conn.buf.len() as u64 >= n => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                one = self.conn.buf.split_to(n).freeze();
                whole = Some(n);
            }
            Framing::Chunked => {
                // The whole body may be here already: then it goes out with
                // a length, in one write.
                let mut len = 0;
                loop {
                    match decoder
                        .next(&mut self.conn.buf)
                        .map_err(SendError::Replica)?
                    {
                        Piece::Data(data) => {
                            len += data.len();
                            pieces.push(data);
                        }
                        Piece::More => break,
                        Piece::End => {
                            whole = Some(len);
                            break;
                        }
                    }
                }
            }
            Framing::Length(_) | Framing::UntilClose => {}
        }
        let how = match (whole, response.framing) {
            (Some(n), _) => Out::Length(n as u64),
            (None, Framing::Length(n)) => Out::Length(n),
            (None, _) if minor == 0 => Out::UntilClose,
            (None, _) => Out::Chunked,
        };
        let close = close || how == Out::UntilClose;
        match how {
            Out::Length(_) if matches!(response.status, 204 | 304) => {}
            Out::Length(n) => {
                scratch.extend_from_slice(b"content-length: ");
                http1::push_decimal(scratch, n);
                scratch.extend_from_slice(b"\r\n");
            }
            Out::Chunked => scratch.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            Out::UntilClose => {}
        }
        if close {
            scratch.extend_from_slice(b"connection: close\r\n");
        } else if minor == 0 {
            scratch.extend_from_slice(b"connection: keep-alive\r\n");
        }
        scratch.extend_from_slice(b"\r\n");
        let reusable = response.keep_alive;
        let framing = response.framing;

        if whole.is_some() {
            let written = if pieces.is_empty() {
                http1::write_all(out, &mut [IoSlice::new(scratch), IoSlice::new(&one)]).await
            } else {
                let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(1 + pieces.len());
                slices.push(IoSlice::new(scratch));
                slices.extend(pieces.iter().map(|p| IoSlice::new(p)));
                http1::write_all(out, &mut slices).await
            };
            written.map_err(SendError::Client)?;
            if reusable && self.conn.buf.is_empty() {
                self.client.put(endpoint, self.conn);
            }
            return Ok(close);
        }

        // Streamed: the head and what is here, then the rest as it comes.
        let mut chunk_head = Vec::with_capacity(24);
        let mut first = Some(&scratch[..]);
        let mut sent: u64 = 0;
        loop {
            // What is here of the body.
            match framing {
                Framing::Length(n) => {
                    let left = usize::try_from(n - sent).unwrap_or(usize::MAX);
                    let take = left.min(self.conn.buf.len());
                    if take > 0 {
                        pieces.push(self.conn.buf.split_to(take).freeze());
                    }
                }
                Framing::UntilClose => {
                    if !self.conn.buf.is_empty() {
                        pieces.push(self.conn.buf.split().freeze());
                    }
                }
                Framing::Chunked => {
                    while let Piece::Data(data) = decoder
                        .next(&mut self.conn.buf)
                        .map_err(SendError::Replica)?
                    {
                        pieces.push(data);
                    }
                }
                Framing::Empty => {}
            }
            let ended = match framing {
                Framing::Length(n) => {
                    sent + pieces.iter().map(|p| p.len() as u64).sum::<u64>() >= n
                }
                Framing::Chunked => decoder.done(),
                _ => false,
            };
            // Write the head (first time) and the pieces.
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 + 3 * pieces.len());
            if let Some(head) = first.take() {
                slices.push(IoSlice::new(head));
            }
            chunk_head.clear();
            let mut marks = Vec::with_capacity(pieces.len());
            if how == Out::Chunked {
                for piece in &pieces {
                    let at = chunk_head.len();
                    http1::push_hex(&mut chunk_head, piece.len() as u64);
                    chunk_head.extend_from_slice(b"\r\n");
                    marks.push(at..chunk_head.len());
                }
            }
            for (i, piece) in pieces.iter().enumerate() {
                sent += piece.len() as u64;
                if how == Out::Chunked {
                    slices.push(IoSlice::new(&chunk_head[marks[i].clone()]));
                    slices.push(IoSlice::new(piece));
                    slices.push(IoSlice::new(b"\r\n"));
                } else {
                    slices.push(IoSlice::new(piece));
                }
            }
            if ended && how == Out::Chunked {
                slices.push(IoSlice::new(b"0\r\n\r\n"));
            }
            if !slices.is_empty() {
                http1::write_all(out, &mut slices)
                    .await
                    .map_err(SendError::Client)?;
            }
            pieces.clear();
            if ended {
                break;
            }
            if self.conn.buf.capacity() - self.conn.buf.len() < STREAM_CHUNK / 2 {
                self.conn.buf.reserve(STREAM_CHUNK);
            }
            let read = http1::read_more(&mut self.conn.tcp, &mut self.conn.buf)
                .await
                .map_err(|e| SendError::Replica(e.into()))?;
            if read == 0 {
                if framing == Framing::UntilClose {
                    if how == Out::Chunked {
                        http1::write_all(out, &mut [IoSlice::new(b"0\r\n\r\n")])
                            .await
                            .map_err(SendError::Client)?;
                    }
                    return Ok(close);
                }
                return Err(SendError::Replica(HttpError::Incomplete));
            }
        }
        if reusable && self.conn.buf.is_empty() {
            self.client.put(endpoint, self.conn);
        }
        Ok(close)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use http_body_util::Full;
    use hyper_util::rt::TokioIo;

    use super::*;

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

    /// A request as the gateway forwards it: parsed from `head`.
    fn outgoing(head: &str, body: &'static [u8]) -> Outgoing {
        let mut buf = BytesMut::from(head);
        let request = http1::parse_request(&mut buf).unwrap().unwrap();
        Outgoing::new(&request, Bytes::from_static(body))
    }

    /// Forwards a request to `endpoint` and passes the answer on to an
    /// HTTP/1.`minor` client; what that client got.
    async fn exchange(client: &ReplicaClient, endpoint: &str, minor: u8) -> Result<String, String> {
        let backend = crate::routes::backend("r1", endpoint);
        let request = outgoing(
            "POST /v1/models/m/production/predict HTTP/1.1\r\nhost: gw\r\ncontent-length: 2\r\n\r\n",
            b"{}",
        );
        let answer = forward(client, &backend, &request)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(
            backend.in_flight.load(Ordering::SeqCst),
            1,
            "counted while sent"
        );
        let mut out = Vec::new();
        answer
            .send(&mut out, &mut Vec::new(), minor, false)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(
            backend.in_flight.load(Ordering::SeqCst),
            0,
            "uncounted once sent"
        );
        Ok(String::from_utf8(out).unwrap())
    }

    /// The body a client got in `answer`.
    async fn send(client: &ReplicaClient, endpoint: &str) -> Result<String, String> {
        let answer = exchange(client, endpoint, 1).await?;
        Ok(answer.split_once("\r\n\r\n").unwrap().1.to_owned())
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

    /// A replica that reads one request per connection and answers with
    /// `parts`, written one after another 20 ms apart, then closes.
    async fn scripted_replica(parts: &'static [&'static str]) -> (String, Arc<Mutex<Vec<u8>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let received = Arc::new(Mutex::new(Vec::new()));
        let got = Arc::clone(&received);
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.ends_with(b"\r\n\r\n{}") {
                    let n = tcp.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the client closed first");
                    request.extend_from_slice(&buf[..n]);
                }
                *got.lock().unwrap() = request;
                for part in parts {
                    tcp.write_all(part.as_bytes()).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        (addr, received)
    }

    #[tokio::test]
    async fn the_request_goes_out_with_its_end_to_end_fields_and_the_replicas_host() {
        let (endpoint, received) =
            scripted_replica(&["HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]).await;
        let backend = crate::routes::backend("r1", &endpoint);
        let request = outgoing(
            "POST /v1/models/m/production/predict?x=1 HTTP/1.1\r\nHost: client.example\r\n\
             Connection: keep-alive, X-Private\r\nX-Private: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\n\
             X-Request-Id: abc\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n",
            b"{}",
        );
        let answer = forward(&client(), &backend, &request).await.unwrap();
        answer
            .send(&mut Vec::new(), &mut Vec::new(), 1, false)
            .await
            .unwrap();
        let received = String::from_utf8(received.lock().unwrap().clone()).unwrap();
        assert_eq!(
            received,
            format!(
                "POST /predict HTTP/1.1\r\nhost: {endpoint}\r\nX-Request-Id: abc\r\n\
                 Content-Type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
            )
        );
    }

    #[tokio::test]
    async fn a_chunked_answer_is_rechunked_or_delimited_by_the_close() {
        let parts: &[&str] = &[
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Replica: r1\r\nKeep-Alive: timeout=5\r\n\r\n4\r\nWiki",
            "\r\n5\r\npedia\r\n",
            "0\r\nX-Trailer: t\r\n\r\n",
        ];
        let (endpoint, _) = scripted_replica(parts).await;
        let answer = exchange(&client(), &endpoint, 1).await.unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("X-Replica: r1") && !head.to_lowercase().contains("keep-alive"),
            "{head}"
        );
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        assert_eq!(body, "4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n");
        // An HTTP/1.0 client gets the body delimited by the close.
        let answer = exchange(&client(), &endpoint, 0).await.unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains("connection: close") && !head.contains("chunked"),
            "{head}"
        );
        assert_eq!(body, "Wikipedia");
    }

    #[tokio::test]
    async fn a_whole_chunked_answer_goes_out_with_a_length() {
        let (endpoint, _) = scripted_replica(&[
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n1\r\n!\r\n0\r\n\r\n",
        ])
        .await;
        let answer = exchange(&client(), &endpoint, 1).await.unwrap();
        assert!(answer.contains("content-length: 3\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nok!"), "{answer}");
    }

    #[tokio::test]
    async fn an_answer_cut_short_is_an_error_not_a_short_body() {
        let (endpoint, _) =
            scripted_replica(&["HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this"]).await;
        let err = exchange(&client(), &endpoint, 1).await.unwrap_err();
        assert!(err.contains("broke off"), "{err}");
        let (endpoint, _) = scripted_replica(&[]).await;
        let err = exchange(&client(), &endpoint, 1).await.unwrap_err();
        assert!(err.contains("closed before an answer"), "{err}");
    }

    #[tokio::test]
    async fn an_answer_delimited_by_the_close_is_passed_on_whole() {
        let (endpoint, _) = scripted_replica(&["HTTP/1.1 200 OK\r\n\r\nall ", "of it"]).await;
        let answer = exchange(&client(), &endpoint, 1).await.unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        assert_eq!(body, "4\r\nall \r\n5\r\nof it\r\n0\r\n\r\n");
    }
}
