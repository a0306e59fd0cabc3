//! What a replica of a deployment runs, read from its `DeploymentRecord`
//! and checked before anything is fetched or started.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tidal_proto::pb;

use crate::cache::WeightSpec;

/// The health path when the deployment names none.
pub const DEFAULT_HEALTH_PATH: &str = "/health";

/// One weight file and the name it gets in the replica's model directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedWeight {
    /// Its file name in the model directory (one path component).
    pub name: String,
    /// Where to get it and what it must be.
    pub spec: WeightSpec,
}

/// What one replica of a deployment runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSpec {
    /// The program.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// The health endpoint's path.
    pub health_path: String,
    /// The weight files to fetch before the process starts.
    pub weights: Vec<NamedWeight>,
    /// From process start to Ready, at most; `None` = the worker's default.
    pub ready_timeout: Option<Duration>,
    /// Drain wait and SIGTERM grace; `None` = the worker's default.
    pub stop_grace: Option<Duration>,
    /// GPUs per replica.
    pub gpu_count: u32,
}

/// Why a deployment's record cannot be run. Each names the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The record has no resources, or no command.
    #[error("deployment {deployment} has no command to run; set resources.command")]
    NoCommand {
        /// The deployment.
        deployment: String,
    },
    /// A weight file's name is not one plain path component.
    #[error(
        "deployment {deployment}: weight file name {name:?} must be one plain file name \
         (no '/', not empty, not '.' or '..')"
    )]
    BadWeightName {
        /// The deployment.
        deployment: String,
        /// The name as given.
        name: String,
    },
    /// Two weight files share a name.
    #[error("deployment {deployment}: two weight files are named {name:?}; names must differ")]
    DuplicateWeightName {
        /// The deployment.
        deployment: String,
        /// The repeated name.
        name: String,
    },
    /// The health path does not start with '/'.
    #[error("deployment {deployment}: health_path must start with '/'; got {path:?}")]
    BadHealthPath {
        /// The deployment.
        deployment: String,
        /// The path as given.
        path: String,
    },
}

impl RuntimeSpec {
    /// Reads and checks the runtime part of `record`.
    pub fn from_record(deployment: &str, record: &pb::DeploymentRecord) -> Result<Self, SpecError> {
        let resources = record.resources.clone().unwrap_or_default();
        if resources.command.trim().is_empty() {
            return Err(SpecError::NoCommand {
                deployment: deployment.to_owned(),
            });
        }
        let health_path = if resources.health_path.is_empty() {
            DEFAULT_HEALTH_PATH.to_owned()
        } else if resources.health_path.starts_with('/') {
            resources.health_path
        } else {
            return Err(SpecError::BadHealthPath {
                deployment: deployment.to_owned(),
                path: resources.health_path,
            });
        };
        let mut names = BTreeSet::new();
        let mut weights = Vec::with_capacity(resources.weight_files.len());
        for file in resources.weight_files {
            let name = file.name;
            if name.is_empty() || name == "." || name == ".." || name.contains('/') {
                return Err(SpecError::BadWeightName {
                    deployment: deployment.to_owned(),
                    name,
                });
            }
            if !names.insert(name.clone()) {
                return Err(SpecError::DuplicateWeightName {
                    deployment: deployment.to_owned(),
                    name,
                });
            }
            weights.push(NamedWeight {
                name,
                spec: WeightSpec {
                    url: file.url,
                    size: file.size_bytes,
                    sha256: file.sha256,
                },
            });
        }
        let secs = |s: u32| (s > 0).then(|| Duration::from_secs(u64::from(s)));
        Ok(Self {
            command: resources.command,
            args: resources.args,
            env: resources.env,
            health_path,
            weights,
            ready_timeout: secs(resources.ready_timeout_secs),
            stop_grace: secs(resources.stop_grace_secs),
            gpu_count: resources.gpu_count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(resources: pb::DeploymentResources) -> pb::DeploymentRecord {
        pb::DeploymentRecord {
            resources: Some(resources),
            ..Default::default()
        }
    }

    fn weight(name: &str) -> pb::WeightFile {
        pb::WeightFile {
            url: "file:///w".into(),
            size_bytes: 3,
            sha256: "a".repeat(64),
            name: name.into(),
        }
    }

    #[test]
    fn reads_the_runtime_fields_with_defaults() {
        let spec = RuntimeSpec::from_record(
            "d",
            &record(pb::DeploymentResources {
                command: "tidal-model".into(),
                args: vec!["serve".into()],
                weight_files: vec![weight("model.safetensors")],
                gpu_count: 1,
                ..Default::default()
            }),
        )
        .unwrap();
        assert_eq!(spec.command, "tidal-model");
        assert_eq!(spec.args, ["serve"]);
        assert_eq!(spec.health_path, "/health");
        assert_eq!(spec.ready_timeout, None);
        assert_eq!(spec.stop_grace, None);
        assert_eq!(spec.gpu_count, 1);
        assert_eq!(spec.weights[0].name, "model.safetensors");
        assert_eq!(spec.weights[0].spec.size, 3);
    }

    #[test]
    fn explicit_timeouts_are_kept() {
        let spec = RuntimeSpec::from_record(
            "d",
            &record(pb::DeploymentResources {
                command: "x".into(),
                health_path: "/ready".into(),
                ready_timeout_secs: 7,
                stop_grace_secs: 2,
                ..Default::default()
            }),
        )
        .unwrap();
        assert_eq!(spec.health_path, "/ready");
        assert_eq!(spec.ready_timeout, Some(Duration::from_secs(7)));
        assert_eq!(spec.stop_grace, Some(Duration::from_secs(2)));
    }

    #[test]
    fn bad_records_are_refused_with_the_field() {
        let none = RuntimeSpec::from_record("d", &pb::DeploymentRecord::default()).unwrap_err();
        assert!(none.to_string().contains("resources.command"), "{none}");
        let blank = RuntimeSpec::from_record(
            "d",
            &record(pb::DeploymentResources {
                command: "  ".into(),
                ..Default::default()
            }),
        )
        .unwrap_err();
        assert!(matches!(blank, SpecError::NoCommand { .. }));
        for name in ["", ".", "..", "a/b"] {
            let err = RuntimeSpec::from_record(
                "d",
                &record(pb::DeploymentResources {
                    command: "x".into(),
                    weight_files: vec![weight(name)],
                    ..Default::default()
                }),
            )
            .unwrap_err();
            assert!(
                matches!(err, SpecError::BadWeightName { .. }),
                "{name}: {err}"
            );
        }
        let dup = RuntimeSpec::from_record(
            "d",
            &record(pb::DeploymentResources {
                command: "x".into(),
                weight_files: vec![weight("m"), weight("m")],
                ..Default::default()
            }),
        )
        .unwrap_err();
        assert!(matches!(dup, SpecError::DuplicateWeightName { .. }));
        let path = RuntimeSpec::from_record(
            "d",
            &record(pb::DeploymentResources {
                command: "x".into(),
                health_path: "health".into(),
                ..Default::default()
            }),
        )
        .unwrap_err();
        assert!(path.to_string().contains("must start with '/'"), "{path}");
    }
}
