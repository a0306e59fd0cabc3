//! Deployment routes: list, get, autoscaling settings, activate and
//! deactivate, replicas, create from a spec.

use serde_json::json;
use tidal_proto::pb;
use tidal_types::{AutoscalingSettings, DeploymentStatus};

use crate::support::{Cluster, Kind, settings};

/// Model `m`: `dev` (development), `prod` (production, 1–4), `d3` (0–2).
async fn model(c: &Cluster) {
    c.deployment(
        "m",
        "dev",
        Kind::Development,
        AutoscalingSettings::development(),
    )
    .await;
    c.deployment("m", "prod", Kind::Production, settings(1, 4))
        .await;
    c.deployment("m", "d3", Kind::Plain, settings(0, 2)).await;
    c.deployment("other", "o1", Kind::Plain, settings(0, 1))
        .await;
}

#[tokio::test]
async fn deployments_are_listed_and_found_by_id_development_and_production() {
    let c = Cluster::start().await;
    model(&c).await;
    c.replica("r1", "prod", "w", pb::ReplicaPhase::Ready).await;
    c.replica("r2", "prod", "w", pb::ReplicaPhase::Ready).await;
    c.replica("r3", "prod", "w", pb::ReplicaPhase::Loading)
        .await;

    let a = c.get("/v1/models/m/deployments").await;
    assert_eq!(a.status, 200, "{a:?}");
    let list = a.body["deployments"].as_array().unwrap();
    let ids: Vec<&str> = list.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["d3", "dev", "prod"]);
    // Baseten's DeploymentV1 fields, exactly.
    let mut fields: Vec<&str> = list[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "active_replica_count",
            "autoscaling_settings",
            "created_at",
            "environment",
            "id",
            "instance_type_name",
            "is_development",
            "is_production",
            "labels",
            "model_id",
            "name",
            "status"
        ]
    );

    let a = c.get("/v1/models/m/deployments/prod").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["active_replica_count"], 2);
    assert_eq!(a.body["status"], "ACTIVE");
    assert_eq!(a.body["environment"], "production");
    assert_eq!(a.body["autoscaling_settings"]["max_replica"], 4);
    assert_eq!(
        c.get("/v1/models/m/deployments/production").await.body["id"],
        "prod"
    );
    let a = c.get("/v1/models/m/deployments/development").await;
    assert_eq!(
        (a.body["id"].as_str(), a.body["is_development"].as_bool()),
        (Some("dev"), Some(true))
    );

    // Not found: the model, the deployment (also another model's), the aliases.
    let a = c.get("/v1/models/nomodel/deployments").await;
    assert_eq!(a.status, 404);
    assert!(a.message().contains("no model nomodel"), "{}", a.message());
    let a = c.get("/v1/models/m/deployments/nodep").await;
    assert_eq!(a.status, 404);
    assert!(
        a.message().contains("model m has no deployment nodep"),
        "{}",
        a.message()
    );
    assert_eq!(c.get("/v1/models/m/deployments/o1").await.status, 404);
    let a = c.get("/v1/models/other/deployments/production").await;
    assert_eq!(a.status, 404);
    assert!(
        a.message().contains("no production deployment"),
        "{}",
        a.message()
    );
    let a = c.get("/v1/models/other/deployments/development").await;
    assert!(
        a.message().contains("no development deployment"),
        "{}",
        a.message()
    );
    // A model id that cannot be one: 400 naming the path parameter.
    let a = c.get("/v1/models/a%20b/deployments").await;
    assert_eq!((a.status, a.field()), (400, Some("model_id")), "{a:?}");

    // Models.
    let a = c.get("/v1/models").await;
    assert_eq!(
        a.body["models"][0],
        json!({"id": "m", "deployment_ids": ["d3", "dev", "prod"],
               "production_deployment_id": "prod", "development_deployment_id": "dev",
               "environments": ["production"]})
    );
    assert_eq!(a.body["models"][1]["id"], "other");
    c.stop().await;
}

#[tokio::test]
async fn autoscaling_settings_are_patched_and_every_field_is_checked() {
    let c = Cluster::start().await;
    model(&c).await;
    let path = "/v1/models/m/deployments/d3/autoscaling_settings";

    let a = c
        .call(
            "PATCH",
            path,
            Some(r#"{"max_replica": 5, "scale_down_delay": 60}"#),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.body,
        json!({"status": "ACCEPTED", "message": "autoscaling settings updated"})
    );
    let stored = c
        .stored("d3")
        .await
        .deployment
        .unwrap()
        .autoscaling_settings
        .unwrap();
    assert_eq!(
        (
            stored.max_replica,
            stored.scale_down_delay,
            stored.min_replica
        ),
        (5, 60, 0)
    );
    // The same again: UNCHANGED. Through the production alias: applied there.
    let a = c.call("PATCH", path, Some(r#"{"max_replica": 5}"#)).await;
    assert_eq!(a.body["status"], "UNCHANGED");
    let a = c
        .call(
            "PATCH",
            "/v1/models/m/deployments/production/autoscaling_settings",
            Some(r#"{"min_replica": 2}"#),
        )
        .await;
    assert_eq!(a.body["status"], "ACCEPTED", "{a:?}");
    assert_eq!(c.stored_settings("prod").await.min_replica, 2);
    // null turns an optional feature off; a deploying deployment queues.
    let a = c
        .call("PATCH", path, Some(r#"{"max_scale_down_rate": 20}"#))
        .await;
    assert_eq!(a.body["status"], "ACCEPTED");
    let a = c
        .call("PATCH", path, Some(r#"{"max_scale_down_rate": null}"#))
        .await;
    assert_eq!(a.body["status"], "ACCEPTED");
    let mut building = c.stored("d3").await;
    building.deployment.as_mut().unwrap().status = pb::DeploymentStatus::Deploying.into();
    c.put(
        tidal_store::app::Table::Deployments,
        "d3",
        prost::Message::encode_to_vec(&building),
    )
    .await;
    let a = c
        .call("PATCH", path, Some(r#"{"concurrency_target": 3}"#))
        .await;
    assert_eq!(a.body["status"], "QUEUED", "{a:?}");

    // Every field out of range, and wrong types: 400 naming the field.
    for (body, field) in [
        (r#"{"min_replica": 6}"#, "min_replica"),
        (r#"{"max_replica": 0}"#, "max_replica"),
        (r#"{"max_replica": 11}"#, "max_replica"),
        (r#"{"autoscaling_window": 9}"#, "autoscaling_window"),
        (r#"{"autoscaling_window": 3601}"#, "autoscaling_window"),
        (r#"{"scale_down_delay": 3601}"#, "scale_down_delay"),
        (r#"{"concurrency_target": 0}"#, "concurrency_target"),
        (
            r#"{"target_utilization_percentage": 0}"#,
            "target_utilization_percentage",
        ),
        (
            r#"{"target_utilization_percentage": 101}"#,
            "target_utilization_percentage",
        ),
        (r#"{"max_scale_down_rate": 0}"#, "max_scale_down_rate"),
        (r#"{"max_scale_down_rate": 51}"#, "max_scale_down_rate"),
        (
            r#"{"target_in_flight_tokens": 40000}"#,
            "target_in_flight_tokens",
        ),
        (r#"{"burst_window": 0}"#, "burst_window"),
        (r#"{"burst_window": 61}"#, "burst_window"),
        (
            r#"{"burst_window": 6, "burst_threshold_percentage": 100}"#,
            "burst_threshold_percentage",
        ),
        (
            r#"{"burst_threshold_percentage": 200}"#,
            "burst_threshold_percentage",
        ),
        (r#"{"max_replica": "3"}"#, "max_replica"),
        (r#"{"min_replica": -1}"#, "min_replica"),
        (r#"{"scale_down_delay": 1.5}"#, "scale_down_delay"),
        (r#"{"max_replicas": 3}"#, "max_replicas"),
    ] {
        let a = c.call("PATCH", path, Some(body)).await;
        assert_eq!(
            (a.status, a.code(), a.field()),
            (400, "invalid_field", Some(field)),
            "{body}: {a:?}"
        );
        assert!(a.message().contains(field), "{body}: {}", a.message());
    }
    let a = c.call("PATCH", path, Some("[1]")).await;
    assert_eq!((a.status, a.code()), (400, "bad_request"));
    let a = c.call("PATCH", path, Some("{")).await;
    assert_eq!((a.status, a.code()), (400, "bad_request"));
    // Nothing refused was written.
    let stored = c
        .stored("d3")
        .await
        .deployment
        .unwrap()
        .autoscaling_settings
        .unwrap();
    assert_eq!((stored.max_replica, stored.concurrency_target), (5, 3));

    // A development deployment's settings are fixed: refused with the reason.
    let a = c
        .call(
            "PATCH",
            "/v1/models/m/deployments/development/autoscaling_settings",
            Some(r#"{"max_replica": 2}"#),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (400, "development_deployment"),
        "{a:?}"
    );
    assert!(
        a.message().contains("development deployment") && a.message().contains("promote"),
        "{}",
        a.message()
    );
    // Unknown deployment / model: 404.
    let a = c
        .call(
            "PATCH",
            "/v1/models/m/deployments/nope/autoscaling_settings",
            Some("{}"),
        )
        .await;
    assert_eq!(a.status, 404);
    let a = c
        .call(
            "PATCH",
            "/v1/models/nope/deployments/d3/autoscaling_settings",
            Some("{}"),
        )
        .await;
    assert_eq!(a.status, 404);
    c.stop().await;
}

#[tokio::test]
async fn deactivate_and_activate_set_the_status() {
    let c = Cluster::start().await;
    model(&c).await;
    let status = |r: pb::DeploymentRecord| {
        DeploymentStatus::try_from(
            pb::DeploymentStatus::try_from(r.deployment.unwrap().status).unwrap(),
        )
        .unwrap()
    };
    let a = c
        .call("POST", "/v1/models/m/deployments/d3/deactivate", None)
        .await;
    assert_eq!(
        (a.status, &a.body),
        (200, &json!({"success": true})),
        "{a:?}"
    );
    assert_eq!(status(c.stored("d3").await), DeploymentStatus::Inactive);
    assert_eq!(
        c.get("/v1/models/m/deployments/d3").await.body["status"],
        "INACTIVE"
    );
    // Again: still a success.
    let a = c
        .call("POST", "/v1/models/m/deployments/d3/deactivate", Some("{}"))
        .await;
    assert_eq!(a.body, json!({"success": true}));
    let a = c
        .call("POST", "/v1/models/m/deployments/d3/activate", None)
        .await;
    assert_eq!(
        (a.status, &a.body),
        (200, &json!({"success": true})),
        "{a:?}"
    );
    assert_eq!(status(c.stored("d3").await), DeploymentStatus::Active);
    // Through the aliases.
    let a = c
        .call(
            "POST",
            "/v1/models/m/deployments/production/deactivate",
            None,
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(status(c.stored("prod").await), DeploymentStatus::Inactive);
    // Unknown: 404 naming it.
    let a = c
        .call("POST", "/v1/models/m/deployments/gone/activate", None)
        .await;
    assert_eq!(a.status, 404);
    assert!(a.message().contains("gone"));
    let a = c
        .call("POST", "/v1/models/nope/deployments/d3/deactivate", None)
        .await;
    assert_eq!(a.status, 404);
    c.stop().await;
}

#[tokio::test]
async fn replicas_are_listed_and_terminated() {
    let c = Cluster::start().await;
    model(&c).await;
    c.replica("r1", "d3", "w1", pb::ReplicaPhase::Ready).await;
    c.replica("r2", "d3", "w1", pb::ReplicaPhase::Failed).await;
    c.replica("x1", "prod", "w1", pb::ReplicaPhase::Ready).await;

    let a = c.get("/v1/models/m/deployments/d3/replicas").await;
    assert_eq!(a.status, 200, "{a:?}");
    let list = a.body["replicas"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], "r1");
    assert_eq!(list[0]["phase"], "READY");
    assert_eq!(list[0]["worker_id"], "w1");
    assert_eq!(list[0]["endpoint"], "127.0.0.1:9");
    assert_eq!(
        list[0]["history"],
        json!([{"phase": "PENDING", "at_ms": 1000}, {"phase": "READY", "at_ms": 2000}])
    );
    assert_eq!(list[1]["phase"], "FAILED");
    assert_eq!(
        c.get("/v1/models/m/deployments/nope/replicas").await.status,
        404
    );

    // Terminate: stop_requested with the reason.
    let a = c
        .call("DELETE", "/v1/models/m/deployments/d3/replicas/r1", None)
        .await;
    assert_eq!(
        (a.status, &a.body),
        (200, &json!({"success": true})),
        "{a:?}"
    );
    let r = c.stored_replica("r1").await;
    assert!(r.stop_requested);
    assert_eq!(r.reason, tidal_api::TERMINATED_REASON);
    assert_eq!(r.reason, "terminated through the API");
    assert_eq!(
        c.get("/v1/models/m/deployments/d3/replicas").await.body["replicas"][0]["stop_requested"],
        true
    );
    // Another deployment's replica, an unknown one: 404 naming it; nothing written.
    let a = c
        .call("DELETE", "/v1/models/m/deployments/d3/replicas/x1", None)
        .await;
    assert_eq!(a.status, 404, "{a:?}");
    assert!(a.message().contains("no replica x1"), "{}", a.message());
    assert!(!c.stored_replica("x1").await.stop_requested);
    let a = c
        .call("DELETE", "/v1/models/m/deployments/d3/replicas/nope", None)
        .await;
    assert_eq!(a.status, 404);
    // Through the alias.
    let a = c
        .call(
            "DELETE",
            "/v1/models/m/deployments/production/replicas/x1",
            None,
        )
        .await;
    assert_eq!(a.status, 200);
    assert!(c.stored_replica("x1").await.stop_requested);
    c.stop().await;
}

const SHA: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

fn spec(extra: &str) -> String {
    format!(
        r#"{{"deployment": "new-v1", "autoscaling_settings": {{"min_replica": 1, "max_replica": 3}},
            "command": ["tidal", "model", "serve"],
            "weights": [{{"name": "model.safetensors", "url": "http://weights.local/m.safetensors",
                         "size_bytes": 3, "sha256": "{SHA}"}}]{extra}}}"#
    )
}

#[tokio::test]
async fn deployments_are_created_from_a_spec() {
    let c = Cluster::start().await;
    let a = c
        .call("POST", "/v1/models/m/deployments", Some(&spec("")))
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.body["id"], "new-v1");
    assert_eq!(a.body["model_id"], "m");
    assert_eq!(a.body["status"], "DEPLOYING");
    assert_eq!(a.body["is_production"], false);
    assert_eq!(a.body["autoscaling_settings"]["max_replica"], 3);
    let stored = c.stored("new-v1").await;
    let resources = stored.resources.unwrap();
    assert_eq!(resources.command, "tidal");
    assert_eq!(resources.weight_files[0].sha256, SHA);
    assert_eq!(c.get("/v1/models/m/deployments/new-v1").await.status, 200);
    // The model may be named in the body too, if it is the path's.
    let a = c
        .call(
            "POST",
            "/v1/models/m/deployments",
            Some(&spec(r#", "model": "m""#).replace("new-v1", "new-v2")),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");

    // The same id again: 409.
    let a = c
        .call("POST", "/v1/models/m/deployments", Some(&spec("")))
        .await;
    assert_eq!((a.status, a.field()), (409, Some("deployment")), "{a:?}");
    // Bad specs: 400 naming the field.
    for (body, field) in [
        (spec(r#", "model": "other""#), "model"),
        (spec("").replace(r#""max_replica": 3"#, r#""max_replica": 0"#), "autoscaling_settings.max_replica"),
        (spec(r#", "colour": "blue""#), "colour"),
        (spec("").replace(SHA, "abc"), "weights[0].sha256"),
        (spec(r#", "command": []"#).replace(r#""command": ["tidal", "model", "serve"],"#, ""), "command"),
        (
            spec("").replace(
                r#""url": "http://weights.local/m.safetensors",
                         "size_bytes": 3, "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad""#,
                r#""path": "model.safetensors""#,
            ),
            "weights[0].path",
        ),
    ] {
        let a = c.call("POST", "/v1/models/m/deployments", Some(&body)).await;
        assert_eq!((a.status, a.field()), (400, Some(field)), "{body}: {a:?}");
    }
    let a = c
        .call("POST", "/v1/models/m/deployments", Some("not json"))
        .await;
    assert_eq!(a.status, 400);

    // PUT replaces a deployment's spec; its id may be left out.
    let replaced = spec("").replace(r#""max_replica": 3"#, r#""max_replica": 4"#);
    let a = c
        .call("PUT", "/v1/models/m/deployments/new-v1", Some(&replaced))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["autoscaling_settings"]["max_replica"], 4);
    assert_eq!(c.stored_settings("new-v1").await.max_replica, 4);
    let a = c
        .call("PUT", "/v1/models/m/deployments/gone", Some(&replaced))
        .await;
    assert_eq!((a.status, a.field()), (400, Some("deployment")), "{a:?}");
    let a = c
        .call(
            "PUT",
            "/v1/models/m/deployments/gone",
            Some(&replaced.replace(r#""deployment": "new-v1","#, "")),
        )
        .await;
    assert_eq!(a.status, 404, "{a:?}");
    c.stop().await;
}
