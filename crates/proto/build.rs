//! Compiles `proto/tidal/v1/*.proto` with the protoc binary vendored by
//! `protoc-bin-vendored`: no system protoc, and no environment mutation.

use std::{error::Error, path::PathBuf};

/// The proto files, relative to the include root.
const PROTOS: [&str; 9] = [
    "tidal/v1/autoscaling.proto",
    "tidal/v1/deployment.proto",
    "tidal/v1/worker.proto",
    "tidal/v1/controller.proto",
    "tidal/v1/store.proto",
    "tidal/v1/raft.proto",
    "tidal/v1/store_service.proto",
    "tidal/v1/api.proto",
    "tidal/v1/management.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Ordered maps: deterministic encoding (the frozen-bytes tests rely on it)
    // and the same type as `tidal_types::Deployment::labels`.
    config.btree_map(["."]);

    let protos: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    // Services (clients and servers) need `tonic` and `tonic-prost` at run time.
    tonic_prost_build::configure().compile_with_config(config, &protos, &[root])?;
    Ok(())
}
