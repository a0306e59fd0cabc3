//! Autoscaling settings with Baseten's field names, defaults and ranges,
//! the partial update a PATCH carries, and the cluster-wide limit.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::raw::RawValue;

/// How many replicas one deployment may have unless an operator changes it.
pub const DEFAULT_PER_DEPLOYMENT_REPLICA_LIMIT: u32 = 10;

/// Burst mode's default: burst when the short window wants twice the replicas there are.
pub const DEFAULT_BURST_THRESHOLD_PERCENTAGE: u32 = 200;

/// Cluster-wide settings an operator controls (stored in the store's cluster table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// The highest `max_replica` any deployment may ask for (Baseten: 10 unless support raises it).
    pub per_deployment_replica_limit: u32,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            per_deployment_replica_limit: DEFAULT_PER_DEPLOYMENT_REPLICA_LIMIT,
        }
    }
}

/// One deployment's autoscaling settings (Baseten's `AutoscalingSettingsV1`).
///
/// Reading JSON: absent fields take their defaults, `null` means "the default"
/// for the core fields and "off" for the optional features, and an unknown
/// field is an error. Ranges depend on the cluster's limit, so they are
/// checked by [`AutoscalingSettings::validate`], not while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "UpdateAutoscalingSettings")]
pub struct AutoscalingSettings {
    /// The lowest number of replicas; 0 enables scale to zero.
    pub min_replica: u32,
    /// The highest number of replicas.
    pub max_replica: u32,
    /// Seconds of traffic averaged for each decision.
    pub autoscaling_window: u32,
    /// Seconds a replica must be unneeded before it is removed.
    pub scale_down_delay: u32,
    /// Requests one replica should handle at once.
    pub concurrency_target: u32,
    /// Percentage of `concurrency_target` to aim for; the rest is headroom.
    pub target_utilization_percentage: u32,
    /// At most this percentage of replicas is removed per autoscaling window (off when `None`).
    pub max_scale_down_rate: Option<u32>,
    /// Baseten's early-access token target. tidal does not scale on tokens yet and
    /// refuses a value here rather than ignore it; `null` is accepted.
    pub target_in_flight_tokens: Option<u32>,
    /// tidal extension: a short window (seconds) that scales up faster in a burst,
    /// like Knative's panic window. Off when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst_window: Option<u32>,
    /// tidal extension: burst mode starts when the short window wants this
    /// percentage of the current replicas. Default 200 when `burst_window` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst_threshold_percentage: Option<u32>,
}

impl Default for AutoscalingSettings {
    fn default() -> Self {
        Self {
            min_replica: 0,
            max_replica: 1,
            autoscaling_window: 60,
            scale_down_delay: 900,
            concurrency_target: 1,
            target_utilization_percentage: 70,
            max_scale_down_rate: None,
            target_in_flight_tokens: None,
            burst_window: None,
            burst_threshold_percentage: None,
        }
    }
}

/// Allowed ranges, in one place so that messages and checks agree.
pub mod ranges {
    /// `autoscaling_window`, seconds.
    pub const AUTOSCALING_WINDOW: (u32, u32) = (10, 3600);
    /// `scale_down_delay`, seconds.
    pub const SCALE_DOWN_DELAY: (u32, u32) = (0, 3600);
    /// `target_utilization_percentage`.
    pub const TARGET_UTILIZATION_PERCENTAGE: (u32, u32) = (1, 100);
    /// `max_scale_down_rate`, percent per window.
    pub const MAX_SCALE_DOWN_RATE: (u32, u32) = (1, 50);
    /// `burst_threshold_percentage`.
    pub const BURST_THRESHOLD_PERCENTAGE: (u32, u32) = (110, 1000);
}

impl AutoscalingSettings {
    /// The fixed settings of a development deployment (Baseten: min 0, max 1,
    /// window 60 s, delay 900 s, target 1).
    pub fn development() -> Self {
        Self::default()
    }

    /// Checks every field against its range; lists every problem found.
    pub fn validate(&self, cluster: &ClusterSettings) -> Result<(), InvalidSettings> {
        let mut problems = Vec::new();
        let mut range = |field: &'static str, value: u32, (lo, hi): (u32, u32), note: &str| {
            if value < lo || value > hi {
                problems.push(FieldError::new(
                    field,
                    format!("{field} must be between {lo} and {hi}{note}; got {value}"),
                ));
            }
        };
        let limit = cluster.per_deployment_replica_limit;
        range(
            "max_replica",
            self.max_replica,
            (1, limit),
            " (the cluster's per-deployment limit)",
        );
        range(
            "autoscaling_window",
            self.autoscaling_window,
            ranges::AUTOSCALING_WINDOW,
            " seconds",
        );
        range(
            "scale_down_delay",
            self.scale_down_delay,
            ranges::SCALE_DOWN_DELAY,
            " seconds",
        );
        range(
            "target_utilization_percentage",
            self.target_utilization_percentage,
            ranges::TARGET_UTILIZATION_PERCENTAGE,
            "",
        );
        if let Some(rate) = self.max_scale_down_rate {
            range(
                "max_scale_down_rate",
                rate,
                ranges::MAX_SCALE_DOWN_RATE,
                " percent per window",
            );
        }
        if let Some(window) = self.burst_window {
            range(
                "burst_window",
                window,
                (1, self.autoscaling_window),
                " seconds (at most autoscaling_window)",
            );
        }
        if let Some(threshold) = self.burst_threshold_percentage {
            range(
                "burst_threshold_percentage",
                threshold,
                ranges::BURST_THRESHOLD_PERCENTAGE,
                "",
            );
        }
        if self.concurrency_target < 1 {
            problems.push(FieldError::new(
                "concurrency_target",
                format!(
                    "concurrency_target must be at least 1; got {}",
                    self.concurrency_target
                ),
            ));
        }
        if self.min_replica > self.max_replica {
            problems.push(FieldError::new(
                "min_replica",
                format!(
                    "min_replica must be between 0 and max_replica ({}); got {}",
                    self.max_replica, self.min_replica
                ),
            ));
        }
        if let Some(tokens) = self.target_in_flight_tokens {
            problems.push(FieldError::new(
                "target_in_flight_tokens",
                format!(
                    "target_in_flight_tokens (token-based scaling) is not supported by tidal yet; \
                     omit it or send null; got {tokens}"
                ),
            ));
        }
        if self.burst_threshold_percentage.is_some() && self.burst_window.is_none() {
            problems.push(FieldError::new(
                "burst_threshold_percentage",
                "burst_threshold_percentage needs burst_window to be set".to_owned(),
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(InvalidSettings(problems))
        }
    }

    /// Applies `patch` and validates the result; `self` is untouched on error.
    pub fn patched(
        &self,
        patch: &UpdateAutoscalingSettings,
        cluster: &ClusterSettings,
    ) -> Result<Self, InvalidSettings> {
        let next = patch.apply(self);
        next.validate(cluster)?;
        Ok(next)
    }

    /// The burst threshold in effect, when burst mode is on.
    pub fn effective_burst_threshold(&self) -> Option<u32> {
        self.burst_window.map(|_| {
            self.burst_threshold_percentage
                .unwrap_or(DEFAULT_BURST_THRESHOLD_PERCENTAGE)
        })
    }
}

/// A partial update (Baseten's `UpdateAutoscalingSettingsV1`): only fields
/// present change. For the optional features, `Some(None)` (JSON `null`)
/// turns the feature off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawUpdate")]
pub struct UpdateAutoscalingSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_replica: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_replica: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscaling_window: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_down_delay: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_target: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_utilization_percentage: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_scale_down_rate: Option<Option<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_in_flight_tokens: Option<Option<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst_window: Option<Option<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst_threshold_percentage: Option<Option<u32>>,
}

impl UpdateAutoscalingSettings {
    /// `base` with the present fields replaced. Does not validate.
    pub fn apply(&self, base: &AutoscalingSettings) -> AutoscalingSettings {
        AutoscalingSettings {
            min_replica: self.min_replica.unwrap_or(base.min_replica),
            max_replica: self.max_replica.unwrap_or(base.max_replica),
            autoscaling_window: self.autoscaling_window.unwrap_or(base.autoscaling_window),
            scale_down_delay: self.scale_down_delay.unwrap_or(base.scale_down_delay),
            concurrency_target: self.concurrency_target.unwrap_or(base.concurrency_target),
            target_utilization_percentage: self
                .target_utilization_percentage
                .unwrap_or(base.target_utilization_percentage),
            max_scale_down_rate: self.max_scale_down_rate.unwrap_or(base.max_scale_down_rate),
            target_in_flight_tokens: self
                .target_in_flight_tokens
                .unwrap_or(base.target_in_flight_tokens),
            burst_window: self.burst_window.unwrap_or(base.burst_window),
            burst_threshold_percentage: self
                .burst_threshold_percentage
                .unwrap_or(base.burst_threshold_percentage),
        }
    }

    /// Whether the update changes nothing at all.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl TryFrom<UpdateAutoscalingSettings> for AutoscalingSettings {
    type Error = InvalidSettings;

    /// Absent fields take the defaults. Ranges are checked later, by
    /// [`AutoscalingSettings::validate`], because they depend on the cluster.
    fn try_from(update: UpdateAutoscalingSettings) -> Result<Self, InvalidSettings> {
        Ok(update.apply(&AutoscalingSettings::default()))
    }
}

/// The JSON body as it arrived: every field kept raw so a bad value can be
/// reported with its field's name. Only a JSON object is accepted (serde's
/// derived readers would also take an array of values in field order).
#[derive(Default)]
pub(crate) struct RawUpdate {
    min_replica: Option<RawValue>,
    max_replica: Option<RawValue>,
    autoscaling_window: Option<RawValue>,
    scale_down_delay: Option<RawValue>,
    concurrency_target: Option<RawValue>,
    target_utilization_percentage: Option<RawValue>,
    max_scale_down_rate: Option<RawValue>,
    target_in_flight_tokens: Option<RawValue>,
    burst_window: Option<RawValue>,
    burst_threshold_percentage: Option<RawValue>,
}

/// The fields of autoscaling settings, in Baseten's order.
pub(crate) const FIELDS: &[&str] = &[
    "min_replica",
    "max_replica",
    "autoscaling_window",
    "scale_down_delay",
    "concurrency_target",
    "target_utilization_percentage",
    "max_scale_down_rate",
    "target_in_flight_tokens",
    "burst_window",
    "burst_threshold_percentage",
];

impl RawUpdate {
    /// Where the value of field `key` goes; `None` for an unknown field.
    pub(crate) fn slot(&mut self, key: &str) -> Option<&mut Option<RawValue>> {
        Some(match key {
            "min_replica" => &mut self.min_replica,
            "max_replica" => &mut self.max_replica,
            "autoscaling_window" => &mut self.autoscaling_window,
            "scale_down_delay" => &mut self.scale_down_delay,
            "concurrency_target" => &mut self.concurrency_target,
            "target_utilization_percentage" => &mut self.target_utilization_percentage,
            "max_scale_down_rate" => &mut self.max_scale_down_rate,
            "target_in_flight_tokens" => &mut self.target_in_flight_tokens,
            "burst_window" => &mut self.burst_window,
            "burst_threshold_percentage" => &mut self.burst_threshold_percentage,
            _ => return None,
        })
    }
}

impl<'de> Deserialize<'de> for RawUpdate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RawUpdateVisitor)
    }
}

struct RawUpdateVisitor;

impl<'de> serde::de::Visitor<'de> for RawUpdateVisitor {
    type Value = RawUpdate;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of autoscaling settings")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawUpdate, A::Error> {
        use serde::de::Error;
        let mut raw = RawUpdate::default();
        while let Some(key) = map.next_key::<String>()? {
            let Some(slot) = raw.slot(&key) else {
                return Err(A::Error::unknown_field(&key, FIELDS));
            };
            if slot.is_some() {
                return Err(A::Error::custom(format_args!("duplicate field `{key}`")));
            }
            *slot = Some(map.next_value::<RawValue>()?);
        }
        Ok(raw)
    }
}

impl TryFrom<RawUpdate> for UpdateAutoscalingSettings {
    type Error = InvalidSettings;

    fn try_from(raw: RawUpdate) -> Result<Self, InvalidSettings> {
        let mut problems = Vec::new();
        // A core field: `null` is the same as absent.
        let mut core = |field: &'static str, value: Option<RawValue>| match value {
            None => None,
            Some(v) => v.to_u32(field).unwrap_or_else(|e| {
                problems.push(e);
                None
            }),
        };
        let min_replica = core("min_replica", raw.min_replica);
        let max_replica = core("max_replica", raw.max_replica);
        let autoscaling_window = core("autoscaling_window", raw.autoscaling_window);
        let scale_down_delay = core("scale_down_delay", raw.scale_down_delay);
        let concurrency_target = core("concurrency_target", raw.concurrency_target);
        let target_utilization_percentage = core(
            "target_utilization_percentage",
            raw.target_utilization_percentage,
        );
        // An optional feature: `null` turns it off.
        let mut optional = |field: &'static str, value: Option<RawValue>| match value {
            None => None,
            Some(v) => match v.to_u32(field) {
                Ok(v) => Some(v),
                Err(e) => {
                    problems.push(e);
                    None
                }
            },
        };
        let update = UpdateAutoscalingSettings {
            min_replica,
            max_replica,
            autoscaling_window,
            scale_down_delay,
            concurrency_target,
            target_utilization_percentage,
            max_scale_down_rate: optional("max_scale_down_rate", raw.max_scale_down_rate),
            target_in_flight_tokens: optional(
                "target_in_flight_tokens",
                raw.target_in_flight_tokens,
            ),
            burst_window: optional("burst_window", raw.burst_window),
            burst_threshold_percentage: optional(
                "burst_threshold_percentage",
                raw.burst_threshold_percentage,
            ),
        };
        if problems.is_empty() {
            Ok(update)
        } else {
            Err(InvalidSettings(problems))
        }
    }
}

/// One field's problem, with a message that names the field, the allowed
/// range and the value given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's name, as in the JSON body.
    pub field: &'static str,
    /// A sentence for the user.
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(field: &'static str, message: String) -> Self {
        Self { field, message }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Settings that were refused: every problem found, in field order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidSettings(pub Vec<FieldError>);

impl InvalidSettings {
    /// The names of the fields at fault.
    pub fn fields(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().map(|p| p.field)
    }
}

impl fmt::Display for InvalidSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "settings_tests.rs"]
mod tests;
