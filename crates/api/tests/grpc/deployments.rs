//! Models, deployments, autoscaling settings, promotion, activation,
//! creation from a spec, replicas.

use tidal_proto::pb;
use tonic::Code;

use crate::support::{Cluster, Kind, settings};
use crate::{Grpc, error, which};

const SHA: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

/// Model `m`: `m-prod` (production, 1-3), `m-dev` (development), `m-next`
/// (plain, 0-2).
async fn model(c: &Cluster) {
    c.deployment("m", "m-prod", Kind::Production, settings(1, 3))
        .await;
    c.deployment("m", "m-dev", Kind::Development, settings(0, 1))
        .await;
    c.deployment("m", "m-next", Kind::Plain, settings(0, 2))
        .await;
}

fn update(max: u32) -> pb::UpdateAutoscalingSettings {
    pb::UpdateAutoscalingSettings {
        max_replica: Some(max),
        ..Default::default()
    }
}

#[tokio::test]
async fn models_and_deployments_are_listed_and_found() {
    let c = Cluster::start().await;
    model(&c).await;
    c.deployment("other", "o-1", Kind::Plain, settings(0, 1))
        .await;
    c.replica("r1", "m-prod", "w", pb::ReplicaPhase::Ready)
        .await;
    let g = Grpc::new(&c).await;
    let mut client = g.c();

    let models = client
        .list_models(g.req(pb::ListModelsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(models.len(), 2);
    let m = &models[0];
    assert_eq!(m.id, "m");
    assert_eq!(m.deployment_ids, ["m-dev", "m-next", "m-prod"]);
    assert_eq!(m.production_deployment_id.as_deref(), Some("m-prod"));
    assert_eq!(m.development_deployment_id.as_deref(), Some("m-dev"));
    assert_eq!(m.environments, ["production"]);
    assert_eq!(models[1].production_deployment_id, None);

    let list = client
        .list_deployments(g.req(pb::ListDeploymentsRequest {
            model_id: "m".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .deployments;
    let ids: Vec<&str> = list.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["m-dev", "m-next", "m-prod"]);
    let prod = list.iter().find(|d| d.id == "m-prod").unwrap();
    assert_eq!(prod.active_replica_count, 1);

    for (reference, id) in [
        ("m-next", "m-next"),
        ("production", "m-prod"),
        ("development", "m-dev"),
    ] {
        let d = client
            .get_deployment(g.req(which("m", reference)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(d.id, id);
        assert_eq!(d.status, i32::from(pb::DeploymentStatus::Active));
    }
    let s = client
        .get_autoscaling_settings(g.req(which("m", "production")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.min_replica, s.max_replica), (1, 3));

    // Unknown model or deployment: NOT_FOUND naming it; a bad model id:
    // INVALID_ARGUMENT naming model_id.
    let s = client
        .list_deployments(g.req(pb::ListDeploymentsRequest {
            model_id: "nope".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(error(&s), (Code::NotFound, "not_found", None));
    assert!(s.message().contains("nope"), "{}", s.message());
    for rpc in ["get", "settings"] {
        let mut client = g.c();
        let ask = g.req(which("m", "gone"));
        let s = match rpc {
            "get" => client.get_deployment(ask).await.map(drop),
            _ => client.get_autoscaling_settings(ask).await.map(drop),
        }
        .unwrap_err();
        assert_eq!(error(&s).0, Code::NotFound, "{rpc}");
        assert!(s.message().contains("gone"), "{}", s.message());
    }
    let s = client
        .get_deployment(g.req(which("bad model!", "x")))
        .await
        .unwrap_err();
    assert_eq!(
        error(&s),
        (Code::InvalidArgument, "invalid_field", Some("model_id"))
    );
    c.stop().await;
}

#[tokio::test]
async fn autoscaling_settings_are_updated_and_checked() {
    let c = Cluster::start().await;
    model(&c).await;
    let g = Grpc::new(&c).await;
    let mut client = g.c();
    let set = |reference: &str, settings: pb::UpdateAutoscalingSettings| {
        g.req(pb::UpdateAutoscalingSettingsRequest {
            deployment: Some(which("m", reference)),
            settings: Some(settings),
        })
    };

    let a = client
        .update_autoscaling_settings(set(
            "m-next",
            pb::UpdateAutoscalingSettings {
                max_replica: Some(5),
                scale_down_delay: Some(120),
                max_scale_down_rate: Some(pb::OptionalU32 { value: Some(20) }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.status, i32::from(pb::UpdateStatus::Accepted), "{a:?}");
    let s = c.stored_settings("m-next").await;
    assert_eq!(
        (s.max_replica, s.scale_down_delay, s.max_scale_down_rate),
        (5, 120, Some(20))
    );
    // The same again: UNCHANGED; an empty wrapper turns a feature off.
    let a = client
        .update_autoscaling_settings(set("m-next", update(5)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.status, i32::from(pb::UpdateStatus::Unchanged));
    client
        .update_autoscaling_settings(set(
            "m-next",
            pb::UpdateAutoscalingSettings {
                max_scale_down_rate: Some(pb::OptionalU32 { value: None }),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    assert_eq!(c.stored_settings("m-next").await.max_scale_down_rate, None);

    // Out of range: INVALID_ARGUMENT naming the field; nothing written.
    for (settings, field) in [
        (update(11), "max_replica"),
        (
            pb::UpdateAutoscalingSettings {
                autoscaling_window: Some(5),
                ..Default::default()
            },
            "autoscaling_window",
        ),
        (
            pb::UpdateAutoscalingSettings {
                min_replica: Some(9),
                ..Default::default()
            },
            "min_replica",
        ),
    ] {
        let s = client
            .update_autoscaling_settings(set("m-next", settings))
            .await
            .unwrap_err();
        assert_eq!(
            error(&s),
            (Code::InvalidArgument, "invalid_field", Some(field)),
            "{s:?}"
        );
        assert!(s.message().contains(field), "{}", s.message());
    }
    assert_eq!(c.stored_settings("m-next").await.max_replica, 5);
    // A development deployment's settings are fixed.
    let s = client
        .update_autoscaling_settings(set("development", update(2)))
        .await
        .unwrap_err();
    assert_eq!(
        error(&s),
        (Code::InvalidArgument, "development_deployment", None),
        "{s:?}"
    );
    // Unknown deployment, missing reference.
    let s = client
        .update_autoscaling_settings(set("gone", update(2)))
        .await
        .unwrap_err();
    assert_eq!(error(&s).0, Code::NotFound);
    let s = client
        .update_autoscaling_settings(g.req(pb::UpdateAutoscalingSettingsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(
        error(&s),
        (Code::InvalidArgument, "invalid_field", Some("deployment"))
    );
    c.stop().await;
}

#[tokio::test]
async fn deactivate_activate_and_promote() {
    let c = Cluster::start().await;
    model(&c).await;
    let g = Grpc::new(&c).await;
    let mut client = g.c();
    let inactive = i32::from(pb::DeploymentStatus::Inactive);
    let active = i32::from(pb::DeploymentStatus::Active);

    let d = client
        .deactivate_deployment(g.req(which("m", "m-next")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.status, inactive);
    assert_eq!(
        c.stored("m-next").await.deployment.unwrap().status,
        inactive
    );
    // An inactive deployment cannot be promoted.
    let promote = |reference: &str, overrides: Option<pb::UpdateAutoscalingSettings>| {
        g.req(pb::PromoteDeploymentRequest {
            deployment: Some(which("m", reference)),
            scale_down_previous_production: Some(false),
            preserve_env_instance_type: None,
            autoscaling_settings: overrides,
        })
    };
    let s = client
        .promote_deployment(promote("m-next", None))
        .await
        .unwrap_err();
    assert_eq!(error(&s), (Code::FailedPrecondition, "conflict", None));
    assert!(s.message().contains("activate"), "{}", s.message());
    let d = client
        .activate_deployment(g.req(which("m", "m-next")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.status, active);

    // Overrides out of range: named under autoscaling_settings.
    let s = client
        .promote_deployment(promote("m-next", Some(update(0))))
        .await
        .unwrap_err();
    assert_eq!(
        error(&s),
        (
            Code::InvalidArgument,
            "invalid_field",
            Some("autoscaling_settings.max_replica")
        )
    );
    // Promoted with an override; the rest carries over; the previous
    // production deployment stays active (scale_down_previous false).
    let d = client
        .promote_deployment(promote("m-next", Some(update(4))))
        .await
        .unwrap()
        .into_inner();
    assert!(d.is_production);
    assert_eq!(d.environment.as_deref(), Some("production"));
    let s = d.autoscaling_settings.unwrap();
    assert_eq!((s.min_replica, s.max_replica), (0, 4));
    let previous = c.stored("m-prod").await.deployment.unwrap();
    assert!(!previous.is_production);
    assert_eq!(previous.status, active);
    let d = client
        .get_deployment(g.req(which("m", "production")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.id, "m-next");

    // Unknown deployments: NOT_FOUND for each.
    for rpc in ["activate", "deactivate", "promote"] {
        let mut client = g.c();
        let s = match rpc {
            "activate" => client.activate_deployment(g.req(which("m", "gone"))).await,
            "deactivate" => {
                client
                    .deactivate_deployment(g.req(which("m", "gone")))
                    .await
            }
            _ => client.promote_deployment(promote("gone", None)).await,
        }
        .unwrap_err();
        assert_eq!(error(&s).0, Code::NotFound, "{rpc}: {s:?}");
    }
    c.stop().await;
}

fn spec() -> pb::DeploymentSpec {
    pb::DeploymentSpec {
        deployment: Some("new-v1".into()),
        autoscaling_settings: Some(update(3)),
        resources: Some(pb::SpecResources {
            cpu_millis: Some(250),
            memory_bytes: Some(1 << 28),
            ..Default::default()
        }),
        command: vec!["tidal".into(), "model".into(), "serve".into()],
        env: [("A".to_owned(), "1".to_owned())].into(),
        health_path: Some("/health".into()),
        ready_timeout_secs: Some(60),
        stop_grace_secs: None,
        weights: vec![pb::SpecWeight {
            name: "m.safetensors".into(),
            url: "http://weights.local/m.safetensors".into(),
            size_bytes: 3,
            sha256: SHA.into(),
        }],
    }
}

#[tokio::test]
async fn deployments_are_created_from_a_typed_spec() {
    let c = Cluster::start().await;
    let g = Grpc::new(&c).await;
    let mut client = g.c();
    let create = |spec: pb::DeploymentSpec| {
        g.req(pb::CreateDeploymentRequest {
            model_id: "m".into(),
            spec: Some(spec),
        })
    };
    let d = client
        .create_deployment(create(spec()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.id.as_str(), d.model_id.as_str()), ("new-v1", "m"));
    assert_eq!(d.status, i32::from(pb::DeploymentStatus::Deploying));
    assert_eq!(d.autoscaling_settings.unwrap().max_replica, 3);
    let stored = c.stored("new-v1").await.resources.unwrap();
    assert_eq!(stored.command, "tidal");
    assert_eq!(stored.args, ["model", "serve"]);
    assert_eq!(stored.cpu_millis, 250);
    assert_eq!(stored.env.get("A").map(String::as_str), Some("1"));
    assert_eq!(stored.weight_files[0].sha256, SHA);
    assert_eq!(stored.stop_grace_secs, 30);

    // The same id again: ALREADY_EXISTS naming `deployment`.
    let s = client.create_deployment(create(spec())).await.unwrap_err();
    assert_eq!(
        error(&s),
        (Code::AlreadyExists, "already_exists", Some("deployment"))
    );
    // Bad specs: INVALID_ARGUMENT naming the field path.
    let mut no_command = spec();
    no_command.command.clear();
    let mut too_many = spec();
    too_many.autoscaling_settings = Some(update(50));
    let mut bad_digest = spec();
    bad_digest.weights[0].sha256 = "abc".into();
    let mut bad_grace = spec();
    bad_grace.stop_grace_secs = Some(0);
    let mut worker_env = spec();
    worker_env.env.insert("PORT".into(), "1".into());
    for (spec, field) in [
        (no_command, "command"),
        (too_many, "autoscaling_settings.max_replica"),
        (bad_digest, "weights[0].sha256"),
        (bad_grace, "stop_grace_secs"),
        (worker_env, "env.PORT"),
    ] {
        let mut spec = spec;
        spec.deployment = Some("other-v1".into());
        let s = client.create_deployment(create(spec)).await.unwrap_err();
        assert_eq!(
            error(&s),
            (Code::InvalidArgument, "invalid_spec", Some(field)),
            "{s:?}"
        );
    }
    let s = client
        .create_deployment(g.req(pb::CreateDeploymentRequest {
            model_id: "bad model!".into(),
            spec: Some(spec()),
        }))
        .await
        .unwrap_err();
    assert_eq!(error(&s).2, Some("model_id"));
    c.stop().await;
}

#[tokio::test]
async fn a_deployments_spec_is_replaced() {
    let c = Cluster::start().await;
    model(&c).await;
    let g = Grpc::new(&c).await;
    let mut client = g.c();
    let replace = |id: &str, spec: pb::DeploymentSpec| {
        g.req(pb::ReplaceDeploymentRequest {
            model_id: "m".into(),
            deployment_id: id.into(),
            spec: Some(spec),
        })
    };
    let mut next = spec();
    next.deployment = None;
    let d = client
        .replace_deployment(replace("m-prod", next.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.id, "m-prod");
    assert!(d.is_production, "promotion is kept");
    assert_eq!(d.status, i32::from(pb::DeploymentStatus::Active));
    assert_eq!(d.autoscaling_settings.unwrap().max_replica, 3);
    let stored = c.stored("m-prod").await;
    assert_eq!(
        stored.desired_replicas, 1,
        "what the controller decided is kept"
    );
    let resources = stored.resources.unwrap();
    assert_eq!(
        (resources.command.as_str(), resources.cpu_millis),
        ("tidal", 250)
    );
    // The same again changes nothing.
    client
        .replace_deployment(replace("m-prod", next.clone()))
        .await
        .unwrap();
    assert_eq!(c.stored("m-prod").await.resources.unwrap(), resources);

    // Another id in the spec, an unknown deployment, a development
    // deployment's settings, a bad spec.
    let mut other = spec();
    other.deployment = Some("m-next".into());
    let s = client
        .replace_deployment(replace("m-prod", other))
        .await
        .unwrap_err();
    assert_eq!(
        error(&s),
        (Code::InvalidArgument, "invalid_field", Some("deployment"))
    );
    let s = client
        .replace_deployment(replace("gone", next.clone()))
        .await
        .unwrap_err();
    assert_eq!(error(&s).0, Code::NotFound);
    let s = client
        .replace_deployment(replace("m-dev", next.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        error(&s),
        (
            Code::InvalidArgument,
            "development_deployment",
            Some("autoscaling_settings")
        )
    );
    let mut bad = next;
    bad.ready_timeout_secs = Some(0);
    let s = client
        .replace_deployment(replace("m-prod", bad))
        .await
        .unwrap_err();
    assert_eq!(
        error(&s),
        (
            Code::InvalidArgument,
            "invalid_spec",
            Some("ready_timeout_secs")
        )
    );
    c.stop().await;
}

#[tokio::test]
async fn replicas_are_listed_and_terminated() {
    let c = Cluster::start().await;
    model(&c).await;
    c.replica("r2", "m-prod", "w", pb::ReplicaPhase::Ready)
        .await;
    c.replica("r1", "m-prod", "w", pb::ReplicaPhase::Failed)
        .await;
    c.replica("r3", "m-next", "w", pb::ReplicaPhase::Ready)
        .await;
    let g = Grpc::new(&c).await;
    let mut client = g.c();

    let replicas = client
        .list_replicas(g.req(which("m", "production")))
        .await
        .unwrap()
        .into_inner()
        .replicas;
    let ids: Vec<&str> = replicas.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["r1", "r2"]);
    assert_eq!(replicas[1].phase, i32::from(pb::ReplicaPhase::Ready));

    let terminate = |reference: &str, replica: &str| {
        g.req(pb::TerminateReplicaRequest {
            deployment: Some(which("m", reference)),
            replica_id: replica.into(),
        })
    };
    client
        .terminate_replica(terminate("m-prod", "r2"))
        .await
        .unwrap();
    let r = c.stored_replica("r2").await;
    assert!(r.stop_requested);
    assert_eq!(r.reason, tidal_api::TERMINATED_REASON);
    // A replica of another deployment, or none: NOT_FOUND.
    for (reference, replica) in [("m-prod", "r3"), ("m-prod", "nope"), ("gone", "r2")] {
        let s = client
            .terminate_replica(terminate(reference, replica))
            .await
            .unwrap_err();
        assert_eq!(error(&s).0, Code::NotFound, "{reference} {replica}: {s:?}");
    }
    assert!(!c.stored_replica("r3").await.stop_requested);
    let s = client
        .list_replicas(g.req(which("m", "gone")))
        .await
        .unwrap_err();
    assert_eq!(error(&s).0, Code::NotFound);
    c.stop().await;
}
