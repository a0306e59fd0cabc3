//! A safetensors reader and writer, parsed by hand (no `safetensors` crate).
//!
//! Layout: an 8-byte little-endian header length `N`, `N` bytes of JSON
//! header `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?}`,
//! then the data section; offsets are relative to byte `8 + N` and the tensors
//! must cover the data section exactly, without gaps or overlaps.
//!
//! **Architecture Invariant:** [`read_header`] checks the whole header
//! against the file length before a single data byte is read, so
//! [`load`] never reads past the end of the file or into the wrong tensor.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;

use crate::error::LoadError;

/// Headers larger than this are rejected as corrupt (safetensors itself uses 100 MB).
pub const MAX_HEADER_LEN: u64 = 100 * 1024 * 1024;

/// Floats per positional read; a large tensor is read as several chunks in parallel.
const CHUNK_FLOATS: usize = 2 * 1024 * 1024;

/// One tensor as the header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    /// Byte range within the data section.
    pub begin: u64,
    pub end: u64,
}

impl TensorInfo {
    /// Number of elements (product of the shape).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A validated header: tensors sorted by offset, covering the data section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub tensors: Vec<TensorInfo>,
    pub metadata: BTreeMap<String, String>,
    /// Absolute file offset of the data section (`8 + N`).
    pub data_start: u64,
}

/// A loaded F32 tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// Reads and validates the header of `file` (whose path is `path`, for errors).
pub fn read_header(file: &File, path: &Path) -> Result<Header, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_owned(),
        source,
    };
    let file_len = file.metadata().map_err(io)?.len();
    if file_len < 8 {
        return Err(LoadError::TooShort {
            path: path.to_owned(),
            len: file_len,
        });
    }
    let mut prefix = [0u8; 8];
    file.read_exact_at(&mut prefix, 0).map_err(io)?;
    let header_len = u64::from_le_bytes(prefix);
    if header_len > MAX_HEADER_LEN {
        return Err(LoadError::HeaderTooLarge {
            path: path.to_owned(),
            header_len,
            limit: MAX_HEADER_LEN,
        });
    }
    if header_len > file_len - 8 {
        return Err(LoadError::HeaderBeyondFile {
            path: path.to_owned(),
            header_len,
            file_len,
        });
    }
    // Fits: header_len ≤ MAX_HEADER_LEN.
    let mut json = vec![0u8; usize::try_from(header_len).unwrap_or(usize::MAX)];
    file.read_exact_at(&mut json, 8).map_err(io)?;
    let data_start = 8 + header_len;
    parse_header(&json, data_start, file_len - data_start, path)
}

/// Validates a header's JSON bytes against a data section of `data_len` bytes.
pub fn parse_header(
    json: &[u8],
    data_start: u64,
    data_len: u64,
    path: &Path,
) -> Result<Header, LoadError> {
    let p = || path.to_owned();
    let value: serde_json::Value = serde_json::from_slice(json)
        .map_err(|source| LoadError::HeaderNotJson { path: p(), source })?;
    let serde_json::Value::Object(map) = value else {
        return Err(LoadError::HeaderNotObject {
            path: p(),
            found: json_kind(&value),
        });
    };
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(map.len());
    for (name, entry) in map {
        let bad = |reason: String| LoadError::BadEntry {
            path: p(),
            name: name.clone(),
            reason,
        };
        if name == "__metadata__" {
            metadata = serde_json::from_value(entry)
                .map_err(|e| bad(format!("must map strings to strings ({e})")))?;
            continue;
        }
        let raw: RawEntry = serde_json::from_value(entry).map_err(|e| {
            bad(format!(
                "expected {{\"dtype\", \"shape\", \"data_offsets\": [begin, end]}} ({e})"
            ))
        })?;
        if raw.dtype != "F32" {
            return Err(LoadError::UnsupportedDtype {
                path: p(),
                name,
                dtype: raw.dtype,
            });
        }
        let [begin, end] = raw.data_offsets;
        if begin > end {
            return Err(bad(format!(
                "data_offsets [{begin}, {end}] end before they begin"
            )));
        }
        let expected = raw
            .shape
            .iter()
            .try_fold(4u64, |acc, &d| acc.checked_mul(u64::try_from(d).ok()?))
            .ok_or_else(|| bad(format!("shape {:?} is too large", raw.shape)))?;
        if expected != end - begin {
            return Err(LoadError::SizeMismatch {
                path: p(),
                name,
                shape: raw.shape,
                expected,
                actual: end - begin,
            });
        }
        if end > data_len {
            return Err(LoadError::Truncated {
                path: p(),
                name,
                end,
                data_len,
            });
        }
        tensors.push(TensorInfo {
            name,
            shape: raw.shape,
            begin,
            end,
        });
    }
    tensors.sort_by(|a, b| (a.begin, a.end, &a.name).cmp(&(b.begin, b.end, &b.name)));
    let mut covered = 0u64;
    let mut last: Option<&TensorInfo> = None;
    for t in &tensors {
        if t.begin < covered {
            return Err(LoadError::Overlap {
                path: p(),
                first: last.map(|l| l.name.clone()).unwrap_or_default(),
                second: t.name.clone(),
            });
        }
        if t.begin > covered {
            return Err(LoadError::Gap {
                path: p(),
                from: covered,
                to: t.begin,
            });
        }
        covered = t.end;
        if t.end > t.begin {
            last = Some(t);
        }
    }
    if covered != data_len {
        return Err(LoadError::Gap {
            path: p(),
            from: covered,
            to: data_len,
        });
    }
    Ok(Header {
        tensors,
        metadata,
        data_start,
    })
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Loads every tensor of the file at `path`, reading chunks of the data
/// section with positional reads on several threads at once.
pub fn load(path: &Path) -> Result<BTreeMap<String, Tensor>, LoadError> {
    load_chunked(path, CHUNK_FLOATS)
}

/// [`load`] with reads of at most `chunk_floats` floats (tests use small ones).
pub(crate) fn load_chunked(
    path: &Path,
    chunk_floats: usize,
) -> Result<BTreeMap<String, Tensor>, LoadError> {
    let file = File::open(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    let header = read_header(&file, path)?;
    let mut out: Vec<(String, Tensor)> = header
        .tensors
        .iter()
        .map(|t| {
            let tensor = Tensor {
                shape: t.shape.clone(),
                data: vec![0.0; t.numel()],
            };
            (t.name.clone(), tensor)
        })
        .collect();
    // Work items: (absolute file offset, destination floats).
    let mut work: Vec<(u64, &mut [f32])> = Vec::new();
    for (info, (_, tensor)) in header.tensors.iter().zip(out.iter_mut()) {
        let mut offset = header.data_start + info.begin;
        for chunk in tensor.data.chunks_mut(chunk_floats.max(1)) {
            let len = chunk.len() as u64 * 4;
            work.push((offset, chunk));
            offset += len;
        }
    }
    let threads = std::thread::available_parallelism()
        .map_or(4, usize::from)
        .clamp(1, 8)
        .min(work.len().max(1));
    let queue = Mutex::new(work.into_iter());
    let first_error: Mutex<Option<std::io::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut buf = Vec::new();
                loop {
                    let item = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                    let Some((offset, dst)) = item else { break };
                    buf.resize(dst.len() * 4, 0);
                    if let Err(e) = file.read_exact_at(&mut buf, offset) {
                        first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        break;
                    }
                    for (d, b) in dst.iter_mut().zip(buf.chunks_exact(4)) {
                        *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
            });
        }
    });
    if let Some(source) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(LoadError::Io {
            path: path.to_owned(),
            source,
        });
    }
    Ok(out.into_iter().collect())
}

/// Encodes the length prefix and header for tensors laid out back to back in
/// the given order, padded with spaces to a multiple of 8. Deterministic: the
/// same input gives the same bytes.
pub fn encode_header(tensors: &[(&str, &[usize])], metadata: &[(&str, &str)]) -> Vec<u8> {
    let mut json = String::from("{");
    if !metadata.is_empty() {
        json.push_str("\"__metadata__\":{");
        for (i, (k, v)) in metadata.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(&format!("{}:{}", quote(k), quote(v)));
        }
        json.push('}');
    }
    let mut offset = 0u64;
    for (i, (name, shape)) in tensors.iter().enumerate() {
        if i > 0 || !metadata.is_empty() {
            json.push(',');
        }
        let bytes = shape.iter().product::<usize>() as u64 * 4;
        json.push_str(&format!(
            "{}:{{\"dtype\":\"F32\",\"shape\":{shape:?},\"data_offsets\":[{offset},{}]}}",
            quote(name),
            offset + bytes
        ));
        offset += bytes;
    }
    json.push('}');
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(json.as_bytes());
    out
}

fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Writes a small F32 safetensors file in memory order (tests, hand-made models).
pub fn write_f32(path: &Path, tensors: &[(&str, &[usize], &[f32])]) -> std::io::Result<()> {
    let shapes: Vec<(&str, &[usize])> = tensors.iter().map(|(n, s, _)| (*n, *s)).collect();
    let mut bytes = encode_header(&shapes, &[]);
    for (_, _, data) in tensors {
        for v in *data {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    let mut f = File::create(path)?;
    f.write_all(&bytes)?;
    f.sync_all()
}

/// The path, for error messages that have only a directory.
pub fn model_path(dir: &Path) -> PathBuf {
    dir.join("model.safetensors")
}
