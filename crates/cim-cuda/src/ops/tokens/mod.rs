//! [`Tokens`] on the device (placeholder).
use cim_spec::backend::{PatchArgs, Tokens};

use crate::device::Device;
use crate::error::CudaError;
use crate::{Cuda, DeviceView, DeviceViewMut};

impl<D: Device> Tokens for Cuda<D> {
    fn patchify(
        &self,
        out: DeviceViewMut<'_>,
        img: DeviceView<'_>,
        args: &PatchArgs,
    ) -> Result<(), CudaError> {
        todo!()
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
        todo!()
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
        todo!()
    }

    fn mean_pool_forward(
        &self,
        out: DeviceViewMut<'_>,
        x: DeviceView<'_>,
        batch: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<(), CudaError> {
        todo!()
    }

    fn mean_pool_backward(
        &self,
        dx: DeviceViewMut<'_>,
        dout: DeviceView<'_>,
        batch: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<(), CudaError> {
        todo!()
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
        todo!()
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
        todo!()
    }
}
