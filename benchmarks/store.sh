#!/usr/bin/env bash
# `tidal bench store` with the etcd comparison (see benchmarks/README.md).
#
# Prerequisite: etcd 3.4 from Debian: `apt-get install -y etcd-server etcd-client`.
# The `bench-etcd` feature builds the `etcd-client` crate, whose build script
# needs `protoc`: this script hands it the vendored one that tidal-proto's
# build already downloaded (protoc-bin-vendored), unless PROTOC is set.
# Arguments go to `tidal bench store`, e.g. `benchmarks/store.sh --seconds 5 --json`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PROTOC:-}" ]]; then
    cargo fetch --locked >/dev/null
    registry="${CARGO_HOME:-$HOME/.cargo}/registry/src"
    PROTOC=$(find "$registry" -path '*protoc-bin-vendored-linux-x86_64-*/bin/protoc' 2>/dev/null | sort | tail -1)
    if [[ -z "$PROTOC" ]]; then
        echo "no vendored protoc found under $registry; set PROTOC to a protoc binary" >&2
        exit 2
    fi
    export PROTOC
fi
if ! command -v etcd >/dev/null && [[ " $* " != *" --skip-etcd "* ]] && [[ " $* " != *" --etcd-bin "* ]]; then
    echo "etcd not found: apt-get install -y etcd-server etcd-client (or pass --skip-etcd)" >&2
    exit 2
fi
exec cargo run --release --locked -p tidal --features bench-etcd -- bench store "$@"
