//! The NVIDIA backend (issue 6): every op of the cim-spec contract as CUDA kernels plus
//! cuBLAS GEMMs, written once over a [`Device`] that either is a GPU ([`Gpu`], through
//! cudarc, kernels compiled at run time by NVRTC) or emulates one on the host
//! ([`Emulator`]: the same kernel sources compiled by the C++ compiler, threads as fibers).
//!
//! The emulator exists so the kernels and the host code around them (launch shapes,
//! parameter structs, the row-major to column-major GEMM mapping) pass the conformance
//! suite on machines with no GPU, on every push; the GPU run then only has to show that the
//! card agrees. Kernels live beside the op that launches them (`src/ops/<op>/kernels.cu`);
//! `build.rs` turns each kernel's parameter struct into Rust, so the two sides share one
//! declaration.
//!
//! Beside the ops, [`PairRenderer`] is the on-device data path: it renders exemplar-context
//! pairs (S2) from uploaded 8-bit search views straight into the model's input buffers,
//! and [`NcclCollective`] sums gradients across GPUs for data-parallel training.
//!
//! Buffers hold f32; GEMMs run in f32 ([`Precision::F32`]), with TF32 inputs on tensor
//! cores ([`Precision::Tf32`]) or with bf16 inputs on tensor cores and f32 accumulation
//! ([`Precision::Bf16Mixed`]), as [`GemmMath`] says; the linear layers' bias work runs
//! separately or inside their GEMMs (cuBLASLt epilogues), as [`BiasEpilogue`] says. Reductions use fixed trees, never
//! atomics, so the same inputs give the same bits on every run.

use core::marker::PhantomData;
use core::ops::Range;

use cim_spec::backend::{Backend, LinearArgs, Memory, Precision, Role};

mod device;
mod error;
pub mod nccl;
mod ops;

pub use device::emu::Emulator;
pub use device::gpu::{Gpu, gpu_unavailable_reason};
pub use device::{
    BiasEpilogue, ColumnMajorGemm, Device, Epilogue, GemmConfig, GemmInput, GemmMath, LaunchDims,
};
pub use error::CudaError;
pub use nccl::{NcclCollective, nccl_unavailable_reason};
pub use ops::render::{PairOutputs, PairRenderer};
pub use ops::{compile_module, kernel_sources, nvrtc_unavailable_reason};

use ops::{Kernel, KernelParams, Scratch};

/// The CUDA backend over device `D`.
pub struct Cuda<D: Device> {
    device: D,
    /// f64 partial sums of the two-launch reductions (sum of squares, map loss), reused by
    /// every call; the lock is held while a reduction's launches are queued, so another
    /// host thread's reduction cannot land between them on the stream.
    partials: std::sync::Mutex<D::Alloc>,
    /// Both operands of one GEMM rounded to bf16 ([`GemmMath::Bf16`] only), reused by every
    /// GEMM; the lock is held while a GEMM's conversions and product are queued.
    bf16_operands: std::sync::Mutex<Scratch<D>>,
    /// The bias gradient a fused weight-gradient GEMM writes ([`BiasEpilogue::Fused`]
    /// only) before it is added to the gradient; the lock is held while both are queued.
    bias_gradient: std::sync::Mutex<Scratch<D>>,
}

/// f64 slots in [`Cuda`]'s partial-sum buffer: the most blocks a two-launch reduction's
/// first launch may use.
pub(crate) const MAX_PARTIALS: usize = 4096;

impl Cuda<Gpu> {
    /// The f32 backend on GPU `ordinal`; a clear error if CUDA or the GPU is missing.
    pub fn gpu(ordinal: usize) -> Result<Self, CudaError> {
        Self::gpu_with(ordinal, GemmMath::F32)
    }

    /// The backend on GPU `ordinal` with GEMMs as `gemm` says (a [`GemmMath`] alone
    /// leaves the bias work separate).
    pub fn gpu_with(ordinal: usize, gemm: impl Into<GemmConfig>) -> Result<Self, CudaError> {
        Self::on(Gpu::new(ordinal, gemm.into())?)
    }
}

impl Cuda<Emulator> {
    /// The f32 backend on the host emulator (no GPU needed).
    pub fn emulated() -> Self {
        Self::emulated_with(GemmMath::F32)
    }

    /// The backend on the host emulator with GEMMs as `gemm` says (a [`GemmMath`] alone
    /// leaves the bias work separate).
    pub fn emulated_with(gemm: impl Into<GemmConfig>) -> Self {
        Self::on(Emulator::new(gemm.into())).expect("the emulator allocates 32 KiB of host memory")
    }

    /// As [`Cuda::emulated_with`], on an emulator that has no algorithm for the epilogue
    /// GEMMs `refuses` picks, as cuBLASLt's heuristic may answer on a GPU (tests of the
    /// fallback to the separate bias work).
    pub fn emulated_refusing(
        gemm: impl Into<GemmConfig>,
        refuses: fn(&ColumnMajorGemm) -> bool,
    ) -> Self {
        Self::on(Emulator::refusing(gemm.into(), refuses))
            .expect("the emulator allocates 32 KiB of host memory")
    }
}

impl<D: Device> Cuda<D> {
    fn on(device: D) -> Result<Self, CudaError> {
        let partials = device.alloc(MAX_PARTIALS * size_of::<f64>())?;
        Ok(Cuda {
            device,
            partials: std::sync::Mutex::new(partials),
            bf16_operands: std::sync::Mutex::new(Scratch::new()),
            bias_gradient: std::sync::Mutex::new(Scratch::new()),
        })
    }

    /// Runs `queue` with the device address of the partial-sum buffer ([`MAX_PARTIALS`]
    /// f64), holding its lock while `queue` puts its launches on the stream.
    pub(crate) fn with_partials<R>(&self, queue: impl FnOnce(u64) -> R) -> R {
        let partials = self.partials.lock().unwrap_or_else(|p| p.into_inner());
        queue(D::address(&partials))
    }

    /// The device the backend runs on.
    pub fn device(&self) -> &D {
        &self.device
    }

    fn launch<P: KernelParams>(
        &self,
        kernel: &Kernel<P>,
        dims: LaunchDims,
        params: P,
    ) -> Result<(), CudaError> {
        // SAFETY: every caller builds `params` from views of live buffers whose lengths the
        // cim-spec wrappers checked against the sizes it passes, and the kernel reads and
        // writes only within those sizes.
        unsafe { self.device.launch(kernel, dims, &params) }
    }
}

/// An allocation of f32 elements on device `D`.
pub struct DeviceBuffer<D: Device> {
    alloc: D::Alloc,
    len: usize,
}

/// A shared view: device address and length, borrowed from a buffer.
#[derive(Clone, Copy, Debug)]
pub struct DeviceView<'a> {
    ptr: u64,
    len: usize,
    _buffer: PhantomData<&'a ()>,
}

/// An exclusive view: device address and length, borrowed mutably from a buffer.
#[derive(Debug)]
pub struct DeviceViewMut<'a> {
    ptr: u64,
    len: usize,
    _buffer: PhantomData<&'a mut ()>,
}

const F32_BYTES: u64 = 4;

impl DeviceView<'_> {
    /// A view of `len` f32 elements at device address `ptr` of an allocation the caller
    /// keeps alive and unwritten while the view is used (the backend's own scratch).
    pub(crate) fn of_scratch(ptr: u64, len: usize) -> Self {
        DeviceView {
            ptr,
            len,
            _buffer: PhantomData,
        }
    }
    pub(crate) fn ptr(&self) -> u64 {
        self.ptr
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl DeviceViewMut<'_> {
    pub(crate) fn ptr(&self) -> u64 {
        self.ptr
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    /// `len` elements from `start`, borrowed from this view. Panics if out of bounds.
    pub(crate) fn sub_range(&mut self, start: usize, len: usize) -> DeviceViewMut<'_> {
        assert!(
            start + len <= self.len,
            "sub-range {start}+{len} of a view of {}",
            self.len
        );
        DeviceViewMut {
            ptr: self.ptr + start as u64 * F32_BYTES,
            len,
            _buffer: PhantomData,
        }
    }
}

impl<D: Device> Memory for Cuda<D> {
    type Error = CudaError;
    type Buffer = DeviceBuffer<D>;
    type View<'a> = DeviceView<'a>;
    type ViewMut<'a> = DeviceViewMut<'a>;

    fn alloc(&self, len: usize, _role: Role) -> Result<DeviceBuffer<D>, CudaError> {
        let bytes = len.checked_mul(F32_BYTES as usize).ok_or_else(|| {
            CudaError::out_of_memory(format!("{len} f32 elements overflow the address space"))
        })?;
        Ok(DeviceBuffer {
            alloc: self.device.alloc(bytes.max(4))?,
            len,
        })
    }

    fn buffer_len(buf: &DeviceBuffer<D>) -> usize {
        buf.len
    }

    fn view_len(view: &DeviceView<'_>) -> usize {
        view.len
    }

    fn view_mut_len(view: &DeviceViewMut<'_>) -> usize {
        view.len
    }

    fn view<'a>(&'a self, buf: &'a DeviceBuffer<D>, range: Range<usize>) -> DeviceView<'a> {
        assert!(
            range.start <= range.end && range.end <= buf.len,
            "view {range:?} out of bounds"
        );
        DeviceView {
            ptr: D::address(&buf.alloc) + range.start as u64 * F32_BYTES,
            len: range.len(),
            _buffer: PhantomData,
        }
    }

    fn view_mut<'a>(
        &'a self,
        buf: &'a mut DeviceBuffer<D>,
        range: Range<usize>,
    ) -> DeviceViewMut<'a> {
        assert!(
            range.start <= range.end && range.end <= buf.len,
            "view {range:?} out of bounds"
        );
        DeviceViewMut {
            ptr: D::address(&buf.alloc) + range.start as u64 * F32_BYTES,
            len: range.len(),
            _buffer: PhantomData,
        }
    }

    fn reborrow<'b>(view: &'b mut DeviceViewMut<'_>) -> DeviceViewMut<'b>
    where
        Self: 'b,
    {
        DeviceViewMut {
            ptr: view.ptr,
            len: view.len,
            _buffer: PhantomData,
        }
    }

    fn as_view<'b>(view: &'b DeviceViewMut<'_>) -> DeviceView<'b>
    where
        Self: 'b,
    {
        DeviceView {
            ptr: view.ptr,
            len: view.len,
            _buffer: PhantomData,
        }
    }

    fn sub_view<'a>(view: DeviceView<'a>, range: Range<usize>) -> DeviceView<'a>
    where
        Self: 'a,
    {
        assert!(
            range.start <= range.end && range.end <= view.len,
            "view {range:?} out of bounds"
        );
        DeviceView {
            ptr: view.ptr + range.start as u64 * F32_BYTES,
            len: range.len(),
            _buffer: PhantomData,
        }
    }

    fn split_mut<'a>(view: DeviceViewMut<'a>, at: usize) -> (DeviceViewMut<'a>, DeviceViewMut<'a>)
    where
        Self: 'a,
    {
        assert!(at <= view.len, "split at {at} of a view of {}", view.len);
        (
            DeviceViewMut {
                ptr: view.ptr,
                len: at,
                _buffer: PhantomData,
            },
            DeviceViewMut {
                ptr: view.ptr + at as u64 * F32_BYTES,
                len: view.len - at,
                _buffer: PhantomData,
            },
        )
    }

    fn upload(&self, dst: DeviceViewMut<'_>, src: &[f32]) -> Result<(), CudaError> {
        assert_eq!(dst.len, src.len(), "upload length");
        // SAFETY: `dst` is an exclusive view of `src.len()` elements of a live buffer.
        unsafe { self.device.upload(dst.ptr, bytes_of(src)) }
    }

    fn download(&self, src: DeviceView<'_>, dst: &mut [f32]) -> Result<(), CudaError> {
        assert_eq!(src.len, dst.len(), "download length");
        // SAFETY: as f32 is plain data, any bytes the device writes form valid values.
        let bytes = unsafe {
            core::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), dst.len() * 4)
        };
        // SAFETY: `src` is a view of `dst.len()` elements of a live buffer.
        unsafe { self.device.download(src.ptr, bytes) }
    }

    fn copy(&self, dst: DeviceViewMut<'_>, src: DeviceView<'_>) -> Result<(), CudaError> {
        assert_eq!(dst.len, src.len, "copy length");
        // SAFETY: both views lie in live buffers and (the contract) do not overlap.
        unsafe { self.device.copy(dst.ptr, src.ptr, src.len * 4) }
    }

    fn fill(&self, dst: DeviceViewMut<'_>, value: f32) -> Result<(), CudaError> {
        ops::elementwise::fill(self, dst, value)
    }

    fn synchronize(&self) -> Result<(), CudaError> {
        self.device.synchronize()
    }
}

fn bytes_of(values: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte is a valid u8; the length is exact.
    unsafe { core::slice::from_raw_parts(values.as_ptr().cast::<u8>(), size_of_val(values)) }
}

impl<D: Device> Backend for Cuda<D> {
    fn name(&self) -> &str {
        self.device.name()
    }

    fn precision(&self) -> Precision {
        self.device.gemm_math().precision()
    }

    fn linear_forward(
        &self,
        y: DeviceViewMut<'_>,
        x: DeviceView<'_>,
        weight: DeviceView<'_>,
        bias: DeviceView<'_>,
        args: &LinearArgs,
    ) -> Result<(), CudaError> {
        ops::gemm::linear_forward(self, y, x, weight, bias, args)
    }

    fn linear_backward_params(
        &self,
        dweight: DeviceViewMut<'_>,
        dbias: DeviceViewMut<'_>,
        dy: DeviceView<'_>,
        x: DeviceView<'_>,
        args: &LinearArgs,
    ) -> Result<(), CudaError> {
        ops::gemm::linear_backward_params(self, dweight, dbias, dy, x, args)
    }
}
