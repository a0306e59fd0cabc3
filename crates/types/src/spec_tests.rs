use std::path::Path;

use serde_json::{Value, json};

use super::*;

const DIR: &str = "/specs/mlp";
const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn base() -> Value {
    json!({
        "model": "mlp",
        "command": ["tidal", "model", "serve"],
        "weights": [{"name": "model.safetensors", "path": "model.safetensors"}],
    })
}

fn parse_text(text: &str) -> Result<DeploymentSpec, InvalidSpec> {
    DeploymentSpec::from_json(text, Path::new(DIR), &ClusterSettings::default())
}

fn parse(value: &Value) -> Result<DeploymentSpec, InvalidSpec> {
    parse_text(&value.to_string())
}

/// `base()` with `edit` applied.
fn edited(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut value = base();
    edit(value.as_object_mut().unwrap());
    value
}

#[test]
fn a_minimal_spec_takes_every_default() {
    let spec = parse(&base()).unwrap();
    assert_eq!(spec.model.as_str(), "mlp");
    assert_eq!(spec.deployment.as_str(), "mlp-v1");
    assert_eq!(spec.autoscaling_settings, AutoscalingSettings::default());
    assert_eq!(spec.resources, Resources::default());
    assert_eq!(
        (spec.resources.gpu_count, spec.resources.cpu_millis),
        (0, 1000)
    );
    assert_eq!(spec.resources.memory_bytes, 1 << 30);
    assert_eq!(spec.command, ["tidal", "model", "serve"]);
    assert!(spec.env.is_empty());
    assert_eq!(spec.health_path, "/health");
    assert_eq!((spec.ready_timeout_secs, spec.stop_grace_secs), (600, 30));
    let w = &spec.weights[0];
    assert_eq!(w.name, "model.safetensors");
    assert_eq!(w.url, "file:///specs/mlp/model.safetensors");
    assert_eq!(
        w.local_path.as_deref(),
        Some(Path::new("/specs/mlp/model.safetensors"))
    );
    assert_eq!((w.size_bytes, w.sha256.as_deref()), (None, None));
    assert_eq!(spec.unmeasured_weights().count(), 1);
}

#[test]
fn a_full_spec_is_read_field_for_field() {
    let spec = parse(&json!({
        "model": "mlp",
        "deployment": "mlp-canary",
        "autoscaling_settings": {"min_replica": 1, "max_replica": 3, "concurrency_target": 2,
            "autoscaling_window": 60, "scale_down_delay": 120, "max_scale_down_rate": null},
        "resources": {"region": "eu", "gpu_type": "H100-80GB", "gpu_count": 2,
            "cpu_millis": 500, "memory_bytes": 268435456u64},
        "command": ["/usr/bin/server", "--port", ""],
        "env": {"TIDAL_MODEL_DELAY_MS": "200", "EMPTY": ""},
        "health_path": "/ready",
        "ready_timeout_secs": 86400,
        "stop_grace_secs": 1,
        "weights": [
            {"name": "a.bin", "url": "https://example.com/a.bin", "size_bytes": 12, "sha256": SHA},
            {"name": "b.bin", "url": "file:///data/b.bin", "size_bytes": 0, "sha256": SHA},
            {"name": "c.bin", "path": "../shared/c.bin", "size_bytes": 3},
        ],
    }))
    .unwrap();
    assert_eq!(spec.deployment.as_str(), "mlp-canary");
    let s = spec.autoscaling_settings;
    assert_eq!(
        (
            s.min_replica,
            s.max_replica,
            s.concurrency_target,
            s.scale_down_delay
        ),
        (1, 3, 2, 120)
    );
    assert_eq!(s.target_utilization_percentage, 70, "Baseten's default");
    assert_eq!(
        spec.resources,
        Resources {
            region: Some("eu".into()),
            gpu_type: Some("H100-80GB".into()),
            gpu_count: 2,
            cpu_millis: 500,
            memory_bytes: 256 << 20,
        }
    );
    assert_eq!(spec.command, ["/usr/bin/server", "--port", ""]);
    assert_eq!(spec.env["TIDAL_MODEL_DELAY_MS"], "200");
    assert_eq!(spec.env["EMPTY"], "");
    assert_eq!(spec.health_path, "/ready");
    assert_eq!((spec.ready_timeout_secs, spec.stop_grace_secs), (86400, 1));
    let urls: Vec<&str> = spec.weights.iter().map(|w| w.url.as_str()).collect();
    assert_eq!(
        urls,
        [
            "https://example.com/a.bin",
            "file:///data/b.bin",
            "file:///specs/mlp/../shared/c.bin"
        ]
    );
    assert_eq!(spec.weights[0].size_bytes, Some(12));
    assert_eq!(spec.weights[0].sha256.as_deref(), Some(SHA));
    assert_eq!(spec.weights[0].local_path, None);
    assert_eq!(spec.weights[2].size_bytes, Some(3));
    // A local file with a size but no digest is still to be hashed.
    let unmeasured: Vec<&str> = spec.unmeasured_weights().map(|w| w.name.as_str()).collect();
    assert_eq!(unmeasured, ["c.bin"]);
}

#[test]
fn null_counts_as_absent() {
    let spec = parse(&edited(|m| {
        m.insert("deployment".into(), Value::Null);
        m.insert("env".into(), Value::Null);
        m.insert(
            "autoscaling_settings".into(),
            json!({"scale_down_delay": null}),
        );
    }))
    .unwrap();
    assert_eq!(spec.deployment.as_str(), "mlp-v1");
    assert_eq!(spec.autoscaling_settings, AutoscalingSettings::default());
}

/// One bad spec: what it is, the field path the error must name, and a
/// piece of the message (the fix).
struct Case {
    what: &'static str,
    spec: String,
    field: &'static str,
    says: &'static str,
}

fn case(what: &'static str, spec: Value, field: &'static str, says: &'static str) -> Case {
    Case {
        what,
        spec: spec.to_string(),
        field,
        says,
    }
}

fn text_case(what: &'static str, spec: &str, field: &'static str, says: &'static str) -> Case {
    Case {
        what,
        spec: spec.to_owned(),
        field,
        says,
    }
}

fn set(key: &'static str, value: Value) -> Value {
    edited(|m| {
        m.insert(key.into(), value);
    })
}

fn without(key: &'static str) -> Value {
    edited(|m| {
        m.remove(key);
    })
}

fn weight(w: Value) -> Value {
    set("weights", json!([w]))
}

#[test]
fn every_rule_refuses_with_the_field_path_and_the_fix() {
    let long = "m".repeat(62);
    let cases = [
        // The file as a whole.
        text_case("not JSON", "{\"model\": ", "", "not valid JSON"),
        case("not an object", json!(["mlp"]), "", "must be a JSON object"),
        case(
            "unknown field",
            set("replicas", json!(2)),
            "replicas",
            "unknown field; expected one of model",
        ),
        text_case(
            "repeated field",
            r#"{"model": "a", "model": "b", "command": ["x"]}"#,
            "model",
            "appears twice",
        ),
        // model and deployment.
        case("model missing", without("model"), "model", "is required"),
        case(
            "model not a string",
            set("model", json!(7)),
            "model",
            "must be a string; got 7",
        ),
        case(
            "model with a slash",
            set("model", json!("a/b")),
            "model",
            "letters, digits",
        ),
        case(
            "deployment invalid",
            set("deployment", json!("a b")),
            "deployment",
            "a deployment id must be",
        ),
        case(
            "default deployment too long",
            set("model", json!(long)),
            "deployment",
            "set deployment",
        ),
        // autoscaling_settings: the settings parser's rules, with paths.
        case(
            "settings not an object",
            set("autoscaling_settings", json!(3)),
            "autoscaling_settings",
            "must be a JSON object",
        ),
        case(
            "settings unknown field",
            set("autoscaling_settings", json!({"max_replicas": 2})),
            "autoscaling_settings.max_replicas",
            "expected one of min_replica",
        ),
        text_case(
            "settings repeated field",
            concat!(
                r#"{"model": "a", "command": ["x"], "#,
                r#""autoscaling_settings": {"max_replica": 2, "max_replica": 3}}"#
            ),
            "autoscaling_settings.max_replica",
            "appears twice",
        ),
        case(
            "settings wrong type",
            set("autoscaling_settings", json!({"max_replica": "3"})),
            "autoscaling_settings.max_replica",
            "must be a whole number; got \"3\"",
        ),
        case(
            "settings over the cluster's limit",
            set("autoscaling_settings", json!({"max_replica": 11})),
            "autoscaling_settings.max_replica",
            "between 1 and 10 (the cluster's per-deployment limit); got 11",
        ),
        case(
            "settings min over max",
            set("autoscaling_settings", json!({"min_replica": 2})),
            "autoscaling_settings.min_replica",
            "between 0 and max_replica (1)",
        ),
        case(
            "settings window out of range",
            set("autoscaling_settings", json!({"autoscaling_window": 5})),
            "autoscaling_settings.autoscaling_window",
            "between 10 and 3600 seconds",
        ),
        // resources.
        case(
            "resources not an object",
            set("resources", json!([])),
            "resources",
            "must be a JSON object",
        ),
        case(
            "resources unknown field",
            set("resources", json!({"gpus": 1})),
            "resources.gpus",
            "expected one of region, gpu_type",
        ),
        case(
            "gpu_type without gpus",
            set("resources", json!({"gpu_type": "H100-80GB"})),
            "resources.gpu_type",
            "set gpu_count or remove gpu_type",
        ),
        case(
            "gpu_type with gpu_count 0",
            set(
                "resources",
                json!({"gpu_type": "H100-80GB", "gpu_count": 0}),
            ),
            "resources.gpu_type",
            "needs resources.gpu_count of at least 1",
        ),
        case(
            "gpu_count negative",
            set("resources", json!({"gpu_count": -1})),
            "resources.gpu_count",
            "between 0 and 4294967295; got -1",
        ),
        case(
            "cpu_millis fractional",
            set("resources", json!({"cpu_millis": 0.5})),
            "resources.cpu_millis",
            "must be a whole number; got 0.5",
        ),
        case(
            "memory_bytes a string",
            set("resources", json!({"memory_bytes": "1Gi"})),
            "resources.memory_bytes",
            "must be a whole number",
        ),
        case(
            "region empty",
            set("resources", json!({"region": ""})),
            "resources.region",
            "omit the field",
        ),
        // command.
        case(
            "command missing",
            without("command"),
            "command",
            "is required",
        ),
        case(
            "command a string",
            set("command", json!("tidal model serve")),
            "command",
            "non-empty list of strings",
        ),
        case(
            "command empty",
            set("command", json!([])),
            "command",
            "non-empty list of strings",
        ),
        case(
            "command program blank",
            set("command", json!([" ", "x"])),
            "command[0]",
            "must not be blank",
        ),
        case(
            "command argument a number",
            set("command", json!(["x", 3])),
            "command[1]",
            "must be a string; got 3",
        ),
        case(
            "command with NUL",
            set("command", json!(["x\0y"])),
            "command[0]",
            "NUL",
        ),
        // env.
        case(
            "env a list",
            set("env", json!(["A=1"])),
            "env",
            "must be a JSON object",
        ),
        case(
            "env PORT",
            set("env", json!({"PORT": "80"})),
            "env.PORT",
            "set by the worker",
        ),
        case(
            "env CUDA_VISIBLE_DEVICES",
            set("env", json!({"CUDA_VISIBLE_DEVICES": "0"})),
            "env.CUDA_VISIBLE_DEVICES",
            "set by the worker for every replica",
        ),
        case(
            "env TIDAL_MODEL_DIR",
            set("env", json!({"TIDAL_MODEL_DIR": "/m"})),
            "env.TIDAL_MODEL_DIR",
            "remove it",
        ),
        case(
            "env TIDAL_REPLICA_ID",
            set("env", json!({"TIDAL_REPLICA_ID": "r"})),
            "env.TIDAL_REPLICA_ID",
            "remove it",
        ),
        case(
            "env TIDAL_WORKER_ID",
            set("env", json!({"TIDAL_WORKER_ID": "w"})),
            "env.TIDAL_WORKER_ID",
            "remove it",
        ),
        case(
            "env a number",
            set("env", json!({"DELAY": 200})),
            "env.DELAY",
            "write numbers in quotes",
        ),
        case(
            "env name with =",
            set("env", json!({"A=B": "1"})),
            "env.A=B",
            "without '='",
        ),
        text_case(
            "env repeated name",
            r#"{"model": "a", "command": ["x"], "env": {"A": "1", "A": "2"}}"#,
            "env.A",
            "appears twice",
        ),
        // health_path and the timeouts.
        case(
            "health_path relative",
            set("health_path", json!("health")),
            "health_path",
            "must start with '/'",
        ),
        case(
            "health_path a number",
            set("health_path", json!(1)),
            "health_path",
            "must be a string",
        ),
        case(
            "ready_timeout 0",
            set("ready_timeout_secs", json!(0)),
            "ready_timeout_secs",
            "between 1 and 86400 seconds; got 0",
        ),
        case(
            "ready_timeout over a day",
            set("ready_timeout_secs", json!(86401)),
            "ready_timeout_secs",
            "between 1 and 86400 seconds",
        ),
        case(
            "stop_grace too long",
            set("stop_grace_secs", json!(3601)),
            "stop_grace_secs",
            "between 1 and 3600 seconds; got 3601",
        ),
        case(
            "stop_grace 0",
            set("stop_grace_secs", json!(0)),
            "stop_grace_secs",
            "between 1 and 3600",
        ),
        case(
            "stop_grace a string",
            set("stop_grace_secs", json!("30s")),
            "stop_grace_secs",
            "whole number",
        ),
        // weights.
        case(
            "weights an object",
            set("weights", json!({"name": "m"})),
            "weights",
            "must be a list of weight files",
        ),
        case(
            "weight not an object",
            set("weights", json!(["m"])),
            "weights[0]",
            "must be a JSON object",
        ),
        case(
            "weight unknown field",
            weight(json!({"name": "m", "path": "m", "digest": SHA})),
            "weights[0].digest",
            "expected one of name, url, path",
        ),
        case(
            "weight name missing",
            weight(json!({"path": "m"})),
            "weights[0].name",
            "is required",
        ),
        case(
            "weight name a path",
            weight(json!({"name": "a/b", "path": "m"})),
            "weights[0].name",
            "one plain file name",
        ),
        case(
            "weight name dot-dot",
            weight(json!({"name": "..", "path": "m"})),
            "weights[0].name",
            "one plain file name",
        ),
        case(
            "weight names repeat",
            set(
                "weights",
                json!([{"name": "m", "path": "a"}, {"name": "m", "path": "b"}]),
            ),
            "weights[1].name",
            "names must differ",
        ),
        case(
            "weight url and path",
            weight(json!({"name": "m", "path": "m", "url": "file:///m"})),
            "weights[0]",
            "not both",
        ),
        case(
            "weight neither url nor path",
            weight(json!({"name": "m"})),
            "weights[0]",
            "needs url",
        ),
        case(
            "weight url of another scheme",
            weight(json!({"name": "m", "url": "s3://b/m", "size_bytes": 1, "sha256": SHA})),
            "weights[0].url",
            "http://host/…, https://host/… or file:///…",
        ),
        case(
            "weight file url relative",
            weight(json!({"name": "m", "url": "file://m", "size_bytes": 1, "sha256": SHA})),
            "weights[0].url",
            "needs an absolute path",
        ),
        case(
            "weight http url without host",
            weight(json!({"name": "m", "url": "http:///m", "size_bytes": 1, "sha256": SHA})),
            "weights[0].url",
            "must be an http://host/…",
        ),
        case(
            "weight url without size",
            weight(json!({"name": "m", "url": "http://h/m", "sha256": SHA})),
            "weights[0].size_bytes",
            "required for a url",
        ),
        case(
            "weight url without sha256",
            weight(json!({"name": "m", "url": "http://h/m", "size_bytes": 1})),
            "weights[0].sha256",
            "only a local path may omit it",
        ),
        case(
            "weight sha256 upper case",
            weight(json!({"name": "m", "path": "m", "sha256": SHA.to_uppercase()})),
            "weights[0].sha256",
            "64 lowercase hex characters",
        ),
        case(
            "weight sha256 short",
            weight(json!({"name": "m", "path": "m", "sha256": "abc"})),
            "weights[0].sha256",
            "64 lowercase hex",
        ),
        case(
            "weight size negative",
            weight(json!({"name": "m", "path": "m", "size_bytes": -1})),
            "weights[0].size_bytes",
            "between 0 and",
        ),
        case(
            "weight path empty",
            weight(json!({"name": "m", "path": ""})),
            "weights[0].path",
            "must not be empty",
        ),
    ];
    for c in cases {
        let err = parse_text(&c.spec).expect_err(c.what);
        let fields: Vec<&str> = err.fields().collect();
        assert!(
            fields.contains(&c.field),
            "{}: expected field {:?}, got {fields:?}: {err}",
            c.what,
            c.field
        );
        let problem = err.0.iter().find(|p| p.field == c.field).unwrap();
        assert!(
            problem.message.contains(c.says),
            "{}: {:?} does not say {:?}",
            c.what,
            problem.message,
            c.says
        );
        // Shown as `field: message`.
        if !c.field.is_empty() {
            assert!(
                err.to_string().contains(&format!("{}: ", c.field)),
                "{}: {err}",
                c.what
            );
        }
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let err = parse(&json!({
        "model": "a b",
        "command": [],
        "autoscaling_settings": {"max_replica": 0, "bogus": 1},
        "weights": [{"name": "", "url": "ftp://x"}],
    }))
    .unwrap_err();
    let fields: Vec<&str> = err.fields().collect();
    for field in [
        "model",
        "autoscaling_settings.bogus",
        "autoscaling_settings.max_replica",
        "command",
        "weights[0].name",
        "weights[0].url",
    ] {
        assert!(fields.contains(&field), "{field} in {fields:?}");
    }
}

#[test]
fn a_relative_spec_directory_is_refused_for_a_local_path() {
    let err = DeploymentSpec::from_json(
        &base().to_string(),
        Path::new("specs"),
        &ClusterSettings::default(),
    )
    .unwrap_err();
    assert_eq!(err.fields().collect::<Vec<_>>(), ["weights[0].path"]);
    assert!(err.to_string().contains("absolute"), "{err}");
}

#[test]
fn the_cluster_limit_bounds_max_replica() {
    let spec = set("autoscaling_settings", json!({"max_replica": 20}));
    assert!(parse(&spec).is_err());
    let raised = ClusterSettings {
        per_deployment_replica_limit: 32,
    };
    let ok = DeploymentSpec::from_json(&spec.to_string(), Path::new(DIR), &raised).unwrap();
    assert_eq!(ok.autoscaling_settings.max_replica, 20);
}

#[test]
fn file_names_and_digests() {
    for good in ["model.safetensors", "a", "..a", "with space"] {
        assert!(is_plain_file_name(good), "{good}");
    }
    for bad in ["", ".", "..", "a/b", "/a", "a\0b"] {
        assert!(!is_plain_file_name(bad), "{bad:?}");
    }
    assert!(is_sha256_hex(SHA));
    assert!(!is_sha256_hex(&SHA.to_uppercase()));
    assert!(!is_sha256_hex(&SHA[1..]));
    assert!(!is_sha256_hex(&format!("{}g", &SHA[1..])));
}
