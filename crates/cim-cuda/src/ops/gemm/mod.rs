//! [`Gemm`] on the device: the contract's row-major products mapped onto cuBLAS's
//! column-major strided-batched GEMM.
//!
//! A row-major `[m, n]` matrix is the column-major `[n, m]` matrix with the same bytes, so
//! `C = op(A) op(B)` is computed as `C^T = op(B)^T op(A)^T`: cuBLAS gets B first with
//! `trans_b`, A second with `trans_a`, and m and n swapped. The emulator runs the same
//! column-major call, so this mapping is covered by the conformance suite without a GPU.
//!
//! In bf16 mixed precision ([`GemmMath::Bf16`]) both operands are first rounded to bf16
//! by `kernels.cu` into the backend's scratch (sized once, grown rarely), and the device
//! multiplies those: on the GPU with tensor cores, in the emulator with the same loop as
//! for f32, so the emulator's results model the GPU's.

use cim_spec::backend::{Elementwise, Gemm, GemmArgs};

use super::kernels::gemm as k;
use crate::device::{ColumnMajorGemm, Device, GemmInput, GemmMath, LaunchDims};
use crate::error::CudaError;
use crate::{Cuda, DeviceView, DeviceViewMut};

/// Threads per block of the bf16 conversion.
const THREADS: u32 = 256;
/// The second operand starts this many bf16 elements (256 bytes, cudaMalloc's alignment)
/// into the scratch, so both are aligned as cuBLAS's fastest kernels want.
const ALIGN_ELEMENTS: usize = 128;

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
            input: GemmInput::F32,
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
        if self.device.gemm_math() == GemmMath::Bf16 {
            return gemm_in_bf16(self, call);
        }
        // SAFETY: the cim-spec wrapper checked that every batch's A, B and C lie inside the
        // views, and the column-major description covers exactly those elements.
        unsafe { self.device.gemm(&call) }
    }
}

/// Runs the f32 column-major `call` on its operands rounded to bf16 (round to nearest,
/// ties to even), with f32 accumulation into the f32 C.
fn gemm_in_bf16<D: Device>(backend: &Cuda<D>, call: ColumnMajorGemm) -> Result<(), CudaError> {
    // The elements each operand's matrices span, from the first to the end of the last
    // (the extent the cim-spec wrapper checked against the views).
    let span = |stride: usize, size: usize| (call.batch - 1) * stride + size;
    let a_len = span(call.stride_a, call.m * call.k);
    let b_len = span(call.stride_b, call.k * call.n);
    let b_offset = a_len.next_multiple_of(ALIGN_ELEMENTS);
    let mut scratch = backend
        .bf16_operands
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let a = scratch.reserve(&backend.device, (b_offset + b_len) * size_of::<u16>())?;
    let b = a + (b_offset * size_of::<u16>()) as u64;
    for (out, x, n) in [(a, call.a, a_len), (b, call.b, b_len)] {
        let params = k::ToBf16Args {
            out,
            x,
            n: n as i64,
        };
        // SAFETY: `x` holds the `n` f32 elements the checked GEMM reads, and the scratch
        // holds `n` bf16 elements from `out` (A's before B's offset, B's before its end).
        unsafe {
            backend
                .device
                .launch(&k::TO_BF16, LaunchDims::linear(n, THREADS), &params)?
        };
    }
    let call = ColumnMajorGemm {
        input: GemmInput::Bf16,
        a,
        b,
        ..call
    };
    // SAFETY: A and B are the rounded copies with the original layout (same leading
    // dimensions and strides from their first element); C is the checked output.
    unsafe { backend.device.gemm(&call) }
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
