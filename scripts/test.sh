#!/usr/bin/env bash
# The project's test command (README): everything CI proves, short of formatting and lints.
# - the no_std proof for cim-spec and cim-model (and that it can fail);
# - every crate's tests, the conformance suite on every in-tree backend included;
# - the candle-core second opinion on the reference's ops (feature `candle`);
# - the learning check (release build, a few minutes): CIM pre-training must beat the
#   random encoder on Fashion-MNIST k-NN and on held-out map IoU by fixed margins.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/check-nostd.sh
cargo test --workspace
cargo test -p conformance --features candle
scripts/learning-check.sh
