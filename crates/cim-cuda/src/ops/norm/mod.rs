//! [`Norm`] on the device (placeholder).
use cim_spec::backend::Norm;

use crate::device::Device;
use crate::error::CudaError;
use crate::{Cuda, DeviceView, DeviceViewMut};

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
        todo!()
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
        todo!()
    }
}
