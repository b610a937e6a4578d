//! The whole conformance suite on a real GPU, with f32 GEMMs or, with `CIM_CUDA_GEMM=tf32`,
//! `bf16` or `bf16-fused`, TF32 or bf16-input tensor-core GEMMs (all under the bf16
//! tolerance column; `scripts/gpu-check.sh` runs all four). Without a GPU (no driver, no
//! device, no CUDA 13 libraries) every test prints why and passes, unless
//! `CIM_REQUIRE_GPU=1`, which makes the absence a failure (set on the GPU test machine).

mod common;

use cim_cuda::{Cuda, Gpu};
use common::gpu_or_skip;

conformance::suite!(Cuda<Gpu>, {
    let Some(backend) = gpu_or_skip() else {
        return;
    };
    backend
});
