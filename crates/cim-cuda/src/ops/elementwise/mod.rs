//! [`Elementwise`] on the device (S3/S4): residual adds, scaling, bias broadcast and its
//! reduction, the exemplar repeat, exact GELU, and [`Memory::fill`]'s kernel.

use cim_spec::backend::Elementwise;

use super::kernels::elementwise as k;
use crate::device::{Device, LaunchDims};
use crate::error::CudaError;
use crate::{Cuda, DeviceView, DeviceViewMut};

const THREADS: u32 = 256;
const REDUCE_THREADS: u32 = 256;

pub(crate) fn fill<D: Device>(
    b: &Cuda<D>,
    x: DeviceViewMut<'_>,
    value: f32,
) -> Result<(), CudaError> {
    let n = x.len();
    if n == 0 {
        return Ok(());
    }
    b.launch(
        &k::FILL,
        LaunchDims::linear(n, THREADS),
        k::FillArgs {
            x: x.ptr(),
            value,
            n: n as i64,
        },
    )
}

impl<D: Device> Elementwise for Cuda<D> {
    fn add_assign(&self, x: DeviceViewMut<'_>, y: DeviceView<'_>) -> Result<(), CudaError> {
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        let params = k::AddAssignArgs {
            x: x.ptr(),
            y: y.ptr(),
            n: n as i64,
        };
        self.launch(&k::ADD_ASSIGN, LaunchDims::linear(n, THREADS), params)
    }

    fn scale(&self, x: DeviceViewMut<'_>, alpha: f32) -> Result<(), CudaError> {
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        let params = k::ScaleArgs {
            x: x.ptr(),
            alpha,
            n: n as i64,
        };
        self.launch(&k::SCALE, LaunchDims::linear(n, THREADS), params)
    }

    fn add_broadcast(
        &self,
        out: DeviceViewMut<'_>,
        v: DeviceView<'_>,
        _outer: usize,
        len: usize,
        inner: usize,
    ) -> Result<(), CudaError> {
        let n = out.len();
        if n == 0 {
            return Ok(());
        }
        let params = k::AddBroadcastArgs {
            out: out.ptr(),
            v: v.ptr(),
            len: len as i64,
            inner: inner as i64,
            n: n as i64,
        };
        self.launch(&k::ADD_BROADCAST, LaunchDims::linear(n, THREADS), params)
    }

    fn sum_broadcast(
        &self,
        dv: DeviceViewMut<'_>,
        dout: DeviceView<'_>,
        outer: usize,
        len: usize,
        inner: usize,
    ) -> Result<(), CudaError> {
        if len == 0 {
            return Ok(());
        }
        if inner == 1 {
            // A bias gradient: coalesced column sums.
            let params = k::SumColumnsArgs {
                dv: dv.ptr(),
                dout: dout.ptr(),
                rows: outer as i64,
                cols: len as i64,
            };
            let dims = LaunchDims {
                grid: (len.div_ceil(32) as u32, 1, 1),
                block: (32, 32, 1),
                shared_bytes: 0,
            };
            return self.launch(&k::SUM_COLUMNS, dims, params);
        }
        let params = k::SumBroadcastArgs {
            dv: dv.ptr(),
            dout: dout.ptr(),
            outer: outer as i64,
            len: len as i64,
            inner: inner as i64,
        };
        self.launch(
            &k::SUM_BROADCAST,
            LaunchDims::rows(len, REDUCE_THREADS),
            params,
        )
    }

    fn repeat_forward(
        &self,
        out: DeviceViewMut<'_>,
        x: DeviceView<'_>,
        _batch: usize,
        copies: usize,
        len: usize,
    ) -> Result<(), CudaError> {
        let n = out.len();
        if n == 0 {
            return Ok(());
        }
        let params = k::RepeatForwardArgs {
            out: out.ptr(),
            x: x.ptr(),
            copies: copies as i64,
            len: len as i64,
            n: n as i64,
        };
        self.launch(&k::REPEAT_FORWARD, LaunchDims::linear(n, THREADS), params)
    }

    fn repeat_backward(
        &self,
        dx: DeviceViewMut<'_>,
        dout: DeviceView<'_>,
        _batch: usize,
        copies: usize,
        len: usize,
    ) -> Result<(), CudaError> {
        let n = dx.len();
        if n == 0 {
            return Ok(());
        }
        let params = k::RepeatBackwardArgs {
            dx: dx.ptr(),
            dout: dout.ptr(),
            copies: copies as i64,
            len: len as i64,
            n: n as i64,
        };
        self.launch(&k::REPEAT_BACKWARD, LaunchDims::linear(n, THREADS), params)
    }

    fn gelu_forward(&self, out: DeviceViewMut<'_>, x: DeviceView<'_>) -> Result<(), CudaError> {
        let n = out.len();
        if n == 0 {
            return Ok(());
        }
        let params = k::GeluArgs {
            out: out.ptr(),
            x: x.ptr(),
            n: n as i64,
        };
        self.launch(&k::GELU_FORWARD, LaunchDims::linear(n, THREADS), params)
    }

    fn gelu_backward(&self, d: DeviceViewMut<'_>, x: DeviceView<'_>) -> Result<(), CudaError> {
        let n = d.len();
        if n == 0 {
            return Ok(());
        }
        let params = k::GeluArgs {
            out: d.ptr(),
            x: x.ptr(),
            n: n as i64,
        };
        self.launch(&k::GELU_BACKWARD, LaunchDims::linear(n, THREADS), params)
    }
}

#[cfg(test)]
mod tests {
    //! Bias-gradient shapes the conformance strategies do not reach: many rows over
    //! several 32-column tiles, a ragged last tile, checked against the reference.
    use conformance::cases::BroadcastCase;
    use conformance::checks::sum_broadcast_case;

    use crate::Cuda;

    #[test]
    fn bias_gradients_of_model_shapes_match_the_reference() {
        let backend = Cuda::emulated();
        for (seed, outer, len) in [(1, 1632, 192), (2, 333, 70), (3, 40, 1), (4, 1, 33)] {
            let case = BroadcastCase {
                seed,
                outer,
                len,
                inner: 1,
                scale: 1.0,
            };
            sum_broadcast_case(&backend, &case).unwrap_or_else(|m| panic!("{m}"));
        }
    }
}
