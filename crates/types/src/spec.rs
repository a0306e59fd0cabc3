//! A deployment described in a JSON file (what `tidal deploy` reads): the
//! model, its autoscaling settings, what one replica needs, the command it
//! runs and the weight files it loads.
//!
//! The file is read strictly, like a settings body: an unknown or repeated
//! field is refused, a wrongly typed value is reported with its field path
//! (`weights[0].sha256`, `resources.gpu_count`), and every problem is
//! reported at once, each with its fix. `null` counts as absent.
//!
//! No I/O: a weight given by `path` is resolved against the spec file's
//! directory (given by the caller, absolute) into a `file://` URL; reading
//! the file to learn its size and sha256 is the loader's job.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::raw::RawJson;
use crate::spec_read::Reader;
use crate::{AutoscalingSettings, ClusterSettings, DeploymentId, ModelId};

/// The health path when a spec names none.
pub const DEFAULT_HEALTH_PATH: &str = "/health";
/// `ready_timeout_secs` when a spec sets none.
pub const DEFAULT_READY_TIMEOUT_SECS: u32 = 600;
/// `stop_grace_secs` when a spec sets none.
pub const DEFAULT_STOP_GRACE_SECS: u32 = 30;
/// `resources.cpu_millis` when a spec sets none (one core).
pub const DEFAULT_CPU_MILLIS: u32 = 1000;
/// `resources.memory_bytes` when a spec sets none (1 GiB).
pub const DEFAULT_MEMORY_BYTES: u64 = 1 << 30;
/// Allowed `ready_timeout_secs`, seconds.
pub const READY_TIMEOUT_SECS: (u32, u32) = (1, 86_400);
/// Allowed `stop_grace_secs`, seconds. Not 0: a stored 0 means "the
/// worker's default", so a spec could not ask for no grace at all.
pub const STOP_GRACE_SECS: (u32, u32) = (1, 3600);
/// Environment variables the worker sets for every replica; a spec may not.
pub const WORKER_ENV: [&str; 5] = [
    "PORT",
    "TIDAL_MODEL_DIR",
    "TIDAL_REPLICA_ID",
    "TIDAL_WORKER_ID",
    "CUDA_VISIBLE_DEVICES",
];

/// A deployment as a user describes it, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentSpec {
    /// The model's id.
    pub model: ModelId,
    /// The deployment's id (default `<model>-v1`).
    pub deployment: DeploymentId,
    /// Its autoscaling settings (Baseten's defaults for absent fields).
    pub autoscaling_settings: AutoscalingSettings,
    /// What one replica needs.
    pub resources: Resources,
    /// The program and its arguments; never empty.
    pub command: Vec<String>,
    /// Extra environment variables (never one the worker sets).
    pub env: BTreeMap<String, String>,
    /// The health endpoint's path (starts with '/').
    pub health_path: String,
    /// From process start to Ready, at most, in seconds.
    pub ready_timeout_secs: u32,
    /// In-flight wait before SIGTERM, and SIGTERM → SIGKILL grace, in seconds.
    pub stop_grace_secs: u32,
    /// The weight files the worker fetches and verifies before starting a
    /// replica, in the spec's order; names differ.
    pub weights: Vec<WeightSpec>,
}

/// What one replica needs from its worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    /// The region replicas must run in; `None` = any.
    pub region: Option<String>,
    /// The GPU type, e.g. `H100-80GB`; `None` = any (only set with GPUs).
    pub gpu_type: Option<String>,
    /// GPUs per replica.
    pub gpu_count: u32,
    /// CPU per replica, in thousandths of a core.
    pub cpu_millis: u32,
    /// Memory per replica, in bytes.
    pub memory_bytes: u64,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            region: None,
            gpu_type: None,
            gpu_count: 0,
            cpu_millis: DEFAULT_CPU_MILLIS,
            memory_bytes: DEFAULT_MEMORY_BYTES,
        }
    }
}

/// One weight file of a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightSpec {
    /// Its file name in the replica's model directory (one plain name).
    pub name: String,
    /// Where the worker fetches it: `http://`, `https://` or `file:///`.
    pub url: String,
    /// The absolute local path when the spec gave `path` (the URL is then
    /// `file://` + this path).
    pub local_path: Option<PathBuf>,
    /// Its size in bytes; `None` only for a local path that the loader
    /// measures.
    pub size_bytes: Option<u64>,
    /// Its sha256 (64 lowercase hex); `None` only for a local path that the
    /// loader hashes.
    pub sha256: Option<String>,
}

/// One problem in a spec: the JSON field path and a sentence with the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    /// The field path, e.g. `weights[0].sha256`; empty for the whole file.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// A refused spec: every problem found, in the file's order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidSpec(pub Vec<SpecProblem>);

impl InvalidSpec {
    /// The field paths at fault.
    pub fn fields(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.iter().map(|p| p.field.as_str())
    }
}

impl fmt::Display for InvalidSpec {
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

/// Whether `name` is one plain file name: not empty, not `.` or `..`, no
/// `/` and no NUL.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// Whether `digest` is a sha256 as `sha256sum` prints it.
pub fn is_sha256_hex(digest: &str) -> bool {
    digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl DeploymentSpec {
    /// Reads and checks a spec. `spec_dir` is the absolute directory of the
    /// spec file (weight `path`s are relative to it); `cluster` bounds
    /// `max_replica`.
    pub fn from_json(
        text: &str,
        spec_dir: &Path,
        cluster: &ClusterSettings,
    ) -> Result<Self, InvalidSpec> {
        let root: RawJson = serde_json::from_str(text).map_err(|e| {
            InvalidSpec(vec![SpecProblem {
                field: String::new(),
                message: format!("not valid JSON: {e}"),
            }])
        })?;
        let mut r = Reader::default();
        let spec = r.spec(&root, spec_dir, cluster);
        match spec {
            Some(spec) if r.problems.is_empty() => Ok(spec),
            _ if r.problems.is_empty() => Err(InvalidSpec(vec![SpecProblem {
                field: String::new(),
                message: "the spec could not be read (no problem was recorded: a bug in tidal)"
                    .to_owned(),
            }])),
            _ => Err(InvalidSpec(r.problems)),
        }
    }

    /// The weights whose size or digest the loader must still compute
    /// (local paths given without them).
    pub fn unmeasured_weights(&self) -> impl Iterator<Item = &WeightSpec> {
        self.weights
            .iter()
            .filter(|w| w.size_bytes.is_none() || w.sha256.is_none())
    }
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
