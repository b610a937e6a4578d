//! The `cim-cuda` binary: CIM pre-training and its tools on the GPU, with the same CLI as
//! `cim-cpu` (cim-train's). `pretrain` runs the preflight first (`--preflight off` skips it).
//!
//! The GPU is `CIM_CUDA_DEVICE`, else `LOCAL_RANK` (as torchrun sets it), else 0. GEMMs
//! run in f32 unless `CIM_CUDA_GEMM=tf32` (tensor cores, TF32 inputs, f32 accumulation) or
//! `CIM_CUDA_GEMM=bf16` (bf16 mixed precision: tensor cores, bf16 inputs, f32
//! accumulation; everything else f32).
//! `CIM_CUDA_EMULATE=1` runs everything on the host emulator instead: slow, but it runs
//! the very kernel sources on a machine without a GPU.
//!
//! A data-parallel `pretrain` (launched like torchrun: WORLD_SIZE > 1, one process per
//! GPU) sums the gradients with NCCL, which must be on the library path as `libnccl.so`;
//! on the emulator, over TCP as `cim-cpu` does.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use cim_cuda::{Cuda, GemmMath, Gpu, NcclCollective};
use cim_train::cli::{BinaryDefaults, main as cli_main};
use cim_train::distributed::{Collective, World};

fn device_ordinal() -> Result<usize> {
    for var in ["CIM_CUDA_DEVICE", "LOCAL_RANK"] {
        if let Ok(value) = std::env::var(var) {
            return value
                .trim()
                .parse()
                .with_context(|| format!("{var}={value:?} is not a GPU index"));
        }
    }
    Ok(0)
}

fn nccl_connect(
    b: &Cuda<Gpu>,
    world: &World,
    fingerprint: &str,
    timeout: Duration,
) -> Result<Box<dyn Collective<Cuda<Gpu>>>> {
    Ok(Box::new(NcclCollective::connect(
        b,
        world,
        fingerprint,
        timeout,
    )?))
}

fn main() -> Result<()> {
    let gemm = GemmMath::from_env().map_err(|e| anyhow!("cim-cuda: {e}"))?;
    if std::env::var("CIM_CUDA_EMULATE").is_ok_and(|v| v == "1") {
        let defaults = BinaryDefaults {
            preflight: true,
            ..Default::default()
        };
        return cli_main(|| Ok(Cuda::emulated_with(gemm)), defaults);
    }
    let defaults = BinaryDefaults {
        preflight: true,
        connect: nccl_connect,
    };
    cli_main(
        || {
            let ordinal = device_ordinal()?;
            Cuda::gpu_with(ordinal, gemm).map_err(|e| anyhow!("cim-cuda: {e}"))
        },
        defaults,
    )
}
