//! f32 values in and out of a backend's buffers, for the emulated tests that check ops
//! one call at a time.

use cim_cuda::{Cuda, Device, DeviceBuffer};
use cim_spec::backend::{Memory, Role};

/// A new buffer holding `values`.
pub fn upload<D: Device>(b: &Cuda<D>, values: &[f32]) -> DeviceBuffer<D> {
    let mut buf = b.alloc(values.len(), Role::Activation).unwrap();
    b.upload(b.view_mut(&mut buf, 0..values.len()), values)
        .unwrap();
    buf
}

/// Every value of `buf`.
pub fn download<D: Device>(b: &Cuda<D>, buf: &DeviceBuffer<D>) -> Vec<f32> {
    let mut values = vec![0.0; Cuda::<D>::buffer_len(buf)];
    b.download(b.view(buf, 0..values.len()), &mut values)
        .unwrap();
    values
}
