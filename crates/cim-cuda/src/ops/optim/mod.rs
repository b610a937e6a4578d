//! [`Optim`] on the device (S6, S7): AdamW and the EMA target update, which reproduce the
//! CPU backend's f32 arithmetic bit for bit (their scalars are rounded to f32 on the host
//! exactly as `cim_spec::schedule` defines); the sum of squares behind the global gradient
//! norm; and clipping by that norm without a round trip to the host.
//!
//! The sum of squares is two launches: a fixed number of blocks (a function of the length
//! only) write f64 partial sums into the backend's partial-sum buffer, and one block adds
//! them in order. No atomics, so the same gradient gives the same bits on every run.

use cim_spec::backend::{AdamWArgs, Optim};
use cim_spec::schedule::AdamW;

use super::kernels::optim as k;
use crate::device::{Device, LaunchDims};
use crate::error::CudaError;
use crate::{Cuda, DeviceView, DeviceViewMut};

const THREADS: u32 = 256;
/// Blocks of the first sum-of-squares launch, at most.
const SUM_SQUARES_MAX_BLOCKS: usize = 1024;
const _: () = assert!(SUM_SQUARES_MAX_BLOCKS <= crate::MAX_PARTIALS);

impl<D: Device> Optim for Cuda<D> {
    fn adamw_update(
        &self,
        param: DeviceViewMut<'_>,
        m: DeviceViewMut<'_>,
        v: DeviceViewMut<'_>,
        grad: DeviceView<'_>,
        args: &AdamWArgs,
    ) -> Result<(), CudaError> {
        let n = param.len();
        if n == 0 {
            return Ok(());
        }
        let s = AdamW {
            lr: args.lr,
            beta1: args.beta1,
            beta2: args.beta2,
            eps: args.eps,
            weight_decay: args.weight_decay,
        }
        .step_scalars(args.step);
        // `AdamWStep::apply`'s choice between the two forms of PyTorch's lerp.
        let lerp_from_grad = s.lerp_weight.abs() >= 0.5;
        let params = k::AdamWStepArgs {
            param: param.ptr(),
            m: m.ptr(),
            v: v.ptr(),
            grad: grad.ptr(),
            decay_factor: s.decay_factor,
            lerp_weight: if lerp_from_grad {
                s.lerp_weight - 1.0
            } else {
                s.lerp_weight
            },
            lerp_from_grad: i32::from(lerp_from_grad),
            beta2: s.beta2,
            one_minus_beta2: s.one_minus_beta2,
            bias_correction2_sqrt: s.bias_correction2_sqrt,
            eps: s.eps,
            neg_step_size: s.neg_step_size,
            n: n as i64,
        };
        self.launch(&k::ADAMW_UPDATE, LaunchDims::linear(n, THREADS), params)
    }

    fn ema_update(
        &self,
        target: DeviceViewMut<'_>,
        online: DeviceView<'_>,
        momentum: f64,
    ) -> Result<(), CudaError> {
        let n = target.len();
        if n == 0 {
            return Ok(());
        }
        // `cim_spec::schedule::ema_scalar`: both factors rounded to f32 from f64.
        let params = k::EmaArgs {
            target: target.ptr(),
            online: online.ptr(),
            keep: momentum as f32,
            take: (1.0 - momentum) as f32,
            n: n as i64,
        };
        self.launch(&k::EMA_UPDATE, LaunchDims::linear(n, THREADS), params)
    }

    fn sum_squares(&self, out: DeviceViewMut<'_>, x: DeviceView<'_>) -> Result<(), CudaError> {
        let n = x.len();
        let blocks = n
            .div_ceil(THREADS as usize)
            .clamp(1, SUM_SQUARES_MAX_BLOCKS);
        self.with_partials(|partials| {
            let partial = k::SumSquaresPartialArgs {
                partials,
                x: x.ptr(),
                n: n as i64,
            };
            let last = k::SumSquaresFinalArgs {
                out: out.ptr(),
                partials,
                blocks: blocks as i32,
            };
            self.launch(
                &k::SUM_SQUARES_PARTIAL,
                LaunchDims::rows(blocks, THREADS),
                partial,
            )?;
            self.launch(&k::SUM_SQUARES_FINAL, LaunchDims::rows(1, THREADS), last)
        })
    }

    fn clip_by_norm(
        &self,
        x: DeviceViewMut<'_>,
        norm_sq: DeviceView<'_>,
        max_norm: f32,
    ) -> Result<(), CudaError> {
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        let params = k::ClipArgs {
            x: x.ptr(),
            norm_sq: norm_sq.ptr(),
            max_norm,
            n: n as i64,
        };
        self.launch(&k::CLIP_BY_NORM, LaunchDims::linear(n, THREADS), params)
    }
}
