//! [`Optim`] on the device (placeholder).
use cim_spec::backend::{AdamWArgs, Optim};

use crate::device::Device;
use crate::error::CudaError;
use crate::{Cuda, DeviceView, DeviceViewMut};

impl<D: Device> Optim for Cuda<D> {
    fn adamw_update(
        &self,
        param: DeviceViewMut<'_>,
        m: DeviceViewMut<'_>,
        v: DeviceViewMut<'_>,
        grad: DeviceView<'_>,
        args: &AdamWArgs,
    ) -> Result<(), CudaError> {
        todo!()
    }

    fn ema_update(
        &self,
        target: DeviceViewMut<'_>,
        online: DeviceView<'_>,
        momentum: f64,
    ) -> Result<(), CudaError> {
        todo!()
    }

    fn sum_squares(&self, out: DeviceViewMut<'_>, x: DeviceView<'_>) -> Result<(), CudaError> {
        todo!()
    }

    fn clip_by_norm(
        &self,
        x: DeviceViewMut<'_>,
        norm_sq: DeviceView<'_>,
        max_norm: f32,
    ) -> Result<(), CudaError> {
        todo!()
    }
}
