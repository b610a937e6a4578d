//! The whole conformance suite on the CUDA backend's host emulator: the kernel sources
//! and the launch code that the GPU runs, checked against the f64 reference on any machine.

use cim_cuda::{Cuda, Emulator};

conformance::suite!(Cuda<Emulator>, Cuda::emulated());
