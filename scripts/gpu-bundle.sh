#!/usr/bin/env bash
# Builds, on this GPU-less machine, everything the GPU check runs (GPU.md: release and test
# binaries built here run on the GPU machine, which has no Rust toolchain) into
# gpu-bundle/ (git-ignored): the cim-cuda binary and the conformance-suite test binary.
# Then run the check there from the repository root with the bundle and the sample
# photos carried along:
#     device run --carry gpu-bundle --carry data/photos -- bash scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p cim-cuda --bin cim-cuda
tests_json=$(cargo test --release -p cim-cuda --test gpu --no-run --message-format=json)
gpu_tests=$(printf '%s\n' "$tests_json" | python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "gpu" and msg.get("executable"):
        print(msg["executable"])')
rm -rf gpu-bundle
mkdir -p gpu-bundle
cp target/release/cim-cuda gpu-bundle/cim-cuda
cp "$gpu_tests" gpu-bundle/gpu-conformance
strip gpu-bundle/cim-cuda gpu-bundle/gpu-conformance
git rev-parse HEAD > gpu-bundle/COMMIT
du -sh gpu-bundle/*
