//! `tidal load`: closed-loop HTTP load against a gateway, to watch a
//! deployment scale. The engine ([`engine`]) is shared with `tidal bench
//! gateway`; the concurrency over time is a [`schedule::Schedule`].

pub(crate) mod engine;
pub(crate) mod schedule;

use std::io::Write;
use std::time::Duration;

use clap::Args;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Uri};
use prost::Message;
use serde::Serialize;
use tidal_proto::pb;
use tidal_store::app::Table;
use tidal_store::client::Client;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::Failure;
use engine::{Engine, RequestTemplate, Stats};
use schedule::{Schedule, Spike, Steps, parse_duration, parse_spike, parse_steps};

/// The demo model's input: 16 numbers.
pub(crate) const DEMO_BODY: &str = r#"{"input": [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]}"#;

/// Send closed-loop load to an HTTP endpoint (a gateway's predict path) and
/// watch a deployment scale.
///
/// Each worker sends its next request as soon as the previous one is
/// answered, over pooled keep-alive HTTP/1.1 connections; each request
/// carries a unique `x-request-id: N`. Every second a line on stderr gives
/// the target concurrency, requests/s, p50/p99 latency and the non-2xx
/// answers of that second, and with --store and --deployment the
/// deployment's Ready and desired replicas. At the end (or on Ctrl-C) a
/// summary goes to stdout: requests, answers by status, latency
/// p50/p90/p99/max.
///
/// Exit status: 0 if every request was answered 2xx; 1 if any was not
/// (another status, a connection error or a timeout) or none was answered;
/// 2 for invalid options.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct LoadArgs {
    /// The URL to send to (http:// only), e.g.
    /// http://127.0.0.1:7080/v1/models/demo/production/predict
    #[arg(long, value_name = "URL")]
    url: String,
    /// The request body (Content-Type application/json unless a --header
    /// sets it) [default: the demo model's 16 inputs].
    #[arg(long, value_name = "JSON")]
    body: Option<String>,
    /// An extra header, `Name: value`; repeat for more (e.g. --header
    /// 'Authorization: Bearer tidal_…').
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Keep N requests in flight for --duration [default: 1].
    #[arg(long, value_name = "N", group = "shape")]
    concurrency: Option<usize>,
    /// Concurrency steps, CONCURRENCYxDURATION,…, run once in order, e.g.
    /// "4x30s,8x60s,0x30s" (the run lasts their sum).
    #[arg(long, value_name = "STEPS", group = "shape", value_parser = parse_steps, conflicts_with = "duration")]
    steps: Option<Steps>,
    /// A periodic spike, e.g. "base=2,peak=16,every=60s,for=10s": each
    /// 60 s period keeps 2 in flight, then 16 for its last 10 s.
    #[arg(long, value_name = "SPEC", group = "shape", value_parser = parse_spike)]
    spike: Option<Spike>,
    /// How long to run with --concurrency or --spike (ms, s, m, h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
    duration: Duration,
    /// A request not answered within this long counts as a timeout.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
    timeout: Duration,
    /// Store endpoints (host:port, comma-separated) to read the deployment's
    /// replicas from each second; needs --deployment.
    #[arg(
        long,
        value_name = "HOST:PORT",
        value_delimiter = ',',
        requires = "deployment"
    )]
    store: Vec<String>,
    /// The deployment whose Ready and desired replicas to show (e.g. demo-v1).
    #[arg(long, value_name = "ID", requires = "store")]
    deployment: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// What `tidal load` prints at the end.
#[derive(Debug, Serialize)]
struct Summary {
    url: String,
    schedule: String,
    seconds: f64,
    interrupted: bool,
    requests: u64,
    requests_per_s: f64,
    not_2xx: u64,
    /// Requests by outcome: a status code, `connect-error`, `timeout` or
    /// `connection-failed`.
    outcomes: std::collections::BTreeMap<String, u64>,
    latency_ms: Latency,
    /// Requests still unanswered at the end (not counted above).
    in_flight_at_end: usize,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50: Option<f64>,
    p90: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure::Usage(message.into())
}

/// The request from the options.
fn template(args: &LoadArgs) -> Result<RequestTemplate, Failure> {
    let uri: Uri = args
        .url
        .parse()
        .map_err(|e| usage(format!("--url {:?}: {e}", args.url)))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(usage(format!(
            "--url {:?}: must be an http:// URL with a host (https is not supported)",
            args.url
        )));
    }
    let mut headers = HeaderMap::new();
    for header in &args.headers {
        let bad = |why: &str| usage(format!("--header {header:?}: {why}"));
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| bad("expected `Name: value`"))?;
        let name = HeaderName::try_from(name.trim()).map_err(|_| bad("invalid header name"))?;
        let value = HeaderValue::try_from(value.trim()).map_err(|_| bad("invalid header value"))?;
        headers.append(name, value);
    }
    if !headers.contains_key(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let body = args.body.clone().unwrap_or_else(|| DEMO_BODY.to_owned());
    Ok(RequestTemplate {
        method: Method::POST,
        uri,
        headers,
        body: Bytes::from(body),
    })
}

fn schedule(args: &LoadArgs) -> Result<Schedule, Failure> {
    Ok(match (&args.steps, args.spike) {
        (Some(steps), _) => Schedule::Steps(steps.clone()),
        (None, Some(spike)) => Schedule::Spike {
            spike,
            duration: args.duration,
        },
        (None, None) => {
            let concurrency = args.concurrency.unwrap_or(1);
            if concurrency == 0 {
                return Err(usage("--concurrency must be at least 1"));
            }
            Schedule::Constant {
                concurrency,
                duration: args.duration,
            }
        }
    })
}

pub(crate) fn run(args: LoadArgs) -> Result<(), Failure> {
    let template = template(&args)?;
    let schedule = schedule(&args)?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| Failure::Other(e.into()))?;
    let summary = runtime.block_on(drive(&args, template, &schedule))?;
    crate::write_stdout(|out| {
        if args.json {
            serde_json::to_writer_pretty(&mut *out, &summary)?;
            writeln!(out)
        } else {
            render(out, &summary)
        }
    })?;
    if summary.requests == 0 {
        return Err(Failure::Other(anyhow::anyhow!(
            "no request was answered (in flight at the end: {})",
            summary.in_flight_at_end
        )));
    }
    if summary.not_2xx > 0 {
        return Err(Failure::Other(anyhow::anyhow!(
            "{} of {} requests were not answered 2xx",
            summary.not_2xx,
            summary.requests
        )));
    }
    Ok(())
}

/// Runs the schedule, printing a line a second, until its end or Ctrl-C.
async fn drive(
    args: &LoadArgs,
    template: RequestTemplate,
    schedule: &Schedule,
) -> Result<Summary, Failure> {
    let replicas = match &args.deployment {
        Some(deployment) => {
            let client = Client::new(&args.store, Duration::from_secs(2))
                .map_err(|e| usage(format!("--store {:?}: {e}", args.store.join(","))))?;
            Some(follow_replicas(client, deployment.clone()))
        }
        None => None,
    };
    eprintln!("tidal load: {} → POST {}", schedule, args.url);
    let engine = Engine::start(template, schedule.max(), args.timeout);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut next_line = Duration::from_secs(1);
    let interrupted = interrupted();
    tokio::pin!(interrupted);
    let was_interrupted = loop {
        tokio::select! {
            () = &mut interrupted => break true,
            _ = tick.tick() => {}
        }
        let elapsed = started.elapsed();
        if elapsed >= next_line {
            let second = engine.take_second();
            let shown = replicas.as_ref().map(|r| r.borrow().clone());
            eprintln!(
                "{}",
                live_line(next_line, engine.concurrency(), &second, shown.as_ref())
            );
            next_line += Duration::from_secs(1);
        }
        if elapsed >= schedule.duration() {
            break false;
        }
        engine.set_concurrency(schedule.at(elapsed));
    };
    let seconds = started.elapsed().as_secs_f64();
    let totals = engine.totals();
    let in_flight_at_end = engine.in_flight();
    drop(engine);
    if was_interrupted {
        eprintln!("interrupted after {seconds:.1} s; the summary so far:");
    }
    Ok(summarize(
        args,
        schedule,
        seconds,
        was_interrupted,
        &totals,
        in_flight_at_end,
    ))
}

fn summarize(
    args: &LoadArgs,
    schedule: &Schedule,
    seconds: f64,
    interrupted: bool,
    totals: &Stats,
    in_flight_at_end: usize,
) -> Summary {
    let requests = totals.requests();
    Summary {
        url: args.url.clone(),
        schedule: schedule.to_string(),
        seconds,
        interrupted,
        requests,
        requests_per_s: if seconds > 0.0 {
            requests as f64 / seconds
        } else {
            0.0
        },
        not_2xx: totals.not_ok(),
        outcomes: totals.outcome_counts(),
        latency_ms: Latency {
            p50: totals.quantile_ms(0.5),
            p90: totals.quantile_ms(0.9),
            p99: totals.quantile_ms(0.99),
            max: totals.max_ms(),
        },
        in_flight_at_end,
    }
}

/// The deployment's replicas as last read: (Ready, desired), or why not.
type Replicas = Option<Result<(usize, u32), String>>;

/// Reads the deployment's Ready replicas and desired replicas once a second.
fn follow_replicas(client: Client, deployment: String) -> watch::Receiver<Replicas> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let read = read_replicas(&client, &deployment).await;
            if tx.send(Some(read)).is_err() {
                return;
            }
        }
    });
    rx
}

async fn read_replicas(client: &Client, deployment: &str) -> Result<(usize, u32), String> {
    let (record, _) = client
        .get(Table::Deployments, deployment)
        .await
        .map_err(|e| format!("store: {e}"))?;
    let record = record.ok_or_else(|| format!("no deployment {deployment} in the store"))?;
    let desired = pb::DeploymentRecord::decode(record.value.as_slice())
        .map_err(|e| format!("deployment {deployment}: {e}"))?
        .desired_replicas;
    let (rows, _) = client
        .list(Table::Replicas, "")
        .await
        .map_err(|e| format!("store: {e}"))?;
    let ready = rows
        .iter()
        .filter_map(|(_, kv)| pb::Replica::decode(kv.value.as_slice()).ok())
        .filter(|r| r.deployment_id == deployment && r.phase == i32::from(pb::ReplicaPhase::Ready))
        .count();
    Ok((ready, desired))
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"))
}

/// One second's line: `  12s  c=8  412 req/s  p50 18.3 ms  p99 40.1 ms  non-2xx: none  replicas ready 2 / desired 3`.
fn live_line(
    at: Duration,
    concurrency: usize,
    second: &Stats,
    replicas: Option<&Replicas>,
) -> String {
    let bad: Vec<String> = second
        .outcomes
        .iter()
        .filter(|(o, _)| !o.is_ok())
        .map(|(o, n)| format!("{o}×{n}"))
        .collect();
    let mut line = format!(
        "{:>5}s  c={concurrency:<3} {:>6} req/s  p50 {:>9}  p99 {:>9}  non-2xx: {}",
        at.as_secs(),
        second.requests(),
        ms(second.quantile_ms(0.5)),
        ms(second.quantile_ms(0.99)),
        if bad.is_empty() {
            "none".to_owned()
        } else {
            bad.join(" ")
        }
    );
    match replicas {
        None => {}
        Some(None) => line.push_str("  replicas: reading…"),
        Some(Some(Ok((ready, desired)))) => {
            line.push_str(&format!("  replicas ready {ready} / desired {desired}"));
        }
        Some(Some(Err(e))) => line.push_str(&format!("  replicas: {e}")),
    }
    line
}

fn render(out: &mut impl Write, s: &Summary) -> std::io::Result<()> {
    writeln!(out, "tidal load: POST {}", s.url)?;
    writeln!(
        out,
        "schedule:   {}{}",
        s.schedule,
        if s.interrupted {
            format!(" (interrupted after {:.1} s)", s.seconds)
        } else {
            String::new()
        }
    )?;
    writeln!(
        out,
        "requests:   {} in {:.1} s ({:.1}/s)",
        s.requests, s.seconds, s.requests_per_s
    )?;
    let outcomes: Vec<String> = s
        .outcomes
        .iter()
        .map(|(o, n)| format!("{o}: {n}"))
        .collect();
    writeln!(
        out,
        "answers:    {}",
        if outcomes.is_empty() {
            "none".to_owned()
        } else {
            outcomes.join(", ")
        }
    )?;
    let l = &s.latency_ms;
    writeln!(
        out,
        "latency:    p50 {}  p90 {}  p99 {}  max {}",
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.max)
    )?;
    writeln!(out, "not 2xx:    {}", s.not_2xx)?;
    if s.in_flight_at_end > 0 {
        writeln!(
            out,
            "unanswered at the end (not counted): {}",
            s.in_flight_at_end
        )?;
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn parse(args: &[&str]) -> Result<LoadArgs, String> {
        let mut argv = vec!["tidal-load"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
            .map(|c| c.load)
            .map_err(|e| e.to_string())
    }

    const URL: &str = "http://127.0.0.1:7080/v1/models/demo/production/predict";

    #[test]
    fn load_options_choose_one_shape() {
        let args = parse(&["--url", URL, "--steps", "4x30s,8x60s"]).unwrap();
        assert_eq!(schedule(&args).unwrap().duration(), Duration::from_secs(90));
        let args = parse(&["--url", URL, "--concurrency", "8", "--duration", "2m"]).unwrap();
        assert_eq!(
            schedule(&args).unwrap(),
            Schedule::Constant {
                concurrency: 8,
                duration: Duration::from_secs(120)
            }
        );
        let e = parse(&[
            "--url",
            URL,
            "--concurrency",
            "8",
            "--spike",
            "base=1,peak=2,every=10s,for=1s",
        ])
        .unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
        let e = parse(&["--url", URL, "--steps", "4x3s", "--duration", "10s"]).unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
        let e = parse(&["--url", URL, "--steps", "4x3s,9"]).unwrap_err();
        assert!(e.contains("step 2 \"9\""), "{e}");
        let e = parse(&["--url", URL, "--store", "127.0.0.1:7070"]).unwrap_err();
        assert!(e.contains("--deployment"), "{e}");
    }

    #[test]
    fn load_request_has_headers_and_a_json_body() {
        let args = parse(&[
            "--url",
            URL,
            "--header",
            "Authorization: Bearer tidal_x_y",
            "--header",
            "X-Extra:1",
        ])
        .unwrap();
        let t = template(&args).unwrap();
        assert_eq!(t.headers["authorization"], "Bearer tidal_x_y");
        assert_eq!(t.headers["x-extra"], "1");
        assert_eq!(t.headers[CONTENT_TYPE], "application/json");
        assert_eq!(t.body, Bytes::from(DEMO_BODY));
        let bad = parse(&["--url", URL, "--header", "no colon"]).unwrap();
        assert!(matches!(template(&bad), Err(Failure::Usage(m)) if m.contains("\"no colon\"")));
        let https = parse(&["--url", "https://x/predict"]).unwrap();
        assert!(matches!(template(&https), Err(Failure::Usage(m)) if m.contains("http://")));
    }

    #[test]
    fn live_line_shows_errors_and_replicas() {
        let mut stats = Stats::default();
        let line = live_line(Duration::from_secs(3), 8, &stats, Some(&Some(Ok((2, 3)))));
        assert!(line.contains("non-2xx: none"), "{line}");
        assert!(line.contains("replicas ready 2 / desired 3"), "{line}");
        stats.outcomes.insert(engine::Outcome::Status(503), 4);
        stats.outcomes.insert(engine::Outcome::Status(200), 10);
        let line = live_line(Duration::from_secs(3), 8, &stats, None);
        assert!(line.contains("14 req/s"), "{line}");
        assert!(line.contains("non-2xx: 503×4"), "{line}");
    }
}
