//! [`Gemm`] on the device: the contract's row-major products mapped onto cuBLAS's
//! column-major strided-batched SGEMM.
//!
//! A row-major `[m, n]` matrix is the column-major `[n, m]` matrix with the same bytes, so
//! `C = op(A) op(B)` is computed as `C^T = op(B)^T op(A)^T`: cuBLAS gets B first with
//! `trans_b`, A second with `trans_a`, and m and n swapped. The emulator runs the same
//! column-major call, so this mapping is covered by the conformance suite without a GPU.

use cim_spec::backend::{Elementwise, Gemm, GemmArgs};

use crate::device::{ColumnMajorGemm, Device};
use crate::error::CudaError;
use crate::{Cuda, DeviceView, DeviceViewMut};

impl<D: Device> Gemm for Cuda<D> {
    fn gemm(
        &self,
        c: DeviceViewMut<'_>,
        a: DeviceView<'_>,
        b: DeviceView<'_>,
        args: &GemmArgs,
    ) -> Result<(), CudaError> {
        let GemmArgs { batch, m, n, k, .. } = *args;
        if batch == 0 || m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            // An empty sum: C = beta * C (cuBLAS's k = 0 behaviour is not documented).
            return empty_product(self, c, args);
        }
        let call = ColumnMajorGemm {
            trans_a: args.trans_b,
            trans_b: args.trans_a,
            m: n,
            n: m,
            k,
            alpha: args.alpha,
            a: b.ptr(),
            lda: if args.trans_b { k } else { n },
            stride_a: args.stride_b,
            b: a.ptr(),
            ldb: if args.trans_a { m } else { k },
            stride_b: args.stride_a,
            beta: args.beta,
            c: c.ptr(),
            ldc: n,
            stride_c: args.stride_c,
            batch,
        };
        // SAFETY: the cim-spec wrapper checked that every batch's A, B and C lie inside the
        // views, and the column-major description covers exactly those elements.
        unsafe { self.device.gemm(&call) }
    }
}

fn empty_product<D: Device>(
    backend: &Cuda<D>,
    mut c: DeviceViewMut<'_>,
    args: &GemmArgs,
) -> Result<(), CudaError> {
    let size = args.m * args.n;
    for i in 0..args.batch {
        let matrix = c.sub_range(i * args.stride_c, size);
        if args.beta == 0.0 {
            crate::ops::elementwise::fill(backend, matrix, 0.0)?;
        } else {
            backend.scale(matrix, args.beta)?;
        }
    }
    Ok(())
}
