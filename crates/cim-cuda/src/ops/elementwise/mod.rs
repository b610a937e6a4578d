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
