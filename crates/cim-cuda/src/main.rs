//! The `cim-cuda` binary: CIM pre-training and its tools on the GPU, with the same CLI as
//! `cim-cpu` (cim-train's). `pretrain` runs the preflight first (`--preflight off` skips it).
//!
//! The GPU is `CIM_CUDA_DEVICE`, else `LOCAL_RANK` (as torchrun sets it), else 0. GEMMs
//! run in f32 unless `CIM_CUDA_GEMM=tf32` (tensor cores, TF32 inputs, f32 accumulation) or
//! `CIM_CUDA_GEMM=bf16` (bf16 mixed precision: tensor cores, bf16 inputs, f32
//! accumulation; everything else f32) or `CIM_CUDA_GEMM=bf16-fused` (the same, rounded
//! inside cuBLAS's GEMM instead of by a conversion kernel).
//! `CIM_CUDA_EMULATE=1` runs everything on the host emulator instead: slow, but it runs
//! the very kernel sources on a machine without a GPU.
//!
//! `pretrain` renders pairs on the device by default (issue 6, S2 item 2): the loader's
//! workers only decode images and cut 8-bit search views, and [`PairRenderer`] writes the
//! contexts, exemplars and maps into the model's input buffers (`--render host` renders
//! them on the CPU instead).
//!
//! A data-parallel `pretrain` (launched like torchrun: WORLD_SIZE > 1, one process per
//! GPU) sums the gradients with NCCL, which must be on the library path as `libnccl.so`;
//! on the emulator, over TCP as `cim-cpu` does.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use cim_cuda::{Cuda, Device, GemmConfig, Gpu, NcclCollective, PairOutputs, PairRenderer};
use cim_data::{PairConfig, ViewBatch};
use cim_model::Batch;
use cim_spec::backend::Memory;
use cim_train::cli::{BinaryDefaults, main as cli_main};
use cim_train::data::DeviceRenderer;
use cim_train::distributed::{Collective, World};

/// The backend's pair renderer as the trainer's [`DeviceRenderer`].
struct OnDevice<'a, D: Device>(PairRenderer<'a, D>);

impl<D: Device> DeviceRenderer<Cuda<D>> for OnDevice<'_, D> {
    fn render(
        &mut self,
        cuda: &Cuda<D>,
        views: &ViewBatch,
        into: &mut Batch<Cuda<D>>,
    ) -> Result<()> {
        let whole = |buf| 0..Cuda::<D>::buffer_len(buf);
        let (context, exemplars, maps) = (
            whole(&into.context),
            whole(&into.exemplars),
            whole(&into.maps),
        );
        let out = PairOutputs {
            context: cuda.view_mut(&mut into.context, context),
            exemplars: cuda.view_mut(&mut into.exemplars, exemplars),
            maps: cuda.view_mut(&mut into.maps, maps),
        };
        self.0
            .render(&views.views, &views.plans, out)
            .map_err(|e| anyhow!("cim-cuda: {e}"))
    }
}

/// `cuda`'s [`DeviceRenderer`] of `cfg`'s pairs.
fn renderer<'b, D: Device>(
    cuda: &'b Cuda<D>,
    cfg: &PairConfig,
) -> Result<Box<dyn DeviceRenderer<Cuda<D>> + 'b>> {
    let renderer = cuda
        .pair_renderer(cfg)
        .map_err(|e| anyhow!("cim-cuda: {e}"))?;
    Ok(Box::new(OnDevice(renderer)))
}

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

/// The preflight on by default, pairs rendered on the device; data-parallel runs over TCP
/// unless `connect` says otherwise.
fn defaults<D: Device>() -> BinaryDefaults<Cuda<D>> {
    BinaryDefaults {
        preflight: true,
        renderer: Some(renderer),
        ..Default::default()
    }
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
    let gemm = GemmConfig::from_env().map_err(|e| anyhow!("cim-cuda: {e}"))?;
    if std::env::var("CIM_CUDA_EMULATE").is_ok_and(|v| v == "1") {
        return cli_main(|| Ok(Cuda::emulated_with(gemm)), defaults());
    }
    let defaults = BinaryDefaults {
        connect: nccl_connect,
        ..defaults()
    };
    cli_main(
        || {
            let ordinal = device_ordinal()?;
            Cuda::gpu_with(ordinal, gemm).map_err(|e| anyhow!("cim-cuda: {e}"))
        },
        defaults,
    )
}
