//! [`MapLossOps`] on the device (placeholder).
use cim_spec::backend::{MapLossArgs, MapLossOps};

use crate::device::Device;
use crate::error::CudaError;
use crate::{Cuda, DeviceView, DeviceViewMut};

impl<D: Device> MapLossOps for Cuda<D> {
    fn map_loss_forward(
        &self,
        loss: DeviceViewMut<'_>,
        logits: DeviceView<'_>,
        target: DeviceView<'_>,
        args: &MapLossArgs,
    ) -> Result<(), CudaError> {
        todo!()
    }

    fn map_loss_backward(
        &self,
        dlogits: DeviceViewMut<'_>,
        logits: DeviceView<'_>,
        target: DeviceView<'_>,
        args: &MapLossArgs,
    ) -> Result<(), CudaError> {
        todo!()
    }
}
