use super::*;

fn deployment(is_development: bool) -> Deployment {
    Deployment {
        id: DeploymentId::new("dep1").unwrap(),
        created_at: "2026-11-28T05:00:00Z".to_owned(),
        name: "v1".to_owned(),
        model_id: ModelId::new("model1").unwrap(),
        is_production: false,
        is_development,
        status: DeploymentStatus::Active,
        active_replica_count: 1,
        autoscaling_settings: if is_development {
            AutoscalingSettings::development()
        } else {
            AutoscalingSettings {
                max_replica: 4,
                ..Default::default()
            }
        },
        instance_type_name: Some("1x A10G".to_owned()),
        environment: None,
        labels: BTreeMap::new(),
    }
}

fn patch(json: &str) -> UpdateAutoscalingSettings {
    serde_json::from_str(json).unwrap()
}

#[test]
fn development_settings_are_fixed_and_patch_is_refused() {
    let s = AutoscalingSettings::development();
    assert_eq!(
        (
            s.min_replica,
            s.max_replica,
            s.autoscaling_window,
            s.scale_down_delay,
            s.concurrency_target
        ),
        (0, 1, 60, 900, 1)
    );
    let mut dev = deployment(true);
    let before = dev.clone();
    let err = dev
        .patch_autoscaling(&patch(r#"{"max_replica": 2}"#), &ClusterSettings::default())
        .unwrap_err();
    assert!(matches!(err, DeploymentError::DevelopmentFixed(_)));
    assert!(err.to_string().contains("promote it"), "{err}");
    assert_eq!(dev, before);
}

#[test]
fn patch_reports_accepted_unchanged_and_queued() {
    let cluster = ClusterSettings::default();
    let mut d = deployment(false);
    let r = d
        .patch_autoscaling(&patch(r#"{"max_replica": 6}"#), &cluster)
        .unwrap();
    assert_eq!(r.status, UpdateStatus::Accepted);
    assert_eq!(d.autoscaling_settings.max_replica, 6);
    let r = d
        .patch_autoscaling(&patch(r#"{"max_replica": 6}"#), &cluster)
        .unwrap();
    assert_eq!(r.status, UpdateStatus::Unchanged);
    d.status = DeploymentStatus::Deploying;
    let r = d
        .patch_autoscaling(&patch(r#"{"min_replica": 1}"#), &cluster)
        .unwrap();
    assert_eq!(r.status, UpdateStatus::Queued);
    assert_eq!(
        serde_json::to_value(&r).unwrap()["status"],
        serde_json::json!("QUEUED")
    );
}

#[test]
fn invalid_patch_leaves_deployment_untouched() {
    let mut d = deployment(false);
    let before = d.clone();
    let err = d
        .patch_autoscaling(
            &patch(r#"{"max_replica": 11}"#),
            &ClusterSettings::default(),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "max_replica must be between 1 and 10 (the cluster's per-deployment limit); got 11"
    );
    assert_eq!(d, before);
}

#[test]
fn promotion_carries_settings_unless_overridden() {
    let cluster = ClusterSettings::default();
    let d = deployment(false);
    let promoted = d
        .promote(EnvironmentName::production(), None, &cluster)
        .unwrap();
    assert!(promoted.is_production);
    assert_eq!(
        promoted.environment.as_ref().unwrap().as_str(),
        "production"
    );
    assert_eq!(promoted.autoscaling_settings, d.autoscaling_settings);

    let staged = d
        .promote(
            EnvironmentName::new("staging").unwrap(),
            Some(&patch(r#"{"min_replica": 2}"#)),
            &cluster,
        )
        .unwrap();
    assert!(!staged.is_production);
    assert_eq!(staged.autoscaling_settings.min_replica, 2);
    assert_eq!(staged.autoscaling_settings.max_replica, 4);
}

#[test]
fn promoting_development_gives_full_autoscaling() {
    let cluster = ClusterSettings::default();
    let mut promoted = deployment(true)
        .promote(EnvironmentName::production(), None, &cluster)
        .unwrap();
    assert!(!promoted.is_development);
    let r = promoted
        .patch_autoscaling(&patch(r#"{"max_replica": 3}"#), &cluster)
        .unwrap();
    assert_eq!(r.status, UpdateStatus::Accepted);
}

#[test]
fn invalid_promotion_override_is_refused() {
    let err = deployment(false)
        .promote(
            EnvironmentName::production(),
            Some(&patch(r#"{"autoscaling_window": 4000}"#)),
            &ClusterSettings::default(),
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("autoscaling_window must be between 10 and 3600")
    );
}

#[test]
fn inactivity_deactivates_after_two_weeks_or_two_months_in_production() {
    let dev = deployment(true);
    assert!(!dev.should_deactivate(14 * 86_400));
    assert!(dev.should_deactivate(14 * 86_400 + 1));
    let prod = deployment(false)
        .promote(
            EnvironmentName::production(),
            None,
            &ClusterSettings::default(),
        )
        .unwrap();
    assert!(!prod.should_deactivate(59 * 86_400));
    assert!(prod.should_deactivate(60 * 86_400 + 1));
}

#[test]
fn deployment_reads_and_writes_basetens_body() {
    let body = serde_json::json!({
        "id": "dep1", "created_at": "2026-11-28T05:00:00Z", "name": "v1", "model_id": "model1",
        "is_production": false, "is_development": false, "status": "SCALED_TO_ZERO",
        "active_replica_count": 0,
        "autoscaling_settings": {"min_replica": 0, "max_replica": 4, "autoscaling_window": 60,
            "scale_down_delay": 900, "concurrency_target": 1, "target_utilization_percentage": 70,
            "max_scale_down_rate": null, "target_in_flight_tokens": null},
        "instance_type_name": "1x A10G", "environment": null, "labels": {}
    });
    let d: Deployment = serde_json::from_value(body.clone()).unwrap();
    assert_eq!(d.status, DeploymentStatus::ScaledToZero);
    assert_eq!(serde_json::to_value(&d).unwrap(), body);
    let mut extra = body;
    extra["replicas"] = serde_json::json!(3);
    assert!(serde_json::from_value::<Deployment>(extra).is_err());
}

#[test]
fn every_status_has_basetens_spelling() {
    let names: Vec<String> = DeploymentStatus::ALL
        .iter()
        .map(|s| {
            serde_json::to_value(s)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "BUILDING",
            "DEPLOYING",
            "DEPLOY_FAILED",
            "LOADING_MODEL",
            "ACTIVE",
            "UNHEALTHY",
            "BUILD_FAILED",
            "BUILD_STOPPED",
            "DEACTIVATING",
            "INACTIVE",
            "FAILED",
            "UPDATING",
            "SCALED_TO_ZERO",
            "WAKING_UP"
        ]
    );
}
