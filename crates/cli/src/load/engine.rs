//! The closed-loop load shared by `tidal load` and `tidal bench gateway`:
//! worker tasks that each send their next request as soon as the previous
//! one is answered, over one pooled keep-alive HTTP/1.1 client (hyper-util's
//! legacy client). Worker `i` sends while the target concurrency is above
//! `i`, so the concurrency can change while it runs.
//!
//! Every request carries `x-request-id: <n>`, unique within the run.
//! Latencies (send to the last body byte) go into HDR histograms, per
//! second and in total.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The header that numbers each request.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request every worker sends (plus its `x-request-id`).
#[derive(Debug, Clone)]
pub(crate) struct RequestTemplate {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Outcome {
    /// An HTTP answer with this status (its whole body read).
    Status(u16),
    /// No connection could be made.
    Connect,
    /// No whole answer within the request timeout.
    Timeout,
    /// The connection failed during the exchange.
    Failed,
}

impl Outcome {
    /// A 2xx answer.
    pub(crate) fn is_ok(self) -> bool {
        matches!(self, Outcome::Status(s) if (200..300).contains(&s))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Status(s) => write!(f, "{s}"),
            Outcome::Connect => f.write_str("connect-error"),
            Outcome::Timeout => f.write_str("timeout"),
            Outcome::Failed => f.write_str("connection-failed"),
        }
    }
}

/// Answers counted by outcome, and the latency of every HTTP answer.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    /// µs, 1 µs to 10 min, 3 significant digits.
    pub latency_us: Histogram<u64>,
    pub outcomes: BTreeMap<Outcome, u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3)
                .expect("valid histogram bounds"),
            outcomes: BTreeMap::new(),
        }
    }
}

impl Stats {
    fn record(&mut self, outcome: Outcome, latency: Duration) {
        *self.outcomes.entry(outcome).or_default() += 1;
        if matches!(outcome, Outcome::Status(_)) {
            let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            self.latency_us.saturating_record(us.max(1));
        }
    }

    /// Adds `other`'s answers and latencies to these.
    pub(crate) fn add(&mut self, other: &Stats) {
        // Same bounds on both sides: cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        for (outcome, n) in &other.outcomes {
            *self.outcomes.entry(*outcome).or_default() += n;
        }
    }

    fn clear(&mut self) {
        self.latency_us.reset();
        self.outcomes.clear();
    }

    /// Every request that ended, whatever its outcome.
    pub(crate) fn requests(&self) -> u64 {
        self.outcomes.values().sum()
    }

    /// Requests that did not end in a 2xx answer.
    pub(crate) fn not_ok(&self) -> u64 {
        self.outcomes
            .iter()
            .filter(|(o, _)| !o.is_ok())
            .map(|(_, n)| n)
            .sum()
    }

    /// The latency at quantile `q` (0–1), ms; `None` without answers.
    pub(crate) fn quantile_ms(&self, q: f64) -> Option<f64> {
        (!self.latency_us.is_empty()).then(|| self.latency_us.value_at_quantile(q) as f64 / 1000.0)
    }

    /// The longest latency, ms.
    pub(crate) fn max_ms(&self) -> Option<f64> {
        (!self.latency_us.is_empty()).then(|| self.latency_us.max() as f64 / 1000.0)
    }

    /// Outcomes as `{"200": n, "timeout": n}`.
    pub(crate) fn outcome_counts(&self) -> BTreeMap<String, u64> {
        self.outcomes
            .iter()
            .map(|(o, n)| (o.to_string(), *n))
            .collect()
    }
}

/// What one worker saw: this second, and since measuring began.
#[derive(Debug, Default)]
struct Tally {
    second: Stats,
    total: Stats,
}

fn lock(tally: &Mutex<Tally>) -> MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the workers share.
#[derive(Debug)]
struct Shared {
    started: Instant,
    /// Answers that end at least this many ns after `started` count in the totals.
    measure_from_ns: AtomicU64,
    next_id: AtomicU64,
    in_flight: AtomicUsize,
    timeout: Duration,
}

/// A pooled HTTP/1.1 client keeping up to `idle` connections to a host.
pub(crate) fn http_client(idle: usize) -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(idle.max(1))
        .build(connector)
}

/// Running workers; dropping it stops them (requests in flight are abandoned).
#[derive(Debug)]
pub(crate) struct Engine {
    target: watch::Sender<usize>,
    tallies: Vec<Arc<Mutex<Tally>>>,
    shared: Arc<Shared>,
    _workers: JoinSet<()>,
}

impl Engine {
    /// Starts `workers` idle workers (concurrency 0) sending `template`;
    /// a request not answered within `timeout` counts as a timeout.
    pub(crate) fn start(template: RequestTemplate, workers: usize, timeout: Duration) -> Self {
        let client = http_client(workers);
        let template = Arc::new(template);
        let (target, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            started: Instant::now(),
            measure_from_ns: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
            timeout,
        });
        let mut tasks = JoinSet::new();
        let mut tallies = Vec::with_capacity(workers);
        for i in 0..workers {
            let tally = Arc::new(Mutex::new(Tally::default()));
            tallies.push(Arc::clone(&tally));
            tasks.spawn(worker(
                i,
                client.clone(),
                Arc::clone(&template),
                target.subscribe(),
                tally,
                Arc::clone(&shared),
            ));
        }
        Self {
            target,
            tallies,
            shared,
            _workers: tasks,
        }
    }

    /// Keeps `n` requests in flight (at most the number of workers).
    pub(crate) fn set_concurrency(&self, n: usize) {
        let n = n.min(self.tallies.len());
        self.target.send_if_modified(|current| {
            let changed = *current != n;
            *current = n;
            changed
        });
    }

    /// The target concurrency.
    pub(crate) fn concurrency(&self) -> usize {
        *self.target.borrow()
    }

    /// Requests sent and not yet answered.
    pub(crate) fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// The answers since the last call (or the start), and starts a new second.
    pub(crate) fn take_second(&self) -> Stats {
        let mut sum = Stats::default();
        for tally in &self.tallies {
            let mut t = lock(tally);
            sum.add(&t.second);
            t.second.clear();
        }
        sum
    }

    /// Counts in the totals only answers that end from now on.
    pub(crate) fn measure_from_now(&self) {
        let ns = u64::try_from(self.shared.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.shared.measure_from_ns.store(ns, Ordering::Relaxed);
        for tally in &self.tallies {
            lock(tally).total.clear();
        }
    }

    /// Every answer counted since the start or [`Engine::measure_from_now`].
    pub(crate) fn totals(&self) -> Stats {
        let mut sum = Stats::default();
        for tally in &self.tallies {
            sum.add(&lock(tally).total);
        }
        sum
    }
}

/// Worker `i`: while the target is above `i`, one request after another.
async fn worker(
    i: usize,
    client: Client<HttpConnector, Full<Bytes>>,
    template: Arc<RequestTemplate>,
    mut target: watch::Receiver<usize>,
    tally: Arc<Mutex<Tally>>,
    shared: Arc<Shared>,
) {
    loop {
        if target.wait_for(|n| i < *n).await.is_err() {
            return;
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut request = hyper::Request::new(Full::new(template.body.clone()));
        *request.method_mut() = template.method.clone();
        *request.uri_mut() = template.uri.clone();
        *request.headers_mut() = template.headers.clone();
        request
            .headers_mut()
            .insert(REQUEST_ID, HeaderValue::from(id));
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        let outcome = tokio::time::timeout(shared.timeout, exchange(&client, request))
            .await
            .unwrap_or(Outcome::Timeout);
        let done = Instant::now();
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        let counted = u64::try_from(done.duration_since(shared.started).as_nanos())
            .unwrap_or(u64::MAX)
            >= shared.measure_from_ns.load(Ordering::Relaxed);
        let mut t = lock(&tally);
        t.second.record(outcome, done - sent);
        if counted {
            t.total.record(outcome, done - sent);
        }
    }
}

/// Sends one request and reads its whole answer.
async fn exchange(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: hyper::Request<Full<Bytes>>,
) -> Outcome {
    match client.request(request).await {
        Ok(response) => {
            let status = response.status().as_u16();
            match response.into_body().collect().await {
                Ok(_) => Outcome::Status(status),
                Err(_) => Outcome::Failed,
            }
        }
        Err(e) if e.is_connect() => Outcome::Connect,
        Err(_) => Outcome::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_count_outcomes_and_time_only_answers() {
        let mut stats = Stats::default();
        stats.record(Outcome::Status(200), Duration::from_millis(10));
        stats.record(Outcome::Status(204), Duration::from_millis(20));
        stats.record(Outcome::Status(503), Duration::from_millis(30));
        stats.record(Outcome::Timeout, Duration::from_secs(60));
        assert_eq!(stats.requests(), 4);
        assert_eq!(stats.not_ok(), 2);
        assert_eq!(stats.latency_us.len(), 3);
        let max = stats.max_ms().unwrap();
        assert!((29.9..30.1).contains(&max), "{max}");
        let counts = stats.outcome_counts();
        assert_eq!(counts.get("timeout"), Some(&1));
        assert_eq!(counts.get("503"), Some(&1));
        assert_eq!(Stats::default().quantile_ms(0.5), None);
    }

    /// A tiny HTTP/1.1 server answering every request with 200 and the
    /// request's x-request-id; the engine's ids must be unique.
    #[tokio::test]
    async fn workers_send_unique_ids_and_follow_the_target() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ids_tx, mut ids) = tokio::sync::mpsc::unbounded_channel::<u64>();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let ids_tx = ids_tx.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    let mut id = 0;
                    while let Ok(Some(line)) = lines.next_line().await {
                        if let Some(v) = line.strip_prefix("x-request-id: ") {
                            id = v.trim().parse().unwrap();
                        }
                        if line.is_empty() {
                            let _ = ids_tx.send(id);
                            let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if write.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let template = RequestTemplate {
            method: Method::GET,
            uri: format!("http://{addr}/").parse().unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        };
        let engine = Engine::start(template, 4, Duration::from_secs(5));
        engine.set_concurrency(3);
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < 300 {
            let id = ids.recv().await.unwrap();
            assert!(seen.insert(id), "id {id} sent twice");
        }
        engine.set_concurrency(0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(engine.in_flight(), 0);
        let totals = engine.totals();
        assert!(totals.requests() >= 300, "{}", totals.requests());
        assert_eq!(totals.not_ok(), 0);
        assert_eq!(engine.concurrency(), 0);
    }
}
