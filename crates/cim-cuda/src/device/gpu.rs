//! The GPU: cudarc's driver API on one stream of one device, kernels compiled by NVRTC
//! for the device's own architecture on first use (then kept per module), GEMMs through
//! cuBLAS (SGEMM for f32 inputs, GemmEx with bf16 inputs and f32 accumulation on tensor
//! cores for [`GemmMath::Bf16`]), and GEMMs with a bias epilogue through cuBLASLt
//! ([`BiasEpilogue::Fused`] only; see [`Lt`]). CUDA libraries are loaded at run time;
//! their absence is an error that says which library is missing, never a panic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas;
use cudarc::cublaslt;
use cudarc::driver::result as driver;
use cudarc::driver::sys::{
    CUdevice_attribute, CUdeviceptr, CUfunction, CUfunction_attribute, cudaError_enum,
};
use cudarc::driver::{CudaContext, CudaModule, CudaStream, DriverError};

use crate::device::{
    BiasEpilogue, ColumnMajorGemm, DEFAULT_SHARED_BYTES, Device, Epilogue, GemmConfig, GemmInput,
    GemmMath, LaunchDims,
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
    /// cuBLASLt, opened only with [`BiasEpilogue::Fused`].
    lt: Option<Lt>,
    config: GemmConfig,
    arch: &'static str,
    name: String,
    /// The name without the ordinal: what ranks on different GPUs must agree on.
    model: String,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<&'static str, CUfunction>>,
    max_shared_bytes: usize,
}

// SAFETY: the raw handles (cuBLAS and cuBLASLt handles, descriptors, CUfunction) are used only through `&self` methods
// that bind the context first; CUDA's driver API and cuBLAS handles may be used from any
// thread, one call at a time, which the mutexes and single stream give.
unsafe impl Send for Gpu {}
// SAFETY: as above.
unsafe impl Sync for Gpu {}

impl Gpu {
    /// Opens GPU `ordinal`: context, stream, cuBLAS handle with `config`'s math mode, and
    /// with fused bias epilogues a cuBLASLt handle and its workspace.
    pub fn new(ordinal: usize, config: GemmConfig) -> Result<Self, CudaError> {
        let gemm = config.math;
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
            "{name}, {arch}{}{}",
            match gemm {
                GemmMath::F32 => "",
                GemmMath::Tf32 => ", tf32",
                GemmMath::Bf16 => ", bf16",
                GemmMath::Bf16Fused => ", bf16-fused",
            },
            match config.bias {
                BiasEpilogue::Separate => "",
                BiasEpilogue::Fused => ", epilogues",
            }
        );
        let lt = match config.bias {
            BiasEpilogue::Separate => None,
            BiasEpilogue::Fused => Some(Lt::new(&ctx)?),
        };
        Ok(Gpu {
            ctx,
            stream,
            blas,
            lt,
            config,
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
        self.config.math
    }

    fn bias_epilogue(&self) -> BiasEpilogue {
        self.config.bias
    }

    /// Asks cuBLASLt's heuristic once per shape (the answer, and the plan, are kept).
    fn runs_epilogue(&self, g: &ColumnMajorGemm) -> Result<bool, CudaError> {
        match &self.lt {
            _ if !g.epilogue.vector_aligned() => Ok(false),
            Some(lt) => {
                self.bind()?;
                lt.runs(g, self.config.math)
            }
            None => Ok(false),
        }
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
        if g.epilogue != Epilogue::None {
            let Some(lt) = &self.lt else {
                return Err(CudaError::invalid(format!(
                    "a GEMM epilogue without cuBLASLt (CIM_CUDA_EPILOGUES=1 opens it): {g:?}"
                )));
            };
            // SAFETY: the caller's guarantee, passed on.
            return unsafe { lt.matmul(g, self.config.math, &self.stream) };
        }
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
        let ex = match (g.input, self.config.math) {
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

/// Bytes of cuBLASLt's workspace, allocated once (NVIDIA suggests 32 MiB on Hopper).
const LT_WORKSPACE_BYTES: usize = 32 << 20;

fn lt_error(call: &str, e: cublaslt::result::CublasError) -> CudaError {
    CudaError::launch(format!("{call}: {e:?}"))
}

/// cuBLASLt for GEMMs with an epilogue: one handle, a workspace allocated once, and per
/// shape a [`LtPlan`] (descriptors and the heuristic's algorithm) built on first use, or
/// `None` where the heuristic finds no algorithm (those calls take the separate path).
/// The bias pointer is the only attribute set per call.
struct Lt {
    handle: cublaslt::sys::cublasLtHandle_t,
    workspace: GpuAlloc,
    plans: Mutex<HashMap<LtKey, Option<LtPlan>>>,
}

/// What a plan depends on: the call's shape and types, the epilogue, and the alignment
/// of A, B and C (the heuristic may pick kernels that assume it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct LtKey {
    input: GemmInput,
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
    bias_gradient: bool,
    align: [u32; 3],
}

/// The descriptors of one shape (destroyed on drop) and its algorithm.
struct LtPlan {
    desc: cublaslt::sys::cublasLtMatmulDesc_t,
    layouts: [cublaslt::sys::cublasLtMatrixLayout_t; 3],
    algo: cublaslt::sys::cublasLtMatmulAlgo_t,
}

/// The largest power of two up to 256 dividing the address (cuBLASLt's alignment unit).
fn alignment(ptr: u64) -> u32 {
    1 << ptr.trailing_zeros().min(8)
}

/// Sets one attribute of a matmul descriptor to `value`.
///
/// # Safety
/// `desc` is live and `T` is the attribute's type.
unsafe fn set_desc<T>(
    desc: cublaslt::sys::cublasLtMatmulDesc_t,
    attr: cublaslt::sys::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> Result<(), CudaError> {
    // SAFETY: the caller's guarantee; `value` is read for its size only.
    unsafe {
        cublaslt::result::set_matmul_desc_attribute(
            desc,
            attr,
            (value as *const T).cast(),
            size_of::<T>(),
        )
    }
    .map_err(|e| lt_error(&format!("cublasLtMatmulDescSetAttribute({attr:?})"), e))
}

/// Sets one attribute of a matmul preference to `value`.
///
/// # Safety
/// `pref` is live and `T` is the attribute's type.
unsafe fn set_pref<T>(
    pref: cublaslt::sys::cublasLtMatmulPreference_t,
    attr: cublaslt::sys::cublasLtMatmulPreferenceAttributes_t,
    value: &T,
) -> Result<(), CudaError> {
    // SAFETY: the caller's guarantee; `value` is read for its size only.
    unsafe {
        cublaslt::result::set_matmul_pref_attribute(
            pref,
            attr,
            (value as *const T).cast(),
            size_of::<T>(),
        )
    }
    .map_err(|e| {
        lt_error(
            &format!("cublasLtMatmulPreferenceSetAttribute({attr:?})"),
            e,
        )
    })
}

impl Lt {
    fn new(ctx: &Arc<CudaContext>) -> Result<Self, CudaError> {
        // SAFETY: this only tries to dlopen the library by its soname.
        if !unsafe { cublaslt::sys::is_culib_present() } {
            return Err(CudaError::device(
                "libcublasLt.so.13 was not found on the library path (CIM_CUDA_EPILOGUES=1 needs it)",
            ));
        }
        ctx.bind_to_thread()
            .map_err(|e| driver_error("binding the context", e))?;
        let handle =
            cublaslt::result::create_handle().map_err(|e| lt_error("cublasLtCreate", e))?;
        // SAFETY: a plain allocation in the bound context.
        let workspace = match unsafe { driver::malloc_sync(LT_WORKSPACE_BYTES) } {
            Ok(ptr) => GpuAlloc {
                ptr,
                ctx: ctx.clone(),
            },
            Err(e) => {
                // SAFETY: the handle was just created and is not used elsewhere.
                let _ = unsafe { cublaslt::result::destroy_handle(handle) };
                return Err(driver_error("allocating the cuBLASLt workspace", e));
            }
        };
        Ok(Lt {
            handle,
            workspace,
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// The plan key of `g` (batch 1, with an epilogue) and its epilogue's vector.
    fn key(g: &ColumnMajorGemm) -> Result<(LtKey, u64), CudaError> {
        let (vector, bias_gradient) = match g.epilogue {
            Epilogue::Bias(ptr) => (ptr, false),
            Epilogue::BiasGradientB(ptr) => (ptr, true),
            Epilogue::None => return Err(CudaError::invalid("cuBLASLt runs epilogues only")),
        };
        if g.batch != 1 {
            return Err(CudaError::invalid(format!(
                "a GEMM epilogue needs batch 1, got {g:?}"
            )));
        }
        let key = LtKey {
            input: g.input,
            trans_a: g.trans_a,
            trans_b: g.trans_b,
            m: g.m,
            n: g.n,
            k: g.k,
            lda: g.lda,
            ldb: g.ldb,
            ldc: g.ldc,
            bias_gradient,
            align: [alignment(g.a), alignment(g.b), alignment(g.c)],
        };
        Ok((key, vector))
    }

    /// Runs `f` on the plan of `key` (built on first use; `None` where cuBLASLt has no
    /// algorithm for it) under the plans' lock.
    fn with_plan<R>(
        &self,
        key: &LtKey,
        math: GemmMath,
        f: impl FnOnce(Option<&LtPlan>) -> Result<R, CudaError>,
    ) -> Result<R, CudaError> {
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        let plan = match plans.entry(*key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.plan(key, math)?),
        };
        f(plan.as_ref())
    }

    /// Whether cuBLASLt has an algorithm for `g` (batch 1, with an epilogue) in `math`.
    fn runs(&self, g: &ColumnMajorGemm, math: GemmMath) -> Result<bool, CudaError> {
        let (key, _) = Self::key(g)?;
        self.with_plan(&key, math, |plan| Ok(plan.is_some()))
    }

    /// Runs `g` (batch 1, with an epilogue) on `stream`; an error if cuBLASLt has no
    /// algorithm for it (ask [`Lt::runs`] first).
    ///
    /// # Safety
    /// As [`Device::gemm`].
    unsafe fn matmul(
        &self,
        g: &ColumnMajorGemm,
        math: GemmMath,
        stream: &CudaStream,
    ) -> Result<(), CudaError> {
        let (key, vector) = Self::key(g)?;
        self.with_plan(&key, math, |plan| {
            let Some(plan) = plan else {
                return Err(CudaError::invalid(format!(
                    "cuBLASLt has no algorithm for this epilogue: {g:?}"
                )));
            };
            // SAFETY: the caller's guarantee, passed on; the plan is `g`'s.
            unsafe { self.queue(plan, g, vector, stream) }
        })
    }

    /// Queues `g` with `plan` (its own) and the epilogue's `vector`.
    ///
    /// # Safety
    /// As [`Device::gemm`].
    unsafe fn queue(
        &self,
        plan: &LtPlan,
        g: &ColumnMajorGemm,
        vector: u64,
        stream: &CudaStream,
    ) -> Result<(), CudaError> {
        use cublaslt::sys::cublasLtMatmulDescAttributes_t as Attr;
        // SAFETY: the plan's descriptor is live; the attribute is a device pointer.
        unsafe { set_desc(plan.desc, Attr::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &vector)? };
        let [a, b, c] = plan.layouts;
        // SAFETY: the caller guarantees A, B, C and the vector; C is also D (same layout,
        // in place, as cuBLASLt allows); alpha and beta are host f32 (the default pointer
        // mode, f32 scale type); the workspace is ours and as large as the plan allows.
        unsafe {
            cublaslt::result::matmul(
                self.handle,
                plan.desc,
                (&g.alpha as *const f32).cast(),
                (&g.beta as *const f32).cast(),
                g.a as *const core::ffi::c_void,
                a,
                g.b as *const core::ffi::c_void,
                b,
                g.c as *const core::ffi::c_void,
                c,
                g.c as *mut core::ffi::c_void,
                c,
                &plan.algo,
                self.workspace.ptr as *mut core::ffi::c_void,
                LT_WORKSPACE_BYTES,
                stream.cu_stream() as _,
            )
        }
        .map_err(|e| lt_error(&format!("cublasLtMatmul {g:?}"), e))
    }

    /// Descriptors and algorithm for `key` in `math` (compute types as cuBLAS's: f32
    /// pedantic, TF32, f32 on bf16 operands, or bf16 rounding inside the GEMM); `None`,
    /// said once on stderr, where the heuristic finds no algorithm.
    fn plan(&self, key: &LtKey, math: GemmMath) -> Result<Option<LtPlan>, CudaError> {
        use cublaslt::sys::cublasComputeType_t as Compute;
        use cublaslt::sys::cublasLtEpilogue_t as Kind;
        use cublaslt::sys::cublasLtMatmulDescAttributes_t as Attr;
        use cublaslt::sys::cublasLtMatmulPreferenceAttributes_t as Pref;
        use cublaslt::sys::cudaDataType as Type;
        let (input, compute) = match (key.input, math) {
            (GemmInput::Bf16, _) | (_, GemmMath::Bf16) => {
                (Type::CUDA_R_16BF, Compute::CUBLAS_COMPUTE_32F)
            }
            (GemmInput::F32, GemmMath::F32) => {
                (Type::CUDA_R_32F, Compute::CUBLAS_COMPUTE_32F_PEDANTIC)
            }
            (GemmInput::F32, GemmMath::Tf32) => {
                (Type::CUDA_R_32F, Compute::CUBLAS_COMPUTE_32F_FAST_TF32)
            }
            (GemmInput::F32, GemmMath::Bf16Fused) => {
                (Type::CUDA_R_32F, Compute::CUBLAS_COMPUTE_32F_FAST_16BF)
            }
        };
        let desc = cublaslt::result::create_matmul_desc(compute, Type::CUDA_R_32F)
            .map_err(|e| lt_error("cublasLtMatmulDescCreate", e))?;
        let mut plan = LtPlan {
            desc,
            layouts: [core::ptr::null_mut(); 3],
            algo: cublaslt::sys::cublasLtMatmulAlgo_t { data: [0; 8] },
        };
        // cublasOperation_t: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1.
        let op = |t: bool| i32::from(t);
        let epilogue = if key.bias_gradient {
            Kind::CUBLASLT_EPILOGUE_BGRADB
        } else {
            Kind::CUBLASLT_EPILOGUE_BIAS
        };
        // SAFETY: the descriptor is live; each value has its attribute's type (int32
        // operations, the epilogue enum, the bias's cudaDataType).
        unsafe {
            set_desc(desc, Attr::CUBLASLT_MATMUL_DESC_TRANSA, &op(key.trans_a))?;
            set_desc(desc, Attr::CUBLASLT_MATMUL_DESC_TRANSB, &op(key.trans_b))?;
            set_desc(desc, Attr::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue)?;
            set_desc(
                desc,
                Attr::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                &Type::CUDA_R_32F,
            )?;
        }
        // Stored shapes: A is [m, k] ([k, m] when transposed), B [k, n] ([n, k]), C [m, n].
        let stored =
            |t: bool, rows: usize, cols: usize| if t { (cols, rows) } else { (rows, cols) };
        let shapes = [
            (input, stored(key.trans_a, key.m, key.k), key.lda),
            (input, stored(key.trans_b, key.k, key.n), key.ldb),
            (Type::CUDA_R_32F, (key.m, key.n), key.ldc),
        ];
        for (slot, (ty, (rows, cols), ld)) in plan.layouts.iter_mut().zip(shapes) {
            *slot = cublaslt::result::create_matrix_layout(ty, rows as u64, cols as u64, ld as i64)
                .map_err(|e| lt_error("cublasLtMatrixLayoutCreate", e))?;
        }
        let pref = cublaslt::result::create_matmul_pref()
            .map_err(|e| lt_error("cublasLtMatmulPreferenceCreate", e))?;
        let search =
            || -> Result<Result<cublaslt::sys::cublasLtMatmulHeuristicResult_t, _>, CudaError> {
                let alignments = [
                    (
                        Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                        key.align[0],
                    ),
                    (
                        Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                        key.align[1],
                    ),
                    (
                        Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                        key.align[2],
                    ),
                    (
                        Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                        key.align[2],
                    ),
                ];
                let workspace = LT_WORKSPACE_BYTES as u64;
                let [a, b, c] = plan.layouts;
                // SAFETY: the preference and every descriptor are live; the workspace size is
                // a uint64, the alignments uint32.
                unsafe {
                    set_pref(
                        pref,
                        Pref::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                        &workspace,
                    )?;
                    for (attr, bytes) in alignments {
                        set_pref(pref, attr, &bytes)?;
                    }
                    Ok(cublaslt::result::get_matmul_algo_heuristic(
                        self.handle,
                        desc,
                        a,
                        b,
                        c,
                        c,
                        pref,
                    ))
                }
            };
        let heuristic = search();
        // SAFETY: created above, used by nothing else.
        let _ = unsafe { cublaslt::result::destroy_matmul_pref(pref) };
        match heuristic? {
            Ok(found) => {
                plan.algo = found.algo;
                Ok(Some(plan))
            }
            Err(cublaslt::result::CublasError(
                cublaslt::sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED,
            )) => {
                eprintln!(
                    "cim-cuda: cuBLASLt has no {math:?} algorithm with this epilogue for {key:?}; \
                     that GEMM adds its bias work in a separate kernel"
                );
                Ok(None)
            }
            Err(e) => Err(lt_error(
                &format!("cublasLtMatmulAlgoGetHeuristic {key:?}"),
                e,
            )),
        }
    }
}

impl Drop for LtPlan {
    fn drop(&mut self) {
        // SAFETY: the descriptors are ours (null ones were never created) and no call
        // using them is being queued.
        unsafe {
            for layout in self.layouts {
                if !layout.is_null() {
                    let _ = cublaslt::result::destroy_matrix_layout(layout);
                }
            }
            let _ = cublaslt::result::destroy_matmul_desc(self.desc);
        }
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        self.plans
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        // SAFETY: the handle is ours and its plans are gone.
        let _ = unsafe { cublaslt::result::destroy_handle(self.handle) };
    }
}
