//! HTTP/1.1 conformance and robustness of the gateway, with raw TCP on both
//! sides: a client that writes bytes and parses the answers itself, and a
//! fake replica that reads requests off its sockets and writes scripted
//! answers. No HTTP library sits between these tests and the gateway, so
//! they lean on no library's leniency: they are the regression net for the
//! gateway's HTTP/1 path, whatever it is built on.
//!
//! Each test runs its own store node and gateway, with the deployment and
//! one Ready replica (the fake one) written straight into the store: no
//! controller, no worker.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tidal_gateway::routes::Target;
use tidal_gateway::{Gateway, GatewayOptions};
use tidal_proto::pb;
use tidal_store::Request;
use tidal_store::app::{Outcome, Precondition, Table};
use tidal_store::client::Client;
use tidal_store::node::StoreNode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// How long the gateway may take to learn the deployment and its replica.
const WAIT: Duration = Duration::from_secs(30);

/// How long any one answer, close or write may take before the test calls
/// it a hang.
const IO: Duration = Duration::from_secs(5);

const MODEL: &str = "m";
const DEPLOYMENT: &str = "d1";
const REPLICA: &str = "r1";

/// The production deployment's inference path (forwarded to `/predict`).
const PREDICT: &str = "/v1/models/m/production/predict";

/// The gateway's body limit, unless a test says otherwise.
const MAX_BODY: usize = 4096;

// ---------------------------------------------------------------------
// Reading HTTP/1 messages off a byte stream.
// ---------------------------------------------------------------------

/// Reads HTTP/1 messages off a byte stream, keeping what it read past the
/// current message (the next pipelined one).
struct Reader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::new(),
        }
    }

    /// Reads more bytes into the buffer; false at the end of the stream.
    async fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = vec![0; 64 * 1024];
        let n = self.inner.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// The bytes up to and including the first `delimiter`; `None` if the
    /// stream ended before any byte, an error if it ended after some.
    async fn until(&mut self, delimiter: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let mut from = 0;
        loop {
            if let Some(at) = find(&self.buf[from..], delimiter) {
                let end = from + at + delimiter.len();
                return Ok(Some(self.buf.drain(..end).collect()));
            }
            from = self.buf.len().saturating_sub(delimiter.len());
            if !self.fill().await? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(eof("the stream ended inside a line or head"))
                };
            }
        }
    }

    /// A head: the start line and header lines, up to the blank line.
    async fn head(&mut self) -> io::Result<Option<Vec<u8>>> {
        self.until(b"\r\n\r\n").await
    }

    /// Exactly `n` bytes.
    async fn exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Err(eof(&format!(
                    "the stream ended after {} of {n} body bytes",
                    self.buf.len()
                )));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// A chunked body, de-chunked (extensions and trailers dropped).
    async fn chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self
                .until(b"\r\n")
                .await?
                .ok_or_else(|| eof("the stream ended before a chunk"))?;
            let line = String::from_utf8_lossy(&line);
            let size = line.trim_end().split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| invalid(&format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                // Trailers, up to the blank line.
                loop {
                    let trailer = self
                        .until(b"\r\n")
                        .await?
                        .ok_or_else(|| eof("the stream ended inside the trailers"))?;
                    if trailer == b"\r\n" {
                        return Ok(body);
                    }
                }
            }
            body.extend_from_slice(&self.exact(size).await?);
            if self.exact(2).await? != b"\r\n" {
                return Err(invalid("a chunk's data is not followed by CRLF"));
            }
        }
    }

    /// Everything until the stream ends.
    async fn until_close(&mut self) -> io::Result<Vec<u8>> {
        while self.fill().await? {}
        Ok(std::mem::take(&mut self.buf))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether a read failed because the stream ended or was reset (not
/// because what came was malformed).
fn cut_short(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

fn eof(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, what.to_owned())
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// A message head: its start line and its headers (names lowercased, values
/// trimmed, in the order sent).
#[derive(Debug, Clone)]
struct Head {
    line: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn parse(raw: &[u8]) -> io::Result<Head> {
        let text = String::from_utf8_lossy(raw);
        let mut lines = text.trim_end_matches("\r\n").split("\r\n");
        let line = lines.next().unwrap_or("").to_owned();
        let mut headers = Vec::new();
        for header in lines {
            let (name, value) = header
                .split_once(':')
                .ok_or_else(|| invalid(&format!("header line without a colon: {header:?}")))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        Ok(Head { line, headers })
    }

    /// Every value of header `name` (lowercase).
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of header `name` (lowercase).
    fn get(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    /// Whether the body is chunked (chunked is the last coding).
    fn chunked(&self) -> bool {
        self.get("transfer-encoding").is_some_and(|te| {
            te.rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
        })
    }

    fn content_length(&self) -> io::Result<Option<usize>> {
        self.get("content-length")
            .map(|v| {
                v.parse()
                    .map_err(|_| invalid(&format!("bad Content-Length {v:?}")))
            })
            .transpose()
    }
}

/// One response as the client read it.
#[derive(Debug)]
struct Response {
    status: u16,
    head: Head,
    body: Vec<u8>,
}

impl Response {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response (an interim 1xx one included); `None` if the stream
/// ended before any byte of it. The body is framed by chunked encoding,
/// Content-Length or the end of the stream, whichever the head says.
async fn read_response<R: AsyncRead + Unpin>(
    reader: &mut Reader<R>,
) -> io::Result<Option<Response>> {
    let Some(raw) = reader.head().await? else {
        return Ok(None);
    };
    let head = Head::parse(&raw)?;
    if !head.line.starts_with("HTTP/1.") {
        return Err(invalid(&format!("not a status line: {:?}", head.line)));
    }
    let status: u16 = head
        .line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(&format!("no status in {:?}", head.line)))?;
    let body = if (100..200).contains(&status) || status == 204 || status == 304 {
        Vec::new()
    } else if head.chunked() {
        reader.chunked().await?
    } else if let Some(len) = head.content_length()? {
        reader.exact(len).await?
    } else {
        reader.until_close().await?
    };
    Ok(Some(Response { status, head, body }))
}

/// One request as the fake replica read it.
#[derive(Debug, Clone)]
struct Received {
    head: Head,
    /// The body, de-chunked if it came chunked.
    body: Vec<u8>,
}

/// Reads one request; `None` if the stream ended before any byte of it.
async fn read_request<R: AsyncRead + Unpin>(
    reader: &mut Reader<R>,
) -> io::Result<Option<Received>> {
    let Some(raw) = reader.head().await? else {
        return Ok(None);
    };
    let head = Head::parse(&raw)?;
    let body = if head.chunked() {
        reader.chunked().await?
    } else if let Some(len) = head.content_length()? {
        reader.exact(len).await?
    } else {
        Vec::new()
    };
    Ok(Some(Received { head, body }))
}

// ---------------------------------------------------------------------
// The raw client.
// ---------------------------------------------------------------------

/// A client connection to the gateway: writes raw bytes, reads responses
/// one after another (so pipelined answers come out in order). Every read
/// and write is bounded by [`IO`].
struct RawClient {
    reader: Reader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> RawClient {
        let tcp = TcpStream::connect(addr)
            .await
            .expect("connecting to the gateway");
        let (read, writer) = tcp.into_split();
        RawClient {
            reader: Reader::new(read),
            writer,
        }
    }

    /// Writes `bytes` as one write.
    async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(IO, self.writer.write_all(bytes))
            .await
            .expect("writing to the gateway took too long")
            .expect("writing to the gateway");
    }

    /// The next response, within [`IO`]; fails the test if there is none.
    async fn response(&mut self) -> Response {
        self.response_within(IO).await
    }

    /// The next response, within `limit`.
    async fn response_within(&mut self, limit: Duration) -> Response {
        match tokio::time::timeout(limit, read_response(&mut self.reader)).await {
            Err(_) => panic!("no complete response within {limit:?}"),
            Ok(Err(e)) => panic!("reading a response: {e}"),
            Ok(Ok(None)) => panic!("the gateway closed the connection without a response"),
            Ok(Ok(Some(response))) => response,
        }
    }

    /// Waits (up to [`IO`]) for the gateway to close the connection; what
    /// it sent meanwhile. A reset counts as closed.
    async fn closed(&mut self) -> Vec<u8> {
        let closed = tokio::time::timeout(IO, async {
            loop {
                match self.reader.fill().await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return,
                    Err(e) => panic!("waiting for the close: {e}"),
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the gateway did not close the connection within {IO:?}"
        );
        std::mem::take(&mut self.reader.buf)
    }
}

/// A POST of `body` to `path` (HTTP/1.1, Content-Length) with extra header
/// lines (each ending in `\r\n`).
fn post(path: &str, body: &[u8], headers: &str) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// A GET of `path` (HTTP/1.1).
fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n").into_bytes()
}

/// `len` bytes of a pattern that a shifted or dropped byte breaks.
fn pattern(len: usize) -> Vec<u8> {
    (0..=250u8).cycle().take(len).collect()
}

// ---------------------------------------------------------------------
// The fake replica.
// ---------------------------------------------------------------------

/// What the fake replica does once it has read a request.
#[derive(Debug)]
enum Step {
    /// Writes these bytes (one write).
    Write(Vec<u8>),
    /// Waits.
    Sleep(Duration),
    /// Waits until the test says so.
    Await(Arc<tokio::sync::Semaphore>),
    /// Closes the connection.
    Close,
}

/// The fake replica's steps for each request it reads; after them (unless
/// one closed it) it reads the next request on the same connection.
type Script = Arc<dyn Fn(&Received) -> Vec<Step> + Send + Sync>;

/// A raw TCP replica playing a [`Script`]; it records every request it
/// reads and counts the connections it accepts.
struct FakeReplica {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    accepts: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FakeReplica {
    /// The requests read so far, in order.
    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The connections accepted so far.
    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

async fn fake_replica(script: Script) -> FakeReplica {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let accepts = Arc::new(AtomicUsize::new(0));
    let (r, a) = (Arc::clone(&received), Arc::clone(&accepts));
    let task = tokio::spawn(async move {
        // Dropped when the task is aborted, it aborts every connection.
        let mut connections = JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            connections.spawn(replica_connection(tcp, Arc::clone(&script), Arc::clone(&r)));
            while connections.try_join_next().is_some() {}
        }
    });
    FakeReplica {
        addr,
        received,
        accepts,
        task,
    }
}

/// One connection to the fake replica: requests one after another, each
/// recorded, then answered by the script.
async fn replica_connection(tcp: TcpStream, script: Script, received: Arc<Mutex<Vec<Received>>>) {
    let (read, mut write) = tcp.into_split();
    let mut reader = Reader::new(read);
    while let Ok(Some(request)) = read_request(&mut reader).await {
        received.lock().unwrap().push(request.clone());
        for step in script(&request) {
            match step {
                Step::Write(bytes) => {
                    if write.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Step::Sleep(pause) => tokio::time::sleep(pause).await,
                Step::Await(go) => drop(go.acquire().await),
                Step::Close => return,
            }
        }
    }
}

/// A 200 with `body` (Content-Length) and extra header lines.
fn ok(body: &[u8], headers: &str) -> Vec<u8> {
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(body);
    answer
}

/// The answer to a request: 200 with `echo:` and its body.
fn echo_answer(request: &Received) -> Vec<Step> {
    vec![Step::Write(ok(&[b"echo:", &request.body[..]].concat(), ""))]
}

/// Answers every request with [`echo_answer`], keeping connections open.
fn echo() -> Script {
    Arc::new(echo_answer)
}

// ---------------------------------------------------------------------
// A store node and a gateway routing to the fake replica.
// ---------------------------------------------------------------------

struct Setup {
    _dir: tempfile::TempDir,
    node: StoreNode,
    gateway: Gateway,
    replica: FakeReplica,
}

/// A store node holding the production deployment of [`MODEL`] and one
/// Ready replica (the fake one, playing `script`), and a gateway (no API
/// key, bodies up to `max_body_bytes`, one serving thread) that routes to
/// it.
async fn setup(script: Script, max_body_bytes: usize) -> Setup {
    let replica = fake_replica(script).await;
    let dir = tempfile::tempdir().unwrap();
    let node = StoreNode::start_single(dir.path()).await.unwrap();
    let store = vec![node.addr().to_string()];
    let client = Client::new(&store, WAIT).unwrap();
    write_records(&client, &replica.addr.to_string()).await;
    let mut options = GatewayOptions::new("gw", store);
    options.require_key = false;
    options.max_body_bytes = max_body_bytes;
    // One thread: a connection that blocked it would block every other.
    options.threads = 1;
    let gateway = Gateway::start(options).await.unwrap();
    let start = tokio::time::Instant::now();
    while gateway
        .routes()
        .resolve(MODEL, &Target::Production)
        .is_err()
        || gateway.routes().ready_count(DEPLOYMENT) != 1
    {
        assert!(
            start.elapsed() < WAIT,
            "the gateway did not learn the deployment and its replica within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Setup {
        _dir: dir,
        node,
        gateway,
        replica,
    }
}

/// The deployment (production of [`MODEL`], Active) and its replica
/// (Ready at `endpoint`), as a controller and a worker would write them.
async fn write_records(client: &Client, endpoint: &str) {
    let deployment = pb::DeploymentRecord {
        deployment: Some(pb::Deployment {
            id: DEPLOYMENT.into(),
            model_id: MODEL.into(),
            is_production: true,
            status: pb::DeploymentStatus::Active.into(),
            ..Default::default()
        }),
        desired_replicas: 1,
        ..Default::default()
    };
    let replica = pb::Replica {
        id: REPLICA.into(),
        deployment_id: DEPLOYMENT.into(),
        phase: pb::ReplicaPhase::Ready.into(),
        endpoint: endpoint.to_owned(),
        ..Default::default()
    };
    for (table, key, value) in [
        (Table::Deployments, DEPLOYMENT, deployment.encode_to_vec()),
        (Table::Replicas, REPLICA, replica.encode_to_vec()),
    ] {
        let put = Request::put(table, key, value, Precondition::MustNotExist, None);
        let written = client.write(&put).await.unwrap();
        assert!(
            matches!(written.outcome, Outcome::Written { .. }),
            "writing {key}: {:?}",
            written.outcome
        );
    }
}

impl Setup {
    async fn connect(&self) -> RawClient {
        RawClient::connect(self.gateway.addr()).await
    }

    /// Stops the replica, the gateway and the store (drop client
    /// connections first: open ones hold the gateway's shutdown).
    async fn stop(self) {
        self.replica.task.abort();
        self.gateway.shutdown().await;
        self.node.shutdown().await.unwrap();
    }
}

// ---------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let s = setup(echo(), MAX_BODY).await;
    let mut client = s.connect().await;
    // Two whole requests in one write.
    let pipelined = [post(PREDICT, b"first", ""), post(PREDICT, b"second", "")].concat();
    client.send(&pipelined).await;
    for expected in ["echo:first", "echo:second"] {
        let response = client.response().await;
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.text(), expected, "pipelined answers out of order");
    }
    // The connection is still good for a third.
    client.send(&post(PREDICT, b"third", "")).await;
    let response = client.response().await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.text(), "echo:third");
    let bodies: Vec<_> = s.replica.received().into_iter().map(|r| r.body).collect();
    assert_eq!(
        bodies,
        [&b"first"[..], b"second", b"third"],
        "the replica got the requests in order"
    );
    drop(client);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_request_body_reaches_the_replica_whole() {
    let s = setup(echo(), MAX_BODY).await;
    let mut client = s.connect().await;
    client
        .send(
            format!(
                "POST {PREDICT} HTTP/1.1\r\nHost: gateway\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    // Several chunks in separate writes, one with an extension (which a
    // recipient ignores).
    for chunk in [
        &b"4\r\nWiki\r\n"[..],
        b"5;name=value\r\npedia\r\n",
        b"e\r\n in\r\n\r\nchunks.\r\n",
        b"0\r\n\r\n",
    ] {
        client.send(chunk).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = client.response().await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.text(), "echo:Wikipedia in\r\n\r\nchunks.");
    let received = s.replica.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        received[0].body, b"Wikipedia in\r\n\r\nchunks.",
        "the replica got the de-chunked body"
    );
    drop(client);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_an_interim_answer_before_the_body() {
    let s = setup(echo(), MAX_BODY).await;
    let mut client = s.connect().await;
    client
        .send(
            format!(
                "POST {PREDICT} HTTP/1.1\r\nHost: gateway\r\nExpect: 100-continue\r\n\
                 Content-Length: 5\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    let interim = client.response_within(Duration::from_secs(3)).await;
    assert_eq!(
        interim.status, 100,
        "expected 100 Continue before the body: {interim:?}"
    );
    client.send(b"hello").await;
    let response = client.response().await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.text(), "echo:hello");
    drop(client);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_over_the_limit_is_refused_before_the_body() {
    let s = setup(echo(), MAX_BODY).await;
    let mut client = s.connect().await;
    client
        .send(
            format!(
                "POST {PREDICT} HTTP/1.1\r\nHost: gateway\r\nExpect: 100-continue\r\n\
                 Content-Length: {}\r\n\r\n",
                MAX_BODY + 1
            )
            .as_bytes(),
        )
        .await;
    // The final answer comes at once, with no 100 Continue before it: the
    // client need not send a body that would be refused.
    let response = client.response_within(Duration::from_secs(3)).await;
    assert_eq!(response.status, 413, "{response:?}");
    client.closed().await;
    assert_eq!(s.replica.accepts(), 0, "a refused request was forwarded");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_without_keep_alive_is_answered_then_closed() {
    let s = setup(echo(), MAX_BODY).await;
    for (request, body) in [
        (
            format!("POST {PREDICT} HTTP/1.0\r\nHost: gateway\r\nContent-Length: 3\r\n\r\nabc"),
            "echo:abc",
        ),
        (
            "GET /health HTTP/1.0\r\nHost: gateway\r\n\r\n".to_owned(),
            "ok",
        ),
    ] {
        let mut client = s.connect().await;
        client.send(request.as_bytes()).await;
        let response = client.response().await;
        assert_eq!(response.status, 200, "{request:?}: {response:?}");
        assert_eq!(response.text(), body, "{request:?}");
        // An HTTP/1.0 client cannot decode chunked.
        assert!(
            response.head.get("transfer-encoding").is_none(),
            "Transfer-Encoding in an answer to HTTP/1.0: {response:?}"
        );
        let rest = client.closed().await;
        assert!(rest.is_empty(), "bytes after the answer: {rest:?}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_answered_then_closed() {
    let s = setup(echo(), MAX_BODY).await;
    let mut client = s.connect().await;
    client
        .send(&post(PREDICT, b"bye", "Connection: close\r\n"))
        .await;
    let response = client.response().await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.text(), "echo:bye");
    let rest = client.closed().await;
    assert!(rest.is_empty(), "bytes after the answer: {rest:?}");
    drop(client);
    s.stop().await;
}

/// Sends `request` on a new connection and expects a 4xx, then the
/// connection closed.
async fn refused(s: &Setup, request: &[u8]) -> Response {
    let mut client = s.connect().await;
    client.send(request).await;
    let response = client.response().await;
    let shown = String::from_utf8_lossy(request);
    assert!(
        (400..500).contains(&response.status),
        "{shown:?} was not refused with a 4xx: {response:?}"
    );
    client.closed().await;
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_or_invalid_body_lengths_are_refused() {
    let s = setup(echo(), MAX_BODY).await;
    let head = format!("POST {PREDICT} HTTP/1.1\r\nHost: gateway\r\n");
    // Two different lengths; a length that is not a number; a body coding
    // that does not end in chunked (its length cannot be known).
    for bad in [
        format!("{head}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        format!("{head}Content-Length: abc\r\n\r\nhello"),
        format!("{head}Transfer-Encoding: gzip\r\n\r\nhello"),
    ] {
        refused(&s, bad.as_bytes()).await;
    }
    assert_eq!(
        s.replica.accepts(),
        0,
        "an ambiguous request reached the replica: {:?}",
        s.replica.received()
    );

    // Content-Length and chunked together, and a second request behind the
    // chunked body (what a front end reading by Content-Length would take
    // as part of the body). RFC 9112 §6.3 allows refusing it or going by
    // the chunked coding alone; the gateway refuses it with a 400 and
    // closes the connection, so the bytes behind it are never served.
    let smuggled = post(PREDICT, b"smuggled", "");
    let both = [
        format!(
            "{head}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        .as_bytes(),
        &smuggled,
    ]
    .concat();
    let mut client = s.connect().await;
    client.send(&both).await;
    let response = client.response().await;
    let rest = client.closed().await;
    let received = s.replica.received();
    assert_eq!(response.status, 400, "{response:?}");
    assert!(received.is_empty(), "refused, yet forwarded: {received:?}");
    assert!(
        rest.is_empty(),
        "an answer to the bytes behind the chunked body: {}",
        String::from_utf8_lossy(&rest)
    );
    drop(client);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_head_is_refused_with_400_and_closed() {
    let s = setup(echo(), MAX_BODY).await;
    for bad in [
        "GARBAGE\r\n\r\n".to_owned(),
        format!(
            "POST {PREDICT} HTTP/1.1\r\nHost: gateway\r\nNoColonHere\r\nContent-Length: 2\r\n\r\n{{}}"
        ),
    ] {
        let response = refused(&s, bad.as_bytes()).await;
        assert_eq!(response.status, 400, "{bad:?}: {response:?}");
    }
    assert_eq!(s.replica.accepts(), 0, "a malformed request was forwarded");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_head_is_refused_not_forwarded() {
    let s = setup(echo(), MAX_BODY).await;
    // 100 KiB in one header value: over the gateway's 64 KiB head limit.
    let big = format!(
        "POST {PREDICT} HTTP/1.1\r\nHost: gateway\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\n{{}}",
        "a".repeat(100 << 10)
    );
    let tcp = TcpStream::connect(s.gateway.addr()).await.unwrap();
    let (read, mut write) = tcp.into_split();
    // The gateway may stop reading (and close) part way: written apart
    // from the reading, and its errors are expected.
    let writer = tokio::spawn(async move {
        let _ = write.write_all(big.as_bytes()).await;
        write
    });
    let mut reader = Reader::new(read);
    match tokio::time::timeout(IO, read_response(&mut reader)).await {
        Err(_) => panic!("no answer and no close within {IO:?} for an oversized head"),
        // Closed (or reset) without an answer: refused too.
        Ok(Ok(None)) => {}
        Ok(Err(e)) => assert!(cut_short(&e), "a malformed answer: {e}"),
        Ok(Ok(Some(response))) => assert!(
            (400..500).contains(&response.status),
            "an oversized head was not refused: {response:?}"
        ),
    }
    writer.abort();
    assert_eq!(s.replica.accepts(), 0, "an oversized head was forwarded");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_refused_with_413_not_forwarded() {
    let s = setup(echo(), MAX_BODY).await;
    // By Content-Length.
    let mut client = s.connect().await;
    client
        .send(&post(PREDICT, &pattern(MAX_BODY + 1000), ""))
        .await;
    let response = client.response().await;
    assert_eq!(response.status, 413, "{response:?}");
    drop(client);
    // Chunked, each chunk under the limit, together over it.
    let mut client = s.connect().await;
    let chunk = format!("{:x}\r\n{}\r\n", 3000, "x".repeat(3000));
    client
        .send(
            format!(
                "POST {PREDICT} HTTP/1.1\r\nHost: gateway\r\nTransfer-Encoding: chunked\r\n\r\n\
                 {chunk}{chunk}0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    let response = client.response().await;
    assert_eq!(response.status, 413, "{response:?}");
    drop(client);
    assert_eq!(
        s.replica.accepts(),
        0,
        "a body over the limit reached the replica"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_headers_are_not_forwarded() {
    let s = setup(echo(), MAX_BODY).await;
    let mut client = s.connect().await;
    client
        .send(
            format!(
                "POST {PREDICT} HTTP/1.1\r\nHost: client.example\r\n\
                 Connection: keep-alive, X-Private\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
                 X-Private: secret\r\nProxy-Connection: keep-alive\r\nX-Request-Id: abc\r\n\
                 Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
            )
            .as_bytes(),
        )
        .await;
    let response = client.response().await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.text(), "echo:{}");
    let received = s.replica.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let head = &received[0].head;
    assert_eq!(head.line, "POST /predict HTTP/1.1", "{head:?}");
    // X-Private is hop-by-hop because Connection names it (RFC 9110 §7.6.1).
    for hop in [
        "connection",
        "keep-alive",
        "te",
        "proxy-connection",
        "x-private",
    ] {
        assert!(head.get(hop).is_none(), "{hop} was forwarded: {head:?}");
    }
    assert_eq!(
        head.all("host"),
        [s.replica.addr.to_string()],
        "the replica's Host is its endpoint: {head:?}"
    );
    assert_eq!(head.get("x-request-id"), Some("abc"), "{head:?}");
    assert_eq!(
        head.get("content-type"),
        Some("application/json"),
        "{head:?}"
    );
    assert_eq!(received[0].body, b"{}");
    drop(client);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_are_not_returned() {
    let script: Script = Arc::new(|_| {
        vec![Step::Write(ok(
            b"ok",
            "X-Replica: r1\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n",
        ))]
    });
    let s = setup(script, MAX_BODY).await;
    let mut client = s.connect().await;
    client.send(&post(PREDICT, b"{}", "")).await;
    let response = client.response().await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.text(), "ok");
    assert_eq!(response.head.get("x-replica"), Some("r1"), "{response:?}");
    assert!(
        response.head.get("keep-alive").is_none(),
        "the replica's Keep-Alive was returned: {response:?}"
    );
    drop(client);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_reaches_the_client_whole_and_the_connection_stays_usable() {
    let script: Script = Arc::new(|request| {
        if request.body != b"chunked" {
            return echo_answer(request);
        }
        vec![
            Step::Write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5\r\nhello\r\n7;ext=1\r\n, world\r\n"
                    .to_vec(),
            ),
            Step::Sleep(Duration::from_millis(100)),
            Step::Write(b"1\r\n!\r\n".to_vec()),
            Step::Sleep(Duration::from_millis(50)),
            Step::Write(b"0\r\n\r\n".to_vec()),
        ]
    });
    let s = setup(script, MAX_BODY).await;
    let mut client = s.connect().await;
    client.send(&post(PREDICT, b"chunked", "")).await;
    let response = client.response().await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.text(), "hello, world!");
    client.send(&post(PREDICT, b"after", "")).await;
    let response = client.response().await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.text(), "echo:after");
    drop(client);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_intact_both_ways() {
    const RESPONSE: usize = 8 << 20;
    const REQUEST: usize = 1 << 20;
    const PIECE: usize = 64 * 1024;
    let script: Script = Arc::new(|request| {
        if request.body != b"big" {
            return echo_answer(request);
        }
        let mut steps = vec![Step::Write(
            format!("HTTP/1.1 200 OK\r\nContent-Length: {RESPONSE}\r\n\r\n").into_bytes(),
        )];
        steps.extend(
            pattern(RESPONSE)
                .chunks(PIECE)
                .map(|piece| Step::Write(piece.to_vec())),
        );
        steps
    });
    let s = setup(script, 2 << 20).await;
    let mut client = s.connect().await;
    client.send(&post(PREDICT, b"big", "")).await;
    let response = client.response().await;
    assert_eq!(response.status, 200, "{:?}", response.head);
    assert_eq!(response.body.len(), RESPONSE, "the whole body arrived");
    assert!(
        response.body == pattern(RESPONSE),
        "the body arrived altered"
    );

    // A request body just under the limit.
    let body = pattern(REQUEST);
    client.send(&post(PREDICT, &body, "")).await;
    let response = client.response().await;
    assert_eq!(response.status, 200, "{:?}", response.head);
    assert!(
        response.body == [&b"echo:"[..], &body].concat(),
        "the echo arrived altered"
    );
    let received = s.replica.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[1].body.len(), REQUEST);
    assert!(
        received[1].body == body,
        "the request body reached the replica altered"
    );
    drop(client);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_closes_without_answering_is_a_502() {
    let s = setup(Arc::new(|_| vec![Step::Close]), MAX_BODY).await;
    let mut client = s.connect().await;
    client.send(&post(PREDICT, b"{}", "")).await;
    let response = client.response().await;
    assert_eq!(response.status, 502, "{response:?}");
    assert!(!s.replica.received().is_empty(), "the replica got it");
    drop(client);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_dies_mid_body_does_not_hang_the_client() {
    let script: Script = Arc::new(|_| {
        vec![
            Step::Write(
                [
                    &b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"[..],
                    &[b'x'; 10],
                ]
                .concat(),
            ),
            Step::Sleep(Duration::from_millis(50)),
            Step::Close,
        ]
    });
    let s = setup(script, MAX_BODY).await;
    let mut client = s.connect().await;
    client.send(&post(PREDICT, b"{}", "")).await;
    // The answer ends within IO: cut short (the stream closes before the
    // body's end), or a whole error answer if the gateway held the body
    // back. Never a whole 200.
    match tokio::time::timeout(IO, read_response(&mut client.reader)).await {
        Err(_) => panic!("the client hung after the replica died mid-body"),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => assert!(cut_short(&e), "a malformed answer: {e}"),
        Ok(Ok(Some(response))) => assert!(
            response.status >= 500,
            "a cut-short body was passed off as whole: {} with {} body bytes",
            response.head.line,
            response.body.len()
        ),
    }
    drop(client);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_delimited_response_reaches_the_client_whole() {
    let script: Script = Arc::new(|_| {
        vec![
            Step::Write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part, ".to_vec(),
            ),
            Step::Sleep(Duration::from_millis(50)),
            Step::Write(b"second part".to_vec()),
            Step::Close,
        ]
    });
    let s = setup(script, MAX_BODY).await;
    let mut client = s.connect().await;
    client.send(&post(PREDICT, b"{}", "")).await;
    let response = client.response().await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.text(), "first part, second part");
    drop(client);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_reuse_one_replica_connection() {
    let s = setup(echo(), MAX_BODY).await;
    let mut client = s.connect().await;
    for n in 0..5 {
        let body = format!("request {n}");
        client.send(&post(PREDICT, body.as_bytes(), "")).await;
        let response = client.response().await;
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.text(), format!("echo:{body}"));
    }
    assert_eq!(s.replica.received().len(), 5);
    assert_eq!(
        s.replica.accepts(),
        1,
        "five sequential requests should share one replica connection"
    );
    drop(client);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_keep_the_connection_usable() {
    let s = setup(echo(), MAX_BODY).await;
    let mut client = s.connect().await;

    client.send(&get("/v2/whatever")).await;
    let response = client.response().await;
    assert_eq!(response.status, 404, "{response:?}");
    let json: serde_json::Value = serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("the 404's body is not JSON ({e}): {response:?}"));
    assert!(json.is_object(), "{json}");

    client.send(&get(PREDICT)).await;
    let response = client.response().await;
    assert_eq!(response.status, 405, "{response:?}");
    assert_eq!(response.head.get("allow"), Some("POST"), "{response:?}");

    client.send(&get("/health")).await;
    let response = client.response().await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.text(), "ok");

    client.send(&post(PREDICT, b"still", "")).await;
    let response = client.response().await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.text(), "echo:still");
    drop(client);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_does_not_block_others() {
    let s = setup(echo(), MAX_BODY).await;
    // One stalls half way through its head, another half way through its
    // body.
    let mut mid_head = s.connect().await;
    mid_head
        .send(format!("POST {PREDICT} HTTP/1.1\r\nHost: gateway\r\nContent-Le").as_bytes())
        .await;
    let mut mid_body = s.connect().await;
    mid_body
        .send(
            format!("POST {PREDICT} HTTP/1.1\r\nHost: gateway\r\nContent-Length: 10\r\n\r\nabc")
                .as_bytes(),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 0..3 {
        let mut client = s.connect().await;
        let body = format!("other {n}");
        client.send(&post(PREDICT, body.as_bytes(), "")).await;
        let response = client.response().await;
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.text(), format!("echo:{body}"));
    }
    drop((mid_head, mid_body));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_closes_idle_connections_at_once_and_lets_a_request_finish() {
    // The replica answers only when the test lets it, so a request is in
    // flight when the gateway is told to stop.
    let go = Arc::new(tokio::sync::Semaphore::new(0));
    let held = Arc::clone(&go);
    let script: Script =
        Arc::new(move |_| vec![Step::Await(Arc::clone(&held)), Step::Write(ok(b"late", ""))]);
    let s = setup(script, MAX_BODY).await;
    let mut idle = s.connect().await;
    idle.send(b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await;
    assert_eq!(idle.response().await.status, 200);
    let mut busy = s.connect().await;
    busy.send(&post(PREDICT, b"{}", "")).await;
    tokio::time::timeout(IO, async {
        while s.replica.received().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the request reached the replica");
    let Setup {
        _dir,
        node,
        gateway,
        replica,
    } = s;
    let stopping = tokio::spawn(gateway.shutdown());
    // The idle connection closes while the request is still held.
    idle.closed().await;
    assert!(!stopping.is_finished(), "stopped with a request in flight");
    // Let the replica answer: the request in flight is answered whole, with
    // the connection closing after it, and then the gateway stops.
    go.add_permits(1);
    let response = busy.response().await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.text(), "late");
    assert_eq!(
        response.head.get("connection"),
        Some("close"),
        "{response:?}"
    );
    busy.closed().await;
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the gateway stopped once its last request was answered")
        .unwrap();
    replica.task.abort();
    node.shutdown().await.unwrap();
}
