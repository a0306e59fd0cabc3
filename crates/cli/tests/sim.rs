//! End-to-end tests of `tidal sim` and `tidal sim generate`: they run the
//! built binary on files in a temporary directory.

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tidal_autoscale::trace::Trace;

/// A directory of its own for one test, removed when the test ends (also on failure).
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tidal-cli-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn tidal<I: AsRef<OsStr>>(args: impl IntoIterator<Item = I>) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidal"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// Runs `tidal sim --settings SETTINGS --trace TRACE EXTRA…`.
fn sim(settings: &Path, trace: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        OsStr::new("sim"),
        OsStr::new("--settings"),
        settings.as_os_str(),
        OsStr::new("--trace"),
        trace.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    tidal(args)
}

/// Runs `tidal sim … --format json` and returns the parsed report; fails the
/// test unless it succeeded.
fn sim_json(settings: &Path, trace: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["--format", "json"];
    args.extend_from_slice(extra);
    let out = sim(settings, trace, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "one JSON object on one line");
    serde_json::from_str(&text).unwrap()
}

/// A trace of whole-number concurrencies, one per second.
fn trace_csv(values: impl IntoIterator<Item = u32>) -> String {
    let mut csv = String::from("second,concurrency\n");
    for (second, value) in values.into_iter().enumerate() {
        csv += &format!("{second},{value}\n");
    }
    csv
}

fn desired(report: &Value) -> Vec<u64> {
    report["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step["desired_replicas"].as_u64().unwrap())
        .collect()
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/sim")
        .join(name)
}

#[test]
fn bundled_example_runs_in_both_formats() {
    let (settings, trace) = (example("settings.json"), example("trace.csv"));
    let seconds = Trace::parse_csv(&fs::read_to_string(&trace).unwrap())
        .unwrap()
        .len();

    let report = sim_json(&settings, &trace, &[]);
    assert_eq!(keys(&report), ["summary", "timeline"]);
    let timeline = report["timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), seconds);
    for (second, step) in timeline.iter().enumerate() {
        assert_eq!(keys(step), ["concurrency", "desired_replicas", "second"]);
        assert_eq!(step["second"].as_u64(), Some(second as u64));
    }
    let summary = &report["summary"];
    assert_eq!(
        keys(summary),
        [
            "max_replicas",
            "replica_seconds",
            "scale_down_events",
            "scale_up_events"
        ]
    );
    let desired = desired(&report);
    assert_eq!(summary["replica_seconds"], desired.iter().sum::<u64>());
    assert_eq!(
        summary["max_replicas"], 5,
        "the example reaches max_replica"
    );
    // It scales to zero after running, and wakes again later.
    let to_zero = desired
        .windows(2)
        .position(|w| w[0] > 0 && w[1] == 0)
        .expect("the example scales to zero");
    assert!(desired[to_zero..].iter().any(|&d| d > 0));

    let out = sim(&settings, &trace, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(
        table.starts_with("settings     min_replica 0, max_replica 5,"),
        "{table}"
    );
    assert!(table.contains("1.4 requests per replica"), "{table}");
    // One table row per scale event, and the example scales to zero.
    let ups = table.lines().filter(|l| l.ends_with("  up")).count();
    let downs = table.lines().filter(|l| l.ends_with("  down")).count();
    assert_eq!(ups as u64, summary["scale_up_events"].as_u64().unwrap());
    assert_eq!(downs as u64, summary["scale_down_events"].as_u64().unwrap());
    assert!(ups > 0 && downs > 0);
    assert!(
        table
            .lines()
            .any(|l| l.contains(" 1 → 0 ") && l.ends_with("  down")),
        "{table}"
    );
    let replica_seconds = format!("replica-seconds        {} (", summary["replica_seconds"]);
    assert!(table.contains(&replica_seconds), "{table}");
}

#[test]
fn default_settings_never_exceed_one_replica() {
    let dir = TempDir::new("defaults");
    let settings = dir.file("settings.json", "{}");
    let trace = dir.file("trace.csv", &trace_csv([50; 300]));
    let report = sim_json(&settings, &trace, &[]);
    // max_replica defaults to 1; 50 concurrent requests would want 72 replicas.
    assert!(desired(&report).iter().all(|&d| d == 1));
    assert_eq!(report["summary"]["max_replicas"], 1);
    assert_eq!(report["summary"]["scale_up_events"], 1);
}

#[test]
fn a_quiet_trace_has_no_transitions() {
    let dir = TempDir::new("quiet");
    let settings = dir.file("settings.json", "{}");
    let trace = dir.file("trace.csv", &trace_csv([0; 30]));
    let out = sim(&settings, &trace, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("no transitions: desired replicas stayed at 0"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn scales_to_zero_after_window_and_delay() {
    let dir = TempDir::new("to-zero");
    let settings = dir.file(
        "settings.json",
        r#"{"min_replica":0,"max_replica":3,"autoscaling_window":60,"scale_down_delay":120}"#,
    );
    let load = std::iter::repeat_n(5, 100).chain(std::iter::repeat_n(0, 400));
    let trace = dir.file("trace.csv", &trace_csv(load));
    let desired = desired(&sim_json(&settings, &trace, &[]));
    assert_eq!(desired.len(), 500);
    // Load 5 at 0.7 per replica wants 8; max_replica caps it at 3 from second 0.
    assert!(desired[..=262].iter().all(|&d| d == 3), "{desired:?}");
    // The last nonzero sample, at second 99, leaves the 60-second window at
    // second 159 (the window at t covers t-59..=t); the load-based
    // recommendation is 0 from then on. The delay keeps the highest
    // recommendation of seconds t-120..=t, so the last nonzero one (1, at
    // second 158) holds until 278 and the deployment reaches 0 at
    // 99 + 60 + 120 = 279. Before that it steps down as the window drains:
    // the recommendation fell to 2 at 143 and to 1 at 151, so 3 → 2 at
    // 142 + 121 = 263 and 2 → 1 at 150 + 121 = 271.
    let first_zero = desired.iter().position(|&d| d == 0).unwrap();
    assert_eq!(first_zero, 99 + 60 + 120);
    assert_eq!(desired[263..271], [2; 8]);
    assert_eq!(desired[271..279], [1; 8]);
    assert!(desired[279..].iter().all(|&d| d == 0));
}

#[test]
fn invalid_settings_exit_2_and_name_the_field() {
    let dir = TempDir::new("bad-settings");
    let trace = dir.file("trace.csv", &trace_csv([1; 10]));
    let cases = [
        (
            r#"{"max_replica": 0}"#,
            "max_replica must be between 1 and 10",
        ),
        (r#"{"max_replica": 3, "speed": 1}"#, "unknown field `speed`"),
        (
            r#"{"scale_down_delay": "soon"}"#,
            "scale_down_delay must be a whole number",
        ),
        ("{", "EOF while parsing"),
    ];
    for (json, message) in cases {
        let settings = dir.file("settings.json", json);
        for format in ["table", "json"] {
            let out = sim(&settings, &trace, &["--format", format]);
            assert_eq!(out.status.code(), Some(2), "{json}");
            let expected = format!("error: {}: {message}", settings.display());
            assert!(
                stderr(&out).starts_with(&expected),
                "{json}: {}",
                stderr(&out)
            );
            assert_eq!(stdout(&out), "", "{json}");
        }
    }
    // The cluster's limit comes from --replica-limit.
    let settings = dir.file("settings.json", r#"{"max_replica": 20}"#);
    let args = |limit: &'static str| {
        [
            OsStr::new("sim"),
            "--settings".as_ref(),
            settings.as_os_str(),
            "--trace".as_ref(),
            trace.as_os_str(),
            "--replica-limit".as_ref(),
            limit.as_ref(),
        ]
    };
    let out = tidal(args("10"));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("max_replica must be between 1 and 10"));
    assert!(tidal(args("20")).status.success());
}

#[test]
fn missing_file_exits_2_and_names_it() {
    let dir = TempDir::new("missing");
    let settings = dir.file("settings.json", "{}");
    let missing = dir.0.join("nope.csv");
    let out = sim(&settings, &missing, &[]);
    assert_eq!(out.status.code(), Some(2));
    let expected = format!("error: {}: cannot read:", missing.display());
    assert!(stderr(&out).starts_with(&expected), "{}", stderr(&out));
}

#[test]
fn malformed_trace_row_exits_2_and_names_its_line() {
    let dir = TempDir::new("bad-trace");
    let settings = dir.file("settings.json", "{}");
    let cases = [
        (
            "second,concurrency\n0,1\n1,2\n2,lots\n",
            "line 4: concurrency",
        ),
        (
            "second,concurrency\n0,1\n\n2,2\n",
            "line 4: expected second 1",
        ),
        ("time,load\n0,1\n", "line 1: expected the header"),
        ("second,concurrency\n0,1,2\n", "line 2: expected two fields"),
    ];
    for (csv, message) in cases {
        let trace = dir.file("trace.csv", csv);
        let out = sim(&settings, &trace, &["--format", "json"]);
        assert_eq!(out.status.code(), Some(2), "{csv:?}");
        let expected = format!("error: {}: {message}", trace.display());
        assert!(
            stderr(&out).starts_with(&expected),
            "{csv:?}: {}",
            stderr(&out)
        );
        assert_eq!(stdout(&out), "");
    }
}

#[test]
fn generate_writes_seeded_traces_of_the_requested_length() {
    let dir = TempDir::new("generate");
    for shape in ["steady", "step", "spike", "diurnal", "bursty"] {
        let args = ["sim", "generate", shape, "--seconds", "600", "--peak", "8"];
        let run = |seed: &str| {
            let out = tidal(args.iter().copied().chain(["--seed", seed]));
            assert!(out.status.success(), "{shape}: {}", stderr(&out));
            stdout(&out)
        };
        let csv = run("7");
        let trace = Trace::parse_csv(&csv).unwrap();
        assert_eq!(trace.len(), 600, "{shape}");
        assert!(trace.samples.iter().any(|c| c.as_f64() > 0.0), "{shape}");
        assert_eq!(run("7"), csv, "{shape}: same seed, same trace");

        let file = dir.0.join(format!("{shape}.csv"));
        let out = tidal(
            args.iter()
                .map(OsStr::new)
                .chain(["--seed".as_ref(), "7".as_ref(), "--output".as_ref()])
                .chain([file.as_os_str()]),
        );
        assert!(out.status.success(), "{shape}: {}", stderr(&out));
        assert_eq!(stdout(&out), "");
        assert_eq!(fs::read_to_string(&file).unwrap(), csv, "{shape}");
    }
    let bursty = |seed: &str| stdout(&tidal(["sim", "generate", "bursty", "--seed", seed]));
    assert_ne!(bursty("1"), bursty("2"));
    // The defaults: an hour.
    let out = tidal(["sim", "generate", "steady"]);
    assert_eq!(Trace::parse_csv(&stdout(&out)).unwrap().len(), 3600);
}

#[test]
fn generate_rejects_bad_options_with_status_2() {
    for (option, value) in [
        ("--peak", "-1"),
        ("--peak", "inf"),
        ("--peak", "NaN"),
        ("--seconds", "0"),
        ("--seconds", "2678401"),
    ] {
        let out = tidal(["sim", "generate", "steady", option, value]);
        assert_eq!(out.status.code(), Some(2), "{option} {value}");
        assert!(stderr(&out).contains(option), "{}", stderr(&out));
        assert_eq!(stdout(&out), "");
    }
}

#[test]
fn cold_start_adds_ready_replicas_and_waiting() {
    let dir = TempDir::new("cold-start");
    let settings = dir.file("settings.json", r#"{"max_replica": 1}"#);
    let trace = dir.file("trace.csv", &trace_csv([1; 40]));
    let report = sim_json(&settings, &trace, &["--cold-start", "30"]);
    let ready: Vec<u64> = report["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step["ready_replicas"].as_u64().unwrap())
        .collect();
    // Asked for at second 0, ready from second 30.
    assert_eq!(ready[..30], [0; 30]);
    assert_eq!(ready[30..], [1; 10]);
    // One request waited during each of the 30 starting seconds.
    assert_eq!(report["summary"]["cold_start_wait_request_seconds"], 30.0);

    let plain = sim_json(&settings, &trace, &[]);
    assert!(plain["timeline"][0].get("ready_replicas").is_none());
    assert!(
        plain["summary"]
            .get("cold_start_wait_request_seconds")
            .is_none()
    );

    let out = sim(&settings, &trace, &["--cold-start", "30"]);
    let table = stdout(&out);
    assert!(table.contains("cold start   30 s"), "{table}");
    assert!(
        table.contains("ready replica-seconds  10 (30 replica-seconds spent starting)"),
        "{table}"
    );
    assert!(
        table.contains("waited on cold starts  30.000 request-seconds"),
        "{table}"
    );
}

#[test]
fn a_closed_pipe_ends_output_quietly() {
    // 31 days of trace is far more than a pipe buffers.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidal"))
        .args(["sim", "generate", "steady", "--seconds", "2678400"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut head = [0; 18];
    stdout.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"second,concurrency");
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}: {}", out.status, stderr(&out));
    assert_eq!(stderr(&out), "");
}

#[test]
fn usage_errors_exit_2() {
    let out = tidal(["sim", "--trace", "x.csv"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--settings <SETTINGS.json>"));
    let out = tidal([
        "sim",
        "--settings",
        "s.json",
        "--trace",
        "t.csv",
        "generate",
        "step",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
    let out = tidal(["--version"]);
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("tidal "));
}
