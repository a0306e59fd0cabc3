//! The JSON the REST API answers with: Baseten's `DeploymentV1` and
//! `EnvironmentV1`, and tidal's model, replica, worker, cluster-status,
//! logs and promotion-settings views. The public ones render the gRPC
//! answers, so the CLI prints what REST answers (`--json`) from what gRPC
//! answered, with this same code.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tidal_proto::pb;
use tidal_types::{AutoscalingSettings, Deployment};

use crate::error::HttpError;
use crate::store::{Stored, domain};

/// Baseten's `DeploymentV1` of a record, with `active_replica_count` =
/// its Ready replicas.
pub(crate) fn deployment(
    stored: &Stored<pb::DeploymentRecord>,
    ready: &HashMap<String, u32>,
) -> Result<Deployment, HttpError> {
    let mut d = domain(&stored.value, &stored.key)?;
    d.active_replica_count = ready.get(&stored.key).copied().unwrap_or(0);
    Ok(d)
}

/// A deployment as the REST API's JSON (`DeploymentV1`).
pub fn deployment_json(d: &Deployment) -> Result<Value, HttpError> {
    serde_json::to_value(d).map_err(|e| HttpError::corrupt(format_args!("deployment {}", d.id), e))
}

/// A replica phase's name without its prefix: `READY`, `FAILED`, ….
pub(crate) fn phase_name(phase: i32) -> &'static str {
    pb::ReplicaPhase::try_from(phase).map_or("UNKNOWN", |p| {
        p.as_str_name()
            .strip_prefix("REPLICA_PHASE_")
            .unwrap_or("UNKNOWN")
    })
}

/// Whether a replica has finished for good.
pub(crate) fn is_terminal(phase: i32) -> bool {
    [
        pb::ReplicaPhase::Stopped,
        pb::ReplicaPhase::Failed,
        pb::ReplicaPhase::Lost,
    ]
    .into_iter()
    .any(|p| i32::from(p) == phase)
}

/// A replica record for people (`…/replicas`' items).
pub fn replica(r: &pb::Replica) -> Value {
    json!({
        "id": r.id,
        "deployment_id": r.deployment_id,
        "phase": phase_name(r.phase),
        "worker_id": r.worker_id,
        "endpoint": (!r.endpoint.is_empty()).then_some(&r.endpoint),
        "reason": (!r.reason.is_empty()).then_some(&r.reason),
        "stop_requested": r.stop_requested,
        "created_at_ms": r.created_at_ms,
        "phase_changed_at_ms": r.phase_changed_at_ms,
        "exit_code": r.exit_code,
        "exit_signal": r.exit_signal,
        "gpu_indices": r.gpu_indices,
        "history": r.history.iter().map(|h| json!({
            "phase": phase_name(h.phase),
            "at_ms": h.at_ms,
        })).collect::<Vec<_>>(),
    })
}

/// A worker node and its liveness (`GET /v1/workers`' items).
pub fn worker(w: &pb::WorkerInfo) -> Value {
    let node = w.node.clone().unwrap_or_default();
    json!({
        "id": node.id,
        "region": node.region,
        "address": node.address,
        "live": w.live,
        "lease_expires_at_ms": w.lease_expires_at_ms,
        "schedulable": node.schedulable,
        "gpu_type": (!node.gpu_type.is_empty()).then_some(&node.gpu_type),
        "gpu_count": node.gpus.len(),
        "gpus_declared": node.gpus_declared,
        "cpu_millis": node.cpu_millis,
        "memory_bytes": node.memory_bytes,
        "labels": node.labels,
    })
}

/// A model (`GET /v1/models`' items).
pub fn model(m: &pb::ModelSummary) -> Value {
    json!({
        "id": m.id,
        "deployment_ids": m.deployment_ids,
        "production_deployment_id": m.production_deployment_id,
        "development_deployment_id": m.development_deployment_id,
        "environments": m.environments,
    })
}

/// `GET /v1/cluster/status`' answer.
pub fn cluster_status(s: &pb::ClusterStatusResponse) -> Value {
    let members: Vec<Value> = s
        .members
        .iter()
        .map(|m| {
            json!({
                "node_id": m.node_id,
                "addr": m.addr,
                "voter": m.voter,
                "leader": m.leader,
                "lag": m.lag,
            })
        })
        .collect();
    let controllers: Vec<Value> = s
        .controllers
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "address": c.address,
                "lease_expires_at_ms": c.lease_expires_at_ms,
            })
        })
        .collect();
    json!({
        "store": {
            "cluster_id": s.cluster_id,
            "leader": s.leader,
            "term": s.term,
            "last_applied": s.last_applied,
            "members": members,
        },
        "controllers": controllers,
        "workers": { "total": s.workers_total, "live": s.workers_live },
        "deployments": { "total": s.deployments_total, "not_inactive": s.deployments_not_inactive },
    })
}

/// `GET /v1/replicas/{id}/logs`' answer.
pub fn logs(l: &pb::ReplicaLogsAnswer) -> Value {
    json!({
        "replica_id": l.replica_id,
        "worker_id": l.worker_id,
        "lines": l.lines,
        "truncated": l.truncated,
    })
}

/// Baseten's `PromotionSettingsV1` of a stored environment.
pub(crate) fn promotion_settings(p: Option<&pb::PromotionSettings>) -> Value {
    let p = p.cloned().unwrap_or_default();
    json!({
        "redeploy_on_promotion": p.redeploy_on_promotion,
        "ramp_up_while_promoting": p.ramp_up_while_promoting,
        "ramp_up_duration_seconds": p.ramp_up_duration_seconds,
        "rolling_deploy": p.rolling_deploy,
        "rolling_deploy_config": null,
        "promotion_cleanup_strategy": null,
    })
}

/// Baseten's `EnvironmentV1`.
pub(crate) fn environment(
    model: &str,
    name: &str,
    created_at: &str,
    current: Option<Value>,
    settings: &AutoscalingSettings,
    promotion: Option<&pb::PromotionSettings>,
) -> Value {
    json!({
        "name": name,
        "created_at": created_at,
        "model_id": model,
        "current_deployment": current,
        "autoscaling_settings": settings,
        "promotion_settings": promotion_settings(promotion),
    })
}

/// Now as RFC 3339 in UTC, to the second (`2025-01-02T03:04:05Z`).
pub(crate) fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

pub(crate) use tidal_types::time::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_709_210_096), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn phase_names_lose_their_prefix() {
        assert_eq!(phase_name(pb::ReplicaPhase::Ready.into()), "READY");
        assert_eq!(phase_name(99), "UNKNOWN");
        assert!(is_terminal(pb::ReplicaPhase::Lost.into()));
        assert!(!is_terminal(pb::ReplicaPhase::Draining.into()));
    }
}
