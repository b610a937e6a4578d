//! Batched, strided GEMM on matrixmultiply's packed kernels (AVX-512 or AVX2/FMA, picked
//! at run time), split into tasks on the backend's pool.
//!
//! matrixmultiply was measured against the `gemm` crate (0.19) on this project's shapes
//! (2-core AMD EPYC Zen 5 with AVX-512, both on 2 threads): 300-440 GFLOP/s against
//! 150-250 for `gemm`, whose AVX-512 kernels need a nightly feature; `benches/gemm.rs`
//! prints the current numbers. Its own thread pool is not used (it is global and sized
//! once from an environment variable);
//! instead each product is cut into whole batches and, for large products, into blocks
//! of rows (or of columns when `n > m`, so the larger operand is packed once), each run
//! single-threaded on one task. Block edges fall on multiples of 16, the kernels' tile
//! size, so every element sees the same tile position, the same k-blocking and the same
//! epilogue as in an unsplit call: the bits do not depend on the split or the thread
//! count. With `beta == 0` matrixmultiply never reads C, so old contents (NaN included)
//! are ignored as the contract demands.

use cim_spec::backend::{Gemm, GemmArgs};
use cim_spec::error::{HostError, ShapeError};
use rayon::prelude::*;

use crate::Cpu;
use crate::par::SendPtr;

/// Multiply-adds below which a product is not split further.
const MIN_TASK_MACS: usize = 1 << 18;

/// Alignment of block edges (the largest microkernel tile side).
const TILE: usize = 16;

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
    if k == 0 {
        // The product is empty: C = beta C (written when beta is 0).
        for bi in 0..g.batch {
            let cb = &mut c[bi * g.stride_c..bi * g.stride_c + m * n];
            if g.beta == 0.0 {
                cb.fill(0.0);
            } else {
                cb.iter_mut().for_each(|v| *v *= g.beta);
            }
        }
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
        // so every address matrixmultiply forms is in bounds. Tasks write disjoint
        // blocks of C (distinct batch entries are `stride_c >= m n` apart, distinct
        // blocks of one entry are disjoint rows or columns), A and B are only read, and
        // all slices outlive the parallel loop.
        unsafe {
            let a0 = (ap as *const f32).add(bi * g.stride_a + a_off);
            let b0 = (bp as *const f32).add(bi * g.stride_b + b_off);
            let c0 = cp.get().add(bi * g.stride_c + c_off);
            matrixmultiply::sgemm(
                rows,
                k,
                cols,
                g.alpha,
                a0,
                rsa as isize,
                csa as isize,
                b0,
                rsb as isize,
                csb as isize,
                g.beta,
                c0,
                n as isize,
                1,
            );
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

    #[test]
    fn matches_naive_for_every_layout_and_split() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for &(batch, m, n, k) in &[
            (1, 1, 1, 1),
            (1, 37, 5, 300),
            (1, 200, 90, 64),
            (3, 17, 17, 64),
            (2, 70, 300, 33),
            (1, 600, 40, 700),
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
                        let mut single = old.clone();
                        gemm(1, &mut single, &a, &b, &g);
                        for bi in 0..batch {
                            for e in 0..m * n {
                                let i = bi * g.stride_c + e;
                                assert!(
                                    (f64::from(got[i]) - want[i]).abs() <= 1e-5 * scale,
                                    "{batch} {m} {n} {k} {ta} {tb} {alpha} {beta}: {} vs {}",
                                    got[i],
                                    want[i]
                                );
                            }
                        }
                        for (x, y) in got.iter().zip(&single) {
                            assert_eq!(x.to_bits(), y.to_bits(), "split changed the bits");
                        }
                        // And the same bits as one unsplit matrixmultiply call per entry.
                        let mut whole = old.clone();
                        let (rsa, csa) = if ta { (1, m) } else { (k, 1) };
                        let (rsb, csb) = if tb { (1, k) } else { (n, 1) };
                        for bi in 0..batch {
                            // SAFETY: the matrices of entry `bi` lie inside the vectors.
                            unsafe {
                                matrixmultiply::sgemm(
                                    m,
                                    k,
                                    n,
                                    alpha,
                                    a.as_ptr().add(bi * g.stride_a),
                                    rsa as isize,
                                    csa as isize,
                                    b.as_ptr().add(bi * g.stride_b),
                                    rsb as isize,
                                    csb as isize,
                                    beta,
                                    whole.as_mut_ptr().add(bi * g.stride_c),
                                    n as isize,
                                    1,
                                );
                            }
                        }
                        for (x, y) in got.iter().zip(&whole) {
                            assert_eq!(x.to_bits(), y.to_bits(), "split differs from unsplit");
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
