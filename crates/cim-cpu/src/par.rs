//! Small helpers shared by the ops: fixed-size work splitting, per-thread scratch
//! buffers, a pointer that may cross threads, and run-time selection of AVX2 or AVX-512
//! code for the compute-bound loops.
//!
//! Splits depend only on the problem size (never on the thread count or on timing), so
//! which elements a task owns, and therefore every summation order, is fixed.

use core::cell::Cell;
use core::ops::{Deref, DerefMut};
use std::thread::LocalKey;

use rayon::prelude::*;

/// Runs `f(chunk_index, chunk)` over `data` cut into chunks of `chunk` elements (the last
/// may be shorter), in parallel when there is more than one chunk. Must be called inside
/// the backend's pool.
pub(crate) fn for_chunks<T, F>(data: &mut [T], chunk: usize, f: F)
where
    T: Send,
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    let chunk = chunk.max(1);
    if data.len() <= chunk {
        f(0, data);
    } else {
        data.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    }
}

/// Runs `f(first_chunk, a_part, b_part)` over two outputs cut alike: `per` chunks of
/// `len_a` elements of `a` and of `len_b` elements of `b` per task, in parallel when there
/// is more than one task. Must be called inside the backend's pool.
pub(crate) fn for_chunk_pairs<A, B, F>(
    a: &mut [A],
    b: &mut [B],
    (len_a, len_b): (usize, usize),
    per: usize,
    f: F,
) where
    A: Send,
    B: Send,
    F: Fn(usize, &mut [A], &mut [B]) + Sync + Send,
{
    let (ca, cb) = ((per * len_a).max(1), (per * len_b).max(1));
    if a.len() <= ca {
        f(0, a, b);
    } else {
        a.par_chunks_mut(ca)
            .zip(b.par_chunks_mut(cb))
            .enumerate()
            .for_each(|(i, (x, y))| f(i * per, x, y));
    }
}

/// [`for_chunks`] with `scratch` elements of scratch for each chunk (`f(chunk_index,
/// chunk, its_scratch)`), cut out of one buffer leased from `home` by the calling thread
/// (see [`Lease`] for why not by the workers). Must be called inside the backend's pool.
pub(crate) fn for_chunks_with<T, S, F>(
    data: &mut [T],
    chunk: usize,
    home: &'static LocalKey<Home<S>>,
    scratch: usize,
    f: F,
) where
    T: Send,
    S: Copy + Default + Send,
    F: Fn(usize, &mut [T], &mut [S]) + Sync + Send,
{
    let (chunk, scratch) = (chunk.max(1), scratch.max(1));
    let mut lease = Lease::new(home, data.len().div_ceil(chunk).max(1) * scratch);
    for_chunk_pairs(data, &mut lease, (chunk, scratch), 1, f);
}

/// Where a thread keeps one kind of scratch buffer between ops:
/// `thread_local! { static NAME: Home<T> = const { Cell::new(Vec::new()) }; }`.
pub(crate) type Home<T> = Cell<Vec<T>>;

/// `len` elements of this thread's buffer from `home`, grown first if it is shorter
/// (the only allocation). The contents are whatever the last user left. The buffer goes
/// back home when the lease is dropped; a nested lease of the same home would get a
/// fresh buffer, so each use site has a home of its own.
///
/// Leases are taken by the thread that calls an op or runs it on the pool's resident
/// worker, whose requests are the same on every training step, so each buffer reaches
/// its final size within the first step. Tasks on the other workers do not take their
/// own: which worker runs which task varies from call to call, so a worker could first
/// meet the largest task long after warm-up. Per-task scratch is cut from the caller's
/// lease instead ([`for_chunks_with`]); the GEMM's fixed-size packing buffer is the one
/// exception, reserved on every worker when the backend is built.
pub(crate) struct Lease<T: 'static> {
    buf: Vec<T>,
    len: usize,
    home: &'static LocalKey<Home<T>>,
}

impl<T: Copy + Default> Lease<T> {
    pub(crate) fn new(home: &'static LocalKey<Home<T>>, len: usize) -> Self {
        let mut buf = home.take();
        if buf.len() < len {
            buf.resize(len, T::default());
        }
        Lease { buf, len, home }
    }
}

impl<T> Deref for Lease<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[..self.len]
    }
}

impl<T> DerefMut for Lease<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[..self.len]
    }
}

impl<T> Drop for Lease<T> {
    fn drop(&mut self) {
        self.home.set(core::mem::take(&mut self.buf));
    }
}

/// Rows per task so that each task gets about `grain` elements of `row_len` (at least
/// one row).
pub(crate) fn rows_per_task(row_len: usize, grain: usize) -> usize {
    (grain / row_len.max(1)).max(1)
}

/// A raw pointer that may be sent to another thread. Users promise (with a `SAFETY`
/// comment at each dereference) that tasks touch disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);

// SAFETY: the pointer is only an address; every dereference site guarantees that no two
// tasks access the same element and that the pointee outlives the parallel section.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above; the pointer itself is never mutated through a shared reference.
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The wrapped pointer (a method, so closures capture the whole `Send` wrapper
    /// rather than its non-`Send` field).
    #[inline]
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// Whether this CPU runs the AVX2 + FMA versions of the vector loops.
#[inline]
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU runs the AVX-512 versions of the vector loops.
#[inline]
pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2()
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `fn name(args)` whose body is compiled three times, for the baseline target,
/// with AVX2 + FMA, and with AVX-512, and picks the widest the CPU has at run time.
/// Rust never contracts `a * b + c` into an FMA (only explicit `mul_add` is fused, and
/// that is correctly rounded everywhere), so every version gives the same bits; the
/// features only widen the vectors the loops are compiled to.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn portable($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                if $crate::par::has_avx512() {
                    // SAFETY: `avx512` is only compiled for features that the running
                    // CPU was just found to support.
                    return unsafe { avx512($($arg),*) };
                }
                if $crate::par::has_avx2() {
                    // SAFETY: as above, for `avx2`.
                    return unsafe { avx2($($arg),*) };
                }
            }
            portable($($arg),*)
        }
    };
}
pub(crate) use multiversion;
