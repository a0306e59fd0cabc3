//! How the gateway's commands (`tidal predict`, `tidal wake`) call it: one
//! HTTP/1.1 request with the API key; and, for them and the management
//! commands (which call the API over gRPC, `mgmt.rs`), what an answer
//! means for the exit status. Where the services are: `connect.rs`.
//!
//! Exit statuses: 0 success, 1 the API or gateway answered an error, 2 bad
//! usage or input, 3 the API or gateway cannot be reached. Status 3 has no
//! [`Failure`] kind of its own: [`finish`] turns an [`Unreachable`] into it.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::Failure;
pub(crate) use crate::connect::{Connect, GatewayConnect, Service, Target};

/// The exit statuses, for every command's help.
pub(crate) const EXIT_CODES: &str = "Exit status: 0 success; 1 the API (or the gateway) answered \
     an error (its message and the field at fault are printed); 2 bad usage or input; 3 the API \
     (or the gateway) cannot be reached.";

/// The service did not answer (refused, reset, timed out): exit status 3.
#[derive(Debug)]
pub(crate) struct Unreachable(pub String);

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// The service answered an error: exit status 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answered {
    /// How it answered: `HTTP 400`, `gRPC InvalidArgument`.
    pub status: String,
    pub code: Option<String>,
    pub message: String,
    pub field: Option<String>,
}

impl Answered {
    /// Reads `{"error": {"code", "message", "field"}}`, or keeps the body
    /// as the message when it is not that.
    pub(crate) fn from_body(status: u16, body: &[u8]) -> Self {
        let value: Option<Value> = serde_json::from_slice(body).ok();
        let error = value.as_ref().and_then(|v| v.get("error"));
        let text = |key: &str| {
            error
                .and_then(|e| e.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        match text("message") {
            Some(message) => Self {
                status: format!("HTTP {status}"),
                code: text("code"),
                message,
                field: text("field"),
            },
            None => {
                let body = String::from_utf8_lossy(body);
                let body = body.trim();
                Self {
                    status: format!("HTTP {status}"),
                    code: None,
                    message: if body.is_empty() {
                        "(no body)".to_owned()
                    } else {
                        body.chars().take(2000).collect()
                    },
                    field: None,
                }
            }
        }
    }
}

impl fmt::Display for Answered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        let mut details = Vec::new();
        if let Some(field) = &self.field {
            details.push(format!("field {field}"));
        }
        details.push(match &self.code {
            Some(code) => format!("{} {code}", self.status),
            None => self.status.clone(),
        });
        write!(f, " ({})", details.join("; "))
    }
}

impl std::error::Error for Answered {}

/// Exits with status 3 when `result` failed because the service could not
/// be reached (after printing why); otherwise returns it.
pub(crate) fn finish(result: Result<(), Failure>) -> Result<(), Failure> {
    if let Err(Failure::Other(e)) = &result
        && let Some(unreachable) = e.downcast_ref::<Unreachable>()
    {
        eprintln!("error: {unreachable}");
        std::process::exit(3);
    }
    result
}

/// Runs `future` on a new single-threaded runtime, then [`finish`]es.
pub(crate) fn block_on(future: impl Future<Output = Result<(), Failure>>) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(e.into()))?;
    finish(runtime.block_on(future))
}

/// One answer: its status and body.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub status: u16,
    pub body: Bytes,
}

impl Answer {
    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as UTF-8 text (lossy), with a final newline.
    pub(crate) fn text(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.body).into_owned();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text
    }
}

impl Target {
    /// The service did not answer `what` (exit status 3), and where to look.
    pub(crate) fn unreachable(&self, what: &str, why: &str) -> Failure {
        Failure::Other(anyhow::Error::new(Unreachable(format!(
            "cannot reach {} at {} ({what}): {why}{}",
            self.service.name(),
            self.url,
            match self.service {
                Service::Api => {
                    "; is it running (`tidal up`)? check --api-url, TIDAL_API_URL or the \
                     cluster file"
                }
                Service::Gateway => {
                    "; is it running (`tidal up`)? check --gateway-url, TIDAL_GATEWAY_URL or \
                     the cluster file"
                }
            }
        ))))
    }
}

/// An HTTP/1.1 client for one service, sending its key on every request.
#[derive(Debug, Clone)]
pub(crate) struct Http {
    target: Target,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Http {
    /// A client for `target`; a call not answered within `timeout` counts
    /// as unreachable.
    pub(crate) fn new(target: Target, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(2)
            .build(connector);
        Self {
            target,
            client,
            timeout,
        }
    }

    /// Sends one request; any status is an [`Answer`], no answer is
    /// [`Unreachable`].
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Answer, Failure> {
        let url = format!("{}{path}", self.target.url);
        let uri: Uri = url
            .parse()
            .map_err(|e| Failure::Usage(format!("{url:?} is not a valid URL: {e}")))?;
        let key = HeaderValue::try_from(format!("Bearer {}", self.target.key)).map_err(|_| {
            Failure::Usage("the API key has characters a header cannot carry".into())
        })?;
        let mut request = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(AUTHORIZATION, key);
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| Failure::Other(e.into()))?;
        let unreachable = |why: String| self.target.unreachable(&format!("{method} {path}"), &why);
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| unreachable(chain(&e)))?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(format!("the answer broke off: {}", chain(&e))))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(unreachable(format!(
                "no answer within {} s",
                self.timeout.as_secs()
            ))),
        }
    }

    /// Sends one request and requires a 2xx: otherwise the error the
    /// service answered ([`Answered`], exit status 1).
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, Failure> {
        let body = body.map(|b| Bytes::from(b.to_string()));
        let answer = self.send(method, path, body).await?;
        if answer.is_success() {
            Ok(answer)
        } else {
            Err(answered(&answer))
        }
    }

    /// [`Http::call`] and the answer's JSON (with its raw bytes, for
    /// `--json`).
    pub(crate) async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(Value, Answer), Failure> {
        let answer = self.call(method, path, body).await?;
        let value = serde_json::from_slice(&answer.body).map_err(|e| {
            Failure::Other(anyhow::anyhow!(
                "{} answered {path} with a body that is not JSON: {e}",
                self.target.service.name()
            ))
        })?;
        Ok((value, answer))
    }
}

/// The error a non-2xx answer carries (exit status 1).
pub(crate) fn answered(answer: &Answer) -> Failure {
    Failure::Other(anyhow::Error::new(Answered::from_body(
        answer.status,
        &answer.body,
    )))
}

/// The [`Answered`] error inside a failure, if that is what it is.
pub(crate) fn as_answered(failure: &Failure) -> Option<&Answered> {
    match failure {
        Failure::Other(e) => e.downcast_ref::<Answered>(),
        _ => None,
    }
}

/// An error and its sources, `a: b: c`.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// One path segment, percent-encoded where a URL needs it.
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Writes `text` to standard output.
pub(crate) fn print(text: &str) -> Result<(), Failure> {
    use std::io::Write as _;
    crate::write_stdout(|out| out.write_all(text.as_bytes()))
}

/// Prints an answer's body as it came, with a final newline (`--json`).
pub(crate) fn print_raw(answer: &Answer) -> Result<(), Failure> {
    print(&answer.text())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_gives_its_message_field_and_code() {
        let body = br#"{"error":{"code":"invalid_field","message":"max_replica must be at least 1","field":"max_replica"}}"#;
        let e = Answered::from_body(400, body);
        assert_eq!(
            e.to_string(),
            "max_replica must be at least 1 (field max_replica; HTTP 400 invalid_field)"
        );
        let e = Answered::from_body(502, b"Bad Gateway\n");
        assert_eq!(e.to_string(), "Bad Gateway (HTTP 502)");
        assert_eq!(Answered::from_body(500, b"").message, "(no body)");
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("mlp-v1"), "mlp-v1");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }
}
