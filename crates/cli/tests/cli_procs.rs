//! The management commands against a real `tidal up` (one process: store,
//! controller, worker, gateway, API; replicas are `tidal model serve`
//! processes), each run as the `tidal` binary with `--cluster-file`:
//! deploy through the API (and replace its spec), list and show
//! deployments (table and JSON),
//! change settings (an out-of-range value refused, naming its field),
//! predict through the gateway from zero, replicas, workers, a replica's
//! logs, deactivate (predict refused) and activate (predict served again),
//! promote, terminate a replica, API keys through the API, cluster status,
//! and the exit statuses of an unreachable API (3) and of no API found (2).
//! The management commands call the API over gRPC; `predict` and `wake`
//! the gateway over HTTP.

mod proc_support;
mod store_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proc_support::{PREDICT as BODY, Up};
use serde_json::Value;
use store_support::{binary, free_port};

/// What one CLI run did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// Runs `tidal ARGS` in `dir` with no TIDAL_* variables set.
fn tidal_in(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(binary())
        .args(args)
        .current_dir(dir)
        .env_remove("TIDAL_API_URL")
        .env_remove("TIDAL_API_KEY")
        .env_remove("TIDAL_GATEWAY_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The CLI pointed at the cluster by `--cluster-file`.
struct Cli {
    dir: PathBuf,
    cluster_file: String,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Run {
        let mut all = args.to_vec();
        all.extend(["--cluster-file", &self.cluster_file]);
        tidal_in(&self.dir, &all)
    }

    /// Runs and requires exit status 0.
    fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert_eq!(run.code, 0, "tidal {args:?}: {run:?}");
        run
    }
}

/// Polls `f` every 200 ms until it returns `Some`, for at most `timeout`.
fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The model's weights and a spec whose replicas are this test's binary.
fn spec(dir: &Path) -> PathBuf {
    let settings = serde_json::json!({
        "min_replica": 0, "max_replica": 2, "concurrency_target": 2,
        "target_utilization_percentage": 100,
        "autoscaling_window": 10, "scale_down_delay": 30
    });
    proc_support::mlp_spec(&binary(), dir, settings, &[], 2)
}

/// The four outputs of the reference model in a predict's stdout.
fn outputs(run: &Run) -> usize {
    run.json()["output"]
        .as_array()
        .unwrap_or_else(|| panic!("no output array: {run:?}"))
        .len()
}

#[test]
fn the_management_commands_drive_a_real_cluster() {
    let root = tempfile::tempdir().unwrap();
    let log = root.path().join("up.log");
    let worker_id = format!("cli-test-{}", std::process::id());
    let out = fs::File::create(&log).unwrap();
    let child = Command::new(binary())
        .args(["up", "--data-dir"])
        .arg(root.path().join("data"))
        .args(["--store-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--gateway-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--api-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--worker-id", &worker_id])
        .env("RUST_LOG", "warn,tidal_worker=info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let _up = Up {
        child: Some(child),
        log: log.clone(),
        worker_id: worker_id.clone(),
    };
    wait_until("tidal up comes up", Duration::from_secs(60), || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("tidal is up")
            .then_some(())
    });
    let cli = Cli {
        dir: root.path().to_owned(),
        cluster_file: root.path().join("data/cluster.json").display().to_string(),
    };

    // No API anywhere (no flags, no variables, no ./.tidal here): 2.
    let none = tidal_in(root.path(), &["models"]);
    assert_eq!(none.code, 2, "{none:?}");
    assert!(
        none.stderr.contains("tidal up") && none.stderr.contains("--api-url"),
        "{none:?}"
    );
    // An API that does not answer: 3.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let unreachable = cli.run(&["models", "--api-url", &dead]);
    assert_eq!(unreachable.code, 3, "{unreachable:?}");
    assert!(
        unreachable
            .stderr
            .contains("cannot reach the management API"),
        "{unreachable:?}"
    );

    // Deploy through the API; a second time is refused (it exists).
    let spec = spec(&root.path().join("model"));
    let spec = spec.to_str().unwrap();
    let deployed = cli.ok(&["deploy", spec]);
    assert!(
        deployed
            .stdout
            .contains("created deployment mlp-v1 (model mlp) through the API"),
        "{deployed:?}"
    );
    let again = cli.run(&["deploy", spec]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(
        again.stderr.contains("already exists") && again.stderr.contains("--replace"),
        "{again:?}"
    );
    // With --replace its spec is replaced (here: the same spec again).
    let replaced = cli.ok(&["deploy", "--replace", spec]);
    assert!(
        replaced
            .stdout
            .contains("replaced the spec of deployment mlp-v1 (model mlp) through the API"),
        "{replaced:?}"
    );

    // Models and deployments, for people and as JSON.
    assert!(cli.ok(&["models"]).stdout.contains("mlp-v1"));
    let list = cli.ok(&["deployments", "mlp"]);
    let row = list.stdout.lines().nth(1).unwrap_or_default();
    assert!(
        row.starts_with("mlp-v1 ") && row.contains("0-2"),
        "{list:?}"
    );
    assert_eq!(
        cli.ok(&["deployments", "mlp", "--json"]).json()["deployments"][0]["id"],
        "mlp-v1"
    );
    let one = cli.ok(&["deployments", "mlp", "mlp-v1"]);
    assert!(
        one.stdout.contains("autoscaling_window             10 s"),
        "{one:?}"
    );
    let one = cli.ok(&["deployments", "mlp", "mlp-v1", "--json"]).json();
    assert_eq!(
        (one["id"].as_str(), one["model_id"].as_str()),
        (Some("mlp-v1"), Some("mlp"))
    );
    let missing = cli.run(&["deployments", "mlp", "nope"]);
    assert_eq!(missing.code, 1, "{missing:?}");

    // Settings: set two, read them back; an out-of-range one names its field.
    let set = cli.ok(&[
        "autoscaling",
        "set",
        "mlp",
        "mlp-v1",
        "--max-replica",
        "3",
        "--scale-down-delay",
        "20",
    ]);
    assert!(
        set.stdout.starts_with("ACCEPTED: ") || set.stdout.starts_with("QUEUED: "),
        "{set:?}"
    );
    let settings = cli
        .ok(&["autoscaling", "get", "mlp", "mlp-v1", "--json"])
        .json();
    assert_eq!(
        (
            settings["max_replica"].as_u64(),
            settings["scale_down_delay"].as_u64()
        ),
        (Some(3), Some(20))
    );
    assert_eq!(settings["autoscaling_window"], 10, "the others are kept");
    assert!(
        cli.ok(&["autoscaling", "get", "mlp", "mlp-v1"])
            .stdout
            .contains("max_replica                    3")
    );
    let refused = cli.run(&[
        "autoscaling",
        "set",
        "mlp",
        "mlp-v1",
        "--target-utilization-percentage",
        "150",
    ]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("field target_utilization_percentage"),
        "{refused:?}"
    );
    let bad_usage = cli.run(&[
        "autoscaling",
        "set",
        "mlp",
        "mlp-v1",
        "--min-replica",
        "many",
    ]);
    assert_eq!(bad_usage.code, 2, "{bad_usage:?}");

    // Predict through the gateway: from zero, a replica cold-starts. (The
    // gateway learns of the new deployment from the store's watch: a 404
    // until then.)
    let predict = [
        "predict",
        "mlp",
        "--deployment",
        "mlp-v1",
        "--data",
        BODY,
        "--timeout",
        "60",
    ];
    let served = wait_until("predict is served", Duration::from_secs(60), || {
        let run = cli.run(&predict);
        assert!(
            run.code == 0 || run.stderr.contains("deployment_not_found"),
            "{run:?}"
        );
        (run.code == 0).then_some(run)
    });
    assert_eq!(outputs(&served), 4, "{served:?}");

    // Its replica, the worker, the replica's logs.
    let replicas = cli.ok(&["replicas", "mlp", "mlp-v1", "--json"]).json();
    let ready = replicas["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["phase"] == "READY")
        .unwrap_or_else(|| panic!("no Ready replica: {replicas}"));
    let replica = ready["id"].as_str().unwrap().to_owned();
    let table = cli.ok(&["replicas", "mlp", "mlp-v1"]).stdout;
    let line = table
        .lines()
        .find(|l| l.starts_with(&replica))
        .unwrap_or_default();
    assert!(
        line.contains("READY") && line.contains(&worker_id),
        "{table}"
    );
    let workers = cli.ok(&["workers"]).stdout;
    let line = workers
        .lines()
        .find(|l| l.starts_with(&worker_id))
        .unwrap_or_default();
    assert_eq!(line.split_whitespace().nth(1), Some("yes"), "{workers}");
    let logs = cli.ok(&["logs", &replica]);
    assert!(logs.stdout.contains("[Coldboost]"), "{logs:?}");

    // Deactivated: the gateway refuses it, naming the fix; activated: served again.
    let deactivated = cli.ok(&["deactivate", "mlp", "mlp-v1"]);
    assert!(
        deactivated.stdout.contains("status INACTIVE"),
        "{deactivated:?}"
    );
    let refused = wait_until("predict is refused", Duration::from_secs(20), || {
        let run = cli.run(&predict);
        assert!(run.code == 0 || run.code == 1, "{run:?}");
        (run.code == 1 && run.stderr.contains("inactive")).then_some(run)
    });
    assert!(
        refused.stderr.contains("inactive") && refused.stderr.contains("tidal activate mlp mlp-v1"),
        "{refused:?}"
    );
    assert!(
        cli.ok(&["activate", "mlp", "mlp-v1"])
            .stdout
            .contains("status ACTIVE")
    );
    let served = wait_until("predict is served again", Duration::from_secs(60), || {
        let run = cli.run(&predict);
        (run.code == 0).then_some(run)
    });
    assert_eq!(outputs(&served), 4, "{served:?}");

    // Promoted: the default target (production) reaches it.
    let promoted = cli.ok(&["promote", "mlp", "mlp-v1", "--max-replica", "2"]);
    assert!(
        promoted
            .stdout
            .contains("promoted deployment mlp-v1 of model mlp to production"),
        "{promoted:?}"
    );
    let served = wait_until(
        "production predict is served",
        Duration::from_secs(30),
        || {
            let run = cli.run(&["predict", "mlp", "--data", BODY, "--timeout", "60"]);
            (run.code == 0).then_some(run)
        },
    );
    assert_eq!(outputs(&served), 4, "{served:?}");
    assert!(
        cli.ok(&["wake", "mlp"])
            .stdout
            .contains("waking deployment mlp-v1")
    );

    // Terminate a Ready replica: it is asked to stop.
    let replicas = cli.ok(&["replicas", "mlp", "production", "--json"]).json();
    let ready = replicas["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["phase"] == "READY" && r["stop_requested"] == false)
        .unwrap_or_else(|| panic!("no Ready replica: {replicas}"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    cli.ok(&["replicas", "terminate", "mlp", "production", &ready]);
    let stopping = cli.ok(&["replicas", "mlp", "production", "--json"]).json();
    let r = stopping["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == ready.as_str())
        .cloned();
    assert_eq!(
        r.map(|r| r["stop_requested"].clone()),
        Some(Value::Bool(true)),
        "{stopping}"
    );

    // Keys through the API (no --store): create, list, revoke.
    let created = cli
        .ok(&[
            "keys",
            "create",
            "--name",
            "ci",
            "--scope",
            "inference",
            "--json",
        ])
        .json();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(
        created["key"]
            .as_str()
            .is_some_and(|k| k.starts_with(&format!("tidal_{id}_"))),
        "{created}"
    );
    let list = cli.ok(&["keys", "list"]).stdout;
    let line = list
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_default();
    assert!(
        line.contains("inference") && line.ends_with("active"),
        "{list}"
    );
    let revoked = cli.ok(&["keys", "revoke", &id]);
    assert!(
        revoked.stdout.contains(&format!("revoked API key {id}")),
        "{revoked:?}"
    );
    let keys = cli.ok(&["keys", "list", "--json"]).json();
    let key = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .cloned();
    assert_eq!(key.map(|k| k["revoked"].clone()), Some(Value::Bool(true)));

    // The cluster as the API sees it; `--endpoint` still asks the store.
    let status = cli.ok(&["cluster", "status"]).stdout;
    assert!(
        status.contains("controllers: 1 live") && status.contains("workers: 1 live of 1"),
        "{status}"
    );
    let status = cli.ok(&["cluster", "status", "--json"]).json();
    assert_eq!(status["deployments"]["total"], 1, "{status}");
    let store = fs::read_to_string(&cli.cluster_file).unwrap();
    let store: Value = serde_json::from_str(&store).unwrap();
    let direct = tidal_in(
        root.path(),
        &[
            "cluster",
            "status",
            "--endpoint",
            store["store"].as_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(direct.code, 0, "{direct:?}");
    assert_eq!(direct.json()["leader"], 1, "{direct:?}");
}
