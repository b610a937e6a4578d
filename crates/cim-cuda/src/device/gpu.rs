//! The GPU: cudarc's driver API on one stream of one device, kernels compiled by NVRTC
//! for the device's own architecture on first use (then kept per module), GEMMs through
//! cuBLAS (SGEMM for f32 inputs, GemmEx with bf16 inputs and f32 accumulation on tensor
//! cores for [`GemmMath::Bf16`]). CUDA libraries are loaded at run time; their absence is
//! an error that says which library is missing, never a panic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas;
use cudarc::driver::result as driver;
use cudarc::driver::sys::{
    CUdevice_attribute, CUdeviceptr, CUfunction, CUfunction_attribute, cudaError_enum,
};
use cudarc::driver::{CudaContext, CudaModule, CudaStream, DriverError};

use crate::device::{
    ColumnMajorGemm, DEFAULT_SHARED_BYTES, Device, GemmInput, GemmMath, LaunchDims,
};
use crate::error::CudaError;
use crate::ops::{Kernel, KernelParams, compile_module};

/// Why no GPU can be used here (a missing library, no device), or `None` when one can.
/// Tests call it first, so a machine without CUDA skips them with this reason.
pub fn gpu_unavailable_reason() -> Option<String> {
    // SAFETY: these only try to dlopen the library by its soname.
    let libraries = unsafe {
        [
            (
                "libcuda.so (the NVIDIA driver)",
                cudarc::driver::sys::is_culib_present(),
            ),
            ("libnvrtc.so.13", cudarc::nvrtc::sys::is_culib_present()),
            ("libcublas.so.13", cudarc::cublas::sys::is_culib_present()),
        ]
    };
    if let Some((name, _)) = libraries.iter().find(|(_, present)| !present) {
        return Some(format!("{name} was not found on the library path"));
    }
    if let Err(e) = driver::init() {
        return Some(format!("the CUDA driver did not initialise: {e}"));
    }
    match CudaContext::device_count() {
        Ok(0) => Some("the CUDA driver sees no GPU".into()),
        Ok(_) => None,
        Err(e) => Some(format!("the CUDA driver could not count GPUs: {e}")),
    }
}

fn driver_error(call: &str, e: DriverError) -> CudaError {
    if e.0 == cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY {
        CudaError::out_of_memory(format!("{call}: {e}"))
    } else {
        CudaError::device(format!("{call}: {e}"))
    }
}

/// One GPU, one stream.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: cublas::sys::cublasHandle_t,
    gemm: GemmMath,
    arch: &'static str,
    name: String,
    /// The name without the ordinal: what ranks on different GPUs must agree on.
    model: String,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<&'static str, CUfunction>>,
    max_shared_bytes: usize,
}

// SAFETY: the raw handles (cuBLAS handle, CUfunction) are used only through `&self` methods
// that bind the context first; CUDA's driver API and cuBLAS handles may be used from any
// thread, one call at a time, which the mutexes and single stream give.
unsafe impl Send for Gpu {}
// SAFETY: as above.
unsafe impl Sync for Gpu {}

impl Gpu {
    /// Opens GPU `ordinal`: context, stream, cuBLAS handle with `gemm`'s math mode.
    pub fn new(ordinal: usize, gemm: GemmMath) -> Result<Self, CudaError> {
        if let Some(reason) = gpu_unavailable_reason() {
            return Err(CudaError::device(format!("no usable GPU: {reason}")));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| driver_error(&format!("opening GPU {ordinal}"), e))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| driver_error("compute capability", e))?;
        let name = ctx.name().map_err(|e| driver_error("device name", e))?;
        let max_shared_bytes = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(|e| driver_error("shared memory per block", e))?
            .max(0) as usize;
        let stream = ctx
            .new_stream()
            .map_err(|e| driver_error("creating a stream", e))?;
        let blas = cublas::result::create_handle()
            .map_err(|e| CudaError::device(format!("creating a cuBLAS handle: {e}")))?;
        // SAFETY: the handle was just created; the stream lives as long as `self`.
        unsafe { cublas::result::set_stream(blas, stream.cu_stream() as _) }
            .map_err(|e| CudaError::device(format!("binding cuBLAS to the stream: {e}")))?;
        let math = match gemm {
            // Never TF32, whatever NVIDIA_TF32_OVERRIDE says: the f32 column assumes it.
            GemmMath::F32 => cublas::sys::cublasMath_t::CUBLAS_PEDANTIC_MATH,
            GemmMath::Tf32 => cublas::sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
            // Bf16 inputs with f32 compute take tensor cores in the default mode; the
            // backend never hands this mode f32 inputs.
            GemmMath::Bf16 | GemmMath::Bf16Fused => cublas::sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
        };
        // SAFETY: a valid handle and a math mode of the enum.
        let status = unsafe { cublas::sys::cublasSetMathMode(blas, math) };
        if status != cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(CudaError::device(format!(
                "setting cuBLAS math mode {math:?}: {status:?}"
            )));
        }
        // NVRTC takes the architecture as &'static str; one short string per opened GPU.
        let arch: &'static str = Box::leak(format!("sm_{major}{minor}").into_boxed_str());
        let model = format!(
            "{name}, {arch}{}",
            match gemm {
                GemmMath::F32 => "",
                GemmMath::Tf32 => ", tf32",
                GemmMath::Bf16 => ", bf16",
                GemmMath::Bf16Fused => ", bf16-fused",
            }
        );
        Ok(Gpu {
            ctx,
            stream,
            blas,
            gemm,
            arch,
            name: format!("cuda:{ordinal} ({model})"),
            model,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            max_shared_bytes,
        })
    }

    /// The card, its architecture and the GEMM math, without the ordinal (the ranks of a
    /// data-parallel run on different GPUs of one kind agree on it).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The context, for work beside the backend's own (NCCL).
    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every op is queued on.
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The architecture kernels are compiled for, e.g. `sm_90`.
    pub fn arch(&self) -> &'static str {
        self.arch
    }

    fn function<P>(&self, kernel: &Kernel<P>) -> Result<CUfunction, CudaError> {
        let mut functions = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&f) = functions.get(kernel.name) {
            return Ok(f);
        }
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            match modules.get(kernel.module) {
                Some(m) => m.clone(),
                None => {
                    let ptx = compile_module(kernel.module, self.arch)?;
                    let m = self.ctx.load_module(ptx).map_err(|e| {
                        driver_error(&format!("loading module {}", kernel.module), e)
                    })?;
                    modules.insert(kernel.module, m.clone());
                    m
                }
            }
        };
        let f = module
            .load_function(kernel.name)
            .map_err(|e| driver_error(&format!("finding kernel {}", kernel.name), e))?
            .cu_function();
        functions.insert(kernel.name, f);
        Ok(f)
    }

    fn bind(&self) -> Result<(), CudaError> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_error("binding the context", e))
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // SAFETY: the handle is ours and no call is in flight once `self` is dropped.
        let _ = unsafe { cublas::result::destroy_handle(self.blas) };
    }
}

/// Device memory, freed on drop.
pub struct GpuAlloc {
    ptr: CUdeviceptr,
    ctx: Arc<CudaContext>,
}

impl Drop for GpuAlloc {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `ptr` came from cuMemAlloc in this context and is freed once.
            let _ = unsafe { driver::free_sync(self.ptr) };
        }
    }
}

fn to_i32(value: usize, what: &str) -> Result<i32, CudaError> {
    i32::try_from(value).map_err(|_| CudaError::invalid(format!("GEMM {what} {value} exceeds i32")))
}

impl Device for Gpu {
    type Alloc = GpuAlloc;

    fn alloc(&self, bytes: usize) -> Result<GpuAlloc, CudaError> {
        self.bind()?;
        // SAFETY: a plain allocation in the bound context.
        let ptr = unsafe { driver::malloc_sync(bytes) }
            .map_err(|e| driver_error(&format!("allocating {bytes} bytes"), e))?;
        Ok(GpuAlloc {
            ptr,
            ctx: self.ctx.clone(),
        })
    }

    fn address(alloc: &GpuAlloc) -> u64 {
        alloc.ptr
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn max_shared_bytes(&self) -> usize {
        self.max_shared_bytes
    }

    fn gemm_math(&self) -> GemmMath {
        self.gemm
    }

    unsafe fn upload(&self, dst: u64, src: &[u8]) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: the caller guarantees the destination; a copy from pageable memory
        // returns only once `src` has been staged, so it may be dropped afterwards.
        unsafe { driver::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| driver_error("copying to the GPU", e))
    }

    unsafe fn download(&self, src: u64, dst: &mut [u8]) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: the caller guarantees the source; we wait for the copy before returning.
        unsafe { driver::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| driver_error("copying from the GPU", e))?;
        self.synchronize()
    }

    unsafe fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: the caller guarantees both ranges.
        unsafe { driver::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .map_err(|e| driver_error("copying on the GPU", e))
    }

    unsafe fn launch<P: KernelParams>(
        &self,
        kernel: &Kernel<P>,
        dims: LaunchDims,
        params: &P,
    ) -> Result<(), CudaError> {
        self.bind()?;
        let f = self.function(kernel)?;
        if dims.shared_bytes as usize > DEFAULT_SHARED_BYTES {
            // SAFETY: `f` is a loaded function; the attribute only raises a limit.
            unsafe {
                driver::function::set_function_attribute(
                    f,
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    dims.shared_bytes as i32,
                )
            }
            .map_err(|e| driver_error(&format!("shared memory for {}", kernel.name), e))?;
        }
        let mut args = [(params as *const P).cast_mut().cast::<core::ffi::c_void>()];
        // SAFETY: `f` takes exactly one parameter of type `P` (generated together); the
        // caller guarantees the addresses inside it.
        unsafe {
            driver::launch_kernel(
                f,
                dims.grid,
                dims.block,
                dims.shared_bytes,
                self.stream.cu_stream(),
                &mut args,
            )
        }
        .map_err(|e| CudaError::launch(format!("launching {} with {dims:?}: {e}", kernel.name)))
    }

    unsafe fn gemm(&self, g: &ColumnMajorGemm) -> Result<(), CudaError> {
        use cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        use cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType};
        self.bind()?;
        let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let (m, n, k) = (to_i32(g.m, "m")?, to_i32(g.n, "n")?, to_i32(g.k, "k")?);
        let (lda, ldb, ldc) = (
            to_i32(g.lda, "lda")?,
            to_i32(g.ldb, "ldb")?,
            to_i32(g.ldc, "ldc")?,
        );
        let batch = to_i32(g.batch, "batch")?;
        let (stride_a, stride_b, stride_c) =
            (g.stride_a as i64, g.stride_b as i64, g.stride_c as i64);
        // Plain f32 products (or TF32 by the handle's math mode) are SGEMM; bf16 products
        // are GemmEx with f32 accumulation, on operands the backend rounded to bf16 or on
        // f32 operands cuBLAS rounds itself (FAST_16BF).
        let ex = match (g.input, self.gemm) {
            (GemmInput::Bf16, _) => Some((
                cudaDataType::CUDA_R_16BF,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
            )),
            (GemmInput::F32, GemmMath::Bf16Fused) => Some((
                cudaDataType::CUDA_R_32F,
                cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_16BF,
            )),
            (GemmInput::F32, _) => None,
        };
        let Some((input_type, compute)) = ex else {
            // SAFETY: the caller guarantees every matrix; alpha and beta are host scalars
            // (the handle's default pointer mode).
            return unsafe {
                cublas::result::sgemm_strided_batched(
                    self.blas,
                    op(g.trans_a),
                    op(g.trans_b),
                    m,
                    n,
                    k,
                    &g.alpha,
                    g.a as *const f32,
                    lda,
                    stride_a,
                    g.b as *const f32,
                    ldb,
                    stride_b,
                    &g.beta,
                    g.c as *mut f32,
                    ldc,
                    stride_c,
                    batch,
                )
            }
            .map_err(|e| CudaError::launch(format!("cublasSgemmStridedBatched {g:?}: {e}")));
        };
        // SAFETY: as above, with A and B holding `input_type` elements; with an f32 compute
        // type, alpha and beta are f32.
        unsafe {
            cublas::result::gemm_strided_batched_ex(
                self.blas,
                op(g.trans_a),
                op(g.trans_b),
                m,
                n,
                k,
                (&g.alpha as *const f32).cast(),
                g.a as *const core::ffi::c_void,
                input_type,
                lda,
                stride_a,
                g.b as *const core::ffi::c_void,
                input_type,
                ldb,
                stride_b,
                (&g.beta as *const f32).cast(),
                g.c as *mut core::ffi::c_void,
                cudaDataType::CUDA_R_32F,
                ldc,
                stride_c,
                batch,
                compute,
                cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            )
        }
        .map_err(|e| {
            CudaError::launch(format!(
                "cublasGemmStridedBatchedEx ({compute:?}) {g:?}: {e}"
            ))
        })
    }

    fn synchronize(&self) -> Result<(), CudaError> {
        self.stream
            .synchronize()
            .map_err(|e| driver_error("running queued work", e))
    }
}
