//! The cluster's settings: the per-deployment replica limit and the
//! inactivity limits, stored as `ClusterConfig` under [`CLUSTER_CONFIG_KEY`]
//! in CLUSTER_SETTINGS; absent (or 0) fields take the API's defaults.

use prost::Message;
use serde::{Deserialize, Serialize};
use tidal_proto::pb;
use tidal_store::app::{BatchOp, Precondition, Table};
use tidal_types::{
    ClusterSettings, DEFAULT_PER_DEPLOYMENT_REPLICA_LIMIT, DEVELOPMENT_INACTIVITY_DAYS,
    PRODUCTION_INACTIVITY_DAYS,
};

use crate::body::{Object, only, whole};
use crate::error::HttpError;
use crate::store::Store;

/// The key of the cluster's settings in CLUSTER_SETTINGS.
pub const CLUSTER_CONFIG_KEY: &str = "cluster";

/// The highest `max_replica_limit` accepted.
pub const MAX_REPLICA_LIMIT: u32 = 1000;
/// Allowed inactivity limits, seconds: an hour to ten years.
pub const INACTIVITY_SECS: (u64, u64) = (3600, 315_360_000);

const FIELDS: &[&str] = &[
    "max_replica_limit",
    "deactivate_development_after_secs",
    "deactivate_production_after_secs",
];

/// The cluster's settings as the API shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// The highest `max_replica` any deployment may ask for.
    pub max_replica_limit: u32,
    /// A development deployment without traffic this long is deactivated.
    pub deactivate_development_after_secs: u64,
    /// A production deployment without traffic this long is deactivated.
    pub deactivate_production_after_secs: u64,
}

impl Default for ClusterConfig {
    /// Baseten's: 10 replicas, 14 days (development), 60 days (production).
    fn default() -> Self {
        Self {
            max_replica_limit: DEFAULT_PER_DEPLOYMENT_REPLICA_LIMIT,
            deactivate_development_after_secs: u64::from(DEVELOPMENT_INACTIVITY_DAYS) * 86_400,
            deactivate_production_after_secs: u64::from(PRODUCTION_INACTIVITY_DAYS) * 86_400,
        }
    }
}

impl ClusterConfig {
    /// What `tidal-types` checks settings against.
    pub fn settings(&self) -> ClusterSettings {
        ClusterSettings {
            per_deployment_replica_limit: self.max_replica_limit,
        }
    }

    /// A stored record over `defaults` (0 = the default).
    pub fn from_record(record: &pb::ClusterConfig, defaults: &ClusterConfig) -> Self {
        let or = |v: u64, d: u64| if v == 0 { d } else { v };
        Self {
            max_replica_limit: if record.max_replica_limit == 0 {
                defaults.max_replica_limit
            } else {
                record.max_replica_limit
            },
            deactivate_development_after_secs: or(
                record.deactivate_development_after_secs,
                defaults.deactivate_development_after_secs,
            ),
            deactivate_production_after_secs: or(
                record.deactivate_production_after_secs,
                defaults.deactivate_production_after_secs,
            ),
        }
    }

    /// The stored record.
    pub fn to_record(self) -> pb::ClusterConfig {
        pb::ClusterConfig {
            max_replica_limit: self.max_replica_limit,
            deactivate_development_after_secs: self.deactivate_development_after_secs,
            deactivate_production_after_secs: self.deactivate_production_after_secs,
        }
    }

    /// Checks every field; the first problem, naming its field.
    pub fn validate(&self) -> Result<(), HttpError> {
        if !(1..=MAX_REPLICA_LIMIT).contains(&self.max_replica_limit) {
            return Err(HttpError::invalid(
                "max_replica_limit",
                format!(
                    "max_replica_limit must be between 1 and {MAX_REPLICA_LIMIT}; got {}",
                    self.max_replica_limit
                ),
            ));
        }
        let (lo, hi) = INACTIVITY_SECS;
        for (field, value) in [
            (
                "deactivate_development_after_secs",
                self.deactivate_development_after_secs,
            ),
            (
                "deactivate_production_after_secs",
                self.deactivate_production_after_secs,
            ),
        ] {
            if !(lo..=hi).contains(&value) {
                return Err(HttpError::invalid(
                    field,
                    format!(
                        "{field} must be between {lo} (an hour) and {hi} (ten years) seconds; \
                         got {value}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `self` with a patch's fields applied (not validated).
    pub(crate) fn patched(&self, patch: &ClusterPatch) -> Result<Self, HttpError> {
        let mut next = *self;
        if let Some(v) = patch.max_replica_limit {
            next.max_replica_limit = u32::try_from(v).map_err(|_| {
                HttpError::invalid(
                    "max_replica_limit",
                    format!("max_replica_limit must be between 1 and {MAX_REPLICA_LIMIT}; got {v}"),
                )
            })?;
        }
        if let Some(v) = patch.deactivate_development_after_secs {
            next.deactivate_development_after_secs = v;
        }
        if let Some(v) = patch.deactivate_production_after_secs {
            next.deactivate_production_after_secs = v;
        }
        Ok(next)
    }
}

/// A change of the cluster's settings: only the fields given change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ClusterPatch {
    pub max_replica_limit: Option<u64>,
    pub deactivate_development_after_secs: Option<u64>,
    pub deactivate_production_after_secs: Option<u64>,
}

impl ClusterPatch {
    /// A PATCH body's fields (unknown ones refused, each named).
    pub(crate) fn from_body(body: &Object) -> Result<Self, HttpError> {
        only(body, FIELDS, "")?;
        Ok(Self {
            max_replica_limit: whole(body, "max_replica_limit", "")?,
            deactivate_development_after_secs: whole(
                body,
                "deactivate_development_after_secs",
                "",
            )?,
            deactivate_production_after_secs: whole(body, "deactivate_production_after_secs", "")?,
        })
    }
}

/// The stored settings over `defaults`, and the record's mod_revision (0 =
/// none stored).
pub(crate) async fn read(
    store: &Store,
    defaults: &ClusterConfig,
) -> Result<(ClusterConfig, u64), HttpError> {
    let (kv, _) = store
        .client
        .get(Table::ClusterSettings, CLUSTER_CONFIG_KEY)
        .await?;
    match kv {
        None => Ok((*defaults, 0)),
        Some(kv) => {
            let record = pb::ClusterConfig::decode(kv.value.as_slice())
                .map_err(|e| HttpError::corrupt("the cluster's settings", e))?;
            Ok((
                ClusterConfig::from_record(&record, defaults),
                kv.mod_revision,
            ))
        }
    }
}

/// A compare-and-set put of the settings read at `mod_revision`.
pub(crate) fn put(config: ClusterConfig, mod_revision: u64) -> BatchOp {
    BatchOp::Put {
        table: Table::ClusterSettings,
        key: CLUSTER_CONFIG_KEY.to_owned(),
        value: config.to_record().encode_to_vec(),
        precondition: if mod_revision == 0 {
            Precondition::MustNotExist
        } else {
            Precondition::ModRevision(mod_revision)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_fields_take_the_defaults() {
        let defaults = ClusterConfig::default();
        assert_eq!(defaults.deactivate_development_after_secs, 14 * 86_400);
        assert_eq!(defaults.deactivate_production_after_secs, 60 * 86_400);
        let stored = pb::ClusterConfig {
            max_replica_limit: 20,
            ..Default::default()
        };
        let config = ClusterConfig::from_record(&stored, &defaults);
        assert_eq!(config.max_replica_limit, 20);
        assert_eq!(config.deactivate_production_after_secs, 60 * 86_400);
        assert_eq!(
            ClusterConfig::from_record(&config.to_record(), &defaults),
            config
        );
    }

    #[test]
    fn each_field_is_checked_by_name() {
        let ok = ClusterConfig::default();
        ok.validate().unwrap();
        let bad = |body: serde_json::Value| {
            let patch = match ClusterPatch::from_body(body.as_object().unwrap()) {
                Ok(patch) => patch,
                Err(e) => return e,
            };
            match ok.patched(&patch) {
                Ok(next) => next.validate().unwrap_err(),
                Err(e) => e,
            }
        };
        for (body, field) in [
            (
                serde_json::json!({"max_replica_limit": 0}),
                "max_replica_limit",
            ),
            (
                serde_json::json!({"max_replica_limit": 5000}),
                "max_replica_limit",
            ),
            (
                serde_json::json!({"max_replica_limit": 1u64 << 40}),
                "max_replica_limit",
            ),
            (
                serde_json::json!({"deactivate_development_after_secs": 10}),
                "deactivate_development_after_secs",
            ),
            (
                serde_json::json!({"deactivate_production_after_secs": -1}),
                "deactivate_production_after_secs",
            ),
            (serde_json::json!({"other": 1}), "other"),
        ] {
            assert_eq!(bad(body.clone()).field.as_deref(), Some(field), "{body}");
        }
    }
}
