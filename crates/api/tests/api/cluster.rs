//! Workers, cluster status, replica logs, and the cluster's settings.

use serde_json::json;

use crate::support::{Cluster, Kind, settings, workers_and_replicas};

#[tokio::test]
async fn workers_status_and_replica_logs() {
    let c = Cluster::start().await;
    let worker = workers_and_replicas(&c).await;

    let a = c.get("/v1/workers").await;
    assert_eq!(a.status, 200, "{a:?}");
    let workers = a.body["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    assert_eq!(
        (workers[0]["id"].clone(), workers[0]["live"].clone()),
        (json!("w1"), json!(true))
    );
    assert_eq!(workers[0]["address"], worker.to_string());
    assert_eq!(
        (workers[1]["id"].clone(), workers[1]["live"].clone()),
        (json!("w2"), json!(false))
    );

    let a = c.get("/v1/cluster/status").await;
    assert_eq!(a.status, 200, "{a:?}");
    let members = a.body["store"]["members"].as_array().unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["addr"], c.node.addr().to_string());
    assert_eq!(members[0]["leader"], true);
    assert_eq!(a.body["store"]["leader"], 1);
    assert_eq!(
        a.body["controllers"],
        json!([{"id": "c1", "address": "127.0.0.1:7101",
        "lease_expires_at_ms": a.body["controllers"][0]["lease_expires_at_ms"]}])
    );
    assert_eq!(a.body["workers"], json!({"total": 2, "live": 1}));
    assert_eq!(a.body["deployments"]["total"], 2);

    // Logs from the worker, with a tail.
    let a = c.get("/v1/replicas/r1/logs").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.body,
        json!({"replica_id": "r1", "worker_id": "w1", "lines": ["one", "two", "three"], "truncated": false})
    );
    let a = c.get("/v1/replicas/r1/logs?tail=2").await;
    assert_eq!(
        (a.body["lines"].clone(), a.body["truncated"].clone()),
        (json!(["two", "three"]), json!(true))
    );
    // A worker that does not answer, or is gone: 502 naming it.
    let a = c.get("/v1/replicas/r2/logs").await;
    assert_eq!((a.status, a.code()), (502, "bad_gateway"), "{a:?}");
    assert!(a.message().contains("worker w2"), "{}", a.message());
    let a = c.get("/v1/replicas/r3/logs").await;
    assert_eq!(a.status, 502, "{a:?}");
    assert!(
        a.message().contains("worker gone") && a.message().contains("is gone"),
        "{}",
        a.message()
    );
    // Unknown replica: 404; bad query: 400 naming it.
    let a = c.get("/v1/replicas/nope/logs").await;
    assert_eq!(a.status, 404);
    assert!(a.message().contains("nope"));
    let a = c.get("/v1/replicas/r1/logs?tail=many").await;
    assert_eq!((a.status, a.field()), (400, Some("tail")));
    let a = c.get("/v1/replicas/r1/logs?lines=3").await;
    assert_eq!((a.status, a.field()), (400, Some("lines")));
    c.stop().await;
}

#[tokio::test]
async fn cluster_settings_are_read_patched_and_checked() {
    let c = Cluster::start().await;
    c.deployment("m", "d1", Kind::Plain, settings(0, 8)).await;
    let a = c.get("/v1/cluster/settings").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.body,
        json!({"max_replica_limit": 10, "deactivate_development_after_secs": 1_209_600,
               "deactivate_production_after_secs": 5_184_000})
    );
    // Above the limit: refused, naming max_replica and the limit.
    let path = "/v1/models/m/deployments/d1/autoscaling_settings";
    let a = c.call("PATCH", path, Some(r#"{"max_replica": 15}"#)).await;
    assert_eq!((a.status, a.field()), (400, Some("max_replica")));
    assert!(a.message().contains("between 1 and 10"), "{}", a.message());
    // Raise the limit: now accepted.
    let a = c
        .call(
            "PATCH",
            "/v1/cluster/settings",
            Some(r#"{"max_replica_limit": 20, "deactivate_development_after_secs": 86400}"#),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["max_replica_limit"], 20);
    assert_eq!(a.body["deactivate_development_after_secs"], 86_400);
    assert_eq!(a.body["deactivate_production_after_secs"], 5_184_000);
    assert_eq!(c.get("/v1/cluster/settings").await.body, a.body);
    let a = c.call("PATCH", path, Some(r#"{"max_replica": 15}"#)).await;
    assert_eq!(a.body["status"], "ACCEPTED", "{a:?}");
    // Lowering it below a deployment's max_replica: 409 naming it.
    let a = c
        .call(
            "PATCH",
            "/v1/cluster/settings",
            Some(r#"{"max_replica_limit": 12}"#),
        )
        .await;
    assert_eq!(
        (a.status, a.field()),
        (409, Some("max_replica_limit")),
        "{a:?}"
    );
    assert!(a.message().contains("deployment d1"), "{}", a.message());
    // Out of range, wrong type, unknown: 400 naming the field.
    for (body, field) in [
        (r#"{"max_replica_limit": 0}"#, "max_replica_limit"),
        (r#"{"max_replica_limit": 100000}"#, "max_replica_limit"),
        (
            r#"{"deactivate_development_after_secs": 60}"#,
            "deactivate_development_after_secs",
        ),
        (
            r#"{"deactivate_production_after_secs": "long"}"#,
            "deactivate_production_after_secs",
        ),
        (
            r#"{"per_deployment_replica_limit": 5}"#,
            "per_deployment_replica_limit",
        ),
    ] {
        let a = c.call("PATCH", "/v1/cluster/settings", Some(body)).await;
        assert_eq!((a.status, a.field()), (400, Some(field)), "{body}: {a:?}");
    }
    assert_eq!(
        c.get("/v1/cluster/settings").await.body["max_replica_limit"],
        20
    );
    c.stop().await;
}
