//! The whole conformance suite on a real GPU, with f32 GEMMs or, with `CIM_CUDA_GEMM=tf32`,
//! TF32 tensor-core GEMMs (bf16 tolerance column). Without a GPU (no driver, no device, no
//! CUDA 13 libraries) every test prints why and passes, unless `CIM_REQUIRE_GPU=1`, which
//! makes the absence a failure (set on the GPU test machine).

use cim_cuda::{Cuda, GemmMath, Gpu, gpu_unavailable_reason};

/// The backend on GPU 0, or `None` after printing why there is none.
fn gpu_or_skip() -> Option<Cuda<Gpu>> {
    let required = std::env::var("CIM_REQUIRE_GPU").is_ok_and(|v| v == "1");
    if let Some(reason) = gpu_unavailable_reason() {
        assert!(!required, "CIM_REQUIRE_GPU=1 but {reason}");
        eprintln!("skipped: {reason}");
        return None;
    }
    let gemm = GemmMath::from_env().unwrap_or_else(|e| panic!("{e}"));
    Some(Cuda::gpu_with(0, gemm).unwrap_or_else(|e| panic!("opening GPU 0: {e}")))
}

conformance::suite!(Cuda<Gpu>, {
    let Some(backend) = gpu_or_skip() else {
        return;
    };
    backend
});
