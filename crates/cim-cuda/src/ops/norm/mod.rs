//! [`Norm`] on the device (S3): LayerNorm forward and backward over the last axis.
//!
//! The forward and the input gradient run one warp per row, several rows per block. The
//! gamma/beta gradients sum over every row; the op has no scratch for per-block partials,
//! so one block owns a tile of columns and reduces all rows into it with a fixed order,
//! which keeps the result the same bits on every run.

use cim_spec::backend::Norm;

use super::kernels::norm as k;
use crate::device::{Device, LaunchDims};
use crate::error::CudaError;
use crate::{Cuda, DeviceView, DeviceViewMut};

/// Rows (warps) per block of the row kernels.
const ROWS_PER_BLOCK: usize = 8;
/// Columns per block of the gamma/beta kernel (`LN_TILE_COLS` in the kernel source).
const TILE_COLS: usize = 8;
/// Row slots per block of the gamma/beta kernel, at most; with [`TILE_COLS`] this fills
/// the kernel's shared arrays (`LN_MAX_PARAM_THREADS`).
const MAX_ROW_SLOTS: usize = 128;

fn row_launch(rows: usize) -> LaunchDims {
    LaunchDims::rows(rows.div_ceil(ROWS_PER_BLOCK), 32 * ROWS_PER_BLOCK as u32)
}

/// Blocks of [`TILE_COLS`] columns, each with a power-of-two number of row slots: no more
/// than the rows need (small cases stay cheap) and at least a warp's worth of threads.
fn column_launch(rows: usize, cols: usize) -> LaunchDims {
    let slots = rows
        .next_power_of_two()
        .clamp(32 / TILE_COLS, MAX_ROW_SLOTS);
    LaunchDims {
        grid: (cols.div_ceil(TILE_COLS) as u32, 1, 1),
        block: (TILE_COLS as u32, slots as u32, 1),
        shared_bytes: 0,
    }
}

impl<D: Device> Norm for Cuda<D> {
    fn layernorm_forward(
        &self,
        out: DeviceViewMut<'_>,
        mean: DeviceViewMut<'_>,
        rstd: DeviceViewMut<'_>,
        x: DeviceView<'_>,
        gamma: DeviceView<'_>,
        beta: DeviceView<'_>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(), CudaError> {
        if rows == 0 {
            return Ok(());
        }
        let params = k::LayerNormForwardArgs {
            out: out.ptr(),
            mean: mean.ptr(),
            rstd: rstd.ptr(),
            x: x.ptr(),
            gamma: gamma.ptr(),
            beta: beta.ptr(),
            rows: rows as i64,
            cols: cols as i64,
            eps,
        };
        self.launch(&k::LAYERNORM_FORWARD, row_launch(rows), params)
    }

    fn layernorm_backward(
        &self,
        dx: DeviceViewMut<'_>,
        dgamma: DeviceViewMut<'_>,
        dbeta: DeviceViewMut<'_>,
        dout: DeviceView<'_>,
        x: DeviceView<'_>,
        gamma: DeviceView<'_>,
        mean: DeviceView<'_>,
        rstd: DeviceView<'_>,
        rows: usize,
        cols: usize,
    ) -> Result<(), CudaError> {
        if rows == 0 {
            return Ok(());
        }
        let input = k::LayerNormBackwardInputArgs {
            dx: dx.ptr(),
            dout: dout.ptr(),
            x: x.ptr(),
            gamma: gamma.ptr(),
            mean: mean.ptr(),
            rstd: rstd.ptr(),
            rows: rows as i64,
            cols: cols as i64,
        };
        self.launch(&k::LAYERNORM_BACKWARD_INPUT, row_launch(rows), input)?;
        let params = k::LayerNormBackwardParamsArgs {
            dgamma: dgamma.ptr(),
            dbeta: dbeta.ptr(),
            dout: dout.ptr(),
            x: x.ptr(),
            mean: mean.ptr(),
            rstd: rstd.ptr(),
            rows: rows as i64,
            cols: cols as i64,
        };
        self.launch(
            &k::LAYERNORM_BACKWARD_PARAMS,
            column_launch(rows, cols),
            params,
        )
    }
}
