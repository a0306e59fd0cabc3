//! Deactivating deployments that had no traffic for too long (Baseten's
//! rule: 14 days for development deployments, 60 days for production; both
//! are cluster settings, `ClusterConfig` under key `cluster` in table
//! CLUSTER_SETTINGS, so tests can shorten them).
//!
//! The holder of the placement shard sweeps every deployment now and then
//! ([`sweep_every`]). A deployment's last traffic is its record's
//! `last_request_at_ms`, which gateways keep (about once a minute). One
//! with none yet is stamped with the sweep's time, so it gets the whole
//! period from when tidal first saw it. An idle deployment becomes INACTIVE
//! (its replicas stop: the placer gives inactive deployments none, and the
//! gateway answers its requests with how to activate it) with a
//! `status_reason` saying why. Every write is fenced with the shard's epoch.

use std::time::Duration;

use prost::Message;
use tidal_proto::pb;
use tidal_store::Request;
use tidal_store::app::{Fence, Outcome, Precondition, Rejection, Table};
use tidal_store::client::Client;

/// The key of the cluster's settings in CLUSTER_SETTINGS.
pub const CLUSTER_CONFIG_KEY: &str = "cluster";
/// Baseten's development limit: 14 days.
pub const DEVELOPMENT_DEFAULT: Duration = Duration::from_secs(14 * 86_400);
/// Baseten's production limit: 60 days.
pub const PRODUCTION_DEFAULT: Duration = Duration::from_secs(60 * 86_400);

/// How long a deployment may go without traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Development (and not promoted) deployments.
    pub development: Duration,
    /// Production (and other promoted) deployments.
    pub production: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            development: DEVELOPMENT_DEFAULT,
            production: PRODUCTION_DEFAULT,
        }
    }
}

impl Limits {
    /// From the stored cluster settings (0 = the default).
    pub fn from_config(config: &pb::ClusterConfig) -> Self {
        let pick = |secs: u64, default| {
            if secs == 0 {
                default
            } else {
                Duration::from_secs(secs)
            }
        };
        Self {
            development: pick(
                config.deactivate_development_after_secs,
                DEVELOPMENT_DEFAULT,
            ),
            production: pick(config.deactivate_production_after_secs, PRODUCTION_DEFAULT),
        }
    }
}

/// How often to sweep: a tenth of the shorter limit, between 1 s and 60 s.
pub fn sweep_every(limits: Limits) -> Duration {
    (limits.development.min(limits.production) / 10)
        .clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// What a sweep does to one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    Keep,
    /// It has no last-request time yet: stamp it now.
    Stamp,
    /// Idle past its limit: deactivate, with this reason.
    Deactivate(String),
}

/// The action for `record` at `now_ms` (pure).
pub fn action(record: &pb::DeploymentRecord, limits: Limits, now_ms: u64) -> Action {
    let Some(d) = record.deployment.as_ref() else {
        return Action::Keep;
    };
    let inactive = d.status == i32::from(pb::DeploymentStatus::Inactive)
        || d.status == i32::from(pb::DeploymentStatus::Deactivating);
    if inactive {
        return Action::Keep;
    }
    if record.last_request_at_ms == 0 {
        return Action::Stamp;
    }
    let promoted = d.is_production || d.environment.as_deref().is_some_and(|e| !e.is_empty());
    let (limit, kind) = if promoted {
        (limits.production, "production")
    } else {
        (limits.development, "development")
    };
    let idle_ms = now_ms.saturating_sub(record.last_request_at_ms);
    let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
    if idle_ms > limit_ms {
        Action::Deactivate(format!(
            "deactivated: no traffic for {} s (the {kind} limit is {} s); activate it to serve again",
            idle_ms / 1000,
            limit.as_secs()
        ))
    } else {
        Action::Keep
    }
}

/// The cluster's limits as stored (defaults if unset or unreadable).
pub async fn limits(client: &Client) -> Limits {
    match client.get(Table::ClusterSettings, CLUSTER_CONFIG_KEY).await {
        Ok((Some(kv), _)) => pb::ClusterConfig::decode(kv.value.as_slice())
            .map(|c| Limits::from_config(&c))
            .unwrap_or_default(),
        _ => Limits::default(),
    }
}

/// One sweep over every deployment; returns how many were deactivated and
/// stamped, and whether the fence was stale.
pub async fn sweep(
    client: &Client,
    fence: Fence,
    limits: Limits,
    now_ms: u64,
) -> (usize, usize, bool) {
    let Ok((rows, _)) = client.list(Table::Deployments, "").await else {
        return (0, 0, false);
    };
    let (mut deactivated, mut stamped, mut stale) = (0, 0, false);
    for (id, kv) in rows {
        let Ok(mut record) = pb::DeploymentRecord::decode(kv.value.as_slice()) else {
            continue;
        };
        match action(&record, limits, now_ms) {
            Action::Keep => continue,
            Action::Stamp => {
                record.last_request_at_ms = now_ms;
                stamped += 1;
            }
            Action::Deactivate(reason) => {
                tracing::info!(deployment = %id, %reason, "deactivating an idle deployment");
                if let Some(d) = record.deployment.as_mut() {
                    d.status = pb::DeploymentStatus::Inactive.into();
                }
                record.status_reason = reason;
                deactivated += 1;
            }
        }
        let put = Request::put(
            Table::Deployments,
            &id,
            record.encode_to_vec(),
            Precondition::ModRevision(kv.mod_revision),
            Some(fence),
        );
        match client.write(&put).await.map(|w| w.outcome) {
            Ok(Outcome::Rejected(Rejection::StaleEpoch { .. })) => {
                stale = true;
                break;
            }
            // A conflict: someone wrote it meanwhile; the next sweep decides again.
            Ok(_) => {}
            Err(e) => tracing::debug!(deployment = %id, error = %e, "sweep write failed"),
        }
    }
    (deactivated, stamped, stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(prod: bool, status: pb::DeploymentStatus, last: u64) -> pb::DeploymentRecord {
        pb::DeploymentRecord {
            deployment: Some(pb::Deployment {
                is_production: prod,
                status: status.into(),
                ..Default::default()
            }),
            last_request_at_ms: last,
            ..Default::default()
        }
    }

    #[test]
    fn idle_past_the_limit_is_deactivated_per_kind() {
        use pb::DeploymentStatus as S;
        let limits = Limits {
            development: Duration::from_secs(10),
            production: Duration::from_secs(100),
        };
        let now = 1_000_000;
        assert_eq!(
            action(&record(false, S::Active, now - 10_000), limits, now),
            Action::Keep
        );
        let dev = action(&record(false, S::Active, now - 10_001), limits, now);
        assert!(
            matches!(&dev, Action::Deactivate(r) if r.contains("development limit is 10 s")),
            "{dev:?}"
        );
        assert_eq!(
            action(&record(true, S::Active, now - 50_000), limits, now),
            Action::Keep
        );
        assert!(matches!(
            action(&record(true, S::ScaledToZero, now - 100_001), limits, now),
            Action::Deactivate(_)
        ));
        // Already inactive: left alone. Never seen: stamped.
        assert_eq!(
            action(&record(false, S::Inactive, 1), limits, now),
            Action::Keep
        );
        assert_eq!(
            action(&record(false, S::Active, 0), limits, now),
            Action::Stamp
        );
    }

    #[test]
    fn limits_default_to_basetens_and_sweeps_follow_them() {
        let d = Limits::from_config(&pb::ClusterConfig::default());
        assert_eq!(d.development, Duration::from_secs(14 * 86_400));
        assert_eq!(d.production, Duration::from_secs(60 * 86_400));
        assert_eq!(sweep_every(d), Duration::from_secs(60));
        let short = Limits::from_config(&pb::ClusterConfig {
            deactivate_development_after_secs: 3,
            deactivate_production_after_secs: 30,
            ..Default::default()
        });
        assert_eq!(sweep_every(short), Duration::from_secs(1));
    }
}
