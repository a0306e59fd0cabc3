//! Workers, cluster status, replica logs, the cluster's settings.

use tidal_proto::pb;
use tonic::Code;

use crate::support::{Cluster, Kind, settings, workers_and_replicas};
use crate::{Grpc, error};

#[tokio::test]
async fn workers_status_and_replica_logs() {
    let c = Cluster::start().await;
    let worker = workers_and_replicas(&c).await;
    let g = Grpc::new(&c).await;
    let mut client = g.c();

    let workers = client
        .list_workers(g.req(pb::ListWorkersRequest {}))
        .await
        .unwrap()
        .into_inner()
        .workers;
    let seen: Vec<(&str, bool)> = workers
        .iter()
        .map(|w| (w.node.as_ref().unwrap().id.as_str(), w.live))
        .collect();
    assert_eq!(seen, [("w1", true), ("w2", false)]);
    assert_eq!(
        workers[0].node.as_ref().unwrap().address,
        worker.to_string()
    );
    assert!(workers[0].lease_expires_at_ms.is_some());
    assert_eq!(workers[1].lease_expires_at_ms, None);

    let s = client
        .cluster_status(g.req(pb::ClusterStatusRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.leader, Some(1));
    assert_eq!(s.members.len(), 1);
    assert_eq!(s.members[0].addr, c.node.addr().to_string());
    assert!(s.members[0].leader);
    assert_eq!(s.controllers.len(), 1);
    assert_eq!(
        (
            s.controllers[0].id.as_str(),
            s.controllers[0].address.as_str()
        ),
        ("c1", "127.0.0.1:7101")
    );
    assert_eq!((s.workers_total, s.workers_live), (2, 1));
    assert_eq!((s.deployments_total, s.deployments_not_inactive), (2, 2));

    // Logs from the worker, with a tail.
    let logs = |replica: &str, tail: u32| {
        g.req(pb::ReplicaLogsQuery {
            replica_id: replica.into(),
            tail,
        })
    };
    let l = client
        .replica_logs(logs("r1", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (l.replica_id.as_str(), l.worker_id.as_str(), l.truncated),
        ("r1", "w1", false)
    );
    assert_eq!(l.lines, ["one", "two", "three"]);
    let l = client
        .replica_logs(logs("r1", 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (l.lines.as_slice(), l.truncated),
        (&["two".to_owned(), "three".to_owned()][..], true)
    );
    // A worker that does not answer, or is gone: UNAVAILABLE naming it.
    let s = client.replica_logs(logs("r2", 0)).await.unwrap_err();
    assert_eq!(error(&s), (Code::Unavailable, "bad_gateway", None));
    assert!(s.message().contains("worker w2"), "{}", s.message());
    let s = client.replica_logs(logs("r3", 0)).await.unwrap_err();
    assert_eq!(error(&s).0, Code::Unavailable);
    assert!(s.message().contains("is gone"), "{}", s.message());
    // Unknown replica: NOT_FOUND.
    let s = client.replica_logs(logs("nope", 0)).await.unwrap_err();
    assert_eq!(error(&s), (Code::NotFound, "not_found", None));
    assert!(s.message().contains("nope"), "{}", s.message());
    c.stop().await;
}

#[tokio::test]
async fn cluster_settings_are_read_updated_and_checked() {
    let c = Cluster::start().await;
    c.deployment("m", "d1", Kind::Plain, settings(0, 8)).await;
    let g = Grpc::new(&c).await;
    let mut client = g.c();
    let get = pb::GetClusterSettingsRequest {};
    let s = client
        .get_cluster_settings(g.req(get))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.max_replica_limit, 10);
    assert_eq!(s.deactivate_development_after_secs, 14 * 86_400);

    let update = |r: pb::UpdateClusterSettingsRequest| g.req(r);
    let s = client
        .update_cluster_settings(update(pb::UpdateClusterSettingsRequest {
            max_replica_limit: Some(20),
            deactivate_production_after_secs: Some(7200),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            s.max_replica_limit,
            s.deactivate_development_after_secs,
            s.deactivate_production_after_secs
        ),
        (20, 14 * 86_400, 7200)
    );
    let read = client
        .get_cluster_settings(g.req(get))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, s);

    // Out of range: INVALID_ARGUMENT naming the field.
    for (request, field) in [
        (
            pb::UpdateClusterSettingsRequest {
                max_replica_limit: Some(0),
                ..Default::default()
            },
            "max_replica_limit",
        ),
        (
            pb::UpdateClusterSettingsRequest {
                max_replica_limit: Some(1 << 40),
                ..Default::default()
            },
            "max_replica_limit",
        ),
        (
            pb::UpdateClusterSettingsRequest {
                deactivate_development_after_secs: Some(10),
                ..Default::default()
            },
            "deactivate_development_after_secs",
        ),
    ] {
        let s = client
            .update_cluster_settings(update(request))
            .await
            .unwrap_err();
        assert_eq!(
            error(&s),
            (Code::InvalidArgument, "invalid_field", Some(field)),
            "{s:?}"
        );
    }
    // Below a deployment's max_replica: FAILED_PRECONDITION naming it.
    let s = client
        .update_cluster_settings(update(pb::UpdateClusterSettingsRequest {
            max_replica_limit: Some(5),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(
        error(&s),
        (
            Code::FailedPrecondition,
            "conflict",
            Some("max_replica_limit")
        )
    );
    assert!(s.message().contains("d1"), "{}", s.message());
    let read = client
        .get_cluster_settings(g.req(get))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.max_replica_limit, 20);
    c.stop().await;
}
