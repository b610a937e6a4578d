#!/usr/bin/env bash
# Builds, on this GPU-less machine, everything the GPU check runs (GPU.md: release and test
# binaries built here run on the GPU machine, which has no Rust toolchain) into
# gpu-bundle/ (git-ignored): the cim-cuda binary and the GPU test binaries (conformance
# suite, pair renderer, one-rank NCCL).
# Then run the check there from the repository root with the bundle and the sample
# photos carried along:
#     device run --carry gpu-bundle --carry data/photos -- bash scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p cim-cuda --bin cim-cuda
# The test binaries that run on the GPU: the conformance suite, the pair renderer and NCCL.
tests_json=$(cargo test --release -p cim-cuda --test gpu --test render --test nccl --no-run --message-format=json)
test_binary() {
    printf '%s\n' "$tests_json" | python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == sys.argv[1] and msg.get("executable"):
        print(msg["executable"])' "$1"
}
rm -rf gpu-bundle
mkdir -p gpu-bundle
cp "${CARGO_TARGET_DIR:-target}/release/cim-cuda" gpu-bundle/cim-cuda
cp "$(test_binary gpu)" gpu-bundle/gpu-conformance
cp "$(test_binary render)" gpu-bundle/gpu-render
cp "$(test_binary nccl)" gpu-bundle/gpu-nccl
strip gpu-bundle/cim-cuda gpu-bundle/gpu-conformance gpu-bundle/gpu-render gpu-bundle/gpu-nccl
git rev-parse HEAD > gpu-bundle/COMMIT
du -sh gpu-bundle/*
