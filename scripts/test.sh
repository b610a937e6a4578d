#!/usr/bin/env bash
# The project's test command (README): everything CI proves, short of formatting and lints.
# - the no_std proof for cim-spec and cim-model (and that it can fail);
# - every crate's tests, the conformance suite on every in-tree backend included;
# - the candle-core second opinion on the reference's ops (feature `candle`);
# - every CUDA kernel compiled for the H100 by NVRTC with ptxas's register report (no GPU:
#   NVIDIA's PyPI wheels, GPU.md), and the GPU check script's plumbing on the emulator;
# - the learning check (release build, a few minutes): CIM pre-training must beat the
#   random encoder on Fashion-MNIST k-NN and on held-out map IoU by fixed margins.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/check-nostd.sh
cargo test --workspace
cargo test -p conformance --features candle
cuda_tools=$(scripts/install-cuda-tools.sh)
LD_LIBRARY_PATH="$cuda_tools/nvidia/cu13/lib" CIM_REQUIRE_NVRTC=1 cargo test -p cim-cuda --test kernels
scripts/gpu-check-dry-run.sh
scripts/learning-check.sh
