#!/usr/bin/env bash
# Installs what compiling the CUDA kernels needs on a machine with no GPU and no CUDA
# toolkit (GPU.md): NVRTC 13.0 (libnvrtc.so.13 + builtins), the CUDA 13.0 headers, and
# ptxas for the register/spill report, from NVIDIA's PyPI wheels, into .cache/cuda-tools.
# Pinned to 13.0.x: newer NVRTC emits PTX that the test machine's driver (580) rejects.
# Prints the folder; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${CIM_CUDA_TOOLS:-$PWD/.cache/cuda-tools}"
stamp="$dest/.installed-13.0.88"
if [[ ! -f "$stamp" ]]; then
    rm -rf "$dest"
    mkdir -p "$dest"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dest" \
        nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvcc==13.0.88 >&2
    touch "$stamp"
fi
for needed in nvidia/cu13/lib/libnvrtc.so.13 nvidia/cu13/include/cuda_bf16.h nvidia/cu13/bin/ptxas; do
    if [[ ! -e "$dest/$needed" ]]; then
        echo "install-cuda-tools: $dest/$needed is missing after installing the wheels" >&2
        exit 1
    fi
done
echo "$dest"
