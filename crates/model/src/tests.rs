//! Unit tests: the parser's malformed cases, the MLP, and `generate`.

use std::path::{Path, PathBuf};

use crate::error::LoadError;
use crate::generate::{ModelConfig, generate};
use crate::mlp::Mlp;
use crate::safetensors::{self, load, load_chunked, write_f32};

fn raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn file(dir: &Path, bytes: &[u8]) -> PathBuf {
    let path = dir.join("m.safetensors");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Loads `bytes` as a file and returns the error, checking it names the file.
fn load_err(bytes: &[u8]) -> LoadError {
    let dir = tempfile::tempdir().unwrap();
    let path = file(dir.path(), bytes);
    let err = load(&path).expect_err("malformed file must not load");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "error must name the file: {err}"
    );
    err
}

const F32_2: &str = r#""dtype":"F32","shape":[2]"#;

#[test]
fn rejects_file_shorter_than_prefix() {
    assert!(matches!(
        load_err(&[1, 2, 3]),
        LoadError::TooShort { len: 3, .. }
    ));
}

#[test]
fn rejects_absurd_header_length() {
    let bytes = (200u64 << 20).to_le_bytes();
    let err = load_err(&bytes);
    assert!(matches!(err, LoadError::HeaderTooLarge { .. }), "{err}");
}

#[test]
fn rejects_header_past_end_of_file() {
    let mut bytes = 100u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    let err = load_err(&bytes);
    assert!(
        matches!(
            err,
            LoadError::HeaderBeyondFile {
                header_len: 100,
                file_len: 10,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn rejects_header_that_is_not_json_or_not_an_object() {
    let err = load_err(&raw("{not json", &[]));
    assert!(matches!(err, LoadError::HeaderNotJson { .. }), "{err}");
    let err = load_err(&raw("[1, 2]", &[]));
    assert!(
        matches!(
            err,
            LoadError::HeaderNotObject {
                found: "an array",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn rejects_dtypes_other_than_f32() {
    for dtype in ["F16", "BF16", "I64", "NOPE"] {
        let h = format!(r#"{{"a":{{"dtype":"{dtype}","shape":[2],"data_offsets":[0,8]}}}}"#);
        match load_err(&raw(&h, &[0; 8])) {
            LoadError::UnsupportedDtype { name, dtype: d, .. } => {
                assert_eq!((name.as_str(), d.as_str()), ("a", dtype));
            }
            other => panic!("{dtype}: {other}"),
        }
    }
}

#[test]
fn rejects_malformed_entries_and_metadata() {
    let cases = [
        r#"{"a":{"dtype":"F32","shape":[2]}}"#,
        r#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#,
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
        r#"{"a":7}"#,
        r#"{"__metadata__":{"k":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
    ];
    for h in cases {
        let err = load_err(&raw(h, &[0; 8]));
        assert!(matches!(err, LoadError::BadEntry { .. }), "{h}: {err}");
    }
}

#[test]
fn rejects_shape_that_disagrees_with_offsets() {
    let h = format!(r#"{{"a":{{{F32_2},"data_offsets":[0,4]}}}}"#);
    let err = load_err(&raw(&h, &[0; 4]));
    assert!(
        matches!(
            err,
            LoadError::SizeMismatch {
                expected: 8,
                actual: 4,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn rejects_offsets_beyond_the_data_section() {
    let h = format!(r#"{{"a":{{{F32_2},"data_offsets":[0,8]}}}}"#);
    let err = load_err(&raw(&h, &[0; 5]));
    assert!(
        matches!(
            err,
            LoadError::Truncated {
                end: 8,
                data_len: 5,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn rejects_overlapping_tensors() {
    let h = format!(
        r#"{{"a":{{{F32_2},"data_offsets":[0,8]}},"b":{{{F32_2},"data_offsets":[4,12]}}}}"#
    );
    match load_err(&raw(&h, &[0; 12])) {
        LoadError::Overlap { first, second, .. } => {
            assert_eq!((first, second), ("a".into(), "b".into()))
        }
        other => panic!("{other}"),
    }
}

#[test]
fn rejects_data_not_covered_contiguously() {
    // A hole between tensors.
    let h = format!(
        r#"{{"a":{{{F32_2},"data_offsets":[0,8]}},"b":{{{F32_2},"data_offsets":[12,20]}}}}"#
    );
    let err = load_err(&raw(&h, &[0; 20]));
    assert!(
        matches!(
            err,
            LoadError::Gap {
                from: 8,
                to: 12,
                ..
            }
        ),
        "{err}"
    );
    // A hole at the start.
    let h = format!(r#"{{"a":{{{F32_2},"data_offsets":[4,12]}}}}"#);
    let err = load_err(&raw(&h, &[0; 12]));
    assert!(
        matches!(err, LoadError::Gap { from: 0, to: 4, .. }),
        "{err}"
    );
    // Trailing bytes no tensor claims.
    let h = format!(r#"{{"a":{{{F32_2},"data_offsets":[0,8]}}}}"#);
    let err = load_err(&raw(&h, &[0; 11]));
    assert!(
        matches!(
            err,
            LoadError::Gap {
                from: 8,
                to: 11,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn loads_tensors_in_any_header_order_with_metadata_and_padding() {
    let h = format!(
        r#"{{"b":{{{F32_2},"data_offsets":[8,16]}},"__metadata__":{{"format":"pt"}},"a":{{"dtype":"F32","shape":[],"data_offsets":[0,4]}},"e":{{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]}},"c":{{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}}}    "#
    );
    let mut data = Vec::new();
    for v in [1.5f32, -2.0, 3.25, 4.0] {
        data.extend_from_slice(&v.to_le_bytes());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = file(dir.path(), &raw(&h, &data));
    let t = load(&path).unwrap();
    assert_eq!(t["a"].data, [1.5]);
    assert_eq!(t["a"].shape, Vec::<usize>::new());
    assert_eq!(t["c"].data, [-2.0]);
    assert_eq!(t["b"].data, [3.25, 4.0]);
    assert!(t["e"].data.is_empty());
    let f = std::fs::File::open(&path).unwrap();
    let header = safetensors::read_header(&f, &path).unwrap();
    assert_eq!(header.metadata["format"], "pt");
}

#[test]
fn chunked_parallel_reads_match_the_written_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.safetensors");
    let a: Vec<f32> = (0..1000u16).map(f32::from).collect();
    let b: Vec<f32> = (0..77u16).map(|i| -f32::from(i)).collect();
    write_f32(&path, &[("a", &[10, 100], &a), ("b", &[77], &b)]).unwrap();
    for chunk in [1, 7, 64, 1 << 20] {
        let t = load_chunked(&path, chunk).unwrap();
        assert_eq!(t["a"].data, a, "chunk {chunk}");
        assert_eq!(t["a"].shape, [10, 100]);
        assert_eq!(t["b"].data, b, "chunk {chunk}");
    }
}

fn tiny_model(dir: &Path) -> PathBuf {
    let path = dir.join("model.safetensors");
    write_f32(
        &path,
        &[
            ("layer0.weight", &[2, 2], &[1.0, -1.0, 2.0, 0.0]),
            ("layer0.bias", &[2], &[0.0, -1.0]),
            ("layer1.weight", &[1, 2], &[1.0, 3.0]),
            ("layer1.bias", &[1], &[0.5]),
        ],
    )
    .unwrap();
    path
}

#[test]
fn mlp_computes_layer1_relu_layer0() {
    let dir = tempfile::tempdir().unwrap();
    let mlp = Mlp::load(&tiny_model(dir.path())).unwrap();
    assert_eq!(
        (mlp.input_len(), mlp.hidden_len(), mlp.output_len()),
        (2, 2, 1)
    );
    assert_eq!(mlp.params(), 9);
    // h = relu([1-2+0, 2+0-1]) = [0, 1]; out = 0*1 + 1*3 + 0.5.
    assert_eq!(mlp.predict(&[1.0, 2.0]), [3.5]);
    // h = relu([3-1, 6-1]) = [2, 5]; out = 2 + 15 + 0.5.
    assert_eq!(mlp.predict(&[3.0, 1.0]), [17.5]);
}

#[test]
fn mlp_rejects_missing_tensors_and_wrong_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write_f32(&path, &[("layer0.weight", &[2, 2], &[0.0; 4])]).unwrap();
    let err = Mlp::load(&path).unwrap_err();
    assert!(
        matches!(&err, LoadError::MissingTensor { name, .. } if name == "layer0.bias"),
        "{err}"
    );
    write_f32(
        &path,
        &[
            ("layer0.weight", &[2, 2], &[0.0; 4]),
            ("layer0.bias", &[2], &[0.0; 2]),
            ("layer1.weight", &[1, 3], &[0.0; 3]),
            ("layer1.bias", &[1], &[0.0]),
        ],
    )
    .unwrap();
    let err = Mlp::load(&path).unwrap_err();
    assert!(
        matches!(&err, LoadError::ShapeMismatch { name, got, .. } if name == "layer1.weight" && got == &[1, 3]),
        "{err}"
    );
}

#[test]
fn config_for_params() {
    let c = ModelConfig::for_params(0);
    assert_eq!((c.input, c.hidden, c.output, c.params), (16, 1, 4, 25));
    let c = ModelConfig::for_params(1_000_000);
    assert_eq!(c.hidden, (1_000_000 - 4) / 21);
    assert_eq!(c.params, c.hidden * 21 + 4);
}

#[test]
fn generate_is_deterministic_and_loadable() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let ga = generate(&a, 10_000, 42).unwrap();
    generate(&b, 10_000, 42).unwrap();
    generate(&c, 10_000, 43).unwrap();
    let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
    assert_eq!(read(&a, "model.safetensors"), read(&b, "model.safetensors"));
    assert_eq!(read(&a, "config.json"), read(&b, "config.json"));
    assert_ne!(read(&a, "model.safetensors"), read(&c, "model.safetensors"));
    assert!(!a.join("model.safetensors.tmp").exists());

    let mlp = Mlp::load(&ga.model).unwrap();
    assert_eq!(mlp.params(), ga.config.params);
    assert_eq!(
        (mlp.input_len(), mlp.hidden_len(), mlp.output_len()),
        (16, 476, 4)
    );
    assert_eq!(ga.bytes, std::fs::metadata(&ga.model).unwrap().len());
    let config: serde_json::Value = serde_json::from_slice(&read(&a, "config.json")).unwrap();
    assert_eq!(
        config,
        serde_json::json!({"input": 16, "hidden": 476, "output": 4, "params": 476 * 21 + 4})
    );
    let out = mlp.predict(&[0.5; 16]);
    assert_eq!(out.len(), 4);
    assert!(out.iter().all(|v| v.is_finite()));
}
