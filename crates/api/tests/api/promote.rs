//! POST …/deployments/{id}/promote: settings carry over unless
//! overridden; the previous production deployment is demoted.

use serde_json::json;
use tidal_proto::pb;
use tidal_types::AutoscalingSettings;

use crate::support::{Cluster, Kind, settings};

fn status(r: &pb::DeploymentRecord) -> pb::DeploymentStatus {
    pb::DeploymentStatus::try_from(r.deployment.as_ref().unwrap().status).unwrap()
}

#[tokio::test]
async fn promotion_carries_settings_and_demotes_the_previous_production() {
    let c = Cluster::start().await;
    c.deployment("m", "v1", Kind::Production, settings(1, 4))
        .await;
    let mut custom = settings(2, 6);
    custom.concurrency_target = 3;
    c.deployment("m", "v2", Kind::Plain, custom).await;

    // Settings carry over; v1 is demoted and deactivated (the default).
    let a = c
        .call("POST", "/v1/models/m/deployments/v2/promote", Some("{}"))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["id"], "v2");
    assert_eq!(a.body["is_production"], true);
    assert_eq!(a.body["environment"], "production");
    assert_eq!(a.body["autoscaling_settings"], json!(custom));
    let v1 = c.stored("v1").await;
    let d1 = v1.deployment.as_ref().unwrap();
    assert!(!d1.is_production && d1.environment.is_none());
    assert_eq!(status(&v1), pb::DeploymentStatus::Inactive);
    assert_eq!(
        c.get("/v1/models/m/deployments/production").await.body["id"],
        "v2"
    );
    // The production environment names it, with its settings.
    let env = c.get("/v1/models/m/environments/production").await;
    assert_eq!(env.body["current_deployment"]["id"], "v2");
    assert_eq!(env.body["autoscaling_settings"]["min_replica"], 2);

    // An INACTIVE deployment must be activated first: 409 saying so.
    let a = c
        .call("POST", "/v1/models/m/deployments/v1/promote", None)
        .await;
    assert_eq!(a.status, 409, "{a:?}");
    assert!(a.message().contains("activate"), "{}", a.message());
    assert_eq!(
        c.call("POST", "/v1/models/m/deployments/v1/activate", None)
            .await
            .status,
        200
    );

    // Overrides, and scale_down_previous_production false: v2 stays ACTIVE.
    let a = c
        .call(
            "POST",
            "/v1/models/m/deployments/v1/promote",
            Some(
                r#"{"scale_down_previous_production": false, "preserve_env_instance_type": true,
                     "autoscaling_settings": {"max_replica": 8, "scale_down_delay": 30}}"#,
            ),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["autoscaling_settings"]["max_replica"], 8);
    assert_eq!(a.body["autoscaling_settings"]["scale_down_delay"], 30);
    assert_eq!(
        a.body["autoscaling_settings"]["min_replica"], 1,
        "the rest carries over"
    );
    let v2 = c.stored("v2").await;
    assert_eq!(status(&v2), pb::DeploymentStatus::Active);
    assert!(!v2.deployment.as_ref().unwrap().is_production);

    // Bad bodies: 400 naming the field; nothing changes.
    for (body, field) in [
        (
            r#"{"autoscaling_settings": {"max_replica": 11}}"#,
            "autoscaling_settings.max_replica",
        ),
        (
            r#"{"autoscaling_settings": {"min_replica": 9, "max_replica": 3}}"#,
            "autoscaling_settings.min_replica",
        ),
        (
            r#"{"autoscaling_settings": {"maxreplica": 3}}"#,
            "autoscaling_settings.maxreplica",
        ),
        (r#"{"autoscaling_settings": 3}"#, "autoscaling_settings"),
        (
            r#"{"scale_down_previous_production": "yes"}"#,
            "scale_down_previous_production",
        ),
        (
            r#"{"preserve_env_instance_type": 1}"#,
            "preserve_env_instance_type",
        ),
        (r#"{"environment": "staging"}"#, "environment"),
    ] {
        let a = c
            .call("POST", "/v1/models/m/deployments/v2/promote", Some(body))
            .await;
        assert_eq!((a.status, a.field()), (400, Some(field)), "{body}: {a:?}");
    }
    assert_eq!(
        c.get("/v1/models/m/deployments/production").await.body["id"],
        "v1"
    );
    // Unknown: 404.
    assert_eq!(
        c.call("POST", "/v1/models/m/deployments/v9/promote", None)
            .await
            .status,
        404
    );
    assert_eq!(
        c.call("POST", "/v1/models/x/deployments/v1/promote", None)
            .await
            .status,
        404
    );
    c.stop().await;
}

#[tokio::test]
async fn a_promoted_development_deployment_is_no_longer_one() {
    let c = Cluster::start().await;
    c.deployment(
        "m",
        "dev",
        Kind::Development,
        AutoscalingSettings::development(),
    )
    .await;
    let a = c
        .call(
            "POST",
            "/v1/models/m/deployments/development/promote",
            Some(r#"{"autoscaling_settings": {"max_replica": 3}}"#),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["is_development"], false);
    assert_eq!(a.body["is_production"], true);
    assert_eq!(a.body["autoscaling_settings"]["max_replica"], 3);
    // Now its settings can change.
    let a = c
        .call(
            "PATCH",
            "/v1/models/m/deployments/production/autoscaling_settings",
            Some(r#"{"max_replica": 4}"#),
        )
        .await;
    assert_eq!(a.body["status"], "ACCEPTED", "{a:?}");
    c.stop().await;
}
