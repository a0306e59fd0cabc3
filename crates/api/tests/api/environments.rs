//! Environments: GET, PATCH, promote.

use serde_json::json;

use crate::support::{Cluster, Kind, settings};

#[tokio::test]
async fn environments_are_read_patched_and_promoted_to() {
    let c = Cluster::start().await;
    c.deployment("m", "v1", Kind::Production, settings(1, 4))
        .await;
    c.deployment("m", "v2", Kind::Plain, settings(0, 2)).await;
    c.deployment("m", "v3", Kind::Plain, settings(0, 7)).await;

    // production exists for every model; its current deployment is v1.
    let a = c.get("/v1/models/m/environments/production").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["name"], "production");
    assert_eq!(a.body["model_id"], "m");
    assert_eq!(a.body["current_deployment"]["id"], "v1");
    assert_eq!(a.body["autoscaling_settings"]["max_replica"], 4);
    assert_eq!(
        a.body["promotion_settings"]["rolling_deploy"],
        serde_json::Value::Null
    );
    // Unknown environment and model: 404 naming them.
    let a = c.get("/v1/models/m/environments/staging").await;
    assert_eq!(a.status, 404);
    assert!(
        a.message().contains("model m has no environment staging"),
        "{}",
        a.message()
    );
    let a = c.get("/v1/models/nope/environments/production").await;
    assert_eq!(a.status, 404);
    assert!(a.message().contains("no model nope"), "{}", a.message());
    let a = c.get("/v1/models/m/environments/Prod").await;
    assert_eq!((a.status, a.field()), (400, Some("env_name")));
    let a = c
        .call("PATCH", "/v1/models/m/environments/staging", Some("{}"))
        .await;
    assert_eq!(a.status, 404);

    // PATCH: the settings apply to the current deployment.
    let a = c
        .call(
            "PATCH",
            "/v1/models/m/environments/production",
            Some(r#"{"autoscaling_settings": {"max_replica": 5},
                     "promotion_settings": {"ramp_up_duration_seconds": 600, "rolling_deploy": false}}"#),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["status"], "ACCEPTED");
    let stored = c
        .stored("v1")
        .await
        .deployment
        .unwrap()
        .autoscaling_settings
        .unwrap();
    assert_eq!(stored.max_replica, 5);
    let a = c.get("/v1/models/m/environments/production").await;
    assert_eq!(a.body["autoscaling_settings"]["max_replica"], 5);
    assert_eq!(
        a.body["promotion_settings"]["ramp_up_duration_seconds"],
        600
    );
    assert_eq!(a.body["promotion_settings"]["rolling_deploy"], false);
    let a = c
        .call(
            "PATCH",
            "/v1/models/m/environments/production",
            Some(r#"{"autoscaling_settings": {"max_replica": 5}}"#),
        )
        .await;
    assert_eq!(a.body["status"], "UNCHANGED", "{a:?}");
    // Refused: bad settings, unsupported promotion features, unknown fields.
    for (body, field) in [
        (
            r#"{"autoscaling_settings": {"max_replica": 0}}"#,
            "autoscaling_settings.max_replica",
        ),
        (
            r#"{"autoscaling_settings": {"scale_down_delay": -5}}"#,
            "autoscaling_settings.scale_down_delay",
        ),
        (
            r#"{"promotion_settings": {"rolling_deploy": true}}"#,
            "promotion_settings.rolling_deploy",
        ),
        (
            r#"{"promotion_settings": {"ramp_up_while_promoting": true}}"#,
            "promotion_settings.ramp_up_while_promoting",
        ),
        (
            r#"{"promotion_settings": {"redeploy_on_promotion": true}}"#,
            "promotion_settings.redeploy_on_promotion",
        ),
        (
            r#"{"promotion_settings": {"rolling_deploy_config": {}}}"#,
            "promotion_settings.rolling_deploy_config",
        ),
        (
            r#"{"promotion_settings": {"ramp_up_duration_seconds": "x"}}"#,
            "promotion_settings.ramp_up_duration_seconds",
        ),
        (
            r#"{"promotion_settings": {"speed": 1}}"#,
            "promotion_settings.speed",
        ),
        (r#"{"promotion_settings": 1}"#, "promotion_settings"),
        (r#"{"name": "x"}"#, "name"),
    ] {
        let a = c
            .call("PATCH", "/v1/models/m/environments/production", Some(body))
            .await;
        assert_eq!((a.status, a.field()), (400, Some(field)), "{body}: {a:?}");
    }
    assert_eq!(c.stored_settings("v1").await.max_replica, 5);

    // Promote to a new environment: it is created; v2 keeps its own settings.
    let a = c
        .call(
            "POST",
            "/v1/models/m/environments/staging/promote",
            Some(r#"{"deployment_id": "v2"}"#),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["id"], "v2");
    assert_eq!(a.body["environment"], "staging");
    assert_eq!(a.body["is_production"], false);
    assert_eq!(a.body["autoscaling_settings"]["max_replica"], 2);
    let a = c.get("/v1/models/m/environments/staging").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["current_deployment"]["id"], "v2");
    // Staging's settings change; v3 promoted there takes them, and v2 is
    // demoted but kept ACTIVE (scale_down_previous_deployment false).
    let a = c
        .call(
            "PATCH",
            "/v1/models/m/environments/staging",
            Some(r#"{"autoscaling_settings": {"max_replica": 3}}"#),
        )
        .await;
    assert_eq!(a.body["status"], "ACCEPTED", "{a:?}");
    let a = c
        .call(
            "POST",
            "/v1/models/m/environments/staging/promote",
            Some(r#"{"deployment_id": "v3", "scale_down_previous_deployment": false}"#),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["autoscaling_settings"]["max_replica"], 3);
    let v2 = c.get("/v1/models/m/deployments/v2").await.body;
    assert_eq!(
        (v2["environment"].clone(), v2["status"].clone()),
        (json!(null), json!("ACTIVE"))
    );
    // Promoting to production moves v3 there; staging no longer names it.
    let a = c
        .call(
            "POST",
            "/v1/models/m/environments/production/promote",
            Some(r#"{"deployment_id": "v3"}"#),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["is_production"], true);
    assert_eq!(
        a.body["autoscaling_settings"]["max_replica"], 5,
        "production's settings"
    );
    assert_eq!(
        c.get("/v1/models/m/deployments/v1").await.body["status"],
        "INACTIVE"
    );
    let a = c.get("/v1/models/m/environments/staging").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["current_deployment"], json!(null));
    assert_eq!(a.body["autoscaling_settings"]["max_replica"], 3);

    // Refused: no deployment_id, an unknown one, unknown fields.
    let a = c
        .call(
            "POST",
            "/v1/models/m/environments/staging/promote",
            Some("{}"),
        )
        .await;
    assert_eq!((a.status, a.field()), (400, Some("deployment_id")), "{a:?}");
    let a = c
        .call(
            "POST",
            "/v1/models/m/environments/staging/promote",
            Some(r#"{"deployment_id": "v9"}"#),
        )
        .await;
    assert_eq!(a.status, 404);
    assert!(a.message().contains("v9"));
    let a = c
        .call(
            "POST",
            "/v1/models/m/environments/staging/promote",
            Some(r#"{"deployment_id": "v2", "x": 1}"#),
        )
        .await;
    assert_eq!((a.status, a.field()), (400, Some("x")));
    let a = c
        .call(
            "POST",
            "/v1/models/m/environments/BAD/promote",
            Some(r#"{"deployment_id": "v2"}"#),
        )
        .await;
    assert_eq!((a.status, a.field()), (400, Some("env_name")));
    c.stop().await;
}
