//! The single-threaded f32 GEMM under every product of this backend (the batched, split
//! products of `gemm.rs` and attention's per-head products): Goto-style blocking with A
//! and B packed into a per-thread buffer of fixed size (1.1 MB), allocated by each pool
//! worker when the backend is built and by any other thread at its first product, so
//! products never allocate after that, whichever worker runs them.
//!
//! The arithmetic is fixed, independent of the CPU's vector width: k is cut into blocks
//! of [`KC`] in order; within a block each element of C is an FMA chain over the block's
//! `l` in order, starting from +0, giving `s`. The first block writes `alpha s` when
//! beta is 0; otherwise `fma(alpha, s, beta C)` for elements of whole 16 x 16 tiles
//! (tiles counted from the product's first row and column) and `beta C + alpha s` (two
//! roundings) for those of the ragged tiles at the bottom and right edges. Later blocks
//! do the same with beta = 1. Splitting a product at multiples of 16 rows or columns
//! therefore leaves every element's bits unchanged, and so does the register blocking
//! (16 rows at a time with AVX-512, 4 with AVX2, both over 16 columns). These are
//! exactly the bits of matrixmultiply 0.3's AVX-512 kernels, the backend's previous
//! GEMM, which allocated its packing buffers on every call (`gemm.rs`'s tests compare
//! the two). Without FMA hardware the fused multiply-adds are correctly rounded library
//! calls: the same bits, much slower.

use core::cell::Cell;

use crate::par::{Home, Lease, has_avx2, has_avx512};

/// Side of the tiles of C that decide the edge rounding (and of the packed panels).
pub(crate) const TILE: usize = 16;
/// Depth of one block of k (sets the summation order).
const KC: usize = 256;
/// Rows of A packed at once (a multiple of `TILE`; speed only).
const MC: usize = 64;
/// Columns of B packed at once (a multiple of `TILE`; speed only).
const NC: usize = 1024;

/// Lines of a packing buffer: a block of A (`MC` rows), then a block of B (`NC` columns).
const PACK_LINES: usize = (MC + NC) / TILE * KC;

/// One step `l` of a packed panel: 16 rows of A or 16 columns of B, on a cache line.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([f32; TILE]);

thread_local! {
    /// This thread's packing buffer: panels of A, then panels of B.
    static PACKS: Home<Line> = const { Cell::new(Vec::new()) };
}

/// A strided matrix operand: element `(i, j)` is at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub(crate) struct Strided {
    pub(crate) ptr: *const f32,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

/// Sizes of one product: `C[m, n] = alpha A[m, k] B[k, n] + beta C`.
#[derive(Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) m: usize,
    pub(crate) n: usize,
    pub(crate) k: usize,
}

/// How one tile's sums are written into C.
#[derive(Clone, Copy)]
struct Epilogue {
    alpha: f32,
    beta: f32,
    /// Whether the tile is a whole 16 x 16 one (see the module paragraph).
    whole: bool,
}

/// Allocates this thread's packing buffer now (every pool worker does when the backend
/// is built).
pub(crate) fn reserve_packing() {
    drop(Lease::new(&PACKS, PACK_LINES));
}

/// `C = alpha A B + beta C` for C row-major with row stride `ldc`, on this thread. With
/// `beta == 0` C is only written (old contents, NaN included, are ignored).
///
/// # Safety
/// Every element of A (`m x k`), B (`k x n`) and C (`m x n`) must be valid to read (C:
/// to write) through the given strides, C's rows must not overlap (`ldc >= n`), and C
/// must overlap neither A nor B.
pub(crate) unsafe fn sgemm(
    shape: Shape,
    alpha: f32,
    a: Strided,
    b: Strided,
    beta: f32,
    c: *mut f32,
    ldc: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        unsafe fn avx512(
            s: Shape,
            alpha: f32,
            a: Strided,
            b: Strided,
            beta: f32,
            c: *mut f32,
            ldc: usize,
        ) {
            // SAFETY: the caller's guarantees, passed on; the CPU has AVX-512F.
            unsafe { blocked::<Avx512>(s, alpha, a, b, beta, c, ldc) }
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(
            s: Shape,
            alpha: f32,
            a: Strided,
            b: Strided,
            beta: f32,
            c: *mut f32,
            ldc: usize,
        ) {
            // SAFETY: the caller's guarantees, passed on; the CPU has AVX2 and FMA.
            unsafe { blocked::<Avx2>(s, alpha, a, b, beta, c, ldc) }
        }
        if has_avx512() {
            // SAFETY: the CPU has the features `avx512` is compiled for; the caller's
            // guarantees are passed on.
            return unsafe { avx512(shape, alpha, a, b, beta, c, ldc) };
        }
        if has_avx2() {
            // SAFETY: as above, for `avx2`.
            return unsafe { avx2(shape, alpha, a, b, beta, c, ldc) };
        }
    }
    // SAFETY: the caller's guarantees, passed on; `Portable` needs no CPU features.
    unsafe { blocked::<Portable>(shape, alpha, a, b, beta, c, ldc) }
}

/// The blocked product with kernel `K`.
///
/// # Safety
/// As [`sgemm`], and the CPU must have `K`'s target features.
#[inline(always)]
unsafe fn blocked<K: Kernel>(
    shape: Shape,
    alpha: f32,
    a: Strided,
    b: Strided,
    beta: f32,
    c: *mut f32,
    ldc: usize,
) {
    let Shape { m, n, k } = shape;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // An empty sum: C = beta C (written when beta is 0).
        for i in 0..m {
            // SAFETY: row i of C has n valid elements (caller) and no other live reference.
            let row = unsafe { core::slice::from_raw_parts_mut(c.add(i * ldc), n) };
            if beta == 0.0 {
                row.fill(0.0);
            } else {
                row.iter_mut().for_each(|v| *v *= beta);
            }
        }
        return;
    }
    // A lease rather than a closure over the thread-local: the loops must stay in this
    // function, compiled for the caller's target features.
    let mut packs = Lease::new(&PACKS, PACK_LINES);
    let (ap, bp) = packs.split_at_mut(MC / TILE * KC);
    for j0 in (0..n).step_by(NC) {
        let nc = (n - j0).min(NC);
        for l0 in (0..k).step_by(KC) {
            let kc = (k - l0).min(KC);
            // SAFETY: rows l0..l0 + kc and columns j0..j0 + nc lie inside B.
            unsafe { pack(bp, b.ptr.add(l0 * b.rs + j0 * b.cs), nc, b.cs, kc, b.rs) };
            let beta = if l0 == 0 { beta } else { 1.0 };
            for i0 in (0..m).step_by(MC) {
                let mc = (m - i0).min(MC);
                // SAFETY: rows i0..i0 + mc and columns l0..l0 + kc lie inside A.
                unsafe { pack(ap, a.ptr.add(i0 * a.rs + l0 * a.cs), mc, a.rs, kc, a.cs) };
                let b_panels = bp.chunks_exact(kc).take(nc.div_ceil(TILE));
                for (q, b_panel) in b_panels.enumerate() {
                    let cols = (nc - q * TILE).min(TILE);
                    let a_panels = ap.chunks_exact(kc).take(mc.div_ceil(TILE));
                    for (p, a_panel) in a_panels.enumerate() {
                        let rows = (mc - p * TILE).min(TILE);
                        let e = Epilogue {
                            alpha,
                            beta,
                            whole: rows == TILE && cols == TILE,
                        };
                        // SAFETY: the CPU has K's features (caller).
                        let sums = unsafe { K::tile(a_panel, b_panel) };
                        let tile = (i0 + p * TILE) * ldc + j0 + q * TILE;
                        // SAFETY: the tile's `rows` rows and `cols` columns lie inside C.
                        unsafe { store(&sums, c.add(tile), ldc, rows, cols, e) };
                    }
                }
            }
        }
    }
}

/// Packs `len` vectors of `kc` elements into panels of [`TILE`] vectors, one [`Line`] per
/// step, zero-padding the last panel: vector `v` starts at `src + v * stride`, its
/// element `l` is `step` further on.
///
/// # Safety
/// Every element `src + v * stride + l * step` (`v < len`, `l < kc`) must be readable.
#[inline(always)]
unsafe fn pack(
    dst: &mut [Line],
    src: *const f32,
    len: usize,
    stride: usize,
    kc: usize,
    step: usize,
) {
    for (p, panel) in dst
        .chunks_exact_mut(kc)
        .take(len.div_ceil(TILE))
        .enumerate()
    {
        let first = p * TILE;
        let width = (len - first).min(TILE);
        for (l, line) in panel.iter_mut().enumerate() {
            // SAFETY: vectors first..first + width at step l are readable (caller).
            unsafe {
                let at = src.add(first * stride + l * step);
                if stride == 1 && width == TILE {
                    line.0 = at.cast::<[f32; TILE]>().read_unaligned();
                } else {
                    for (r, v) in line.0.iter_mut().enumerate() {
                        *v = if r < width { *at.add(r * stride) } else { 0.0 };
                    }
                }
            }
        }
    }
}

/// A register-blocked kernel: the sums `s` of one tile (row `i` of the result is row
/// `i` of the tile) from its packed panels of A and B, as FMA chains over the steps.
trait Kernel {
    /// # Safety
    /// The CPU must have the kernel's target features.
    unsafe fn tile(a: &[Line], b: &[Line]) -> [[f32; TILE]; TILE];
}

/// Plain Rust, one row at a time (vectorised over the row's 16 columns).
struct Portable;

impl Kernel for Portable {
    #[inline(always)]
    unsafe fn tile(a: &[Line], b: &[Line]) -> [[f32; TILE]; TILE] {
        let mut sums = [[0.0f32; TILE]; TILE];
        for (i, row) in sums.iter_mut().enumerate() {
            for (x, y) in a.iter().zip(b) {
                for (s, &v) in row.iter_mut().zip(&y.0) {
                    *s = x.0[i].mul_add(v, *s);
                }
            }
        }
        sums
    }
}

/// AVX-512: the whole tile in 16 registers, one broadcast and one FMA per row and step.
#[cfg(target_arch = "x86_64")]
struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Kernel for Avx512 {
    #[inline(always)]
    unsafe fn tile(a: &[Line], b: &[Line]) -> [[f32; TILE]; TILE] {
        use core::arch::x86_64::*;
        let mut sums = [[0.0f32; TILE]; TILE];
        // SAFETY: the CPU has AVX-512F (caller); each load reads one whole, 64-byte
        // aligned `Line` and each store writes one row of `sums`.
        unsafe {
            let mut acc = [_mm512_setzero_ps(); TILE];
            for (x, y) in a.iter().zip(b) {
                let bv = _mm512_load_ps(y.0.as_ptr());
                for (s, &v) in acc.iter_mut().zip(&x.0) {
                    *s = _mm512_fmadd_ps(_mm512_set1_ps(v), bv, *s);
                }
            }
            for (row, v) in sums.iter_mut().zip(acc) {
                _mm512_storeu_ps(row.as_mut_ptr(), v);
            }
        }
        sums
    }
}

/// AVX2: four rows at a time in eight registers (two per row of 16).
#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Kernel for Avx2 {
    #[inline(always)]
    unsafe fn tile(a: &[Line], b: &[Line]) -> [[f32; TILE]; TILE] {
        use core::arch::x86_64::*;
        const ROWS: usize = 4;
        let mut sums = [[0.0f32; TILE]; TILE];
        // SAFETY: the CPU has AVX2 and FMA (caller); each load reads one half of a
        // 64-byte aligned `Line` and each store writes one half of a row of `sums`.
        unsafe {
            for (g, out) in sums.chunks_exact_mut(ROWS).enumerate() {
                let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
                for (x, y) in a.iter().zip(b) {
                    let lo = _mm256_load_ps(y.0.as_ptr());
                    let hi = _mm256_load_ps(y.0.as_ptr().add(8));
                    for (s, &v) in acc.iter_mut().zip(&x.0[g * ROWS..]) {
                        let v = _mm256_set1_ps(v);
                        s[0] = _mm256_fmadd_ps(v, lo, s[0]);
                        s[1] = _mm256_fmadd_ps(v, hi, s[1]);
                    }
                }
                for (row, s) in out.iter_mut().zip(acc) {
                    _mm256_storeu_ps(row.as_mut_ptr(), s[0]);
                    _mm256_storeu_ps(row.as_mut_ptr().add(8), s[1]);
                }
            }
        }
        sums
    }
}

/// Writes `rows x cols` of `sums` into C at `c` (row stride `ldc`) as the module
/// paragraph says.
///
/// # Safety
/// Those elements of C must be valid to write (and to read unless `e.beta == 0`), with
/// no other live reference to them.
#[inline(always)]
unsafe fn store(
    sums: &[[f32; TILE]; TILE],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    e: Epilogue,
) {
    let Epilogue { alpha, beta, whole } = e;
    for (i, s) in sums.iter().enumerate().take(rows) {
        // SAFETY: row i of the block has `cols` valid elements (caller).
        let row = unsafe { core::slice::from_raw_parts_mut(c.add(i * ldc), cols) };
        if beta == 0.0 {
            for (c, &s) in row.iter_mut().zip(s) {
                *c = alpha * s;
            }
        } else if whole {
            for (c, &s) in row.iter_mut().zip(s) {
                *c = alpha.mul_add(s, *c * beta);
            }
        } else {
            for (c, &s) in row.iter_mut().zip(s) {
                *c = *c * beta + alpha * s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// `C = alpha op(A) op(B) + beta C` with kernel `K` on fresh row-major operands.
    fn product<K: Kernel>(
        (m, n, k): (usize, usize, usize),
        (ta, tb): (bool, bool),
        (alpha, beta): (f32, f32),
    ) -> Vec<f32> {
        let (a, b) = (values(m * k, 1), values(k * n, 2));
        let mut c = values(m * n, 3);
        let (rs, cs) = if ta { (1, m) } else { (k, 1) };
        let a = Strided {
            ptr: a.as_ptr(),
            rs,
            cs,
        };
        let (rs, cs) = if tb { (1, k) } else { (n, 1) };
        let b = Strided {
            ptr: b.as_ptr(),
            rs,
            cs,
        };
        // SAFETY: the operands are whole row-major matrices of these shapes, C is
        // separate, and the callers check the CPU for `K`'s features.
        unsafe { blocked::<K>(Shape { m, n, k }, alpha, a, b, beta, c.as_mut_ptr(), n) };
        c
    }

    /// Every kernel this CPU can run gives the same bits: the arithmetic does not
    /// depend on the vector width.
    #[test]
    fn kernels_agree_bit_for_bit() {
        let shapes = [
            (1, 1, 1),
            (17, 33, 5),
            (40, 20, 300),
            (70, 1100, 40),
            (65, 63, 257),
        ];
        for shape in shapes {
            for layout in [(false, false), (true, false), (false, true), (true, true)] {
                for scalars in [(1.0, 0.0), (0.5, -1.5)] {
                    let want = product::<Portable>(shape, layout, scalars);
                    let mut others = Vec::new();
                    #[cfg(target_arch = "x86_64")]
                    {
                        if has_avx2() {
                            others.push(product::<Avx2>(shape, layout, scalars));
                        }
                        if has_avx512() {
                            others.push(product::<Avx512>(shape, layout, scalars));
                        }
                    }
                    for got in others {
                        let same = got
                            .iter()
                            .zip(&want)
                            .all(|(x, y)| x.to_bits() == y.to_bits());
                        assert!(same, "{shape:?} {layout:?} {scalars:?}");
                    }
                }
            }
        }
    }
}
