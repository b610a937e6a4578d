//! [`Tokens`] on the device (S3, S4, S10): im2col of the patch embedding, the class token
//! and its gradient, the mean pool of the patch tokens, and the align-corners bilinear
//! upsampling of the predicted maps with its transpose (a gather, so no atomics).
//!
//! Row-shaped ops launch one block per row with a grid-stride loop over the rows (capped
//! grid) and as many threads as the row needs, up to [`ROW_THREADS`].

use cim_spec::backend::{PatchArgs, Tokens};

use super::kernels::tokens as k;
use crate::device::{Device, LaunchDims};
use crate::error::CudaError;
use crate::{Cuda, DeviceView, DeviceViewMut};

/// Threads of a one-thread-per-output launch.
const THREADS: u32 = 256;
/// Most threads given to one row.
const ROW_THREADS: u32 = 256;
/// Most blocks of a row launch; the kernels loop over the rows beyond.
const MAX_ROW_BLOCKS: usize = 1 << 16;
/// Output rows of one plane per block of the upsampling's forward: the row taps are
/// stepped, not divided, within a run.
const UPSAMPLE_ROWS_PER_BLOCK: usize = 16;

/// `value` as the kernels' 32-bit axis size or in-patch index.
fn to_i32(value: usize, op: &str) -> Result<i32, CudaError> {
    i32::try_from(value)
        .map_err(|_| CudaError::invalid(format!("{op}: size {value} exceeds 2^31 - 1")))
}

/// One block per row (up to [`MAX_ROW_BLOCKS`]) with whole warps covering `width`.
fn per_row(rows: usize, width: usize) -> LaunchDims {
    let threads = (width.div_ceil(32) * 32).clamp(32, ROW_THREADS as usize) as u32;
    LaunchDims::rows(rows.min(MAX_ROW_BLOCKS), threads)
}

impl<D: Device> Tokens for Cuda<D> {
    fn patchify(
        &self,
        out: DeviceViewMut<'_>,
        img: DeviceView<'_>,
        args: &PatchArgs,
    ) -> Result<(), CudaError> {
        let PatchArgs {
            batch,
            channels,
            height,
            width,
            patch,
        } = *args;
        let (grid_h, grid_w) = (height / patch, width / patch);
        let rows = batch * grid_h * grid_w;
        let row_len = channels * patch * patch;
        if rows == 0 || row_len == 0 {
            return Ok(());
        }
        // The kernel indexes within a patch in 32 bits; channels and p are at most that.
        to_i32(row_len, "patchify")?;
        let params = k::PatchifyArgs {
            out: out.ptr(),
            img: img.ptr(),
            rows: rows as i64,
            grid_w: grid_w as i64,
            grid_len: (grid_h * grid_w) as i64,
            height: height as i64,
            width: width as i64,
            channels: channels as i32,
            patch: patch as i32,
        };
        self.launch(&k::PATCHIFY, per_row(rows, row_len), params)
    }

    fn prepend_cls_forward(
        &self,
        out: DeviceViewMut<'_>,
        patches: DeviceView<'_>,
        cls: DeviceView<'_>,
        batch: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<(), CudaError> {
        let rows = batch * (tokens + 1);
        if rows == 0 || dim == 0 {
            return Ok(());
        }
        let params = k::PrependClsForwardArgs {
            out: out.ptr(),
            patches: patches.ptr(),
            cls: cls.ptr(),
            rows: rows as i64,
            tokens: tokens as i64,
            dim: dim as i64,
        };
        self.launch(&k::PREPEND_CLS_FORWARD, per_row(rows, dim), params)
    }

    fn prepend_cls_backward(
        &self,
        dpatches: Option<DeviceViewMut<'_>>,
        dcls: DeviceViewMut<'_>,
        dout: DeviceView<'_>,
        batch: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<(), CudaError> {
        if batch == 0 || dim == 0 {
            return Ok(());
        }
        let params = k::ClsGradArgs {
            dcls: dcls.ptr(),
            dout: dout.ptr(),
            batch: batch as i64,
            tokens: tokens as i64,
            dim: dim as i64,
        };
        self.launch(&k::CLS_GRAD, LaunchDims::linear(dim, THREADS), params)?;
        let rows = batch * tokens;
        match dpatches {
            Some(dpatches) if rows > 0 => {
                let params = k::PatchGradArgs {
                    dpatches: dpatches.ptr(),
                    dout: dout.ptr(),
                    rows: rows as i64,
                    tokens: tokens as i64,
                    dim: dim as i64,
                };
                self.launch(&k::PATCH_GRAD, per_row(rows, dim), params)
            }
            _ => Ok(()),
        }
    }

    fn mean_pool_forward(
        &self,
        out: DeviceViewMut<'_>,
        x: DeviceView<'_>,
        batch: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<(), CudaError> {
        let n = batch * dim;
        if n == 0 {
            return Ok(());
        }
        let params = k::MeanPoolForwardArgs {
            out: out.ptr(),
            x: x.ptr(),
            tokens: tokens as i64,
            dim: dim as i64,
            n: n as i64,
        };
        self.launch(
            &k::MEAN_POOL_FORWARD,
            LaunchDims::linear(n, THREADS),
            params,
        )
    }

    fn mean_pool_backward(
        &self,
        dx: DeviceViewMut<'_>,
        dout: DeviceView<'_>,
        batch: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<(), CudaError> {
        let rows = batch * (tokens + 1);
        if rows == 0 || dim == 0 {
            return Ok(());
        }
        let params = k::MeanPoolBackwardArgs {
            dx: dx.ptr(),
            dout: dout.ptr(),
            rows: rows as i64,
            tokens: tokens as i64,
            dim: dim as i64,
        };
        self.launch(&k::MEAN_POOL_BACKWARD, per_row(rows, dim), params)
    }

    fn upsample_bilinear_forward(
        &self,
        out: DeviceViewMut<'_>,
        x: DeviceView<'_>,
        planes: usize,
        in_h: usize,
        in_w: usize,
        out_h: usize,
        out_w: usize,
    ) -> Result<(), CudaError> {
        let units = planes * out_h.div_ceil(UPSAMPLE_ROWS_PER_BLOCK);
        if units == 0 || out_w == 0 {
            return Ok(());
        }
        let params = k::UpsampleForwardArgs {
            out: out.ptr(),
            x: x.ptr(),
            units: units as i64,
            chunk: UPSAMPLE_ROWS_PER_BLOCK as i32,
            in_h: to_i32(in_h, "upsample_bilinear_forward")?,
            in_w: to_i32(in_w, "upsample_bilinear_forward")?,
            out_h: to_i32(out_h, "upsample_bilinear_forward")?,
            out_w: to_i32(out_w, "upsample_bilinear_forward")?,
        };
        self.launch(&k::UPSAMPLE_FORWARD, per_row(units, out_w), params)
    }

    fn upsample_bilinear_backward(
        &self,
        dx: DeviceViewMut<'_>,
        dout: DeviceView<'_>,
        planes: usize,
        in_h: usize,
        in_w: usize,
        out_h: usize,
        out_w: usize,
    ) -> Result<(), CudaError> {
        let n = planes * in_h * in_w;
        if n == 0 {
            return Ok(());
        }
        let params = k::UpsampleBackwardArgs {
            dx: dx.ptr(),
            dout: dout.ptr(),
            n: n as i64,
            in_h: to_i32(in_h, "upsample_bilinear_backward")?,
            in_w: to_i32(in_w, "upsample_bilinear_backward")?,
            out_h: to_i32(out_h, "upsample_bilinear_backward")?,
            out_w: to_i32(out_w, "upsample_bilinear_backward")?,
        };
        self.launch(
            &k::UPSAMPLE_BACKWARD,
            LaunchDims::linear(n, THREADS),
            params,
        )
    }
}
