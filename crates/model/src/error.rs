//! The one error type for loading a model file.

use std::path::PathBuf;

/// Why a safetensors file, or the model in it, could not be loaded.
///
/// Every variant names the file; messages say what is wrong and, where there
/// is one, what would fix it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is {len} bytes, shorter than the 8-byte header length that starts a safetensors file"
    )]
    TooShort { path: PathBuf, len: u64 },
    #[error(
        "{path}: header length {header_len} bytes is larger than the {limit}-byte limit; the file is corrupt or not safetensors"
    )]
    HeaderTooLarge {
        path: PathBuf,
        header_len: u64,
        limit: u64,
    },
    #[error(
        "{path}: header length {header_len} bytes runs past the end of the {file_len}-byte file (file truncated?)"
    )]
    HeaderBeyondFile {
        path: PathBuf,
        header_len: u64,
        file_len: u64,
    },
    #[error("{path}: header is not valid JSON: {source}")]
    HeaderNotJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: header must be a JSON object of tensors; got {found}")]
    HeaderNotObject { path: PathBuf, found: &'static str },
    #[error("{path}: header entry {name:?} is malformed: {reason}")]
    BadEntry {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("{path}: tensor {name:?} has dtype {dtype:?}; tidal-model supports only F32")]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error(
        "{path}: tensor {name:?} has shape {shape:?} ({expected} bytes as F32) but data_offsets span {actual} bytes"
    )]
    SizeMismatch {
        path: PathBuf,
        name: String,
        shape: Vec<usize>,
        expected: u64,
        actual: u64,
    },
    #[error(
        "{path}: tensor {name:?} ends at data byte {end} but the data section has only {data_len} bytes (file truncated?)"
    )]
    Truncated {
        path: PathBuf,
        name: String,
        end: u64,
        data_len: u64,
    },
    #[error("{path}: tensors {first:?} and {second:?} overlap in the data section")]
    Overlap {
        path: PathBuf,
        first: String,
        second: String,
    },
    #[error(
        "{path}: data bytes {from}..{to} belong to no tensor; safetensors data must be covered contiguously"
    )]
    Gap { path: PathBuf, from: u64, to: u64 },
    #[error("{path}: model needs tensor {name:?}, which the file does not have")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor {name:?} has shape {got:?}; the model needs {expected}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        got: Vec<usize>,
        expected: String,
    },
}
