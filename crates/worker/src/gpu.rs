//! The node's GPU inventory, and which replica holds which GPU.
//!
//! # Detection and declaration
//!
//! A node learns its GPUs in one of two ways, recorded in [`Inventory::source`]:
//!
//! - **Detected** ([`detect`]): the worker runs
//!   `nvidia-smi --query-gpu=index,name,memory.total,uuid --format=csv,noheader`
//!   and parses its output with [`parse_nvidia_smi`]. A machine without
//!   `nvidia-smi` is a CPU node: detection succeeds with no GPUs.
//! - **Declared** ([`parse_declared`]): `--gpus 2xH100-80GB` states an inventory on a
//!   machine that has no GPUs (development, tests, the chaos harness). Nothing is
//!   checked against hardware, so the node is labelled [`Source::Declared`] and must
//!   never be mistaken for one whose GPUs were seen.
//!
//! Either way the node gets one scheduler type string, [`Inventory::gpu_type`]
//! (`H100-80GB`); see [`gpu_type_for`] for how it is derived from a detected name.
//!
//! # Allocation
//!
//! [`Allocator`] hands GPU indices to replicas. A replica receives its GPUs through
//! `CUDA_VISIBLE_DEVICES` ([`cuda_visible_devices`]).
//!
//! **Architecture Invariant:** a GPU is held by at most one replica at a time; the
//! allocator never hands out an index that another replica holds until that replica
//! is released.
//!
//! This module does not know about deployments or the scheduler; it only knows
//! indices and replica names.

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

/// Bytes in one MiB, the unit `nvidia-smi` reports memory in.
const MIB: u64 = 1024 * 1024;
/// Bytes in one GB as used by type strings (`80GB` = 80 GiB).
const GIB: u64 = 1024 * MIB;
/// The most GPUs a `--gpus` declaration may state.
pub const MAX_DECLARED_GPUS: u32 = 1024;
/// How long [`detect`] waits for `nvidia-smi`.
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The arguments [`detect`] passes to `nvidia-smi`.
const NVIDIA_SMI_ARGS: [&str; 2] = [
    "--query-gpu=index,name,memory.total,uuid",
    "--format=csv,noheader",
];
/// Marketed memory sizes (GB) that reported memory is rounded up to; see [`gpu_type_for`].
const MARKETED_GB: [u64; 21] = [
    4, 6, 8, 10, 11, 12, 16, 20, 24, 32, 40, 48, 64, 80, 94, 96, 141, 144, 180, 192, 288,
];
/// Words in a GPU's name that say nothing about its type; see [`gpu_type_for`].
const IGNORED_NAME_WORDS: [&str; 4] = ["NVIDIA", "TESLA", "GEFORCE", "QUADRO"];

/// Errors from reading, declaring or allocating GPUs.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// A line of `nvidia-smi` output could not be read.
    #[error(
        "nvidia-smi output line {line} is malformed ({reason}): {content:?}; expected `index, name, memory MiB, uuid`"
    )]
    MalformedLine {
        /// 1-based line number.
        line: usize,
        /// The line as read.
        content: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two lines of `nvidia-smi` output named the same GPU index.
    #[error("nvidia-smi reported GPU index {index} twice (lines {first} and {second})")]
    DuplicateIndex {
        /// The repeated index.
        index: u32,
        /// 1-based line of its first occurrence.
        first: usize,
        /// 1-based line of its second occurrence.
        second: usize,
    },
    /// A `--gpus` declaration could not be read.
    #[error(
        "invalid --gpus value {spec:?}: {reason}; expected <count>x<type> or <type>, where type is letters, digits and dashes, e.g. 2xH100-80GB"
    )]
    InvalidSpec {
        /// The value as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `nvidia-smi` exists but could not be started.
    #[error("could not run nvidia-smi: {0}")]
    Spawn(#[source] io::Error),
    /// `nvidia-smi` did not finish in time.
    #[error("nvidia-smi did not finish within {0:?}; is the GPU driver hung?")]
    Timeout(Duration),
    /// `nvidia-smi` exited unsuccessfully.
    #[error("nvidia-smi failed ({status}): {stderr}")]
    Failed {
        /// The exit status, as printed by the OS.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A replica asked for more GPUs than are free.
    #[error(
        "replica {replica:?} needs {requested} GPU(s) but only {free} of {total} are free on this node"
    )]
    NotEnoughFree {
        /// The replica that asked.
        replica: String,
        /// How many it asked for.
        requested: u32,
        /// How many are free.
        free: u32,
        /// How many the node has.
        total: u32,
    },
    /// A replica that already holds GPUs asked again.
    #[error(
        "replica {replica:?} already holds GPU(s) {held:?}; release it before allocating again"
    )]
    AlreadyAllocated {
        /// The replica that asked.
        replica: String,
        /// The indices it holds.
        held: Vec<u32>,
    },
}

/// One GPU on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// The index `CUDA_VISIBLE_DEVICES` refers to it by.
    pub index: u32,
    /// Its name: as reported by `nvidia-smi`, or the declared type.
    pub name: String,
    /// Total memory in bytes (0 when declared without a `-<N>GB` suffix).
    pub memory_bytes: u64,
    /// Its UUID (`GPU-…`), when detected and reported.
    pub uuid: Option<String>,
}

/// Where an [`Inventory`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Read from `nvidia-smi` on this machine.
    Detected,
    /// Stated with `--gpus`; not checked against hardware.
    Declared,
}

/// The GPUs of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// The GPUs, in index order.
    pub gpus: Vec<Gpu>,
    /// The scheduler's type string (`H100-80GB`); `None` when there are no GPUs or
    /// they are not all of one type.
    pub gpu_type: Option<String>,
    /// Whether the GPUs were detected or declared.
    pub source: Source,
}

impl Inventory {
    /// An inventory of detected GPUs, with its type derived by [`gpu_type_for`].
    ///
    /// When the GPUs are not all of one type, `gpu_type` is `None` and a warning is
    /// logged: the scheduler places by one type per node.
    pub fn detected(mut gpus: Vec<Gpu>) -> Self {
        gpus.sort_by_key(|g| g.index);
        let mut types: Vec<String> = gpus
            .iter()
            .map(|g| gpu_type_for(&g.name, g.memory_bytes))
            .collect();
        types.dedup();
        let gpu_type = match types.len() {
            0 => None,
            1 => types.pop(),
            _ => {
                tracing::warn!(
                    types = ?types,
                    "GPUs of this node are of different types; the node gets no GPU type and will not be scheduled GPU replicas"
                );
                None
            }
        };
        Self {
            gpus,
            gpu_type,
            source: Source::Detected,
        }
    }
}

/// The scheduler's type string for a GPU named `name` with `memory_bytes` of memory.
///
/// The rule: `<MODEL>-<N>GB`, upper-cased, where
/// - `MODEL` is the name split at spaces and dashes, without the words `NVIDIA`,
///   `Tesla`, `GeForce`, `Quadro`, size words (`80GB`), memory words (`HBM3`) and
///   form factors (`PCIe`, `SXM4`, `NVL`), joined with dashes
///   (`NVIDIA H100 80GB HBM3` → `H100`, `NVIDIA GeForce RTX 4090` → `RTX-4090`);
/// - `N` is the reported memory rounded up to the nearest marketed size
///   (4, 6, 8, 10, 11, 12, 16, 20, 24, 32, 40, 48, 64, 80, 94, 96, 141, 144, 180, 192,
///   288 GB), allowing 0.5 GB over it; beyond 288 GB, to the nearest whole GB.
///
/// Drivers report less than the marketed size (a T4 reports 15360 MiB, an H100 80GB
/// 81559 MiB, an L4 23034 MiB), so plain rounding of MiB/1024 would give `T4-15GB`
/// and `L4-22GB` where operators write `T4-16GB` and `L4-24GB`.
pub fn gpu_type_for(name: &str, memory_bytes: u64) -> String {
    let model: Vec<String> = name
        .split(|c: char| c.is_whitespace() || c == '-')
        .map(str::to_ascii_uppercase)
        .filter(|w| !w.is_empty() && !is_ignored_word(w))
        .collect();
    let model = if model.is_empty() {
        "GPU".to_owned()
    } else {
        model.join("-")
    };
    format!("{model}-{}GB", marketed_gb(memory_bytes / MIB))
}

/// Whether an upper-cased word of a GPU name is left out of its type.
fn is_ignored_word(word: &str) -> bool {
    if IGNORED_NAME_WORDS.contains(&word) || word == "PCIE" || word == "NVL" {
        return true;
    }
    let digits_then = |prefix: &str| {
        word.strip_prefix(prefix)
            .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_alphanumeric()))
    };
    let size = word
        .strip_suffix("GB")
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    size || digits_then("HBM") || digits_then("SXM")
}

/// Reported memory in MiB → marketed GB; see [`gpu_type_for`].
fn marketed_gb(mib: u64) -> u64 {
    MARKETED_GB
        .iter()
        .copied()
        .find(|&gb| mib <= gb * 1024 + 512)
        .unwrap_or((mib + 512) / 1024)
}

/// Parses `nvidia-smi --query-gpu=index,name,memory.total,uuid --format=csv,noheader`.
///
/// Each line is `index, name, memory MiB, uuid` (fields trimmed; the unit may be
/// absent). A uuid of `[N/A]` or empty is `None`. Empty output means no GPUs; blank
/// lines are skipped. A malformed line is an error naming its line number and content.
pub fn parse_nvidia_smi(csv: &str) -> Result<Vec<Gpu>, GpuError> {
    let mut gpus: Vec<Gpu> = Vec::new();
    let mut lines_of: BTreeMap<u32, usize> = BTreeMap::new();
    for (i, raw) in csv.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let gpu = parse_line(raw).map_err(|reason| GpuError::MalformedLine {
            line,
            content: raw.to_owned(),
            reason,
        })?;
        if let Some(&first) = lines_of.get(&gpu.index) {
            return Err(GpuError::DuplicateIndex {
                index: gpu.index,
                first,
                second: line,
            });
        }
        lines_of.insert(gpu.index, line);
        gpus.push(gpu);
    }
    Ok(gpus)
}

/// One line of `nvidia-smi` output; the error is the reason it is malformed.
fn parse_line(raw: &str) -> Result<Gpu, String> {
    let fields: Vec<&str> = raw.split(',').map(str::trim).collect();
    let [index, name, memory, uuid] = fields[..] else {
        return Err(format!("{} field(s) instead of 4", fields.len()));
    };
    let index: u32 = index
        .parse()
        .map_err(|_| format!("index {index:?} is not a whole number"))?;
    if name.is_empty() {
        return Err("the name is empty".to_owned());
    }
    let mib: u64 = memory
        .strip_suffix("MiB")
        .unwrap_or(memory)
        .trim()
        .parse()
        .map_err(|_| format!("memory {memory:?} is not a number of MiB"))?;
    let memory_bytes = mib
        .checked_mul(MIB)
        .ok_or_else(|| format!("memory {memory:?} is too large"))?;
    let uuid = match uuid {
        "" | "[N/A]" => None,
        u => Some(u.to_owned()),
    };
    Ok(Gpu {
        index,
        name: name.to_owned(),
        memory_bytes,
        uuid,
    })
}

/// Parses a `--gpus` declaration: `2xH100-80GB`, or `H100-80GB` for one GPU.
///
/// The count is 1 to [`MAX_DECLARED_GPUS`]; the type starts with a letter and is
/// letters, digits and dashes, and is upper-cased. Memory comes from a trailing
/// `-<N>GB` (N GiB), else 0. The GPUs get indices `0..count`, no uuid, and the type as
/// their name; the inventory is [`Source::Declared`].
pub fn parse_declared(spec: &str) -> Result<Inventory, GpuError> {
    let invalid = |reason: &str| GpuError::InvalidSpec {
        spec: spec.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = spec.trim();
    if trimmed.is_empty() {
        return Err(invalid("it is empty"));
    }
    let digits = trimmed.len()
        - trimmed
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .len();
    let (count, ty) = if digits == 0 {
        if trimmed.starts_with(['x', 'X']) {
            return Err(invalid("the count before `x` is missing"));
        }
        (1, trimmed)
    } else {
        let Some(ty) = trimmed[digits..].strip_prefix(['x', 'X']) else {
            return Err(invalid("a leading number must be a count followed by `x`"));
        };
        let count: u32 = trimmed[..digits]
            .parse()
            .map_err(|_| invalid("the count is too large"))?;
        (count, ty)
    };
    if count == 0 {
        return Err(invalid("the count must be at least 1"));
    }
    if count > MAX_DECLARED_GPUS {
        return Err(invalid(&format!(
            "the count must be at most {MAX_DECLARED_GPUS}"
        )));
    }
    if ty.is_empty() {
        return Err(invalid("the GPU type after the count is missing"));
    }
    if !ty.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(invalid("the GPU type must start with a letter"));
    }
    if !ty.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(invalid(
            "the GPU type may only hold letters, digits and dashes",
        ));
    }
    if ty.ends_with('-') || ty.contains("--") {
        return Err(invalid("the GPU type has an empty part between dashes"));
    }
    let ty = ty.to_ascii_uppercase();
    let memory_bytes = ty
        .rsplit_once('-')
        .and_then(|(_, last)| last.strip_suffix("GB"))
        .and_then(|n| n.parse::<u64>().ok())
        .and_then(|gb| gb.checked_mul(GIB))
        .unwrap_or(0);
    let gpus = (0..count)
        .map(|index| Gpu {
            index,
            name: ty.clone(),
            memory_bytes,
            uuid: None,
        })
        .collect();
    Ok(Inventory {
        gpus,
        gpu_type: Some(ty),
        source: Source::Declared,
    })
}

/// Detects this node's GPUs with `nvidia-smi`, waiting at most [`DETECT_TIMEOUT`].
///
/// No `nvidia-smi` on this machine means a CPU node: an empty, detected inventory.
/// A non-zero exit is an error carrying its stderr.
pub async fn detect() -> Result<Inventory, GpuError> {
    detect_with("nvidia-smi", DETECT_TIMEOUT).await
}

/// [`detect`] with the program and the timeout given, so tests need not touch `PATH`.
async fn detect_with(program: &str, timeout: Duration) -> Result<Inventory, GpuError> {
    let run = tokio::process::Command::new(program)
        .args(NVIDIA_SMI_ARGS)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(timeout, run).await {
        Err(_) => return Err(GpuError::Timeout(timeout)),
        Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => {
            tracing::info!(program, "no nvidia-smi on this machine; a CPU node");
            return Ok(Inventory::detected(Vec::new()));
        }
        Ok(Err(e)) => return Err(GpuError::Spawn(e)),
        Ok(Ok(output)) => output,
    };
    if !output.status.success() {
        return Err(GpuError::Failed {
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    let gpus = parse_nvidia_smi(&String::from_utf8_lossy(&output.stdout))?;
    Ok(Inventory::detected(gpus))
}

/// The value of `CUDA_VISIBLE_DEVICES` for these indices: `"0,1"`; `""` for none.
pub fn cuda_visible_devices(indices: &[u32]) -> String {
    indices
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Which of the node's GPUs each replica holds.
///
/// **Invariant:** no index is held by two replicas.
#[derive(Debug, Clone)]
pub struct Allocator {
    /// The node's GPU indices, ascending.
    indices: Vec<u32>,
    /// The indices each replica holds.
    held: BTreeMap<String, Vec<u32>>,
}

impl Allocator {
    /// An allocator for `inventory`'s GPUs, all free.
    pub fn new(inventory: &Inventory) -> Self {
        let mut indices: Vec<u32> = inventory.gpus.iter().map(|g| g.index).collect();
        indices.sort_unstable();
        indices.dedup();
        Self {
            indices,
            held: BTreeMap::new(),
        }
    }

    /// Gives `replica` the `count` lowest free GPU indices.
    ///
    /// Refuses when fewer than `count` are free, or when `replica` already holds an
    /// allocation (even an empty one); nothing changes on refusal.
    pub fn allocate(&mut self, replica: &str, count: u32) -> Result<Vec<u32>, GpuError> {
        if let Some(held) = self.held.get(replica) {
            return Err(GpuError::AlreadyAllocated {
                replica: replica.to_owned(),
                held: held.clone(),
            });
        }
        let free = self.free_indices();
        let wanted = usize::try_from(count).unwrap_or(usize::MAX);
        if free.len() < wanted {
            return Err(GpuError::NotEnoughFree {
                replica: replica.to_owned(),
                requested: count,
                free: self.free(),
                total: self.total(),
            });
        }
        let given: Vec<u32> = free.into_iter().take(wanted).collect();
        self.held.insert(replica.to_owned(), given.clone());
        Ok(given)
    }

    /// Frees whatever `replica` holds; nothing happens if it holds nothing.
    pub fn release(&mut self, replica: &str) {
        self.held.remove(replica);
    }

    /// How many GPUs are free.
    pub fn free(&self) -> u32 {
        u32::try_from(self.free_indices().len()).unwrap_or(u32::MAX)
    }

    /// The indices `replica` holds, if it has an allocation.
    pub fn held_by(&self, replica: &str) -> Option<&[u32]> {
        self.held.get(replica).map(Vec::as_slice)
    }

    /// How many GPUs the node has.
    fn total(&self) -> u32 {
        u32::try_from(self.indices.len()).unwrap_or(u32::MAX)
    }

    /// The free indices, ascending.
    fn free_indices(&self) -> Vec<u32> {
        self.indices
            .iter()
            .copied()
            .filter(|i| !self.held.values().any(|h| h.contains(i)))
            .collect()
    }
}

#[cfg(test)]
#[path = "gpu_tests.rs"]
mod tests;
