//! The gateway's own HTTP/1.1: parsing heads (with `httparse`), telling how
//! a body is delimited, reading and de-chunking bodies, and writing answers.
//!
//! Both hops use it: the client's connection ([`crate::conn`]) and the
//! pooled connections to replicas ([`crate::proxy`]). A head is kept as the
//! bytes it came in, with the spans of its parts, so a request's end-to-end
//! header lines are forwarded as they came, without building a header map.
//!
//! What it refuses, as a proxy must (RFC 9112): a request with both
//! `Content-Length` and `Transfer-Encoding`, differing or malformed
//! `Content-Length`s, a transfer coding other than `chunked`, heads over
//! [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`] fields, and chunk framing that is
//! not well-formed.

use std::cell::RefCell;
use std::io::IoSlice;
use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest head (request or status line and header fields) accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The most header fields in one head.
pub const MAX_HEADERS: usize = 128;

/// The longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// How much a read asks for at least.
const READ_CHUNK: usize = 8 * 1024;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The peer closed the connection before a message started.
    #[error("the connection closed")]
    Closed,
    /// The peer closed the connection in the middle of a message.
    #[error("the connection closed in the middle of a message")]
    Incomplete,
    /// Not HTTP/1.1 as a proxy can pass on.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A transfer coding other than `chunked`.
    #[error("unsupported transfer coding {0:?}; only chunked is accepted")]
    UnsupportedCoding(String),
    /// The head is too large.
    #[error(
        "the message head is larger than {MAX_HEAD_BYTES} bytes or has more than {MAX_HEADERS} fields"
    )]
    HeadTooLarge,
    /// The body is over the limit.
    #[error("the body is larger than the limit of {0} bytes")]
    BodyTooLarge(usize),
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn malformed(what: impl Into<String>) -> HttpError {
    HttpError::Malformed(what.into())
}

/// A parsed head: its bytes and the spans of its header fields.
#[derive(Debug, Clone)]
pub struct Head {
    bytes: Bytes,
    fields: Vec<(Range<usize>, Range<usize>)>,
}

impl Head {
    /// Every header field, as it came: (name, value).
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields
            .iter()
            .map(|(name, value)| (&self.bytes[name.clone()], &self.bytes[value.clone()]))
    }

    /// The first value of header `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    fn span(&self, range: &Range<usize>) -> &[u8] {
        &self.bytes[range.clone()]
    }

    /// Whether `name` is hop-by-hop here: one of the standard ones or one
    /// this message's `Connection` names.
    pub fn is_hop_by_hop(&self, name: &[u8]) -> bool {
        is_hop_by_hop(name)
            || self
                .values("connection")
                .flat_map(tokens)
                .any(|t| t.eq_ignore_ascii_case(name))
    }

    /// Appends the end-to-end header fields as `name: value` lines, as they
    /// came: every field but the [hop-by-hop](is_hop_by_hop) ones and those
    /// `Connection` names.
    pub fn push_end_to_end(&self, out: &mut Vec<u8>) {
        let named: Vec<&[u8]> = self.values("connection").flat_map(tokens).collect();
        for (name, value) in self.fields() {
            if is_hop_by_hop(name) || named.iter().any(|t| t.eq_ignore_ascii_case(name)) {
                continue;
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The head's size in bytes.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    /// Every value of header `name` (case-insensitive).
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Whether header `name` lists `token` (comma-separated, any case).
    fn lists(&self, name: &str, token: &str) -> bool {
        self.values(name)
            .flat_map(tokens)
            .any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
    }

    /// Whether an HTTP/1.`minor` message with this head leaves its
    /// connection open: 1.1 unless `Connection: close`, 1.0 only with
    /// `Connection: keep-alive`.
    fn keeps_alive(&self, minor: u8) -> bool {
        if minor == 0 {
            self.lists("connection", "keep-alive")
        } else {
            !self.lists("connection", "close")
        }
    }

    /// How the body is delimited by `Content-Length` and
    /// `Transfer-Encoding`; `None` when neither is present.
    fn framing(&self) -> Result<Option<Framing>, HttpError> {
        let mut length: Option<u64> = None;
        let mut codings = false;
        for (name, value) in self.fields() {
            if name.eq_ignore_ascii_case(b"content-length") {
                for token in value.split(|b| *b == b',') {
                    let n = parse_length(trim(token))?;
                    if length.is_some_and(|l| l != n) {
                        return Err(malformed("differing Content-Length values"));
                    }
                    length = Some(n);
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                codings = true;
            }
        }
        if codings {
            if length.is_some() {
                return Err(malformed(
                    "both Content-Length and Transfer-Encoding are present",
                ));
            }
            // RFC 9112 §6.1, §6.3: chunked must come last (or the length
            // cannot be known); any other coding is not implemented here.
            let all: Vec<&[u8]> = self.values("transfer-encoding").flat_map(tokens).collect();
            return match all.as_slice() {
                [only] if only.eq_ignore_ascii_case(b"chunked") => Ok(Some(Framing::Chunked)),
                [.., last] if last.eq_ignore_ascii_case(b"chunked") => {
                    Err(HttpError::UnsupportedCoding(
                        all.iter()
                            .map(|t| String::from_utf8_lossy(t))
                            .collect::<Vec<_>>()
                            .join(", "),
                    ))
                }
                // A response's body then ends with the connection; a
                // request's length cannot be known.
                _ => Ok(Some(Framing::UntilClose)),
            };
        }
        Ok(length.map(|n| {
            if n == 0 {
                Framing::Empty
            } else {
                Framing::Length(n)
            }
        }))
    }
}

/// The comma-separated, trimmed, non-empty tokens of a header value.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(trim)
        .filter(|t| !t.is_empty())
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

fn parse_length(token: &[u8]) -> Result<u64, HttpError> {
    let bad = || malformed("Content-Length is not a number");
    if token.is_empty() || token.len() > 19 || !token.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    std::str::from_utf8(token)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)
}

/// The header fields that belong to one connection (RFC 9110 §7.6.1),
/// plus those the gateway sets itself on either hop (`Host`,
/// `Content-Length`, `Expect`).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    match name.len() {
        2 => is("te"),
        4 => is("host"),
        6 => is("expect"),
        7 => is("trailer") || is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        14 => is("content-length"),
        16 => is("proxy-connection"),
        17 => is("transfer-encoding"),
        _ => false,
    }
}

/// The methods the gateway tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`: answered like `GET` without a body.
    Head,
    /// `POST`.
    Post,
    /// Anything else.
    Other,
}

/// A request head.
#[derive(Debug, Clone)]
pub struct Request {
    /// Its header fields.
    pub head: Head,
    /// The method.
    pub method: Method,
    method_span: Range<usize>,
    target: Range<usize>,
    /// HTTP/1.`minor`.
    pub minor: u8,
    /// How its body is delimited.
    pub framing: Framing,
    /// Whether the connection stays open after the answer.
    pub keep_alive: bool,
    /// Whether the client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
}

impl Request {
    /// The method as sent.
    pub fn method_str(&self) -> &str {
        std::str::from_utf8(self.head.span(&self.method_span)).unwrap_or("?")
    }

    /// The path (the target before any `?`; of an absolute-form target,
    /// what follows the authority).
    pub fn path(&self) -> &str {
        let mut target = self.head.span(&self.target);
        for scheme in [&b"http://"[..], b"https://"] {
            if target.len() > scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
                let rest = &target[scheme.len()..];
                target = rest
                    .iter()
                    .position(|b| *b == b'/')
                    .map_or(&b"/"[..], |at| &rest[at..]);
            }
        }
        let path = target.split(|b| *b == b'?').next().unwrap_or(target);
        std::str::from_utf8(path).unwrap_or("")
    }
}

/// The length of the head `httparse` found at the start of a buffer of
/// `buffered` bytes; `None` when more bytes are needed.
fn head_len(
    parsed: Result<httparse::Status<usize>, httparse::Error>,
    buffered: usize,
    what: &str,
) -> Result<Option<usize>, HttpError> {
    match parsed {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => Ok(Some(len)),
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
            Err(HttpError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) if buffered > MAX_HEAD_BYTES => Err(HttpError::HeadTooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(malformed(format!("bad {what} head: {e}"))),
    }
}

/// Where `part`, a slice of the buffer that starts at address `base`, lies
/// in it.
fn span_at(base: usize, part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - base;
    start..start + part.len()
}

/// The spans of `headers`' names and values in the buffer at `base`.
fn field_spans(base: usize, headers: &[httparse::Header<'_>]) -> Vec<(Range<usize>, Range<usize>)> {
    headers
        .iter()
        .map(|h| (span_at(base, h.name.as_bytes()), span_at(base, h.value)))
        .collect()
}

/// Parses a request head from the start of `buf`, taking it off `buf`;
/// `None` when more bytes are needed.
pub fn parse_request(buf: &mut BytesMut) -> Result<Option<Request>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let Some(len) = head_len(request.parse(buf), buf.len(), "request")? else {
        return Ok(None);
    };
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| span_at(base, s);
    let (Some(method), Some(target), Some(minor)) = (request.method, request.path, request.version)
    else {
        return Err(malformed("incomplete request line"));
    };
    let method_kind = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        _ => Method::Other,
    };
    let (method, target) = (span(method.as_bytes()), span(target.as_bytes()));
    let fields = field_spans(base, request.headers);
    let head = Head {
        bytes: buf.split_to(len).freeze(),
        fields,
    };
    let framing = match head.framing()? {
        Some(Framing::UntilClose) => {
            return Err(malformed(
                "Transfer-Encoding does not end in chunked, so the body's length cannot be known",
            ));
        }
        framing => framing.unwrap_or(Framing::Empty),
    };
    let keep_alive = head.keeps_alive(minor);
    let expect_continue = minor == 1
        && head
            .get("expect")
            .is_some_and(|v| trim(v).eq_ignore_ascii_case(b"100-continue"));
    Ok(Some(Request {
        head,
        method: method_kind,
        method_span: method,
        target,
        minor,
        framing,
        keep_alive,
        expect_continue,
    }))
}

/// A response head.
#[derive(Debug, Clone)]
pub struct Response {
    /// Its header fields.
    pub head: Head,
    /// The status code.
    pub status: u16,
    reason: Range<usize>,
    /// How its body is delimited (the request was a `POST`).
    pub framing: Framing,
    /// Whether the connection may carry another exchange after this one.
    pub keep_alive: bool,
}

impl Response {
    /// The reason phrase as sent.
    pub fn reason(&self) -> &[u8] {
        self.head.span(&self.reason)
    }
}

/// Parses a response head from the start of `buf`, taking it off `buf`;
/// `None` when more bytes are needed.
pub fn parse_response(buf: &mut BytesMut) -> Result<Option<Response>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let Some(len) = head_len(response.parse(buf), buf.len(), "response")? else {
        return Ok(None);
    };
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| span_at(base, s);
    let (Some(status), Some(minor)) = (response.code, response.version) else {
        return Err(malformed("incomplete status line"));
    };
    let reason = span(response.reason.unwrap_or("").as_bytes());
    let fields = field_spans(base, response.headers);
    let head = Head {
        bytes: buf.split_to(len).freeze(),
        fields,
    };
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match head.framing()? {
            // A coding other than chunked alone: the gateway cannot pass
            // it on (the client would get coded bytes it was not told of).
            Some(Framing::UntilClose) => {
                let codings = head.get("transfer-encoding").unwrap_or_default();
                return Err(HttpError::UnsupportedCoding(
                    String::from_utf8_lossy(codings).into_owned(),
                ));
            }
            Some(framing) => framing,
            None => Framing::UntilClose,
        }
    };
    let keep_alive = framing != Framing::UntilClose && head.keeps_alive(minor);
    Ok(Some(Response {
        head,
        status,
        reason,
        framing,
        keep_alive,
    }))
}

/// Reads more bytes into `buf`; how many (0: the peer closed).
pub async fn read_more<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK);
    }
    io.read_buf(buf).await
}

/// A chunked body's decoder, fed from a connection's buffer.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Before a chunk-size line.
    #[default]
    Size,
    /// In a chunk's data, this much left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields until an empty line.
    Trailers,
    /// The body has ended.
    Done,
}

/// What [`Chunked::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Body bytes.
    Data(Bytes),
    /// More bytes are needed.
    More,
    /// The body has ended (trailers read and dropped).
    End,
}

impl Chunked {
    /// Whether the body has ended.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// The next piece of body in `buf`, taking its framing off `buf`.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Piece, HttpError> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(Piece::End),
                ChunkState::Size => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Piece::More);
                    };
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Piece::More);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Piece::Data(buf.split_to(n).freeze()));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Piece::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(malformed("a chunk's data is not followed by CRLF"));
                    }
                    let _ = buf.split_to(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(line) = take_line(buf, MAX_HEAD_BYTES)? else {
                        return Ok(Piece::More);
                    };
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }
}

/// Takes one CRLF-ended line off `buf` (without the CRLF); `None` when it
/// has not all come yet.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, HttpError> {
    match buf.iter().position(|b| *b == b'\n') {
        Some(end) if end > max => Err(malformed("a chunk line is too long")),
        Some(end) => {
            let mut line = buf.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            } else {
                return Err(malformed("a chunk line does not end in CRLF"));
            }
            Ok(Some(line))
        }
        None if buf.len() > max => Err(malformed("a chunk line is too long")),
        None => Ok(None),
    }
}

fn chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let digits = line
        .split(|b| *b == b';')
        .next()
        .map(<[u8]>::trim_ascii)
        .unwrap_or_default();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(malformed("bad chunk size"));
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or_else(|| malformed("bad chunk size"))
}

/// Reads a whole request body of at most `limit` bytes (one that came in
/// one piece is kept without a copy).
pub async fn read_body<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    framing: Framing,
    limit: usize,
) -> Result<Bytes, HttpError> {
    match framing {
        Framing::Empty => Ok(Bytes::new()),
        Framing::Length(n) => {
            let n = usize::try_from(n)
                .ok()
                .filter(|n| *n <= limit)
                .ok_or(HttpError::BodyTooLarge(limit))?;
            if buf.len() < n {
                buf.reserve(n - buf.len());
            }
            while buf.len() < n {
                if read_more(io, buf).await? == 0 {
                    return Err(HttpError::Incomplete);
                }
            }
            Ok(buf.split_to(n).freeze())
        }
        Framing::Chunked => {
            let mut decoder = Chunked::default();
            let mut first: Option<Bytes> = None;
            let mut joined: Option<BytesMut> = None;
            let mut len = 0usize;
            loop {
                match decoder.next(buf)? {
                    Piece::End => break,
                    Piece::More => {
                        if read_more(io, buf).await? == 0 {
                            return Err(HttpError::Incomplete);
                        }
                    }
                    Piece::Data(data) => {
                        len += data.len();
                        if len > limit {
                            return Err(HttpError::BodyTooLarge(limit));
                        }
                        match (&first, &mut joined) {
                            (None, _) => first = Some(data),
                            (Some(head), None) => {
                                let mut all = BytesMut::with_capacity(len);
                                all.extend_from_slice(head);
                                all.extend_from_slice(&data);
                                joined = Some(all);
                            }
                            (Some(_), Some(all)) => all.extend_from_slice(&data),
                        }
                    }
                }
            }
            Ok(match (first, joined) {
                (_, Some(all)) => all.freeze(),
                (Some(one), None) => one,
                (None, None) => Bytes::new(),
            })
        }
        Framing::UntilClose => Err(malformed("a request body must have a length")),
    }
}

/// Writes every byte of `slices`, with as few `writev`s as the socket takes.
pub async fn write_all<W: AsyncWrite + Unpin>(
    io: &mut W,
    slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    let mut slices = &mut slices[..];
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let n = io.write_vectored(slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b"0123456789"[usize::try_from(n % 10).unwrap_or(0)];
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends `n` in hexadecimal (a chunk size).
pub fn push_hex(out: &mut Vec<u8>, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = HEX[usize::try_from(n & 15).unwrap_or(0)];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends a status line for `status` with its reason phrase.
pub fn push_status_line(out: &mut Vec<u8>, status: u16, reason: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

/// The canonical reason phrase for `status`.
pub fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

thread_local! {
    /// The `Date` value and the second it is for.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [b' '; 29])) };
}

/// Appends a `date:` header line for now (formatted once a second).
pub fn push_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                date.1.copy_from_slice(text.as_bytes());
            }
            date.0 = second;
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&date.1);
        out.extend_from_slice(b"\r\n");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Result<Option<Request>, HttpError> {
        parse_request(&mut BytesMut::from(text))
    }

    #[test]
    fn a_request_head_parses_with_its_framing() {
        let mut buf = BytesMut::from(
            "POST /v1/models/m/production/predict?x=1 HTTP/1.1\r\nHost: a\r\n\
             Content-Length: 2\r\nAuthorization: Bearer k\r\n\r\n{}NEXT",
        );
        let r = parse_request(&mut buf).unwrap().unwrap();
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.method_str(), "POST");
        assert_eq!(r.path(), "/v1/models/m/production/predict");
        assert_eq!(r.framing, Framing::Length(2));
        assert!(r.keep_alive && !r.expect_continue);
        assert_eq!(r.head.get("authorization"), Some(&b"Bearer k"[..]));
        assert_eq!(&buf[..], b"{}NEXT", "only the head is taken");
        let absolute =
            request("POST http://gw:8080/v1/models/m/production/predict?a HTTP/1.1\r\n\r\n");
        assert_eq!(
            absolute.unwrap().unwrap().path(),
            "/v1/models/m/production/predict"
        );
        let bare = request("GET HTTP://gw HTTP/1.1\r\n\r\n");
        assert_eq!(bare.unwrap().unwrap().path(), "/");
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_are_refused() {
        assert!(request("POST / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_BYTES + 1));
        assert!(matches!(request(&long), Err(HttpError::HeadTooLarge)));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(request(&many), Err(HttpError::HeadTooLarge)));
        assert!(matches!(
            request("GARBAGE\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let both = "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(request(both), Err(HttpError::Malformed(_))));
        let differing = "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert!(matches!(request(differing), Err(HttpError::Malformed(_))));
        let same = "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5, 5\r\n\r\n";
        assert_eq!(request(same).unwrap().unwrap().framing, Framing::Length(5));
        for bad in ["abc", "-1", "+5", "1 2", "", "99999999999999999999"] {
            let text = format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
            assert!(request(&text).is_err(), "{bad:?}");
        }
        let gzip = "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert!(matches!(
            request(gzip),
            Err(HttpError::UnsupportedCoding(_))
        ));
        let unframed = "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert!(matches!(request(unframed), Err(HttpError::Malformed(_))));
        let twice =
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(
            request(twice),
            Err(HttpError::UnsupportedCoding(_))
        ));
        let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n";
        assert_eq!(request(chunked).unwrap().unwrap().framing, Framing::Chunked);
    }

    #[test]
    fn keep_alive_and_expect_follow_the_version() {
        let r = request("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!r.keep_alive);
        let r = request("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.keep_alive);
        let r = request("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!r.keep_alive);
        let r = request("POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.expect_continue);
    }

    #[test]
    fn hop_by_hop_includes_what_connection_names() {
        let r =
            request("GET / HTTP/1.1\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(r.head.is_hop_by_hop(b"x-private"));
        assert!(r.head.is_hop_by_hop(b"Keep-Alive"));
        assert!(r.head.is_hop_by_hop(b"TE"));
        assert!(!r.head.is_hop_by_hop(b"x-request-id"));
    }

    #[test]
    fn response_framing() {
        let parse = |text: &str| parse_response(&mut BytesMut::from(text)).unwrap().unwrap();
        let r = parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(
            (r.status, r.framing, r.keep_alive),
            (200, Framing::Length(3), true)
        );
        assert_eq!(r.reason(), b"OK");
        let r = parse("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((r.framing, r.keep_alive), (Framing::UntilClose, false));
        let r = parse("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!((r.framing, r.keep_alive), (Framing::Empty, true));
        let r = parse("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
        assert!(!r.keep_alive);
        let r = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
        assert_eq!((r.framing, r.keep_alive), (Framing::Chunked, false));
        for coded in ["gzip", "gzip, chunked"] {
            let text = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {coded}\r\n\r\n");
            let err = parse_response(&mut BytesMut::from(text.as_str()));
            assert!(
                matches!(err, Err(HttpError::UnsupportedCoding(_))),
                "{coded}"
            );
        }
    }

    #[test]
    fn chunked_bodies_decode_across_reads() {
        let wire =
            b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        // Fed one byte at a time, as a slow peer would.
        let mut decoder = Chunked::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.next(&mut buf).unwrap() {
                Piece::Data(d) => body.extend_from_slice(&d),
                Piece::More => {
                    buf.extend_from_slice(&wire[fed..=fed]);
                    fed += 1;
                }
                Piece::End => break,
            }
        }
        assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(&wire[fed..], b"NEXT", "nothing after the body is taken");
        for bad in [
            "x\r\n",
            "4\r\nWikiXX",
            "4\nWiki\r\n",
            "fffffffffffffffff\r\n",
        ] {
            let mut decoder = Chunked::default();
            let mut buf = BytesMut::from(bad);
            let result = (0..4).try_for_each(|_| decoder.next(&mut buf).map(drop));
            assert!(result.is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn bodies_are_read_to_their_limit() {
        let mut empty: &[u8] = b"";
        let mut buf = BytesMut::from("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
        let body = read_body(&mut empty, &mut buf, Framing::Chunked, 5)
            .await
            .unwrap();
        assert_eq!(&body[..], b"abcde");
        let mut buf = BytesMut::from("3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n");
        let err = read_body(&mut empty, &mut buf, Framing::Chunked, 5).await;
        assert!(matches!(err, Err(HttpError::BodyTooLarge(5))));
        let mut rest: &[u8] = b"lo";
        let mut buf = BytesMut::from("hel");
        let body = read_body(&mut rest, &mut buf, Framing::Length(5), 5)
            .await
            .unwrap();
        assert_eq!(&body[..], b"hello");
        let err = read_body(&mut empty, &mut BytesMut::new(), Framing::Length(6), 5).await;
        assert!(matches!(err, Err(HttpError::BodyTooLarge(5))));
        let mut short: &[u8] = b"x";
        let err = read_body(&mut short, &mut BytesMut::new(), Framing::Length(2), 5).await;
        assert!(matches!(err, Err(HttpError::Incomplete)));
    }

    #[test]
    fn numbers_and_dates_render() {
        let mut out = Vec::new();
        push_decimal(&mut out, 0);
        out.push(b' ');
        push_decimal(&mut out, 18_446_744_073_709_551_615);
        out.push(b' ');
        push_hex(&mut out, 0);
        out.push(b' ');
        push_hex(&mut out, 0x1f_ab);
        assert_eq!(out, b"0 18446744073709551615 0 1fab");
        let mut out = Vec::new();
        push_date(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("date: ") && text.ends_with(" GMT\r\n"),
            "{text}"
        );
    }
}
