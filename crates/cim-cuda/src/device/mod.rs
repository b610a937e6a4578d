//! Where kernels run: the [`Device`] trait the backend is written over, its GPU
//! implementation ([`gpu`]) and its host emulator ([`emu`]).
//!
//! A device moves bytes, launches kernels by handle with one parameter struct, and runs
//! column-major strided-batched GEMMs (f32 or bf16 inputs, f32 output) with cuBLAS's exact
//! argument meaning, optionally with a bias or bias-gradient epilogue with cuBLASLt's
//! meaning, so the row-major mapping in `ops::gemm` is the same code on both.

pub(crate) mod emu;
pub(crate) mod gpu;

use cim_spec::backend::Precision;

use crate::error::CudaError;
use crate::ops::{Kernel, KernelParams};

/// How the backend's GEMMs treat their f32 inputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GemmMath {
    /// Plain f32 products (CUDA cores): the tight f32 tolerance column.
    #[default]
    F32,
    /// Inputs rounded to TF32 for tensor cores, f32 accumulation ([`Precision::Tf32`]).
    Tf32,
    /// Bf16 mixed precision ([`Precision::Bf16Mixed`]): both inputs of every GEMM are
    /// rounded to bf16 (to nearest, ties to even) by the backend, multiplied on tensor
    /// cores with f32 accumulation and f32 output. Every other op, the optimizer's master
    /// weights and the EMA target stay f32.
    Bf16,
    /// The same products as [`GemmMath::Bf16`] without the backend's conversion pass: f32
    /// operands go to cuBLAS with `CUBLAS_COMPUTE_32F_FAST_16BF`, which rounds them to bf16
    /// inside the GEMM. Saves writing and re-reading both operands per GEMM (for the
    /// weight gradients of ViT-B about as many bytes as the product's own time at HBM
    /// speed); whether cuBLAS's fused kernels are as fast as its native bf16 ones is for
    /// the H100 bench to say. The emulator rounds exactly as for `Bf16`.
    Bf16Fused,
}

impl GemmMath {
    /// From `CIM_CUDA_GEMM` (`f32`, the default, `tf32`, `bf16` or `bf16-fused`); a
    /// message naming the bad value.
    pub fn from_env() -> Result<Self, CudaError> {
        match std::env::var("CIM_CUDA_GEMM").as_deref() {
            Err(_) | Ok("f32") => Ok(GemmMath::F32),
            Ok("tf32") => Ok(GemmMath::Tf32),
            Ok("bf16") => Ok(GemmMath::Bf16),
            Ok("bf16-fused") => Ok(GemmMath::Bf16Fused),
            Ok(other) => Err(CudaError::invalid(format!(
                "CIM_CUDA_GEMM={other:?}: expected f32, tf32, bf16 or bf16-fused"
            ))),
        }
    }

    /// The precision a backend with this GEMM reports.
    pub fn precision(self) -> Precision {
        match self {
            GemmMath::F32 => Precision::F32,
            GemmMath::Tf32 => Precision::Tf32,
            GemmMath::Bf16 | GemmMath::Bf16Fused => Precision::Bf16Mixed,
        }
    }
}

/// Whether the linear layers' bias work runs inside their GEMMs (issue 6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BiasEpilogue {
    /// A GEMM, then the bias add (forward) or the bias-gradient reduction (backward) as a
    /// kernel of ours: the contract's provided composition.
    #[default]
    Separate,
    /// The bias inside the GEMM: cuBLASLt's `CUBLASLT_EPILOGUE_BIAS` adds it to the
    /// product (saving a read and a write of the `[tokens, out]` output), and
    /// `CUBLASLT_EPILOGUE_BGRADB` sums the output gradient inside the weight-gradient GEMM
    /// (saving a read of it). Never the GELU epilogues: cuBLASLt's GELU is the tanh
    /// approximation, not S3's erf GELU. Off by default until the H100 bench shows a gain.
    Fused,
}

impl BiasEpilogue {
    /// From `CIM_CUDA_EPILOGUES` (`0`, the default, or `1`); a message naming a bad value.
    pub fn from_env() -> Result<Self, CudaError> {
        match std::env::var("CIM_CUDA_EPILOGUES").as_deref() {
            Err(_) | Ok("0") => Ok(BiasEpilogue::Separate),
            Ok("1") => Ok(BiasEpilogue::Fused),
            Ok(other) => Err(CudaError::invalid(format!(
                "CIM_CUDA_EPILOGUES={other:?}: expected 0 or 1"
            ))),
        }
    }
}

/// How the backend runs its GEMMs: the math, and whether bias work is fused into them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GemmConfig {
    /// How inputs are rounded.
    pub math: GemmMath,
    /// Where the linear layers' bias work runs.
    pub bias: BiasEpilogue,
}

impl GemmConfig {
    /// From `CIM_CUDA_GEMM` and `CIM_CUDA_EPILOGUES`.
    pub fn from_env() -> Result<Self, CudaError> {
        Ok(GemmConfig {
            math: GemmMath::from_env()?,
            bias: BiasEpilogue::from_env()?,
        })
    }

    /// What names of backends and cards append: `""`, `"-bf16"`, `"-bf16+epilogues"`...
    pub fn suffix(self) -> String {
        let math = match self.math {
            GemmMath::F32 => "",
            GemmMath::Tf32 => "-tf32",
            GemmMath::Bf16 => "-bf16",
            GemmMath::Bf16Fused => "-bf16-fused",
        };
        let bias = match self.bias {
            BiasEpilogue::Separate => "",
            BiasEpilogue::Fused => "+epilogues",
        };
        format!("{math}{bias}")
    }
}

impl From<GemmMath> for GemmConfig {
    fn from(math: GemmMath) -> Self {
        GemmConfig {
            math,
            bias: BiasEpilogue::Separate,
        }
    }
}

/// Work a GEMM does after the product, in column-major terms (cuBLASLt's epilogues).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Epilogue {
    /// None: `C = alpha op(A) op(B) + beta C`.
    #[default]
    None,
    /// `CUBLASLT_EPILOGUE_BIAS`: then `C[i, j] += bias[i]`, the f32 vector at this address
    /// holding one value per row of C (`m`).
    Bias(u64),
    /// `CUBLASLT_EPILOGUE_BGRADB`: also writes `grad[j] = sum_p op(B)[p, j]` (the sum over
    /// the inner dimension of B as the multiplier sees it), the f32 vector at this address
    /// holding one value per column of C (`n`).
    BiasGradientB(u64),
}

impl Epilogue {
    /// Whether cuBLASLt may be handed this epilogue's vector: its alignment preferences
    /// cover A to D but not the vector, and its kernels may load it in 16-byte units (a
    /// packed parameter buffer can put a bias 4 or 8 bytes off). Both devices refuse an
    /// epilogue whose vector fails this ([`Device::runs_epilogue`]).
    pub fn vector_aligned(self) -> bool {
        match self {
            Epilogue::None => true,
            Epilogue::Bias(ptr) | Epilogue::BiasGradientB(ptr) => ptr.is_multiple_of(16),
        }
    }
}

/// The element type of a GEMM's A and B in device memory (C is always f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmInput {
    /// f32, multiplied as the device's [`GemmMath`] says (f32, or rounded to TF32 or to
    /// bf16 inside the GEMM).
    F32,
    /// bf16 bit patterns (`u16`), already rounded by the backend: the products are exact
    /// in f32 and accumulate in f32.
    Bf16,
}

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchDims {
    /// Blocks in x, y, z.
    pub grid: (u32, u32, u32),
    /// Threads per block in x, y, z.
    pub block: (u32, u32, u32),
    /// Dynamic shared memory in bytes.
    pub shared_bytes: u32,
}

impl LaunchDims {
    /// A 1-D grid-stride launch over `n` items with `threads` per block; the grid is capped
    /// because the kernels loop over what is left.
    pub fn linear(n: usize, threads: u32) -> Self {
        let blocks = n.div_ceil(threads as usize).clamp(1, 4096) as u32;
        LaunchDims {
            grid: (blocks, 1, 1),
            block: (threads, 1, 1),
            shared_bytes: 0,
        }
    }

    /// One block of `threads` per row (grid x holds up to 2^31 - 1 rows).
    pub fn rows(rows: usize, threads: u32) -> Self {
        LaunchDims {
            grid: (rows.max(1) as u32, 1, 1),
            block: (threads, 1, 1),
            shared_bytes: 0,
        }
    }

    /// The same launch with `bytes` of dynamic shared memory.
    pub fn with_shared(self, bytes: usize) -> Self {
        LaunchDims {
            shared_bytes: bytes as u32,
            ..self
        }
    }
}

/// `C = alpha * op(A) op(B) + beta * C` over `batch` column-major matrices, with
/// cublasGemmStridedBatchedEx's meaning of every field (`m`, `n` are C's rows and columns,
/// leading dimensions in elements, strides between matrices in elements). With
/// `beta == 0`, C is not read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ColumnMajorGemm {
    /// The element type of A and B.
    pub input: GemmInput,
    /// `op(A) = A^T`.
    pub trans_a: bool,
    /// `op(B) = B^T`.
    pub trans_b: bool,
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// The inner dimension.
    pub k: usize,
    /// Scale of the product.
    pub alpha: f32,
    /// Device address of A.
    pub a: u64,
    /// Leading dimension of A.
    pub lda: usize,
    /// Elements between A matrices.
    pub stride_a: usize,
    /// Device address of B.
    pub b: u64,
    /// Leading dimension of B.
    pub ldb: usize,
    /// Elements between B matrices.
    pub stride_b: usize,
    /// Scale of the old C.
    pub beta: f32,
    /// Device address of C.
    pub c: u64,
    /// Leading dimension of C.
    pub ldc: usize,
    /// Elements between C matrices.
    pub stride_c: usize,
    /// Number of products (1 when there is an epilogue).
    pub batch: usize,
    /// Work after the product.
    pub epilogue: Epilogue,
}

/// Shared memory every CUDA device grants a block without opting in.
pub const DEFAULT_SHARED_BYTES: usize = 48 * 1024;

/// A device the backend runs on. Addresses are plain `u64` (a CUdeviceptr on the GPU, a
/// host pointer in the emulator); the backend's views guarantee they are in bounds.
pub trait Device: 'static {
    /// An owned allocation, freed on drop.
    type Alloc;

    /// Allocates `bytes` (at least 4), aligned to 256 bytes on the GPU, 16 in the emulator.
    fn alloc(&self, bytes: usize) -> Result<Self::Alloc, CudaError>;
    /// The device address of an allocation's first byte.
    fn address(alloc: &Self::Alloc) -> u64;
    /// The device's name (for `Backend::name` and reports).
    fn name(&self) -> &str;
    /// How its GEMMs round their inputs.
    fn gemm_math(&self) -> GemmMath;
    /// Whether the backend fuses the linear layers' bias work into GEMMs.
    fn bias_epilogue(&self) -> BiasEpilogue;
    /// Whether [`Device::gemm`] can run `g`, whose epilogue is not [`Epilogue::None`]:
    /// its vector must be aligned ([`Epilogue::vector_aligned`]), and cuBLASLt may find no
    /// algorithm for a shape, compute type, alignment and epilogue.
    /// Queues nothing; the backend asks before it prepares the operands and takes the
    /// separate path on `false`.
    fn runs_epilogue(&self, g: &ColumnMajorGemm) -> Result<bool, CudaError>;
    /// The most dynamic shared memory one block may opt into (227 KiB on sm_90, 163 KiB on
    /// sm_80, 99 KiB on sm_86/89); launches above [`DEFAULT_SHARED_BYTES`] opt in.
    fn max_shared_bytes(&self) -> usize;

    /// Copies `src` to device address `dst`.
    ///
    /// # Safety
    /// `dst .. dst + src.len()` lies inside one live allocation of this device.
    unsafe fn upload(&self, dst: u64, src: &[u8]) -> Result<(), CudaError>;
    /// Copies from device address `src` into `dst` after all queued work.
    ///
    /// # Safety
    /// `src .. src + dst.len()` lies inside one live allocation of this device.
    unsafe fn download(&self, src: u64, dst: &mut [u8]) -> Result<(), CudaError>;
    /// Copies `bytes` from `src` to `dst` on the device.
    ///
    /// # Safety
    /// Both ranges lie inside live allocations of this device and do not overlap.
    unsafe fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<(), CudaError>;
    /// Launches `kernel` with `params`.
    ///
    /// # Safety
    /// Every address in `params` is valid for the accesses the kernel makes with the sizes
    /// in `params` and `dims`.
    unsafe fn launch<P: KernelParams>(
        &self,
        kernel: &Kernel<P>,
        dims: LaunchDims,
        params: &P,
    ) -> Result<(), CudaError>;
    /// Runs a column-major strided-batched GEMM and its epilogue.
    ///
    /// # Safety
    /// Every matrix the arguments describe lies inside a live allocation of this device,
    /// and so does the epilogue's vector.
    unsafe fn gemm(&self, args: &ColumnMajorGemm) -> Result<(), CudaError>;
    /// Waits for all queued work; reports what failed.
    fn synchronize(&self) -> Result<(), CudaError>;
}
