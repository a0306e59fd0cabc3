//! tidal's own routes beyond Baseten's: models, workers, replica logs,
//! cluster status and the cluster's settings.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use prost::Message;
use serde_json::{Value, json};
use tidal_proto::pb;
use tidal_store::app::Table;
use tidal_store::service::now_ms;

use crate::body;
use crate::config::{self, ClusterConfig, ClusterPatch};
use crate::error::HttpError;
use crate::server::Ctx;
use crate::store::{CAS_ATTEMPTS, contended, model_of};
use crate::views;

type Answer = Result<Json<Value>, HttpError>;

/// Controllers' presence leases in NODE_LEASES are `controller:<id>`.
const CONTROLLER_PREFIX: &str = "controller:";
/// How long the API waits for a worker's logs.
const WORKER_TIMEOUT: Duration = Duration::from_secs(5);

/// Every model (a model exists while it has deployments), by id.
pub(crate) async fn list_models(ctx: &Ctx) -> Result<Vec<pb::ModelSummary>, HttpError> {
    let mut models: BTreeMap<String, pb::ModelSummary> = BTreeMap::new();
    for s in ctx.store.all_deployments().await? {
        let id = model_of(&s.value).to_owned();
        let m = models
            .entry(id.clone())
            .or_insert_with(|| pb::ModelSummary {
                id,
                ..pb::ModelSummary::default()
            });
        if let Some(d) = &s.value.deployment {
            if d.is_production {
                m.production_deployment_id = Some(s.key.clone());
            }
            if d.is_development {
                m.development_deployment_id = Some(s.key.clone());
            }
            if let Some(env) = &d.environment
                && !m.environments.contains(env)
            {
                m.environments.push(env.clone());
            }
        }
        m.deployment_ids.push(s.key);
    }
    Ok(models
        .into_values()
        .map(|mut m| {
            m.environments.sort();
            m
        })
        .collect())
}

/// GET /v1/models → `{"models": [{id, deployment_ids, production_deployment_id,
/// development_deployment_id, environments}]}`.
pub(crate) async fn models(State(ctx): State<Arc<Ctx>>) -> Answer {
    let list: Vec<Value> = list_models(&ctx).await?.iter().map(views::model).collect();
    Ok(Json(json!({ "models": list })))
}

/// Node leases by name.
async fn leases(ctx: &Ctx, prefix: &str) -> Result<Vec<(String, pb::Lease)>, HttpError> {
    let (rows, _) = ctx.store.client.list(Table::NodeLeases, prefix).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(k, kv)| Some((k, pb::Lease::decode(kv.value.as_slice()).ok()?)))
        .collect())
}

async fn worker_nodes(ctx: &Ctx) -> Result<Vec<pb::WorkerNode>, HttpError> {
    let (rows, _) = ctx.store.client.list(Table::WorkerNodes, "").await?;
    rows.into_iter()
        .map(|(k, kv)| {
            pb::WorkerNode::decode(kv.value.as_slice())
                .map_err(|e| HttpError::corrupt(format_args!("worker {k}"), e))
        })
        .collect()
}

/// Every worker node with its liveness, by id.
pub(crate) async fn list_workers(ctx: &Ctx) -> Result<Vec<pb::WorkerInfo>, HttpError> {
    let nodes = worker_nodes(ctx).await?;
    let leases: HashMap<String, pb::Lease> = leases(ctx, "").await?.into_iter().collect();
    let now = now_ms();
    Ok(nodes
        .into_iter()
        .map(|node| {
            let lease = leases.get(&node.id);
            pb::WorkerInfo {
                live: lease.is_some_and(|l| l.expires_at_ms > now),
                lease_expires_at_ms: lease.map(|l| l.expires_at_ms),
                node: Some(node),
            }
        })
        .collect())
}

/// GET /v1/workers → `{"workers": [...]}`: each node's record and whether
/// its node lease is live.
pub(crate) async fn workers(State(ctx): State<Arc<Ctx>>) -> Answer {
    let list: Vec<Value> = list_workers(&ctx)
        .await?
        .iter()
        .map(views::worker)
        .collect();
    Ok(Json(json!({ "workers": list })))
}

/// The store's members, the live controllers, and worker and deployment
/// counts.
pub(crate) async fn cluster_status(ctx: &Ctx) -> Result<pb::ClusterStatusResponse, HttpError> {
    let store = ctx.store.client.status().await?;
    let now = now_ms();
    let controllers = leases(ctx, CONTROLLER_PREFIX)
        .await?
        .into_iter()
        .filter(|(_, l)| l.expires_at_ms > now)
        .map(|(name, l)| pb::ControllerStatus {
            id: name
                .strip_prefix(CONTROLLER_PREFIX)
                .unwrap_or(&name)
                .to_owned(),
            address: l.holder,
            lease_expires_at_ms: l.expires_at_ms,
        })
        .collect();
    let workers = list_workers(ctx).await?;
    let deployments = ctx.store.all_deployments().await?;
    let inactive = i32::from(pb::DeploymentStatus::Inactive);
    let not_inactive = deployments
        .iter()
        .filter(|d| {
            d.value
                .deployment
                .as_ref()
                .is_some_and(|d| d.status != inactive)
        })
        .count();
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    Ok(pb::ClusterStatusResponse {
        members: store
            .members
            .iter()
            .map(|m| pb::StoreMemberStatus {
                node_id: m.node_id,
                addr: m.addr.clone(),
                voter: m.voter,
                leader: m.node_id == store.leader,
                lag: store.replication_known.then_some(m.lag),
            })
            .collect(),
        cluster_id: store.cluster_id,
        leader: (store.leader != 0).then_some(store.leader),
        term: store.term,
        last_applied: store.last_applied,
        controllers,
        workers_total: count(workers.len()),
        workers_live: count(workers.iter().filter(|w| w.live).count()),
        deployments_total: count(deployments.len()),
        deployments_not_inactive: count(not_inactive),
    })
}

/// GET /v1/cluster/status → the store's members, live controllers, and
/// worker and deployment counts.
pub(crate) async fn status(State(ctx): State<Arc<Ctx>>) -> Answer {
    Ok(Json(views::cluster_status(&cluster_status(&ctx).await?)))
}

/// GET /v1/cluster/settings → `ClusterConfig`.
pub(crate) async fn get_settings(State(ctx): State<Arc<Ctx>>) -> Answer {
    let config = ctx.cluster().await?;
    Ok(Json(json!(config)))
}

/// PATCH /v1/cluster/settings: any of `max_replica_limit`,
/// `deactivate_development_after_secs`, `deactivate_production_after_secs`
/// → the new `ClusterConfig`.
pub(crate) async fn patch_settings(State(ctx): State<Arc<Ctx>>, bytes: Bytes) -> Answer {
    let patch = ClusterPatch::from_body(&body::object(&bytes)?)?;
    Ok(Json(json!(update_settings(&ctx, &patch).await?)))
}

/// Applies `patch` to the cluster's settings → the new settings. Lowering
/// the replica limit below a deployment's `max_replica` is refused (409,
/// naming it).
pub(crate) async fn update_settings(
    ctx: &Ctx,
    patch: &ClusterPatch,
) -> Result<ClusterConfig, HttpError> {
    for _ in 0..CAS_ATTEMPTS {
        let (current, mod_revision) = config::read(&ctx.store, &ctx.defaults).await?;
        let next: ClusterConfig = current.patched(patch)?;
        next.validate()?;
        if next == current && mod_revision != 0 {
            return Ok(next);
        }
        if next.max_replica_limit < current.max_replica_limit {
            for s in ctx.store.all_deployments().await? {
                let max = s
                    .value
                    .deployment
                    .as_ref()
                    .and_then(|d| d.autoscaling_settings.as_ref())
                    .map_or(0, |a| a.max_replica);
                if max > next.max_replica_limit {
                    return Err(HttpError::conflict(format!(
                        "deployment {} has max_replica {max}, over the new max_replica_limit {}; \
                         lower its max_replica first",
                        s.key, next.max_replica_limit
                    ))
                    .with_field("max_replica_limit"));
                }
            }
        }
        if ctx.store.commit(&[config::put(next, mod_revision)]).await? {
            tracing::info!(?next, "cluster settings changed");
            return Ok(next);
        }
    }
    Err(contended("the cluster's settings"))
}

/// GET /v1/replicas/{replica_id}/logs?tail=N → `{replica_id, worker_id,
/// lines, truncated}`.
pub(crate) async fn logs(
    State(ctx): State<Arc<Ctx>>,
    UrlPath(replica): UrlPath<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    if let Some(other) = query.keys().find(|k| k.as_str() != "tail") {
        return Err(HttpError::invalid(
            other.as_str(),
            format!("unknown query parameter `{other}`; the only one is `tail`"),
        ));
    }
    let tail = match query.get("tail") {
        None => 0,
        Some(t) => t.parse::<u32>().map_err(|_| {
            HttpError::invalid(
                "tail",
                format!("tail must be a whole number of lines (0 = every line kept); got {t:?}"),
            )
        })?,
    };
    Ok(Json(views::logs(
        &replica_logs(&ctx, &replica, tail).await?,
    )))
}

/// A replica's output (the last `tail` lines; 0 = all kept), read from its
/// worker over gRPC (`tidal.v1.Worker/ReplicaLogs`). A worker that is gone
/// or does not answer is a 502.
pub(crate) async fn replica_logs(
    ctx: &Ctx,
    replica: &str,
    tail: u32,
) -> Result<pb::ReplicaLogsAnswer, HttpError> {
    let record = ctx
        .store
        .replica(replica)
        .await?
        .ok_or_else(|| HttpError::not_found(format!("no replica {replica}")))?
        .value;
    let worker_id = record.worker_id.clone();
    let (node, _) = ctx.store.client.get(Table::WorkerNodes, &worker_id).await?;
    let Some(node) = node else {
        return Err(HttpError::bad_gateway(format!(
            "worker {worker_id} of replica {replica} is gone (it has no node record); its logs \
             went with it"
        )));
    };
    let node = pb::WorkerNode::decode(node.value.as_slice())
        .map_err(|e| HttpError::corrupt(format_args!("worker {worker_id}"), e))?;
    let unreachable = |e: &dyn std::fmt::Display| {
        HttpError::bad_gateway(format!(
            "worker {worker_id} at {} did not answer for the logs of replica {replica}: {e}",
            node.address
        ))
    };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", node.address))
        .map_err(|e| unreachable(&e))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(WORKER_TIMEOUT);
    let channel = endpoint.connect().await.map_err(|e| unreachable(&e))?;
    let mut client = pb::worker_client::WorkerClient::new(channel);
    let answer = client
        .replica_logs(pb::ReplicaLogsRequest {
            replica_id: replica.to_owned(),
            tail_lines: tail,
        })
        .await;
    match answer {
        Ok(response) => {
            let logs = response.into_inner();
            Ok(pb::ReplicaLogsAnswer {
                replica_id: replica.to_owned(),
                worker_id,
                lines: logs.lines,
                truncated: logs.truncated,
            })
        }
        Err(status) if status.code() == tonic::Code::NotFound => {
            Err(HttpError::not_found(format!(
                "worker {worker_id} keeps no logs for replica {replica}: {}",
                status.message()
            )))
        }
        Err(status) => Err(unreachable(&status.message())),
    }
}
