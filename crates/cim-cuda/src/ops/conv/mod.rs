//! [`Conv`] on the device (placeholder).
use cim_spec::backend::{Conv, ConvTransposeArgs, XcorrArgs};

use crate::device::Device;
use crate::error::CudaError;
use crate::{Cuda, DeviceView, DeviceViewMut};

impl<D: Device> Conv for Cuda<D> {
    fn depthwise_xcorr_forward(
        &self,
        out: DeviceViewMut<'_>,
        x: DeviceView<'_>,
        t: DeviceView<'_>,
        args: &XcorrArgs,
    ) -> Result<(), CudaError> {
        todo!()
    }

    fn depthwise_xcorr_backward(
        &self,
        dx: DeviceViewMut<'_>,
        dt: DeviceViewMut<'_>,
        dout: DeviceView<'_>,
        x: DeviceView<'_>,
        t: DeviceView<'_>,
        args: &XcorrArgs,
    ) -> Result<(), CudaError> {
        todo!()
    }

    fn conv_transpose_forward(
        &self,
        out: DeviceViewMut<'_>,
        x: DeviceView<'_>,
        weight: DeviceView<'_>,
        bias: DeviceView<'_>,
        args: &ConvTransposeArgs,
    ) -> Result<(), CudaError> {
        todo!()
    }

    fn conv_transpose_backward(
        &self,
        dx: DeviceViewMut<'_>,
        dweight: DeviceViewMut<'_>,
        dbias: DeviceViewMut<'_>,
        dout: DeviceView<'_>,
        x: DeviceView<'_>,
        weight: DeviceView<'_>,
        args: &ConvTransposeArgs,
    ) -> Result<(), CudaError> {
        todo!()
    }
}
