#!/usr/bin/env bash
# Optional check (issue 3): our CIM step against the same step rebuilt in PyTorch + timm.
# Installs PyTorch, timm and safetensors from PyPI if missing (the Linux wheel pulls its
# CUDA libraries, a few GB), dumps one step of the micro model from the given backend, and
# runs benches/pytorch/step_parity.py on it. Exit status is the parity check's. Further
# arguments go to step-dump, e.g. the S4 decoder options (Figure 4); MODEL and BATCH pick
# another configuration and batch (default micro, 2):
#   [MODEL=vit-tiny] scripts/pytorch-parity.sh [reference|cpu] [--correlation conv] [--predictor deconv]
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:-reference}
shift || true

if ! python3 -c "import torch, timm, safetensors" 2>/dev/null; then
    echo "pytorch-parity: installing torch, timm and safetensors from PyPI"
    python3 -m pip install --quiet torch timm safetensors numpy
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
case "$backend" in
    reference) cargo run --quiet --release -p cim-train --example reference_cli -- step-dump --model "${MODEL:-micro}" --seed 7 --batch "${BATCH:-2}" --out "$out/dump" "$@" ;;
    cpu) cargo run --quiet --release -p cim-cpu -- step-dump --model "${MODEL:-micro}" --seed 7 --batch "${BATCH:-2}" --out "$out/dump" "$@" ;;
    *) echo "pytorch-parity: unknown backend '$backend' (reference or cpu)" >&2; exit 2 ;;
esac
python3 benches/pytorch/step_parity.py "$out/dump"
