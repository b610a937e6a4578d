//! The fast CPU backend (issue 3): every op of the cim-spec contract in f32, with a SIMD
//! GEMM (packed AVX-512/AVX2 kernels) and threads from one rayon pool per backend.
//!
//! Buffers are plain `Vec<f32>` and views are slices, so memory ops are copies and the
//! backend cannot fail once its arguments are valid ([`HostError`] only reports shapes).
//! Every op runs inside the backend's own pool ([`Cpu::with_threads`] picks its size),
//! reached through a resident job ([`resident`]) rather than rayon's injector, which
//! allocates. Scratch (partial sums, taps, columns, the GEMM's packed panels) lives in
//! per-thread buffers that keep their largest size ([`par::Lease`]), so once warmed up
//! a whole training step allocates nothing (`tests/allocations.rs` counts).
//!
//! Determinism: every output element is computed by exactly one task, and every sum
//! that spans tasks (bias and LayerNorm parameter gradients, the loss, the norm) is cut
//! into fixed-size blocks whose f64 partial sums are added in block order. Block sizes
//! derive from the problem's shape only, and GEMMs are split at tile-aligned rows or
//! columns that leave each element's arithmetic unchanged, so the same inputs give the
//! same bits on every run and for any thread count (`tests/threads.rs` checks 1, 2 and 5
//! threads). Long reductions accumulate in f64. The vector loops are compiled for
//! baseline x86-64, AVX2 and AVX-512 and picked at run time; they give the same bits on
//! all three.

use core::ops::Range;

use cim_spec::backend::{Backend, Memory, Precision, Role};
use cim_spec::error::HostError;
use rayon::prelude::*;

mod attention;
mod conv;
mod elementwise;
mod gemm;
mod loss;
mod math;
mod norm;
mod optim;
mod par;
mod resident;
mod sgemm;
mod tokens;

/// The fast CPU backend: f32 everywhere, packed SIMD GEMM, threads through a private
/// rayon pool.
pub struct Cpu {
    // Declared first so that it is dropped first: its loop ends before the pool goes.
    resident: resident::Resident,
    pool: rayon::ThreadPool,
}

impl Cpu {
    /// A backend using every core the process may run on.
    pub fn new() -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_threads(threads)
    }

    /// A backend with a pool of `threads` workers (at least 1).
    pub fn with_threads(threads: usize) -> Self {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("cim-cpu-{i}"))
            .build()
            .expect("the operating system refused to start the worker threads");
        // Every worker takes its packing buffer now (and has started when this returns),
        // so none allocates in the middle of a step; then one of them turns resident.
        pool.broadcast(|_| sgemm::reserve_packing());
        let resident = resident::Resident::start(&pool);
        Cpu { resident, pool }
    }

    /// Worker threads in the pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs `f` inside the backend's pool, so its parallel iterators use these workers:
    /// directly when called from one of them, otherwise on the resident worker.
    pub(crate) fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        if self.pool.current_thread_index().is_some() {
            return f();
        }
        let (mut f, mut out) = (Some(f), None);
        self.resident.run(&mut || out = f.take().map(|f| f()));
        out.expect("the resident ran the closure")
    }

    /// [`Cpu::run`] for work over `len` elements cut into chunks of `chunk` by
    /// [`par::for_chunks`]: a single chunk runs on the calling thread, which saves the
    /// pool's wake-up (tens of microseconds) on small ops. `f` may use parallel
    /// iterators only through `for_chunks` and its variants in [`par`], which stay
    /// serial for one chunk.
    pub(crate) fn run_chunked<R: Send>(
        &self,
        len: usize,
        chunk: usize,
        f: impl FnOnce() -> R + Send,
    ) -> R {
        if len <= chunk { f() } else { self.run(f) }
    }
}

impl Default for Cpu {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for Cpu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Cpu")
            .field("threads", &self.threads())
            .finish()
    }
}

/// Elements per task for memory-bound element-wise work (copies, fills).
const COPY_GRAIN: usize = 1 << 16;

impl Memory for Cpu {
    type Error = HostError;
    type Buffer = Vec<f32>;
    type View<'a> = &'a [f32];
    type ViewMut<'a> = &'a mut [f32];

    fn alloc(&self, len: usize, _role: Role) -> Result<Vec<f32>, HostError> {
        Ok(vec![0.0; len])
    }

    fn buffer_len(buf: &Vec<f32>) -> usize {
        buf.len()
    }

    fn view_len(view: &&[f32]) -> usize {
        view.len()
    }

    fn view_mut_len(view: &&mut [f32]) -> usize {
        view.len()
    }

    fn view<'a>(&'a self, buf: &'a Vec<f32>, range: Range<usize>) -> &'a [f32] {
        &buf[range]
    }

    fn view_mut<'a>(&'a self, buf: &'a mut Vec<f32>, range: Range<usize>) -> &'a mut [f32] {
        &mut buf[range]
    }

    fn reborrow<'b>(view: &'b mut &mut [f32]) -> &'b mut [f32]
    where
        Self: 'b,
    {
        view
    }

    fn as_view<'b>(view: &'b &mut [f32]) -> &'b [f32]
    where
        Self: 'b,
    {
        view
    }

    fn sub_view<'a>(view: &'a [f32], range: Range<usize>) -> &'a [f32]
    where
        Self: 'a,
    {
        &view[range]
    }

    fn split_mut<'a>(view: &'a mut [f32], at: usize) -> (&'a mut [f32], &'a mut [f32])
    where
        Self: 'a,
    {
        view.split_at_mut(at)
    }

    fn upload(&self, dst: &mut [f32], src: &[f32]) -> Result<(), HostError> {
        self.copy(dst, src)
    }

    fn download(&self, src: &[f32], dst: &mut [f32]) -> Result<(), HostError> {
        self.copy(dst, src)
    }

    fn copy(&self, dst: &mut [f32], src: &[f32]) -> Result<(), HostError> {
        assert_eq!(dst.len(), src.len(), "copy: lengths differ");
        if dst.len() <= COPY_GRAIN {
            dst.copy_from_slice(src);
        } else {
            self.run(|| {
                dst.par_chunks_mut(COPY_GRAIN)
                    .zip(src.par_chunks(COPY_GRAIN))
                    .for_each(|(d, s)| d.copy_from_slice(s));
            });
        }
        Ok(())
    }

    fn fill(&self, dst: &mut [f32], value: f32) -> Result<(), HostError> {
        if dst.len() <= COPY_GRAIN {
            dst.fill(value);
        } else {
            self.run(|| {
                dst.par_chunks_mut(COPY_GRAIN).for_each(|d| d.fill(value));
            });
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<(), HostError> {
        Ok(())
    }
}

impl Backend for Cpu {
    fn name(&self) -> &str {
        "cpu"
    }

    fn precision(&self) -> Precision {
        Precision::F32
    }
}
