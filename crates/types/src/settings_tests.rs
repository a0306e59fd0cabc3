use super::*;

fn parse(json: &str) -> Result<AutoscalingSettings, serde_json::Error> {
    serde_json::from_str(json)
}

#[test]
fn defaults_are_basetens() {
    let s = AutoscalingSettings::default();
    assert_eq!(
        (
            s.min_replica,
            s.max_replica,
            s.autoscaling_window,
            s.scale_down_delay
        ),
        (0, 1, 60, 900)
    );
    assert_eq!(
        (s.concurrency_target, s.target_utilization_percentage),
        (1, 70)
    );
    assert_eq!(s.max_scale_down_rate, None);
    assert_eq!(s.burst_window, None);
    assert!(s.validate(&ClusterSettings::default()).is_ok());
    assert_eq!(ClusterSettings::default().per_deployment_replica_limit, 10);
}

#[test]
fn empty_body_takes_every_default() {
    assert_eq!(parse("{}").unwrap(), AutoscalingSettings::default());
}

#[test]
fn null_core_fields_take_defaults() {
    let s = parse(r#"{"autoscaling_window": null, "scale_down_delay": null, "target_utilization_percentage": null}"#).unwrap();
    assert_eq!(s, AutoscalingSettings::default());
}

#[test]
fn reads_and_writes_basetens_body_with_exact_field_names() {
    let body = r#"{"min_replica":1,"max_replica":4,"autoscaling_window":30,"scale_down_delay":120,"concurrency_target":10,"target_utilization_percentage":80,"max_scale_down_rate":null,"target_in_flight_tokens":null}"#;
    let s = parse(body).unwrap();
    assert_eq!(s.max_replica, 4);
    assert_eq!(s.concurrency_target, 10);
    assert_eq!(serde_json::to_string(&s).unwrap(), body);
}

#[test]
fn unknown_field_is_an_error_not_dropped() {
    let err = parse(r#"{"max_replicas": 3}"#).unwrap_err().to_string();
    assert!(err.contains("unknown field `max_replicas`"), "{err}");
    let err = serde_json::from_str::<UpdateAutoscalingSettings>(r#"{"min_replicas": 3}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("min_replicas"), "{err}");
}

#[test]
fn only_a_json_object_is_settings() {
    for body in ["[1]", "[]", "1", "null", "\"x\""] {
        let err = parse(body).unwrap_err().to_string();
        assert!(
            err.contains("a JSON object of autoscaling settings"),
            "{body}: {err}"
        );
    }
    let err = parse(r#"{"max_replica": 2, "max_replica": 3}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("duplicate field `max_replica`"), "{err}");
}

#[test]
fn wrongly_typed_value_names_its_field() {
    let err = parse(r#"{"max_replica": -1}"#).unwrap_err().to_string();
    assert!(
        err.starts_with("max_replica must be a whole number"),
        "{err}"
    );
    let err = parse(r#"{"concurrency_target": 1.5}"#)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("concurrency_target must be a whole number; got 1.5"),
        "{err}"
    );
    let err = parse(r#"{"scale_down_delay": "900"}"#)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("scale_down_delay must be a whole number; got \"900\""),
        "{err}"
    );
}

#[test]
fn validation_names_field_range_and_value() {
    let cluster = ClusterSettings::default();
    let s = AutoscalingSettings {
        max_replica: 0,
        ..Default::default()
    };
    assert_eq!(
        s.validate(&cluster).unwrap_err().to_string(),
        "max_replica must be between 1 and 10 (the cluster's per-deployment limit); got 0"
    );
    let s = AutoscalingSettings {
        autoscaling_window: 5,
        ..Default::default()
    };
    assert_eq!(
        s.validate(&cluster).unwrap_err().to_string(),
        "autoscaling_window must be between 10 and 3600 seconds; got 5"
    );
    let s = AutoscalingSettings {
        scale_down_delay: 3601,
        ..Default::default()
    };
    assert_eq!(
        s.validate(&cluster).unwrap_err().to_string(),
        "scale_down_delay must be between 0 and 3600 seconds; got 3601"
    );
    let s = AutoscalingSettings {
        target_utilization_percentage: 0,
        ..Default::default()
    };
    assert_eq!(
        s.validate(&cluster).unwrap_err().to_string(),
        "target_utilization_percentage must be between 1 and 100; got 0"
    );
    let s = AutoscalingSettings {
        concurrency_target: 0,
        ..Default::default()
    };
    assert_eq!(
        s.validate(&cluster).unwrap_err().to_string(),
        "concurrency_target must be at least 1; got 0"
    );
    let s = AutoscalingSettings {
        max_scale_down_rate: Some(51),
        ..Default::default()
    };
    assert_eq!(
        s.validate(&cluster).unwrap_err().to_string(),
        "max_scale_down_rate must be between 1 and 50 percent per window; got 51"
    );
}

#[test]
fn min_replica_may_not_exceed_max_replica() {
    let s = AutoscalingSettings {
        min_replica: 3,
        max_replica: 2,
        ..Default::default()
    };
    let err = s.validate(&ClusterSettings::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "min_replica must be between 0 and max_replica (2); got 3"
    );
    assert_eq!(err.fields().collect::<Vec<_>>(), ["min_replica"]);
    let s = AutoscalingSettings {
        min_replica: 2,
        max_replica: 2,
        ..Default::default()
    };
    assert!(s.validate(&ClusterSettings::default()).is_ok());
}

#[test]
fn replica_limit_is_a_cluster_setting() {
    let s = AutoscalingSettings {
        max_replica: 50,
        ..Default::default()
    };
    assert!(s.validate(&ClusterSettings::default()).is_err());
    let raised = ClusterSettings {
        per_deployment_replica_limit: 64,
    };
    assert!(s.validate(&raised).is_ok());
    let cluster: ClusterSettings = serde_json::from_str("{}").unwrap();
    assert_eq!(cluster, ClusterSettings::default());
}

#[test]
fn every_problem_is_reported_at_once() {
    let s = AutoscalingSettings {
        max_replica: 0,
        autoscaling_window: 1,
        ..Default::default()
    };
    let err = s.validate(&ClusterSettings::default()).unwrap_err();
    assert_eq!(
        err.fields().collect::<Vec<_>>(),
        ["max_replica", "autoscaling_window"]
    );
}

#[test]
fn token_target_is_refused_rather_than_ignored() {
    let s = parse(r#"{"target_in_flight_tokens": 500}"#).unwrap();
    let err = s
        .validate(&ClusterSettings::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not supported"), "{err}");
}

#[test]
fn burst_mode_is_off_by_default_and_checked_when_set() {
    assert_eq!(
        AutoscalingSettings::default().effective_burst_threshold(),
        None
    );
    let s = parse(r#"{"burst_window": 6}"#).unwrap();
    assert_eq!(s.effective_burst_threshold(), Some(200));
    assert!(s.validate(&ClusterSettings::default()).is_ok());
    let s = parse(r#"{"burst_window": 61}"#).unwrap();
    assert!(s.validate(&ClusterSettings::default()).is_err());
    let s = parse(r#"{"burst_threshold_percentage": 300}"#).unwrap();
    let err = s
        .validate(&ClusterSettings::default())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "burst_threshold_percentage needs burst_window to be set"
    );
    // Burst fields are tidal extensions: a Baseten body written back has none.
    let json = serde_json::to_string(&AutoscalingSettings::default()).unwrap();
    assert!(!json.contains("burst"), "{json}");
}

#[test]
fn patch_changes_only_present_fields() {
    let base = AutoscalingSettings {
        max_replica: 5,
        max_scale_down_rate: Some(10),
        ..Default::default()
    };
    let patch: UpdateAutoscalingSettings = serde_json::from_str(r#"{"min_replica": 2}"#).unwrap();
    let next = base.patched(&patch, &ClusterSettings::default()).unwrap();
    assert_eq!(
        next,
        AutoscalingSettings {
            min_replica: 2,
            ..base
        }
    );
}

#[test]
fn patch_null_turns_an_optional_feature_off_and_leaves_core_fields() {
    let base = AutoscalingSettings {
        max_replica: 5,
        max_scale_down_rate: Some(10),
        ..Default::default()
    };
    let patch: UpdateAutoscalingSettings =
        serde_json::from_str(r#"{"max_scale_down_rate": null, "max_replica": null}"#).unwrap();
    assert_eq!(patch.max_scale_down_rate, Some(None));
    assert_eq!(patch.max_replica, None);
    let next = base.patched(&patch, &ClusterSettings::default()).unwrap();
    assert_eq!(next.max_scale_down_rate, None);
    assert_eq!(next.max_replica, 5);
}

#[test]
fn invalid_patch_writes_nothing() {
    let base = AutoscalingSettings {
        max_replica: 5,
        ..Default::default()
    };
    let patch = UpdateAutoscalingSettings {
        min_replica: Some(6),
        ..Default::default()
    };
    let err = base
        .patched(&patch, &ClusterSettings::default())
        .unwrap_err();
    assert_eq!(err.fields().collect::<Vec<_>>(), ["min_replica"]);
    assert_eq!(base.max_replica, 5);
    assert_eq!(base.min_replica, 0);
}

#[test]
fn update_serializes_only_present_fields() {
    let patch = UpdateAutoscalingSettings {
        max_replica: Some(3),
        max_scale_down_rate: Some(None),
        ..Default::default()
    };
    let json = serde_json::to_string(&patch).unwrap();
    assert_eq!(json, r#"{"max_replica":3,"max_scale_down_rate":null}"#);
    assert_eq!(
        serde_json::from_str::<UpdateAutoscalingSettings>(&json).unwrap(),
        patch
    );
    assert!(UpdateAutoscalingSettings::default().is_empty());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn json_round_trip_preserves_settings(
            min in 0u32..20, max in 0u32..20, window in 0u32..4000, delay in 0u32..4000,
            target in 0u32..100, util in 0u32..120, rate in proptest::option::of(0u32..60),
            burst in proptest::option::of(0u32..100),
        ) {
            let s = AutoscalingSettings {
                min_replica: min, max_replica: max, autoscaling_window: window,
                scale_down_delay: delay, concurrency_target: target,
                target_utilization_percentage: util, max_scale_down_rate: rate,
                target_in_flight_tokens: None, burst_window: burst,
                burst_threshold_percentage: None,
            };
            let back: AutoscalingSettings = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
            prop_assert_eq!(back, s);
        }

        #[test]
        fn valid_settings_respect_every_range(
            min in 0u32..20, max in 0u32..20, window in 0u32..4000, delay in 0u32..4000,
            util in 0u32..120,
        ) {
            let s = AutoscalingSettings {
                min_replica: min, max_replica: max, autoscaling_window: window,
                scale_down_delay: delay, target_utilization_percentage: util,
                ..Default::default()
            };
            if s.validate(&ClusterSettings::default()).is_ok() {
                prop_assert!(min <= max && (1..=10).contains(&max));
                prop_assert!((10..=3600).contains(&window) && delay <= 3600);
                prop_assert!((1..=100).contains(&util));
            }
        }
    }
}
