//! The conformance suite on the emulator with TF32 GEMM inputs (the GPU's tensor-core
//! mode, `GemmMath::Tf32`), compared under the tolerance table's bf16 column.

use cim_cuda::{Cuda, Emulator, GemmMath};

conformance::suite!(Cuda<Emulator>, Cuda::emulated_with(GemmMath::Tf32));
