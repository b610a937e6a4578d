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
//!
//! The linear layers' two composite ops fuse their bias work into the GEMM when the
//! device says [`BiasEpilogue::Fused`] (issue 6): the same column-major call with a
//! cuBLASLt epilogue, which the emulator runs with the same meaning. Where cuBLASLt has no
//! algorithm for a call ([`Device::runs_epilogue`]), that call takes the separate path.

use cim_spec::backend::{
    Elementwise, Gemm, GemmArgs, LinearArgs, linear_backward_params_separate,
    linear_forward_separate,
};

use super::kernels::gemm as k;
use crate::device::{
    BiasEpilogue, ColumnMajorGemm, Device, Epilogue, GemmInput, GemmMath, LaunchDims,
};
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
        run(self, column_major(&c, &a, &b, args)).map(|_| ())
    }
}

/// The column-major call computing the row-major `C = op(A) op(B)` of `args` (see the
/// module paragraph), without an epilogue.
fn column_major(
    c: &DeviceViewMut<'_>,
    a: &DeviceView<'_>,
    b: &DeviceView<'_>,
    args: &GemmArgs,
) -> ColumnMajorGemm {
    let GemmArgs { batch, m, n, k, .. } = *args;
    ColumnMajorGemm {
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
        epilogue: Epilogue::None,
    }
}

/// Runs a column-major call built from checked views (sizes nonzero), in the backend's
/// GEMM math. `false` when the device has no algorithm for the call's epilogue: then
/// nothing was queued, and the caller takes the separate path.
fn run<D: Device>(backend: &Cuda<D>, call: ColumnMajorGemm) -> Result<bool, CudaError> {
    if backend.device.gemm_math() == GemmMath::Bf16 {
        return gemm_in_bf16(backend, call);
    }
    if call.epilogue != Epilogue::None && !backend.device.runs_epilogue(&call)? {
        return Ok(false);
    }
    // SAFETY: the cim-spec wrappers checked that every batch's A, B and C (and the
    // epilogue's vector) lie inside the views, and the column-major description covers
    // exactly those elements.
    unsafe { backend.device.gemm(&call)? };
    Ok(true)
}

/// Whether a linear op of `args` runs as one GEMM with an epilogue: the backend fuses,
/// and the product is not empty (empty ones take the separate path).
fn fuses<D: Device>(backend: &Cuda<D>, args: &LinearArgs) -> bool {
    backend.device.bias_epilogue() == BiasEpilogue::Fused
        && args.rows > 0
        && args.inp > 0
        && args.out > 0
}

/// [`cim_spec::backend::Backend::linear_forward`]: with [`BiasEpilogue::Fused`], one GEMM
/// whose epilogue adds the bias. The row-major bias over y's columns is a bias over the
/// rows of the column-major `y^T = W x^T`, which is what `CUBLASLT_EPILOGUE_BIAS`
/// broadcasts (its vector has one value per row of D). Empty products, and calls the
/// device does not run (an unaligned bias, no cuBLASLt algorithm), take the separate path.
pub(crate) fn linear_forward<D: Device>(
    backend: &Cuda<D>,
    y: DeviceViewMut<'_>,
    x: DeviceView<'_>,
    weight: DeviceView<'_>,
    bias: DeviceView<'_>,
    args: &LinearArgs,
) -> Result<(), CudaError> {
    if !fuses(backend, args) {
        return linear_forward_separate(backend, y, x, weight, bias, args);
    }
    let call = ColumnMajorGemm {
        epilogue: Epilogue::Bias(bias.ptr()),
        ..column_major(&y, &x, &weight, &args.forward_gemm())
    };
    if run(backend, call)? {
        return Ok(());
    }
    linear_forward_separate(backend, y, x, weight, bias, args)
}

/// [`cim_spec::backend::Backend::linear_backward_params`]: with [`BiasEpilogue::Fused`],
/// `dW += dy^T x` as one GEMM whose epilogue sums `dy` over the rows. In the column-major
/// call `dW^T = x^T dy` the multiplier's B is `dy` (`[rows, out]` as op(B)), so the sum
/// over its inner dimension is `CUBLASLT_EPILOGUE_BGRADB` (one value per column of D). The
/// epilogue writes its vector, so it lands in the backend's scratch and is then added to
/// `dbias` (`out` elements, against a read of all of `dy`). Empty products take the
/// separate path.
pub(crate) fn linear_backward_params<D: Device>(
    backend: &Cuda<D>,
    dweight: DeviceViewMut<'_>,
    dbias: DeviceViewMut<'_>,
    dy: DeviceView<'_>,
    x: DeviceView<'_>,
    args: &LinearArgs,
) -> Result<(), CudaError> {
    if !fuses(backend, args) {
        return linear_backward_params_separate(backend, dweight, dbias, dy, x, args);
    }
    let mut scratch = backend
        .bias_gradient
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let grad = scratch.reserve(&backend.device, args.out * size_of::<f32>())?;
    let call = ColumnMajorGemm {
        epilogue: Epilogue::BiasGradientB(grad),
        ..column_major(&dweight, &dy, &x, &args.weight_gradient_gemm())
    };
    if run(backend, call)? {
        let grad = DeviceView::of_scratch(grad, args.out);
        return backend.add_assign(dbias, grad);
    }
    drop(scratch);
    linear_backward_params_separate(backend, dweight, dbias, dy, x, args)
}

/// Runs the f32 column-major `call` on its operands rounded to bf16 (round to nearest,
/// ties to even), with f32 accumulation into the f32 C; `false`, before anything is
/// queued, when the device has no algorithm for the call's epilogue.
fn gemm_in_bf16<D: Device>(backend: &Cuda<D>, call: ColumnMajorGemm) -> Result<bool, CudaError> {
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
    let rounded = ColumnMajorGemm {
        input: GemmInput::Bf16,
        a,
        b,
        ..call
    };
    if rounded.epilogue != Epilogue::None && !backend.device.runs_epilogue(&rounded)? {
        return Ok(false);
    }
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
    // SAFETY: A and B are the rounded copies with the original layout (same leading
    // dimensions and strides from their first element); C is the checked output.
    unsafe { backend.device.gemm(&rounded)? };
    Ok(true)
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
