//! [`MapLossOps`] on the device (S5): the five map losses, forward as a two-pass fixed-tree
//! reduction to the scalar loss, backward as one block per map; cim-spec's per-pixel
//! formulas evaluated in f64 (see `kernels.cu`).

use cim_spec::backend::{MapLossArgs, MapLossOps};
use cim_spec::loss::MapLoss;

use super::kernels::loss as k;
use crate::device::{Device, LaunchDims};
use crate::error::CudaError;
use crate::{Cuda, DeviceView, DeviceViewMut};

/// Most threads given to one map.
const MAP_THREADS: u32 = 256;
/// Blocks of the forward's first pass, one partial sum each in the backend's buffer.
use crate::MAX_PARTIALS;
/// Most blocks of the backward; each loops over the maps beyond.
const MAX_MAP_BLOCKS: usize = 1 << 16;
/// Threads of the forward's second pass, which adds at most [`MAX_PARTIALS`] values.
const TOTAL_THREADS: u32 = 256;

/// The kind's number in `kernels.cu` (`MAP_LOSS_*`) and the focal parameters.
fn kind_code(kind: MapLoss) -> (i32, f64, f64) {
    match kind {
        MapLoss::SoftmaxCrossEntropy => (0, 0.0, 0.0),
        MapLoss::BinaryCrossEntropy => (1, 0.0, 0.0),
        MapLoss::BalancedBinaryCrossEntropy => (2, 0.0, 0.0),
        MapLoss::MeanSquaredError => (3, 0.0, 0.0),
        MapLoss::Focal { alpha, gamma } => (4, alpha, gamma),
    }
}

/// One block per map (up to `max_blocks`), whole warps covering the map's pixels.
fn per_map(maps: usize, pixels: usize, max_blocks: usize) -> LaunchDims {
    let threads = (pixels.div_ceil(32) * 32).clamp(32, MAP_THREADS as usize) as u32;
    LaunchDims::rows(maps.min(max_blocks), threads)
}

impl<D: Device> MapLossOps for Cuda<D> {
    fn map_loss_forward(
        &self,
        loss: DeviceViewMut<'_>,
        logits: DeviceView<'_>,
        target: DeviceView<'_>,
        args: &MapLossArgs,
    ) -> Result<(), CudaError> {
        let (kind, alpha, gamma) = kind_code(args.kind);
        let partials = args.maps.min(MAX_PARTIALS);
        self.with_partials(|partial_sums| {
            if partials > 0 {
                let params = k::MapLossPartialsArgs {
                    partials: partial_sums,
                    logits: logits.ptr(),
                    target: target.ptr(),
                    maps: args.maps as i64,
                    pixels: args.pixels as i64,
                    kind,
                    alpha,
                    gamma,
                };
                let dims = per_map(args.maps, args.pixels, MAX_PARTIALS);
                self.launch(&k::MAP_LOSS_PARTIALS, dims, params)?;
            }
            let params = k::MapLossTotalArgs {
                loss: loss.ptr(),
                partial_sums,
                partials: partials as i64,
                scale: f64::from(args.scale),
            };
            self.launch(
                &k::MAP_LOSS_TOTAL,
                LaunchDims::rows(1, TOTAL_THREADS),
                params,
            )
        })
    }

    fn map_loss_backward(
        &self,
        dlogits: DeviceViewMut<'_>,
        logits: DeviceView<'_>,
        target: DeviceView<'_>,
        args: &MapLossArgs,
    ) -> Result<(), CudaError> {
        if dlogits.len() == 0 {
            return Ok(());
        }
        let (kind, alpha, gamma) = kind_code(args.kind);
        let params = k::MapLossBackwardArgs {
            dlogits: dlogits.ptr(),
            logits: logits.ptr(),
            target: target.ptr(),
            maps: args.maps as i64,
            pixels: args.pixels as i64,
            kind,
            alpha,
            gamma,
            factor: f64::from(args.scale) / args.pixels as f64,
        };
        let dims = per_map(args.maps, args.pixels, MAX_MAP_BLOCKS);
        self.launch(&k::MAP_LOSS_BACKWARD, dims, params)
    }
}
