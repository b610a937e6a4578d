//! Matrix products: the linear layers of S3/S4 (`trans_b` with an `[out, in]` weight, S1),
//! the patch embedding after `patchify`, and the predictor's 1x1 conv (S4) as a batched,
//! strided product. One function, [`gemm`], spelled out as the triple loop of its
//! definition; the backward of a GEMM is itself GEMMs (see the tests).

use cim_spec::backend::GemmArgs;

/// Element `(row, inner)` of `op(A)` for the matrix starting at `offset`: A is stored
/// `[m, k]`, or `[k, m]` when `trans_a`.
fn op_a(a: &[f64], args: &GemmArgs, offset: usize, row: usize, inner: usize) -> f64 {
    if args.trans_a {
        a[offset + inner * args.m + row]
    } else {
        a[offset + row * args.k + inner]
    }
}

/// Element `(inner, col)` of `op(B)` for the matrix starting at `offset`: B is stored
/// `[k, n]`, or `[n, k]` when `trans_b`.
fn op_b(b: &[f64], args: &GemmArgs, offset: usize, inner: usize, col: usize) -> f64 {
    if args.trans_b {
        b[offset + col * args.k + inner]
    } else {
        b[offset + inner * args.n + col]
    }
}

/// Elements spanned by `batch` matrices of `size` elements placed `stride` apart.
fn span(batch: usize, stride: usize, size: usize) -> usize {
    if batch == 0 {
        0
    } else {
        (batch - 1) * stride + size
    }
}

/// Implements [`cim_spec::backend::Gemm::gemm`]: for each `b < batch`,
/// `C_b = alpha * op(A_b) op(B_b) + beta * C_b` with `A_b = a[b * stride_a ..]`,
/// `B_b = b[b * stride_b ..]` (a stride of 0 broadcasts one matrix) and
/// `C_b = c[b * stride_c ..]`. With `beta == 0` every element of each `C_b` is written and
/// its old value (NaN included) is never read; otherwise it is scaled and accumulated.
/// Elements of `c` between the matrices (when `stride_c > m n`) are left untouched.
/// The dot products run over `k` in index order in f64.
pub fn gemm(c: &mut [f64], a: &[f64], b: &[f64], args: &GemmArgs) {
    let (m, n, k) = (args.m, args.n, args.k);
    assert_eq!(a.len(), span(args.batch, args.stride_a, m * k), "gemm: a");
    assert_eq!(b.len(), span(args.batch, args.stride_b, k * n), "gemm: b");
    assert_eq!(c.len(), span(args.batch, args.stride_c, m * n), "gemm: c");
    let alpha = f64::from(args.alpha);
    let beta = f64::from(args.beta);
    for batch in 0..args.batch {
        let offset_a = batch * args.stride_a;
        let offset_b = batch * args.stride_b;
        let offset_c = batch * args.stride_c;
        for i in 0..m {
            for j in 0..n {
                let mut dot = 0.0;
                for p in 0..k {
                    dot += op_a(a, args, offset_a, i, p) * op_b(b, args, offset_b, p, j);
                }
                let cij = &mut c[offset_c + i * n + j];
                *cij = if beta == 0.0 {
                    alpha * dot
                } else {
                    alpha * dot + beta * *cij
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{fd_check, rand_vec, rng};

    #[test]
    fn tiny_products_by_hand() {
        // [[1,2],[3,4]] x [[5,6],[7,8]] = [[19,22],[43,50]].
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [5.0, 6.0, 7.0, 8.0];
        let mut c = [0.0; 4];
        gemm(&mut c, &a, &b, &GemmArgs::single(2, 2, 2, false, false));
        assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
        // A^T B = [[1,3],[2,4]] x B = [[26,30],[38,44]].
        gemm(&mut c, &a, &b, &GemmArgs::single(2, 2, 2, true, false));
        assert_eq!(c, [26.0, 30.0, 38.0, 44.0]);
        // A B^T = [[1,2],[3,4]] x [[5,7],[6,8]] = [[17,23],[39,53]].
        gemm(&mut c, &a, &b, &GemmArgs::single(2, 2, 2, false, true));
        assert_eq!(c, [17.0, 23.0, 39.0, 53.0]);
        // A^T B^T = (B A)^T; B A = [[23,34],[31,46]].
        gemm(&mut c, &a, &b, &GemmArgs::single(2, 2, 2, true, true));
        assert_eq!(c, [23.0, 31.0, 34.0, 46.0]);
        // A non-square one: [1x3] x [3x2] with alpha 2 and beta 0.5 over C = [10, 20].
        let mut c = [10.0, 20.0];
        let args = GemmArgs {
            alpha: 2.0,
            beta: 0.5,
            ..GemmArgs::single(1, 2, 3, false, false)
        };
        gemm(
            &mut c,
            &[1.0, 2.0, 3.0],
            &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0],
            &args,
        );
        // product [4, 5]: 2*4 + 5 = 13, 2*5 + 10 = 20.
        assert_eq!(c, [13.0, 20.0]);
    }

    #[test]
    fn beta_zero_ignores_nan_in_c() {
        let mut r = rng(1);
        let a = rand_vec(&mut r, 6);
        let b = rand_vec(&mut r, 12);
        let mut c = vec![f64::NAN; 8];
        gemm(&mut c, &a, &b, &GemmArgs::single(2, 4, 3, false, false));
        assert!(c.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn beta_one_accumulates_and_gaps_are_untouched() {
        let mut r = rng(2);
        let a = rand_vec(&mut r, 2 * 6);
        let b = rand_vec(&mut r, 12);
        let args = GemmArgs {
            batch: 2,
            beta: 1.0,
            stride_a: 6,
            stride_b: 0,
            stride_c: 8 + 3,
            ..GemmArgs::single(2, 4, 3, false, false)
        };
        let mut c = vec![0.0; 8 + 3 + 8];
        c[8..11].fill(f64::NAN);
        gemm(&mut c, &a, &b, &args);
        let once = c.clone();
        gemm(&mut c, &a, &b, &args);
        for (i, (&twice, &one)) in c.iter().zip(&once).enumerate() {
            if (8..11).contains(&i) {
                assert!(twice.is_nan(), "gap element {i} was written");
            } else {
                assert_eq!(twice, 2.0 * one);
            }
        }
    }

    #[test]
    fn nan_reaches_the_row_and_column_it_feeds() {
        let (m, n, k) = (3, 4, 5);
        let mut r = rng(3);
        let mut a = rand_vec(&mut r, m * k);
        let mut b = rand_vec(&mut r, k * n);
        a[k + 2] = f64::NAN; // row 1 of A
        let mut c = vec![0.0; m * n];
        gemm(&mut c, &a, &b, &GemmArgs::single(m, n, k, false, false));
        for i in 0..m {
            for j in 0..n {
                assert_eq!(c[i * n + j].is_nan(), i == 1, "A NaN at ({i},{j})");
            }
        }
        a[k + 2] = 0.5;
        b[2 * n + 3] = f64::NAN; // column 3 of B
        gemm(&mut c, &a, &b, &GemmArgs::single(m, n, k, false, false));
        for i in 0..m {
            for j in 0..n {
                assert_eq!(c[i * n + j].is_nan(), j == 3, "B NaN at ({i},{j})");
            }
        }
    }

    /// `C = op(A) op(B)` with the loss `L = sum w . C`: the model's backward computes
    /// `dA` and `dB` with GEMMs (`dC = w`); they must match finite differences of `L`.
    fn check_single_backward(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) {
        let mut r = rng(10 + 2 * trans_a as u64 + trans_b as u64);
        let a = rand_vec(&mut r, m * k);
        let b = rand_vec(&mut r, k * n);
        let w = rand_vec(&mut r, m * n);
        let forward = |x: &[f64]| {
            let mut c = vec![0.0; m * n];
            gemm(
                &mut c,
                &x[..m * k],
                &x[m * k..],
                &GemmArgs::single(m, n, k, trans_a, trans_b),
            );
            c.iter().zip(&w).map(|(c, w)| c * w).sum::<f64>()
        };
        // The backward as the model writes it, one GEMM per gradient, per layout.
        let mut da = vec![0.0; m * k];
        let mut db = vec![0.0; k * n];
        match (trans_a, trans_b) {
            (false, false) => {
                // dA[m,k] = dC B^T, dB[k,n] = A^T dC.
                gemm(&mut da, &w, &b, &GemmArgs::single(m, k, n, false, true));
                gemm(&mut db, &a, &w, &GemmArgs::single(k, n, m, true, false));
            }
            (true, false) => {
                // A stored [k,m]: dA = B dC^T; dB = A dC.
                gemm(&mut da, &b, &w, &GemmArgs::single(k, m, n, false, true));
                gemm(&mut db, &a, &w, &GemmArgs::single(k, n, m, false, false));
            }
            (false, true) => {
                // B stored [n,k] (a linear weight): dA = dC B; dB = dC^T A.
                gemm(&mut da, &w, &b, &GemmArgs::single(m, k, n, false, false));
                gemm(&mut db, &w, &a, &GemmArgs::single(n, k, m, true, false));
            }
            (true, true) => {
                // A stored [k,m], B stored [n,k]: dA = B^T dC^T; dB = dC^T A^T.
                gemm(&mut da, &b, &w, &GemmArgs::single(k, m, n, true, true));
                gemm(&mut db, &w, &a, &GemmArgs::single(n, k, m, true, true));
            }
        }
        let x: Vec<f64> = a.iter().chain(&b).copied().collect();
        let grad: Vec<f64> = da.iter().chain(&db).copied().collect();
        fd_check(forward, &x, &grad);
    }

    #[test]
    fn backward_gemms_match_finite_differences() {
        for trans_a in [false, true] {
            for trans_b in [false, true] {
                check_single_backward(3, 4, 5, trans_a, trans_b);
                check_single_backward(1, 7, 2, trans_a, trans_b);
            }
        }
    }

    /// The predictor's 1x1 conv (S4) as the model runs it: `Y_n [2, P] = W [2, d] X_n [d, P]`
    /// with W broadcast (`stride_a = 0`) and a gap between output maps. Backward:
    /// `dX_n = W^T dY_n` (one batched GEMM, W broadcast) and `dW = sum_n dY_n X_n^T`
    /// (per-map GEMMs with `beta = 1`, accumulating).
    #[test]
    fn batched_strided_backward_matches_finite_differences() {
        let (maps, out_c, d, pixels) = (3, 2, 4, 5);
        let gap = 2;
        let mut r = rng(20);
        let wgt = rand_vec(&mut r, out_c * d);
        let x = rand_vec(&mut r, maps * d * pixels);
        let w_loss = rand_vec(&mut r, maps * (out_c * pixels + gap));
        let fwd_args = GemmArgs {
            batch: maps,
            stride_a: 0,
            stride_b: d * pixels,
            stride_c: out_c * pixels + gap,
            ..GemmArgs::single(out_c, pixels, d, false, false)
        };
        let c_len = (maps - 1) * fwd_args.stride_c + out_c * pixels;
        let forward = |params: &[f64]| {
            let mut c = vec![0.0; c_len];
            gemm(
                &mut c,
                &params[..out_c * d],
                &params[out_c * d..],
                &fwd_args,
            );
            let mut loss = 0.0;
            for n in 0..maps {
                for e in 0..out_c * pixels {
                    let i = n * fwd_args.stride_c + e;
                    loss += w_loss[i] * c[i];
                }
            }
            loss
        };
        let dy = &w_loss[..c_len];
        let mut dx = vec![0.0; maps * d * pixels];
        let dx_args = GemmArgs {
            batch: maps,
            stride_a: 0,
            stride_b: fwd_args.stride_c,
            stride_c: d * pixels,
            ..GemmArgs::single(d, pixels, out_c, true, false)
        };
        gemm(&mut dx, &wgt, dy, &dx_args);
        let mut dw = vec![0.0; out_c * d];
        for n in 0..maps {
            let dy_n = &dy[n * fwd_args.stride_c..n * fwd_args.stride_c + out_c * pixels];
            let x_n = &x[n * d * pixels..(n + 1) * d * pixels];
            let args = GemmArgs {
                beta: 1.0,
                ..GemmArgs::single(out_c, d, pixels, false, true)
            };
            gemm(&mut dw, dy_n, x_n, &args);
        }
        let params: Vec<f64> = wgt.iter().chain(&x).copied().collect();
        let grad: Vec<f64> = dw.iter().chain(&dx).copied().collect();
        fd_check(forward, &params, &grad);
    }
}
