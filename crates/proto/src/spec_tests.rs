use std::path::Path;

use prost::Message;
use tidal_types::{
    AutoscalingSettings, ClusterSettings, Deployment, DeploymentSpec, DeploymentStatus,
};

use super::*;

const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SHA_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn spec(text: &str) -> DeploymentSpec {
    DeploymentSpec::from_json(text, Path::new("/specs"), &ClusterSettings::default()).unwrap()
}

fn full() -> DeploymentSpec {
    let mut spec = spec(&format!(
        r#"{{
            "model": "mlp",
            "autoscaling_settings": {{"min_replica": 1, "max_replica": 3, "concurrency_target": 2}},
            "resources": {{"region": "eu", "gpu_type": "L4-24GB", "gpu_count": 1,
                           "cpu_millis": 500, "memory_bytes": 1024}},
            "command": ["tidal", "model", "serve"],
            "env": {{"TIDAL_MODEL_DELAY_MS": "200"}},
            "health_path": "/ready",
            "ready_timeout_secs": 60,
            "stop_grace_secs": 5,
            "weights": [
                {{"name": "a.bin", "url": "http://h/a.bin", "size_bytes": 10, "sha256": "{SHA_A}"}},
                {{"name": "model.safetensors", "path": "model.safetensors"}}
            ]
        }}"#
    ));
    // What the loader does for a local path.
    spec.weights[1].size_bytes = Some(20);
    spec.weights[1].sha256 = Some(SHA_B.to_owned());
    spec
}

#[test]
fn a_spec_becomes_a_record_field_for_field() {
    let record = deployment_record(&full(), "2025-01-02T03:04:05Z").unwrap();
    // Through bytes, as the store keeps it.
    let record = pb::DeploymentRecord::decode(record.encode_to_vec().as_slice()).unwrap();
    let d = record.deployment.clone().unwrap();
    assert_eq!(
        (d.id.as_str(), d.name.as_str(), d.model_id.as_str()),
        ("mlp-v1", "mlp-v1", "mlp")
    );
    assert_eq!(d.created_at, "2025-01-02T03:04:05Z");
    assert!(!d.is_development && !d.is_production);
    // The domain type accepts it (valid ids, a named status).
    let domain = Deployment::try_from(d).unwrap();
    assert_eq!(domain.status, DeploymentStatus::Deploying);
    assert_eq!(
        domain.autoscaling_settings,
        AutoscalingSettings {
            min_replica: 1,
            max_replica: 3,
            concurrency_target: 2,
            ..AutoscalingSettings::default()
        }
    );
    let r = record.resources.unwrap();
    assert_eq!((r.region.as_str(), r.gpu_type.as_str()), ("eu", "L4-24GB"));
    assert_eq!((r.gpu_count, r.cpu_millis, r.memory_bytes), (1, 500, 1024));
    assert_eq!(r.command, "tidal");
    assert_eq!(r.args, ["model", "serve"]);
    assert_eq!(r.env["TIDAL_MODEL_DELAY_MS"], "200");
    assert_eq!(r.health_path, "/ready");
    assert_eq!((r.ready_timeout_secs, r.stop_grace_secs), (60, 5));
    assert_eq!(r.image, "");
    assert_eq!(r.weights, [SHA_A, SHA_B], "the digests, for warm placement");
    assert_eq!(
        r.weight_files,
        [
            pb::WeightFile {
                url: "http://h/a.bin".into(),
                size_bytes: 10,
                sha256: SHA_A.into(),
                name: "a.bin".into(),
            },
            pb::WeightFile {
                url: "file:///specs/model.safetensors".into(),
                size_bytes: 20,
                sha256: SHA_B.into(),
                name: "model.safetensors".into(),
            },
        ]
    );
    assert_eq!(record.desired_replicas, 0);
    assert!(record.status_reason.is_empty() && record.decision_reason.is_empty());
}

#[test]
fn defaults_are_written_out_not_left_to_the_worker() {
    let record = deployment_record(&spec(r#"{"model": "m", "command": ["server"]}"#), "t").unwrap();
    let r = record.resources.unwrap();
    assert_eq!((r.command.as_str(), r.args.len()), ("server", 0));
    assert_eq!(r.health_path, "/health");
    assert_eq!((r.ready_timeout_secs, r.stop_grace_secs), (600, 30));
    assert_eq!((r.cpu_millis, r.memory_bytes), (1000, 1 << 30));
    assert!(r.weights.is_empty() && r.weight_files.is_empty());
}

#[test]
fn an_unmeasured_local_weight_is_refused() {
    let mut spec = full();
    spec.weights[1].sha256 = None;
    let err = deployment_record(&spec, "t").unwrap_err();
    assert_eq!(
        err,
        SpecRecordError::Unmeasured {
            index: 1,
            name: "model.safetensors".into()
        }
    );
    assert!(
        err.to_string()
            .starts_with("weights[1] (model.safetensors)")
    );
}

/// A stored record as the cluster has made it: decided, observed, promoted.
fn stored() -> pb::DeploymentRecord {
    let mut record = deployment_record(&full(), "2024-12-31T00:00:00Z").unwrap();
    let d = record.deployment.as_mut().unwrap();
    d.status = pb::DeploymentStatus::Active.into();
    d.active_replica_count = 2;
    d.is_production = true;
    d.environment = Some("production".into());
    d.labels.insert("team".into(), "search".into());
    record.desired_replicas = 2;
    record.status_reason = "1 replica cannot be placed".into();
    record.decision_reason = "load".into();
    record
}

#[test]
fn replacing_a_spec_keeps_what_the_cluster_decided() {
    let mut changed = full();
    changed.autoscaling_settings.concurrency_target = 5;
    changed.command = vec!["/bin/server".into()];
    changed.weights.truncate(1);
    let new = deployment_record(&changed, "2025-06-01T00:00:00Z").unwrap();
    let replaced = replace_spec(&stored(), new.clone()).unwrap();
    assert_eq!(replaced.desired_replicas, 2);
    assert_eq!(replaced.status_reason, "1 replica cannot be placed");
    assert_eq!(replaced.decision_reason, "load");
    let d = replaced.deployment.unwrap();
    assert_eq!(d.created_at, "2024-12-31T00:00:00Z");
    assert_eq!(d.status, i32::from(pb::DeploymentStatus::Active));
    assert_eq!(d.active_replica_count, 2);
    assert!(d.is_production);
    assert_eq!(d.environment.as_deref(), Some("production"));
    assert_eq!(d.labels["team"], "search");
    // The spec's part is the new one.
    assert_eq!(d.autoscaling_settings.unwrap().concurrency_target, 5);
    assert_eq!(replaced.resources, new.resources);
    assert_eq!(replaced.resources.unwrap().command, "/bin/server");
}

#[test]
fn replacing_an_empty_or_bare_record_fills_it_in() {
    // A record written by hand (as tests and benches do): no model, no status.
    let bare = pb::DeploymentRecord {
        deployment: Some(pb::Deployment {
            id: "mlp-v1".into(),
            ..Default::default()
        }),
        desired_replicas: 4,
        ..Default::default()
    };
    let new = deployment_record(&full(), "now").unwrap();
    let replaced = replace_spec(&bare, new).unwrap();
    assert_eq!(replaced.desired_replicas, 4);
    let d = replaced.deployment.unwrap();
    assert_eq!((d.model_id.as_str(), d.created_at.as_str()), ("mlp", "now"));
    assert_eq!(d.status, i32::from(pb::DeploymentStatus::Deploying));
}

#[test]
fn another_models_deployment_or_fixed_settings_are_not_replaced() {
    let mut other = stored();
    other.deployment.as_mut().unwrap().model_id = "bert".into();
    let err = replace_spec(&other, deployment_record(&full(), "t").unwrap()).unwrap_err();
    assert!(
        err.to_string()
            .contains("already exists for model bert, not mlp"),
        "{err}"
    );

    let mut development = stored();
    development.deployment.as_mut().unwrap().is_development = true;
    let mut changed = full();
    changed.autoscaling_settings.max_replica = 2;
    let err = replace_spec(&development, deployment_record(&changed, "t").unwrap()).unwrap_err();
    assert_eq!(err, SpecRecordError::DevelopmentFixed("mlp-v1".into()));
    // Same settings, new command: allowed, and it stays a development deployment.
    let mut same = full();
    same.command = vec!["other".into()];
    let replaced = replace_spec(&development, deployment_record(&same, "t").unwrap()).unwrap();
    assert!(replaced.deployment.unwrap().is_development);
}

#[test]
fn a_spec_message_gives_every_field_and_needs_measured_weights() {
    let m = spec_message(&full()).unwrap();
    assert_eq!(m.deployment.as_deref(), Some("mlp-v1"));
    let s = m.autoscaling_settings.unwrap();
    assert_eq!(
        (s.min_replica, s.max_replica, s.concurrency_target),
        (Some(1), Some(3), Some(2))
    );
    assert_eq!(s.autoscaling_window, Some(60), "defaults are given too");
    assert_eq!(s.max_scale_down_rate, None, "an unset feature stays unset");
    let r = m.resources.unwrap();
    assert_eq!(
        (r.region.as_deref(), r.gpu_count, r.cpu_millis),
        (Some("eu"), Some(1), Some(500))
    );
    assert_eq!(m.command, ["tidal", "model", "serve"]);
    assert_eq!(
        m.env.get("TIDAL_MODEL_DELAY_MS").map(String::as_str),
        Some("200")
    );
    assert_eq!(
        (
            m.health_path.as_deref(),
            m.ready_timeout_secs,
            m.stop_grace_secs
        ),
        (Some("/ready"), Some(60), Some(5))
    );
    assert_eq!(m.weights[1].sha256, SHA_B);
    assert_eq!(m.weights[1].size_bytes, 20);
    assert!(
        m.weights[1].url.starts_with("file:///specs/"),
        "{}",
        m.weights[1].url
    );

    let mut unmeasured = full();
    unmeasured.weights[1].sha256 = None;
    assert!(matches!(
        spec_message(&unmeasured),
        Err(SpecRecordError::Unmeasured { index: 1, .. })
    ));
}
