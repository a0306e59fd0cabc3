//! The client load: `clients` tasks, each doing sequential puts for a
//! warm-up and then a measured period, with latencies in an HDR histogram.
//!
//! The same driver runs against every system; only the [`Writer`] differs.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Keys each client cycles through (`bench/<client>/<n>`, n < this), so the
/// key space stays bounded however long a level runs.
pub(crate) const KEYS_PER_CLIENT: u64 = 1000;

/// One client's connection to the system under test.
pub(crate) trait Writer: Send + 'static {
    /// Puts `value` at `key` and waits until the system acknowledges it as
    /// durable on a majority. An error is the system's refusal or failure.
    fn put(
        &mut self,
        key: String,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// How one level runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Level {
    pub clients: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub value_bytes: usize,
}

/// The figures of one level.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LevelResult {
    pub clients: usize,
    /// Acknowledged writes started in the measured period.
    pub writes: u64,
    /// Failed writes (warm-up included).
    pub errors: u64,
    /// From the start of the measured period to the last counted write's end.
    pub seconds: f64,
    pub writes_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// What one client task saw.
struct ClientTally {
    histogram: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    last_done: Option<Instant>,
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Runs one level: one task per writer, all starting together.
pub(crate) async fn run<W: Writer>(writers: Vec<W>, level: Level) -> LevelResult {
    let value: Vec<u8> = (0..level.value_bytes)
        .map(|i| b'a' + u8::try_from(i % 26).unwrap_or(0))
        .collect();
    let start = Instant::now();
    let measure_from = start + level.warmup;
    let end = measure_from + level.measure;
    let mut tasks = JoinSet::new();
    for (client, mut writer) in writers.into_iter().enumerate() {
        let value = value.clone();
        tasks.spawn(async move {
            let mut tally = ClientTally {
                histogram: histogram(),
                errors: 0,
                first_error: None,
                last_done: None,
            };
            let mut seq: u64 = 0;
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                let key = format!("bench/{client:03}/{:04}", seq % KEYS_PER_CLIENT);
                seq += 1;
                let result = writer.put(key, value.clone()).await;
                let done = Instant::now();
                match result {
                    Ok(()) if began >= measure_from => {
                        let micros = u64::try_from((done - began).as_micros()).unwrap_or(u64::MAX);
                        tally.histogram.saturating_record(micros.max(1));
                        tally.last_done = Some(done);
                    }
                    Ok(()) => {}
                    Err(e) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert(e);
                        // Do not spin on a system that refuses everything.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            tally
        });
    }
    let mut all = histogram();
    let mut errors = 0;
    let mut first_error = None;
    let mut last_done = measure_from;
    while let Some(joined) = tasks.join_next().await {
        let tally = match joined {
            Ok(tally) => tally,
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(format!("client task failed: {e}"));
                continue;
            }
        };
        // Same bounds on both sides: adding cannot fail.
        let _ = all.add(&tally.histogram);
        errors += tally.errors;
        if first_error.is_none() {
            first_error = tally.first_error;
        }
        if let Some(done) = tally.last_done {
            last_done = last_done.max(done);
        }
    }
    let seconds = (last_done - measure_from).as_secs_f64();
    let writes = all.len();
    let ms = |micros: u64| micros as f64 / 1000.0;
    LevelResult {
        clients: level.clients,
        writes,
        errors,
        seconds,
        writes_per_s: if seconds > 0.0 {
            writes as f64 / seconds
        } else {
            0.0
        },
        p50_ms: ms(all.value_at_quantile(0.50)),
        p99_ms: ms(all.value_at_quantile(0.99)),
        max_ms: ms(all.max()),
        first_error,
    }
}
