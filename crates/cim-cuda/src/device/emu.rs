//! The host emulator: kernels are the same `.cu` sources compiled by the C++ compiler
//! against `emu/cuda_emu.h` (threads as fibers, see there), memory is host memory, and the
//! GEMM is a plain loop with cuBLAS's column-major meaning (f32 accumulation of f32, TF32
//! or bf16 inputs, as the GPU's tensor cores take them), and its epilogues cuBLASLt's (the
//! bias added to the finished f32 result; the bias gradient summed in f32 from B's
//! elements as the multiplier sees them). Slow, exact about barriers and launch shapes,
//! and available everywhere.

use core::ffi::{c_char, c_int, c_void};

use crate::device::{
    BiasEpilogue, ColumnMajorGemm, Device, Epilogue, GemmConfig, GemmInput, GemmMath, LaunchDims,
};
use crate::error::CudaError;
use crate::ops::{Kernel, KernelParams};

unsafe extern "C" {
    fn cim_emu_launch(
        kernel: unsafe extern "C" fn(*const c_void),
        params: *const c_void,
        gx: u32,
        gy: u32,
        gz: u32,
        bx: u32,
        by: u32,
        bz: u32,
        shared_bytes: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// The emulated device. Launches from different threads are independent.
#[derive(Clone, Debug)]
pub struct Emulator {
    config: GemmConfig,
    name: String,
    refuses: fn(&ColumnMajorGemm) -> bool,
}

impl Emulator {
    /// An emulated device whose GEMMs follow `config`.
    pub(crate) fn new(config: GemmConfig) -> Self {
        Self::refusing(config, |_| false)
    }

    /// The same, but with no algorithm for the epilogue GEMMs that `refuses` picks, as
    /// cuBLASLt's heuristic may answer on a GPU: [`Device::runs_epilogue`] says `false`
    /// and [`Device::gemm`] fails on them (tests of the backend's fallback).
    pub(crate) fn refusing(config: GemmConfig, refuses: fn(&ColumnMajorGemm) -> bool) -> Self {
        Emulator {
            config,
            name: format!("cuda-emulated{}", config.suffix()),
            refuses,
        }
    }
}

/// `x` rounded to TF32 (10 mantissa bits, to nearest, ties away from zero), as tensor
/// cores see an f32 input; infinities and NaN pass unchanged.
fn round_to_tf32(x: f32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    f32::from_bits((x.to_bits() + 0x1000) & !0x1fff)
}

/// Host memory in 16-byte units (the alignment of float4 loads in kernels).
pub struct HostAlloc(Box<[u128]>);

/// `x` rounded to bf16 (to nearest, ties to even), as an f32: what `kernels.cu`'s
/// `to_bf16` stores, and the model of cuBLAS's `FAST_16BF` down-conversion. NaN stays NaN.
fn round_to_bf16(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let bits = x.to_bits();
    f32::from_bits(bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000)
}

impl Device for Emulator {
    type Alloc = HostAlloc;

    fn alloc(&self, bytes: usize) -> Result<HostAlloc, CudaError> {
        let units = bytes.div_ceil(16);
        let mut memory = Vec::new();
        memory.try_reserve_exact(units).map_err(|_| {
            CudaError::out_of_memory(format!("the emulator could not allocate {bytes} bytes"))
        })?;
        // Contents are unspecified by the contract; NaN bytes would be closer to a GPU's
        // garbage, but zero is what the allocator gives cheaply.
        memory.resize(units, 0);
        Ok(HostAlloc(memory.into_boxed_slice()))
    }

    fn address(alloc: &HostAlloc) -> u64 {
        alloc.0.as_ptr() as u64
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn gemm_math(&self) -> GemmMath {
        self.config.math
    }

    fn bias_epilogue(&self) -> BiasEpilogue {
        self.config.bias
    }

    fn runs_epilogue(&self, g: &ColumnMajorGemm) -> Result<bool, CudaError> {
        Ok(g.epilogue.vector_aligned() && !(self.refuses)(g))
    }

    /// The H100's (sm_90) limit, the card the emulator stands in for.
    fn max_shared_bytes(&self) -> usize {
        227 * 1024
    }

    unsafe fn upload(&self, dst: u64, src: &[u8]) -> Result<(), CudaError> {
        // SAFETY: the caller guarantees `dst` has room for `src` in a live allocation.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    unsafe fn download(&self, src: u64, dst: &mut [u8]) -> Result<(), CudaError> {
        // SAFETY: the caller guarantees `src` holds `dst.len()` bytes of a live allocation.
        unsafe { core::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    unsafe fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<(), CudaError> {
        // SAFETY: the caller guarantees both ranges are live and disjoint.
        unsafe { core::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }

    unsafe fn launch<P: KernelParams>(
        &self,
        kernel: &Kernel<P>,
        dims: LaunchDims,
        params: &P,
    ) -> Result<(), CudaError> {
        let mut err = [0 as c_char; 256];
        // SAFETY: `kernel.emu` is the emulator entry of the kernel that takes `P`
        // (generated together), `params` outlives the call, and the caller guarantees the
        // addresses inside it are valid.
        let status = unsafe {
            cim_emu_launch(
                kernel.emu,
                (params as *const P).cast(),
                dims.grid.0,
                dims.grid.1,
                dims.grid.2,
                dims.block.0,
                dims.block.1,
                dims.block.2,
                dims.shared_bytes as usize,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if status == 0 {
            return Ok(());
        }
        // SAFETY: the launcher writes a NUL-terminated message into `err`.
        let message = unsafe { core::ffi::CStr::from_ptr(err.as_ptr()) };
        Err(CudaError::launch(format!(
            "kernel {}: {}",
            kernel.name,
            message.to_string_lossy()
        )))
    }

    unsafe fn gemm(&self, g: &ColumnMajorGemm) -> Result<(), CudaError> {
        if g.epilogue != Epilogue::None && g.batch != 1 {
            return Err(CudaError::invalid(format!(
                "a GEMM epilogue needs batch 1, got {g:?}"
            )));
        }
        if g.epilogue != Epilogue::None && !self.runs_epilogue(g)? {
            return Err(CudaError::invalid(format!(
                "the emulator, like cuBLASLt, does not run this epilogue: {g:?}"
            )));
        }
        let c = g.c as *mut f32;
        let f32_input = match self.config.math {
            GemmMath::Tf32 => round_to_tf32,
            GemmMath::Bf16Fused => round_to_bf16,
            GemmMath::F32 | GemmMath::Bf16 => |x: f32| x,
        };
        // Element `index` of the operand at `base`, as the multiplier sees it.
        let load = |base: u64, index: usize| -> f32 {
            // SAFETY: the caller guarantees A and B hold every element the column-major
            // description reaches, in `g.input`'s element type.
            unsafe {
                match g.input {
                    GemmInput::F32 => f32_input(*(base as *const f32).add(index)),
                    GemmInput::Bf16 => {
                        f32::from_bits(u32::from(*(base as *const u16).add(index)) << 16)
                    }
                }
            }
        };
        for batch in 0..g.batch {
            for j in 0..g.n {
                for i in 0..g.m {
                    let mut sum = 0.0f32;
                    for p in 0..g.k {
                        let a_ip = if g.trans_a {
                            p + i * g.lda
                        } else {
                            i + p * g.lda
                        };
                        let b_pj = if g.trans_b {
                            j + p * g.ldb
                        } else {
                            p + j * g.ldb
                        };
                        sum += load(g.a, batch * g.stride_a + a_ip)
                            * load(g.b, batch * g.stride_b + b_pj);
                    }
                    // SAFETY: the caller guarantees C holds every element the column-major
                    // description reaches.
                    unsafe {
                        let out = c.add(batch * g.stride_c + i + j * g.ldc);
                        *out = if g.beta == 0.0 {
                            g.alpha * sum
                        } else {
                            g.alpha * sum + g.beta * *out
                        };
                        if let Epilogue::Bias(bias) = g.epilogue {
                            *out += *(bias as *const f32).add(i);
                        }
                    }
                }
            }
        }
        if let Epilogue::BiasGradientB(grad) = g.epilogue {
            for j in 0..g.n {
                let mut sum = 0.0f32;
                for p in 0..g.k {
                    sum += load(
                        g.b,
                        if g.trans_b {
                            j + p * g.ldb
                        } else {
                            p + j * g.ldb
                        },
                    );
                }
                // SAFETY: the caller guarantees the vector holds `n` f32 elements.
                unsafe { *(grad as *mut f32).add(j) = sum };
            }
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<(), CudaError> {
        Ok(())
    }
}
