//! What the GPU tests share: the backend on GPU 0 (GEMM math from `CIM_CUDA_GEMM`), or,
//! without a usable GPU, `None` after printing why; `CIM_REQUIRE_GPU=1` turns the absence
//! into a failure (set on the GPU test machine).

use cim_cuda::{Cuda, GemmConfig, Gpu, gpu_unavailable_reason};

pub fn gpu_or_skip() -> Option<Cuda<Gpu>> {
    let required = std::env::var("CIM_REQUIRE_GPU").is_ok_and(|v| v == "1");
    if let Some(reason) = gpu_unavailable_reason() {
        assert!(!required, "CIM_REQUIRE_GPU=1 but {reason}");
        eprintln!("skipped: {reason}");
        return None;
    }
    let gemm = GemmConfig::from_env().unwrap_or_else(|e| panic!("{e}"));
    Some(Cuda::gpu_with(0, gemm).unwrap_or_else(|e| panic!("opening GPU 0: {e}")))
}
