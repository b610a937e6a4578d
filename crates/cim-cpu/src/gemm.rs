//! Batched, strided GEMM on the packed kernels of [`crate::sgemm`], split into tasks on
//! the backend's pool.
//!
//! Each product is cut into whole batches and, for large products, into blocks of rows
//! (or of columns when `n > m`, so the larger operand is packed once), each run
//! single-threaded on one task. Block edges fall on multiples of [`TILE`], so every
//! element sees the same tile position, the same k-blocking and the same epilogue as in
//! an unsplit call: the bits do not depend on the split or the thread count. With
//! `beta == 0` C is never read, so old contents (NaN included) are ignored as the
//! contract demands.
//!
//! The kernels were first matrixmultiply's, measured against the `gemm` crate (0.19) on
//! this project's shapes (2-core AMD EPYC Zen 5 with AVX-512, both on 2 threads):
//! 300-440 GFLOP/s against 150-250 for `gemm`, whose AVX-512 kernels need a nightly
//! feature. matrixmultiply allocates its packing buffers on every call, so the backend
//! now packs into reused per-thread buffers with kernels of its own that give the same
//! bits at the same speed; `benches/gemm.rs` prints the current numbers.

use cim_spec::backend::{Gemm, GemmArgs};
use cim_spec::error::{HostError, ShapeError};
use rayon::prelude::*;

use crate::Cpu;
use crate::par::SendPtr;
use crate::sgemm::{Shape, Strided, TILE, sgemm};

/// Multiply-adds below which a product is not split further.
const MIN_TASK_MACS: usize = 1 << 18;

/// Checks that every matrix of the batch lies inside its slice and that the C matrices
/// do not overlap, so the raw-pointer products below stay in bounds.
pub(crate) fn check(c: usize, a: usize, b: usize, g: &GemmArgs) -> Result<(), ShapeError> {
    let fail = |argument, expected, actual| ShapeError {
        op: "gemm",
        argument,
        expected,
        actual,
    };
    if g.batch == 0 {
        return Ok(());
    }
    let span = |stride: usize, size: Option<usize>| {
        size.and_then(|s| (g.batch - 1).checked_mul(stride)?.checked_add(s))
            .unwrap_or(usize::MAX)
    };
    let mk = g.m.checked_mul(g.k);
    let kn = g.k.checked_mul(g.n);
    let mn = g.m.checked_mul(g.n);
    if g.batch > 1 && mn.is_none_or(|mn| g.stride_c < mn) {
        return Err(fail("stride_c", mn.unwrap_or(usize::MAX), g.stride_c));
    }
    for (name, len, need) in [
        ("a", a, span(g.stride_a, mk)),
        ("b", b, span(g.stride_b, kn)),
        ("c", c, span(g.stride_c, mn)),
    ] {
        if need > len {
            return Err(fail(name, need, len));
        }
    }
    Ok(())
}

/// `C_b = alpha op(A_b) op(B_b) + beta C_b` for every batch entry (see [`GemmArgs`]).
/// `threads` only sets how finely large products are split. The caller has run
/// [`check`] and is inside the pool.
pub(crate) fn gemm(threads: usize, c: &mut [f32], a: &[f32], b: &[f32], g: &GemmArgs) {
    let (m, n, k) = (g.m, g.n, g.k);
    if g.batch == 0 || m == 0 || n == 0 {
        return;
    }
    // Element (i, l) of op(A) is at i * rsa + l * csa; (l, j) of op(B) at l * rsb + j * csb.
    let (rsa, csa) = if g.trans_a { (1, m) } else { (k, 1) };
    let (rsb, csb) = if g.trans_b { (1, k) } else { (n, 1) };

    // Split the larger of m and n so that the smaller operand is the one packed again.
    let split_rows = m >= n;
    let extent = if split_rows { m } else { n };
    let macs = m * n * k;
    let wanted = (2 * threads).div_ceil(g.batch).max(1);
    let by_size = (macs / MIN_TASK_MACS).max(1);
    let parts = wanted.min(by_size).min(extent.div_ceil(TILE));
    let step = extent.div_ceil(parts).next_multiple_of(TILE);
    let parts = extent.div_ceil(step);
    let tasks = g.batch * parts;

    let cp = SendPtr(c.as_mut_ptr());
    let (ap, bp) = (a.as_ptr() as usize, b.as_ptr() as usize);
    let task = |t: usize| {
        let (bi, p) = (t / parts, t % parts);
        let lo = p * step;
        let hi = (lo + step).min(extent);
        let (rows, cols, a_off, b_off, c_off) = if split_rows {
            (hi - lo, n, lo * rsa, 0, lo * n)
        } else {
            (m, hi - lo, 0, lo * csb, lo)
        };
        // SAFETY: `check` showed that A_b, B_b and C_b (batch entry `bi`) lie inside
        // their slices; the offsets select rows lo..hi (or columns) of these matrices,
        // so every element the product reads or writes is in bounds, and C's rows are
        // `n` apart. Tasks write disjoint blocks of C (distinct batch entries are
        // `stride_c >= m n` apart, distinct blocks of one entry are disjoint rows or
        // columns), C overlaps neither A nor B (a `&mut` slice and two shared ones), A
        // and B are only read, and all slices outlive the parallel loop.
        unsafe {
            let a0 = Strided {
                ptr: (ap as *const f32).add(bi * g.stride_a + a_off),
                rs: rsa,
                cs: csa,
            };
            let b0 = Strided {
                ptr: (bp as *const f32).add(bi * g.stride_b + b_off),
                rs: rsb,
                cs: csb,
            };
            let c0 = cp.get().add(bi * g.stride_c + c_off);
            let shape = Shape {
                m: rows,
                n: cols,
                k,
            };
            sgemm(shape, g.alpha, a0, b0, g.beta, c0, n);
        }
    };
    if tasks == 1 {
        task(0);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

impl Gemm for Cpu {
    fn gemm(&self, c: &mut [f32], a: &[f32], b: &[f32], args: &GemmArgs) -> Result<(), HostError> {
        check(c.len(), a.len(), b.len(), args)?;
        let threads = self.threads();
        // A product too small to split runs on the calling thread (no pool wake-up).
        let macs = args.m.saturating_mul(args.n).saturating_mul(args.k);
        if args.batch <= 1 && macs < 2 * MIN_TASK_MACS {
            gemm(threads, c, a, b, args);
        } else {
            self.run(|| gemm(threads, c, a, b, args));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(c: &mut [f64], a: &[f32], b: &[f32], g: &GemmArgs, old: &[f32]) {
        for bi in 0..g.batch {
            for i in 0..g.m {
                for j in 0..g.n {
                    let mut s = 0.0f64;
                    for l in 0..g.k {
                        let av = if g.trans_a {
                            a[bi * g.stride_a + l * g.m + i]
                        } else {
                            a[bi * g.stride_a + i * g.k + l]
                        };
                        let bv = if g.trans_b {
                            b[bi * g.stride_b + j * g.k + l]
                        } else {
                            b[bi * g.stride_b + l * g.n + j]
                        };
                        s += f64::from(av) * f64::from(bv);
                    }
                    let idx = bi * g.stride_c + i * g.n + j;
                    let prev = if g.beta == 0.0 {
                        0.0
                    } else {
                        f64::from(g.beta) * f64::from(old[idx])
                    };
                    c[idx] = f64::from(g.alpha) * s + prev;
                }
            }
        }
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The arithmetic of `crate::sgemm`'s module paragraph, element by element.
    fn model(c: &mut [f32], a: &[f32], b: &[f32], g: &GemmArgs) {
        const KC: usize = 256;
        let whole = |i: usize, len: usize| (i / TILE + 1) * TILE <= len;
        for bi in 0..g.batch {
            for i in 0..g.m {
                for j in 0..g.n {
                    let av = |l: usize| {
                        a[bi * g.stride_a + if g.trans_a { l * g.m + i } else { i * g.k + l }]
                    };
                    let bv = |l: usize| {
                        b[bi * g.stride_b + if g.trans_b { j * g.k + l } else { l * g.n + j }]
                    };
                    let out = &mut c[bi * g.stride_c + i * g.n + j];
                    if g.k == 0 {
                        *out = if g.beta == 0.0 { 0.0 } else { *out * g.beta };
                    }
                    for l0 in (0..g.k).step_by(KC) {
                        let s =
                            (l0..(l0 + KC).min(g.k)).fold(0.0f32, |s, l| av(l).mul_add(bv(l), s));
                        let beta = if l0 == 0 { g.beta } else { 1.0 };
                        *out = if beta == 0.0 {
                            g.alpha * s
                        } else if whole(i, g.m) && whole(j, g.n) {
                            g.alpha.mul_add(s, *out * beta)
                        } else {
                            *out * beta + g.alpha * s
                        };
                    }
                }
            }
        }
    }

    /// matrixmultiply's `sgemm` once per batch entry, unsplit.
    fn matrixmultiply(c: &mut [f32], a: &[f32], b: &[f32], g: &GemmArgs) {
        let (rsa, csa) = if g.trans_a { (1, g.m) } else { (g.k, 1) };
        let (rsb, csb) = if g.trans_b { (1, g.k) } else { (g.n, 1) };
        for bi in 0..g.batch {
            // SAFETY: the matrices of entry `bi` lie inside the vectors.
            unsafe {
                matrixmultiply::sgemm(
                    g.m,
                    g.k,
                    g.n,
                    g.alpha,
                    a.as_ptr().add(bi * g.stride_a),
                    rsa as isize,
                    csa as isize,
                    b.as_ptr().add(bi * g.stride_b),
                    rsb as isize,
                    csb as isize,
                    g.beta,
                    c.as_mut_ptr().add(bi * g.stride_c),
                    g.n as isize,
                    1,
                );
            }
        }
    }

    fn assert_same_bits(got: &[f32], want: &[f32], what: &str, g: &GemmArgs) {
        for (i, (x, y)) in got.iter().zip(want).enumerate() {
            assert_eq!(x.to_bits(), y.to_bits(), "{what} at {i}: {x} vs {y}, {g:?}");
        }
    }

    #[test]
    fn matches_naive_and_the_exact_model_for_every_layout_and_split() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        // matrixmultiply's AVX-512 kernels compute the same bits (the GEMM this backend
        // used before); elsewhere it has kernels of other shapes.
        let avx512 = crate::par::has_avx512();
        for &(batch, m, n, k) in &[
            (1, 1, 1, 1),
            (1, 37, 5, 300),
            (1, 33, 1, 270),
            (1, 200, 90, 64),
            (3, 17, 17, 64),
            (2, 70, 300, 33),
            (1, 20, 1100, 40),
            (1, 600, 40, 700),
            (2, 5, 7, 0),
        ] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                for (alpha, beta) in [(1.0, 0.0), (0.5, 1.0), (2.0, -0.5)] {
                    for broadcast_b in [false, true] {
                        let g = GemmArgs {
                            batch,
                            m,
                            n,
                            k,
                            trans_a: ta,
                            trans_b: tb,
                            alpha,
                            beta,
                            stride_a: m * k,
                            stride_b: if broadcast_b { 0 } else { k * n },
                            stride_c: m * n + 3,
                        };
                        let a = values(batch * m * k, 1);
                        let b = values(if broadcast_b { k * n } else { batch * k * n }, 2);
                        let clen = (batch - 1) * g.stride_c + m * n;
                        let mut old = values(clen, 3);
                        if beta == 0.0 {
                            old.iter_mut().step_by(7).for_each(|v| *v = f32::NAN);
                        }
                        let mut want = vec![0.0f64; clen];
                        naive(&mut want, &a, &b, &g, &old);
                        let scale = want.iter().fold(0.0f64, |s, v| s.max(v.abs()));
                        let mut got = old.clone();
                        check(got.len(), a.len(), b.len(), &g).unwrap();
                        pool.install(|| gemm(3, &mut got, &a, &b, &g));
                        for bi in 0..batch {
                            for e in 0..m * n {
                                let i = bi * g.stride_c + e;
                                assert!(
                                    (f64::from(got[i]) - want[i]).abs() <= 1e-5 * scale,
                                    "{g:?}: {} vs {}",
                                    got[i],
                                    want[i]
                                );
                            }
                        }
                        let mut single = old.clone();
                        gemm(1, &mut single, &a, &b, &g);
                        assert_same_bits(&got, &single, "split vs unsplit", &g);
                        let mut exact = old.clone();
                        model(&mut exact, &a, &b, &g);
                        assert_same_bits(&got, &exact, "product vs model", &g);
                        if avx512 {
                            let mut theirs = old.clone();
                            matrixmultiply(&mut theirs, &a, &b, &g);
                            assert_same_bits(&got, &theirs, "product vs matrixmultiply", &g);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rejects_out_of_bounds_views() {
        let g = GemmArgs::single(4, 4, 4, false, false);
        assert!(check(16, 16, 16, &g).is_ok());
        assert!(check(15, 16, 16, &g).is_err());
        let mut g2 = g;
        g2.batch = 2;
        g2.stride_c = 8;
        assert!(check(100, 100, 100, &g2).is_err());
    }

    #[test]
    fn nan_in_inputs_reaches_outputs() {
        let mut a = values(6, 4);
        a[4] = f32::NAN; // row 2 of a [3, 2]
        let b = values(10, 5);
        let g = GemmArgs::single(3, 5, 2, false, false);
        let mut c = vec![0.0; 15];
        gemm(1, &mut c, &a, &b, &g);
        assert!(c[10..15].iter().all(|v| v.is_nan()));
        assert!(c[..10].iter().all(|v| v.is_finite()));
    }
}
