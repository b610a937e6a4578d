//! [`Attention`] on the device (placeholder).
use cim_spec::backend::{Attention, AttentionArgs};

use crate::device::Device;
use crate::error::CudaError;
use crate::{Cuda, DeviceView, DeviceViewMut};

impl<D: Device> Attention for Cuda<D> {
    fn self_attention_forward(
        &self,
        out: DeviceViewMut<'_>,
        probs: DeviceViewMut<'_>,
        qkv: DeviceView<'_>,
        args: &AttentionArgs,
    ) -> Result<(), CudaError> {
        todo!()
    }

    fn self_attention_backward(
        &self,
        dqkv: DeviceViewMut<'_>,
        scratch: DeviceViewMut<'_>,
        dout: DeviceView<'_>,
        qkv: DeviceView<'_>,
        probs: DeviceView<'_>,
        args: &AttentionArgs,
    ) -> Result<(), CudaError> {
        todo!()
    }

    fn cross_attention_forward(
        &self,
        out: DeviceViewMut<'_>,
        probs: DeviceViewMut<'_>,
        q: DeviceView<'_>,
        kv: DeviceView<'_>,
        args: &AttentionArgs,
    ) -> Result<(), CudaError> {
        todo!()
    }

    fn cross_attention_backward(
        &self,
        dq: DeviceViewMut<'_>,
        dkv: DeviceViewMut<'_>,
        scratch: DeviceViewMut<'_>,
        dout: DeviceView<'_>,
        q: DeviceView<'_>,
        kv: DeviceView<'_>,
        probs: DeviceView<'_>,
        args: &AttentionArgs,
    ) -> Result<(), CudaError> {
        todo!()
    }
}
