//! One client connection: requests read with [`crate::http1`] and answered
//! by [`crate::server`], one after another (pipelined ones included), until
//! the client closes or asks to close, breaks the protocol, or the gateway
//! stops.
//!
//! A request that cannot be taken (a malformed head, ambiguous framing, a
//! head or body over the limits, a head that does not arrive in
//! [`HEAD_TIMEOUT`]) is answered with a JSON error and `Connection: close`;
//! the connection then stops sending and reads what the client had still
//! sent for up to [`LINGER`], so the answer is not lost to a reset.

use std::io::IoSlice;
use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::http1::{self, Framing, HttpError, Method};
use crate::server::{ApiError, Local, Reply, Shared};
use crate::threads::Stop;

/// How long a request head may take to arrive once it has started.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a connection closed after an error answer reads what the
/// client still sends.
const LINGER: Duration = Duration::from_secs(1);

/// Serves one client connection until it ends.
pub async fn serve(shared: &Shared, mut tcp: TcpStream, stop: &watch::Receiver<Stop>) {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut scratch = Vec::with_capacity(1024);
    // One wait for the stop for the connection's whole life: registered
    // once, not once per request.
    let mut stopping = stop.clone();
    let stopped = async move {
        let _ = stopping.wait_for(|s| *s != Stop::Running).await;
    };
    let mut stopped = std::pin::pin!(stopped);
    loop {
        let request = match next_request(&mut tcp, &mut buf, stopped.as_mut()).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => return refuse(&mut tcp, &mut scratch, &e, 1).await,
        };
        // Too large by its length: refused before the client sends it.
        if let Framing::Length(n) = request.framing
            && n > shared.max_body_bytes as u64
        {
            let too_large = HttpError::BodyTooLarge(shared.max_body_bytes);
            return refuse(&mut tcp, &mut scratch, &too_large, request.minor).await;
        }
        if request.expect_continue && !body_here(request.framing, &buf) {
            let continued = tcp.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
            if continued.is_err() {
                return;
            }
        }
        let body = match http1::read_body(
            &mut tcp,
            &mut buf,
            request.framing,
            shared.max_body_bytes,
        )
        .await
        {
            Ok(body) => body,
            Err(e) => return refuse(&mut tcp, &mut scratch, &e, request.minor).await,
        };
        let reply = crate::server::answer(shared, &request, body).await;
        // Decided once the answer is ready: a stop while it was made closes
        // the connection after it, and says so.
        let close = !request.keep_alive || *stop.borrow() != Stop::Running;
        let close = match reply {
            Reply::Local(local) => {
                let head_only = request.method == Method::Head;
                if write_local(
                    &mut tcp,
                    &mut scratch,
                    &local,
                    request.minor,
                    close,
                    head_only,
                )
                .await
                .is_err()
                {
                    return;
                }
                close
            }
            Reply::Proxied { answer, in_flight } => {
                let sent = answer
                    .send(&mut tcp, &mut scratch, request.minor, close)
                    .await;
                drop(in_flight);
                match sent {
                    Ok(close) => close,
                    Err(e) => {
                        tracing::debug!(error = %e, "gateway answer broke off; closing the connection");
                        return;
                    }
                }
            }
        };
        if close {
            return linger(&mut tcp).await;
        }
    }
}

/// Whether the body of a request framed by `framing` has all arrived.
fn body_here(framing: Framing, buf: &BytesMut) -> bool {
    match framing {
        Framing::Empty => true,
        Framing::Length(n) => buf.len() as u64 >= n,
        Framing::Chunked | Framing::UntilClose => false,
    }
}

/// The next request's head; `None` when the client closed between
/// requests or the gateway is stopping and the connection is idle.
async fn next_request(
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
    stopped: Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<http1::Request>, HttpError> {
    let mut stopped = stopped;
    let mut deadline: Option<Instant> = None;
    loop {
        if !buf.is_empty()
            && let Some(request) = http1::parse_request(buf)?
        {
            return Ok(Some(request));
        }
        let read = if buf.is_empty() {
            // Idle between requests: a stop closes it.
            tokio::select! {
                biased;
                () = stopped.as_mut() => return Ok(None),
                read = http1::read_more(tcp, buf) => read?,
            }
        } else {
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + HEAD_TIMEOUT);
            tokio::time::timeout_at(deadline, http1::read_more(tcp, buf))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??
        };
        if read == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(HttpError::Incomplete)
            };
        }
    }
}

/// The answer to a request that could not be read, if it gets one.
fn refusal(error: &HttpError) -> Option<Local> {
    let (status, code) = match error {
        HttpError::Malformed(_) => (400, "bad_request"),
        HttpError::UnsupportedCoding(_) => (501, "unsupported_transfer_coding"),
        HttpError::HeadTooLarge => (431, "head_too_large"),
        HttpError::BodyTooLarge(_) => (413, "body_too_large"),
        HttpError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => (408, "request_timeout"),
        HttpError::Closed | HttpError::Incomplete | HttpError::Io(_) => return None,
    };
    let message = match error {
        HttpError::BodyTooLarge(limit) => {
            format!("the request body is larger than the gateway's limit of {limit} bytes")
        }
        HttpError::Io(_) => format!("the request head did not arrive within {HEAD_TIMEOUT:?}"),
        other => other.to_string(),
    };
    Some(ApiError::new(status, code, message).into_local())
}

/// Answers a request that could not be read (when it gets an answer) and
/// closes the connection.
async fn refuse(tcp: &mut TcpStream, scratch: &mut Vec<u8>, error: &HttpError, minor: u8) {
    tracing::debug!(%error, "gateway refused a request");
    let Some(local) = refusal(error) else {
        return;
    };
    if write_local(tcp, scratch, &local, minor, true, false)
        .await
        .is_ok()
    {
        linger(tcp).await;
    }
}

/// Closes a connection after a complete answer: stops sending, then reads
/// what the client still sends (up to [`LINGER`]) so the answer is not lost
/// to a reset.
async fn linger(tcp: &mut TcpStream) {
    if tcp.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 8 * 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Writes a gateway-made answer (its head only for `HEAD`).
async fn write_local(
    tcp: &mut TcpStream,
    scratch: &mut Vec<u8>,
    local: &Local,
    minor: u8,
    close: bool,
    head_only: bool,
) -> std::io::Result<()> {
    scratch.clear();
    local.push_head(scratch, minor, close);
    let body: &[u8] = if head_only { &[] } else { &local.body };
    http1::write_all(tcp, &mut [IoSlice::new(scratch), IoSlice::new(body)]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_their_cause() {
        let local = refusal(&HttpError::BodyTooLarge(10)).unwrap();
        assert_eq!(local.status, 413);
        let text = String::from_utf8_lossy(&local.body).into_owned();
        assert!(
            text.contains("body_too_large") && text.contains("limit of 10 bytes"),
            "{text}"
        );
        assert_eq!(refusal(&HttpError::HeadTooLarge).unwrap().status, 431);
        assert_eq!(
            refusal(&HttpError::Malformed("x".into())).unwrap().status,
            400
        );
        assert_eq!(
            refusal(&HttpError::UnsupportedCoding("gzip".into()))
                .unwrap()
                .status,
            501
        );
        let timeout = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(refusal(&HttpError::Io(timeout)).unwrap().status, 408);
        assert!(refusal(&HttpError::Incomplete).is_none());
        assert!(refusal(&HttpError::Closed).is_none());
    }
}
