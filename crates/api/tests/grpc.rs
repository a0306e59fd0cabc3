//! The `tidal.v1.Management` gRPC service against a real in-process store,
//! on the API's own port: for every RPC a success case and its error
//! cases (codes, and the stable error code and field in the metadata).
//! The store, the API and the keys are started as the REST tests start
//! them (`api/support.rs`).

#[path = "grpc/cluster.rs"]
mod cluster;
#[path = "grpc/deployments.rs"]
mod deployments;
// Shared with the REST tests, which use all of it.
#[allow(dead_code)]
#[path = "api/support.rs"]
mod support;

use tidal_api::{ERROR_CODE_KEY, FIELD_KEY};
use tidal_auth::Scope;
use tidal_proto::pb;
use tidal_proto::pb::management_client::ManagementClient;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::support::{Cluster, WAIT, new_key};

/// A client of the API's port, sending `key` (if any) as `Bearer`.
#[derive(Debug)]
pub(crate) struct Grpc {
    client: ManagementClient<Channel>,
    key: Option<String>,
}

impl Grpc {
    /// With the cluster's management key.
    pub(crate) async fn new(c: &Cluster) -> Grpc {
        Grpc::with_key(c, Some(c.key.as_str())).await
    }

    pub(crate) async fn with_key(c: &Cluster, key: Option<&str>) -> Grpc {
        let client = ManagementClient::connect(format!("http://{}", c.api.addr()))
            .await
            .unwrap();
        Grpc {
            client,
            key: key.map(|k| format!("Bearer {k}")),
        }
    }

    /// A request with the key.
    pub(crate) fn req<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(key) = &self.key {
            request
                .metadata_mut()
                .insert("authorization", key.parse().unwrap());
        }
        request
    }

    pub(crate) fn c(&self) -> ManagementClient<Channel> {
        self.client.clone()
    }
}

/// A deployment reference.
pub(crate) fn which(model: &str, deployment: &str) -> pb::DeploymentRef {
    pb::DeploymentRef {
        model_id: model.into(),
        deployment_id: deployment.into(),
    }
}

/// An error's code, its `tidal-error-code` and its `tidal-field`.
pub(crate) fn error(s: &Status) -> (Code, &str, Option<&str>) {
    let text = |key: &str| s.metadata().get(key).map(|v| v.to_str().unwrap());
    (
        s.code(),
        text(ERROR_CODE_KEY).unwrap_or_default(),
        text(FIELD_KEY),
    )
}

/// Calls every RPC once with empty (or unknown) arguments; each answer's
/// error, or `None` for a success.
async fn call_every_rpc(g: &Grpc) -> Vec<(&'static str, Option<Status>)> {
    let mut c = g.c();
    let d = || which("m", "d");
    let err = |r: Result<(), Status>| r.err();
    vec![
        (
            "ListModels",
            err(c
                .list_models(g.req(pb::ListModelsRequest {}))
                .await
                .map(drop)),
        ),
        (
            "ListDeployments",
            err(c
                .list_deployments(g.req(pb::ListDeploymentsRequest {
                    model_id: "m".into(),
                }))
                .await
                .map(drop)),
        ),
        (
            "GetDeployment",
            err(c.get_deployment(g.req(d())).await.map(drop)),
        ),
        (
            "CreateDeployment",
            err(c
                .create_deployment(g.req(pb::CreateDeploymentRequest::default()))
                .await
                .map(drop)),
        ),
        (
            "ReplaceDeployment",
            err(c
                .replace_deployment(g.req(pb::ReplaceDeploymentRequest::default()))
                .await
                .map(drop)),
        ),
        (
            "GetAutoscalingSettings",
            err(c.get_autoscaling_settings(g.req(d())).await.map(drop)),
        ),
        (
            "UpdateAutoscalingSettings",
            err(c
                .update_autoscaling_settings(g.req(pb::UpdateAutoscalingSettingsRequest::default()))
                .await
                .map(drop)),
        ),
        (
            "PromoteDeployment",
            err(c
                .promote_deployment(g.req(pb::PromoteDeploymentRequest::default()))
                .await
                .map(drop)),
        ),
        (
            "ActivateDeployment",
            err(c.activate_deployment(g.req(d())).await.map(drop)),
        ),
        (
            "DeactivateDeployment",
            err(c.deactivate_deployment(g.req(d())).await.map(drop)),
        ),
        (
            "ListReplicas",
            err(c.list_replicas(g.req(d())).await.map(drop)),
        ),
        (
            "TerminateReplica",
            err(c
                .terminate_replica(g.req(pb::TerminateReplicaRequest::default()))
                .await
                .map(drop)),
        ),
        (
            "ReplicaLogs",
            err(c
                .replica_logs(g.req(pb::ReplicaLogsQuery::default()))
                .await
                .map(drop)),
        ),
        (
            "ListWorkers",
            err(c
                .list_workers(g.req(pb::ListWorkersRequest {}))
                .await
                .map(drop)),
        ),
        (
            "ClusterStatus",
            err(c
                .cluster_status(g.req(pb::ClusterStatusRequest {}))
                .await
                .map(drop)),
        ),
        (
            "GetClusterSettings",
            err(c
                .get_cluster_settings(g.req(pb::GetClusterSettingsRequest {}))
                .await
                .map(drop)),
        ),
        (
            "UpdateClusterSettings",
            err(c
                .update_cluster_settings(g.req(pb::UpdateClusterSettingsRequest::default()))
                .await
                .map(drop)),
        ),
        (
            "CreateKey",
            err(c
                .create_key(g.req(pb::CreateKeyRequest::default()))
                .await
                .map(drop)),
        ),
        (
            "ListKeys",
            err(c.list_keys(g.req(pb::ListKeysRequest {})).await.map(drop)),
        ),
        (
            "RevokeKey",
            err(c
                .revoke_key(g.req(pb::RevokeKeyRequest {
                    id: "abcd1234".into(),
                }))
                .await
                .map(drop)),
        ),
    ]
}

#[tokio::test]
async fn every_rpc_needs_a_live_key_with_the_management_scope() {
    let c = Cluster::start().await;
    let inference = new_key(&c.client, &c.api, &[Scope::Inference]).await;
    let revoked = new_key(&c.client, &c.api, &[Scope::Management]).await;
    let revoked_id = revoked.split('_').nth(1).unwrap().to_owned();
    let (_, revision) = tidal_auth::revoke(&c.client, &revoked_id).await.unwrap();
    assert!(c.api.key_ring().wait_for_revision(revision, WAIT).await);
    let unknown = "tidal_zzzzzzzz_0123456789abcdefghijABCDEFGHIJkl";
    let cases = [
        (None, Code::Unauthenticated, "missing_api_key"),
        (Some("nonsense"), Code::Unauthenticated, "malformed_api_key"),
        (Some(unknown), Code::Unauthenticated, "invalid_api_key"),
        (
            Some(revoked.as_str()),
            Code::Unauthenticated,
            "revoked_api_key",
        ),
        (
            Some(inference.as_str()),
            Code::PermissionDenied,
            "insufficient_scope",
        ),
    ];
    for (key, code, stable) in cases {
        let g = Grpc::with_key(&c, key).await;
        let answers = call_every_rpc(&g).await;
        assert_eq!(answers.len(), 20);
        for (rpc, answer) in answers {
            let s = answer.unwrap_or_else(|| panic!("{rpc} with {key:?} succeeded"));
            assert_eq!(error(&s), (code, stable, None), "{rpc} with {key:?}: {s:?}");
        }
    }
    // `Api-Key <key>` works as well as `Bearer <key>`.
    let mut g = Grpc::new(&c).await;
    g.key = Some(format!("Api-Key {}", c.key));
    let mut client = g.c();
    client
        .list_models(g.req(pb::ListModelsRequest {}))
        .await
        .unwrap();
    // With the key, every RPC gets past the check (its own answer follows).
    let g = Grpc::new(&c).await;
    for (rpc, answer) in call_every_rpc(&g).await {
        if let Some(s) = answer {
            assert!(
                !matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied),
                "{rpc}: {s:?}"
            );
        }
    }
    c.stop().await;
}

#[tokio::test]
async fn keys_are_created_listed_and_revoked() {
    let c = Cluster::start().await;
    let g = Grpc::new(&c).await;
    let mut client = g.c();
    let new = client
        .create_key(g.req(pb::CreateKeyRequest {
            name: "ci".into(),
            scopes: vec!["management".into(), "inference".into()],
        }))
        .await
        .unwrap()
        .into_inner();
    let info = new.info.unwrap();
    assert_eq!(info.scopes, ["management", "inference"]);
    assert!(
        new.key.starts_with(&format!("tidal_{}_", info.id)),
        "{}",
        new.key
    );
    // Usable at once, over gRPC and REST on the same port.
    let fresh = Grpc::with_key(&c, Some(&new.key)).await;
    fresh
        .c()
        .list_keys(fresh.req(pb::ListKeysRequest {}))
        .await
        .unwrap();
    let rest = support::http(
        c.api.addr(),
        "GET",
        "/v1/keys",
        Some(&format!("Bearer {}", new.key)),
        None,
    )
    .await;
    assert_eq!(rest.status, 200, "{rest:?}");
    // Default scope: management.
    let default = client
        .create_key(g.req(pb::CreateKeyRequest {
            name: "d".into(),
            scopes: vec![],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(default.info.unwrap().scopes, ["management"]);
    // Listed without the key or its digest.
    let keys = client
        .list_keys(g.req(pb::ListKeysRequest {}))
        .await
        .unwrap()
        .into_inner()
        .keys;
    let listed = keys.iter().find(|k| k.id == info.id).unwrap();
    assert_eq!((listed.name.as_str(), listed.revoked), ("ci", false));
    assert_eq!(keys.len(), 3);
    // Bad scope and bad name: INVALID_ARGUMENT naming the field.
    let s = client
        .create_key(g.req(pb::CreateKeyRequest {
            name: "x".into(),
            scopes: vec!["management".into(), "admin".into()],
        }))
        .await
        .unwrap_err();
    assert_eq!(
        error(&s),
        (Code::InvalidArgument, "invalid_field", Some("scopes[1]")),
        "{s:?}"
    );
    let s = client
        .create_key(g.req(pb::CreateKeyRequest {
            name: "x".repeat(200),
            scopes: vec![],
        }))
        .await
        .unwrap_err();
    assert_eq!(
        error(&s),
        (Code::InvalidArgument, "invalid_field", Some("name")),
        "{s:?}"
    );
    // Revoked: shown as such, and refused from then on.
    let revoked = client
        .revoke_key(g.req(pb::RevokeKeyRequest {
            id: info.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked);
    let s = fresh
        .c()
        .list_keys(fresh.req(pb::ListKeysRequest {}))
        .await
        .unwrap_err();
    assert_eq!(error(&s), (Code::Unauthenticated, "revoked_api_key", None));
    // Unknown id: NOT_FOUND.
    let s = client
        .revoke_key(g.req(pb::RevokeKeyRequest {
            id: "zzzzzzzz".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(error(&s).0, Code::NotFound, "{s:?}");
    c.stop().await;
}
