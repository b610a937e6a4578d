//! Multi-head attention with the softmax inside (S3 self-attention of the encoder blocks,
//! S4 cross-attention of the correlation decoder).
//!
//! The core, [`attention_forward`] and [`attention_backward`], works on separate q, k and
//! v tensors `[B, N, D]`. The contract's packed layouts are handled by copying: the
//! self-attention ops unpack q | k | v from `[B, N, 3D]`, the cross-attention ops k | v
//! from `[B, Nk, 2D]`, run the core, and pack the gradients back. Head `h` uses channels
//! `h * head_dim .. (h + 1) * head_dim`; the score scale is `1 / sqrt(head_dim)`.

use cim_spec::backend::AttentionArgs;

/// Softmax of each row of `cols` values, in place: `x_j = exp(x_j - max) / sum exp(...)`.
/// The row maximum is taken so that a NaN anywhere in the row becomes the maximum (a plain
/// `f64::max` would skip it); then every output of that row is NaN, as is every output
/// of a row holding `+inf` (`exp(inf - inf)` is NaN). A row of length 0 is left alone.
pub fn softmax_rows(x: &mut [f64], cols: usize) {
    if cols == 0 {
        return;
    }
    assert_eq!(
        x.len() % cols,
        0,
        "softmax_rows: length is not a multiple of cols"
    );
    for row in x.chunks_mut(cols) {
        let mut max = f64::NEG_INFINITY;
        for &v in row.iter() {
            // Once `max` is NaN no comparison is true, so it stays NaN.
            if v.is_nan() || v > max {
                max = v;
            }
        }
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        for v in row.iter_mut() {
            *v /= sum;
        }
    }
}

/// `1 / sqrt(head_dim)`, the score scale of S3/S4.
pub fn score_scale(head_dim: usize) -> f64 {
    1.0 / (head_dim as f64).sqrt()
}

/// Index of element `(b, t, channel)` of a `[B, N, D]` tensor.
fn at(b: usize, t: usize, channel: usize, tokens: usize, dim: usize) -> usize {
    (b * tokens + t) * dim + channel
}

/// Index of element `(b, h, i, j)` of a `[B, H, Nq, Nk]` tensor.
fn at4(b: usize, h: usize, i: usize, j: usize, args: &AttentionArgs) -> usize {
    ((b * args.heads + h) * args.q_len + i) * args.kv_len + j
}

/// Attention on separate tensors: `q` `[B, Nq, D]`, `k` and `v` `[B, Nk, D]`. For each
/// batch `b` and head `h`: `probs[b,h,i,:] = softmax(scale q_i . k_j over j)` and
/// `out[b, i, h*hd + c] = sum_j probs[b,h,i,j] v[b, j, h*hd + c]`. Writes `out` and
/// `probs` `[B, H, Nq, Nk]`.
pub fn attention_forward(
    out: &mut [f64],
    probs: &mut [f64],
    q: &[f64],
    k: &[f64],
    v: &[f64],
    args: &AttentionArgs,
) {
    let (nq, nk, hd) = (args.q_len, args.kv_len, args.head_dim);
    let dim = args.heads * hd;
    assert_eq!(q.len(), args.batch * nq * dim, "attention_forward: q");
    assert_eq!(k.len(), args.batch * nk * dim, "attention_forward: k");
    assert_eq!(v.len(), args.batch * nk * dim, "attention_forward: v");
    assert_eq!(out.len(), args.batch * nq * dim, "attention_forward: out");
    assert_eq!(
        probs.len(),
        args.batch * args.heads * nq * nk,
        "attention_forward: probs"
    );
    let scale = score_scale(hd);
    for b in 0..args.batch {
        for h in 0..args.heads {
            for i in 0..nq {
                // Scores of query i against every key, then their softmax.
                let mut row = vec![0.0; nk];
                for j in 0..nk {
                    let mut dot = 0.0;
                    for c in h * hd..(h + 1) * hd {
                        dot += q[at(b, i, c, nq, dim)] * k[at(b, j, c, nk, dim)];
                    }
                    row[j] = scale * dot;
                }
                softmax_rows(&mut row, nk);
                for j in 0..nk {
                    probs[at4(b, h, i, j, args)] = row[j];
                }
                // Probability-weighted sum of the values.
                for c in h * hd..(h + 1) * hd {
                    let mut sum = 0.0;
                    for j in 0..nk {
                        sum += row[j] * v[at(b, j, c, nk, dim)];
                    }
                    out[at(b, i, c, nq, dim)] = sum;
                }
            }
        }
    }
}

/// Backward of [`attention_forward`] from the saved `probs` P, per batch and head:
/// `dP = dout V^T`, `dS = P . (dP - rowsum(dP . P))` (the softmax backward, written to
/// `dscores` `[B, H, Nq, Nk]`), `dq = scale dS K`, `dk = scale dS^T Q`, `dv = P^T dout`.
/// Writes `dq`, `dk`, `dv` and `dscores`.
pub fn attention_backward(
    dq: &mut [f64],
    dk: &mut [f64],
    dv: &mut [f64],
    dscores: &mut [f64],
    dout: &[f64],
    q: &[f64],
    k: &[f64],
    v: &[f64],
    probs: &[f64],
    args: &AttentionArgs,
) {
    let (nq, nk, hd) = (args.q_len, args.kv_len, args.head_dim);
    let dim = args.heads * hd;
    let p_len = args.batch * args.heads * nq * nk;
    assert_eq!(dq.len(), args.batch * nq * dim, "attention_backward: dq");
    assert_eq!(dk.len(), args.batch * nk * dim, "attention_backward: dk");
    assert_eq!(dv.len(), args.batch * nk * dim, "attention_backward: dv");
    assert_eq!(dscores.len(), p_len, "attention_backward: dscores");
    assert_eq!(
        dout.len(),
        args.batch * nq * dim,
        "attention_backward: dout"
    );
    assert_eq!(q.len(), args.batch * nq * dim, "attention_backward: q");
    assert_eq!(k.len(), args.batch * nk * dim, "attention_backward: k");
    assert_eq!(v.len(), args.batch * nk * dim, "attention_backward: v");
    assert_eq!(probs.len(), p_len, "attention_backward: probs");
    let scale = score_scale(hd);
    for b in 0..args.batch {
        for h in 0..args.heads {
            let channels = h * hd..(h + 1) * hd;
            // dS, one query row at a time.
            for i in 0..nq {
                let mut dp = vec![0.0; nk];
                for j in 0..nk {
                    let mut sum = 0.0;
                    for c in channels.clone() {
                        sum += dout[at(b, i, c, nq, dim)] * v[at(b, j, c, nk, dim)];
                    }
                    dp[j] = sum;
                }
                let mut row_dot = 0.0;
                for j in 0..nk {
                    row_dot += dp[j] * probs[at4(b, h, i, j, args)];
                }
                for j in 0..nk {
                    let p = probs[at4(b, h, i, j, args)];
                    dscores[at4(b, h, i, j, args)] = p * (dp[j] - row_dot);
                }
            }
            // dq = scale dS K.
            for i in 0..nq {
                for c in channels.clone() {
                    let mut sum = 0.0;
                    for j in 0..nk {
                        sum += dscores[at4(b, h, i, j, args)] * k[at(b, j, c, nk, dim)];
                    }
                    dq[at(b, i, c, nq, dim)] = scale * sum;
                }
            }
            // dk = scale dS^T Q and dv = P^T dout.
            for j in 0..nk {
                for c in channels.clone() {
                    let mut sum_k = 0.0;
                    let mut sum_v = 0.0;
                    for i in 0..nq {
                        sum_k += dscores[at4(b, h, i, j, args)] * q[at(b, i, c, nq, dim)];
                        sum_v += probs[at4(b, h, i, j, args)] * dout[at(b, i, c, nq, dim)];
                    }
                    dk[at(b, j, c, nk, dim)] = scale * sum_k;
                    dv[at(b, j, c, nk, dim)] = sum_v;
                }
            }
        }
    }
}

/// Copies part `part` of a packed `[B, N, parts * D]` tensor (q | k | v or k | v along the
/// last axis) into a new `[B, N, D]` one.
pub fn unpack(
    packed: &[f64],
    batch: usize,
    tokens: usize,
    dim: usize,
    parts: usize,
    part: usize,
) -> Vec<f64> {
    assert_eq!(packed.len(), batch * tokens * parts * dim, "unpack: packed");
    let mut out = vec![0.0; batch * tokens * dim];
    for b in 0..batch {
        for t in 0..tokens {
            for c in 0..dim {
                out[at(b, t, c, tokens, dim)] =
                    packed[at(b, t, part * dim + c, tokens, parts * dim)];
            }
        }
    }
    out
}

/// Writes `[B, N, D]` `data` into part `part` of a packed `[B, N, parts * D]` tensor.
pub fn pack(
    packed: &mut [f64],
    data: &[f64],
    batch: usize,
    tokens: usize,
    dim: usize,
    parts: usize,
    part: usize,
) {
    assert_eq!(packed.len(), batch * tokens * parts * dim, "pack: packed");
    assert_eq!(data.len(), batch * tokens * dim, "pack: data");
    for b in 0..batch {
        for t in 0..tokens {
            for c in 0..dim {
                packed[at(b, t, part * dim + c, tokens, parts * dim)] =
                    data[at(b, t, c, tokens, dim)];
            }
        }
    }
}

/// Implements [`cim_spec::backend::Attention::self_attention_forward`]: attention over packed `qkv`
/// `[B, N, 3D]` (q | k | v). Writes `out` `[B, N, D]` and `probs` `[B, H, N, N]`.
pub fn self_attention_forward(
    out: &mut [f64],
    probs: &mut [f64],
    qkv: &[f64],
    args: &AttentionArgs,
) {
    assert_eq!(
        args.q_len, args.kv_len,
        "self_attention_forward: q_len != kv_len"
    );
    let (batch, n, dim) = (args.batch, args.q_len, args.heads * args.head_dim);
    let q = unpack(qkv, batch, n, dim, 3, 0);
    let k = unpack(qkv, batch, n, dim, 3, 1);
    let v = unpack(qkv, batch, n, dim, 3, 2);
    attention_forward(out, probs, &q, &k, &v, args);
}

/// Implements [`cim_spec::backend::Attention::self_attention_backward`]: writes `dqkv` `[B, N, 3D]`
/// (dq | dk | dv) and the score gradient dS into `scratch` `[B, H, N, N]`.
pub fn self_attention_backward(
    dqkv: &mut [f64],
    scratch: &mut [f64],
    dout: &[f64],
    qkv: &[f64],
    probs: &[f64],
    args: &AttentionArgs,
) {
    assert_eq!(
        args.q_len, args.kv_len,
        "self_attention_backward: q_len != kv_len"
    );
    let (batch, n, dim) = (args.batch, args.q_len, args.heads * args.head_dim);
    let q = unpack(qkv, batch, n, dim, 3, 0);
    let k = unpack(qkv, batch, n, dim, 3, 1);
    let v = unpack(qkv, batch, n, dim, 3, 2);
    let mut dq = vec![0.0; q.len()];
    let mut dk = vec![0.0; k.len()];
    let mut dv = vec![0.0; v.len()];
    attention_backward(
        &mut dq, &mut dk, &mut dv, scratch, dout, &q, &k, &v, probs, args,
    );
    pack(dqkv, &dq, batch, n, dim, 3, 0);
    pack(dqkv, &dk, batch, n, dim, 3, 1);
    pack(dqkv, &dv, batch, n, dim, 3, 2);
}

/// Implements [`cim_spec::backend::Attention::cross_attention_forward`]: queries `q` `[B, Nq, D]`
/// against packed `kv` `[B, Nk, 2D]` (k | v). Writes `out` `[B, Nq, D]` and `probs`
/// `[B, H, Nq, Nk]`.
pub fn cross_attention_forward(
    out: &mut [f64],
    probs: &mut [f64],
    q: &[f64],
    kv: &[f64],
    args: &AttentionArgs,
) {
    let (batch, nk, dim) = (args.batch, args.kv_len, args.heads * args.head_dim);
    let k = unpack(kv, batch, nk, dim, 2, 0);
    let v = unpack(kv, batch, nk, dim, 2, 1);
    attention_forward(out, probs, q, &k, &v, args);
}

/// Implements [`cim_spec::backend::Attention::cross_attention_backward`]: writes `dq` `[B, Nq, D]`,
/// `dkv` `[B, Nk, 2D]` (dk | dv) and dS into `scratch` `[B, H, Nq, Nk]`.
pub fn cross_attention_backward(
    dq: &mut [f64],
    dkv: &mut [f64],
    scratch: &mut [f64],
    dout: &[f64],
    q: &[f64],
    kv: &[f64],
    probs: &[f64],
    args: &AttentionArgs,
) {
    let (batch, nk, dim) = (args.batch, args.kv_len, args.heads * args.head_dim);
    let k = unpack(kv, batch, nk, dim, 2, 0);
    let v = unpack(kv, batch, nk, dim, 2, 1);
    let mut dk = vec![0.0; k.len()];
    let mut dv = vec![0.0; v.len()];
    attention_backward(dq, &mut dk, &mut dv, scratch, dout, q, &k, &v, probs, args);
    pack(dkv, &dk, batch, nk, dim, 2, 0);
    pack(dkv, &dv, batch, nk, dim, 2, 1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{fd_check, rand_vec, rng, weighted_sum};

    #[test]
    fn softmax_of_a_row_by_hand() {
        let mut x = [1.0, 2.0, 3.0, 0.0, 0.0, 0.0];
        softmax_rows(&mut x, 3);
        // exp([-2, -1, 0]) / (1 + e^-1 + e^-2).
        let expected = [
            0.090_030_573_170_380_46,
            0.244_728_471_054_797_64,
            0.665_240_955_774_821_9,
        ];
        for (v, e) in x[..3].iter().zip(expected) {
            assert!((v - e).abs() < 1e-15, "{v} vs {e}");
        }
        assert_eq!(x[3..], [1.0 / 3.0; 3]);
        // Large values do not overflow.
        let mut big = [1000.0, 1000.0];
        softmax_rows(&mut big, 2);
        assert_eq!(big, [0.5, 0.5]);
    }

    #[test]
    fn softmax_nan_or_inf_poisons_its_row_only() {
        for bad in [f64::NAN, f64::INFINITY] {
            for pos in 0..3 {
                let mut x = [0.5, -1.0, 2.0, 0.1, 0.2, 0.3];
                x[pos] = bad;
                softmax_rows(&mut x, 3);
                assert!(x[..3].iter().all(|v| v.is_nan()), "{bad} at {pos}: {x:?}");
                assert!(x[3..].iter().all(|v| v.is_finite()));
            }
        }
    }

    fn args(
        batch: usize,
        q_len: usize,
        kv_len: usize,
        heads: usize,
        head_dim: usize,
    ) -> AttentionArgs {
        AttentionArgs {
            batch,
            q_len,
            kv_len,
            heads,
            head_dim,
        }
    }

    #[test]
    fn one_head_by_hand() {
        // One query, two keys, head_dim 1: scores = [q k0, q k1] (scale 1).
        let a = args(1, 1, 2, 1, 1);
        let (q, kv) = ([2.0], [0.0, 10.0, 1.0, 20.0]); // k = [0, 1], v = [10, 20]
        let (mut out, mut probs) = ([0.0], [0.0; 2]);
        cross_attention_forward(&mut out, &mut probs, &q, &kv, &a);
        let p1 = 2.0f64.exp() / (1.0 + 2.0f64.exp());
        assert!((probs[1] - p1).abs() < 1e-15 && (probs[0] - (1.0 - p1)).abs() < 1e-15);
        assert!((out[0] - (10.0 * (1.0 - p1) + 20.0 * p1)).abs() < 1e-13);
    }

    #[test]
    fn self_attention_backward_matches_finite_differences() {
        let a = args(2, 3, 3, 2, 2);
        let dim = a.heads * a.head_dim;
        let mut r = rng(300);
        let qkv: Vec<f64> = rand_vec(&mut r, a.batch * a.q_len * 3 * dim)
            .iter()
            .map(|v| 1.5 * v)
            .collect();
        let w = rand_vec(&mut r, a.batch * a.q_len * dim);
        let p_len = a.batch * a.heads * a.q_len * a.kv_len;
        let f = |qkv: &[f64]| {
            let (mut out, mut probs) = (vec![0.0; w.len()], vec![0.0; p_len]);
            self_attention_forward(&mut out, &mut probs, qkv, &a);
            weighted_sum(&w, &out)
        };
        let (mut out, mut probs) = (vec![0.0; w.len()], vec![0.0; p_len]);
        self_attention_forward(&mut out, &mut probs, &qkv, &a);
        let mut dqkv = vec![f64::NAN; qkv.len()];
        let mut scratch = vec![f64::NAN; p_len];
        self_attention_backward(&mut dqkv, &mut scratch, &w, &qkv, &probs, &a);
        fd_check(f, &qkv, &dqkv);
        // Each probability row sums to 1, so each row of dS sums to 0.
        for row in scratch.chunks(a.kv_len) {
            assert!(row.iter().sum::<f64>().abs() < 1e-14);
        }
    }

    #[test]
    fn cross_attention_backward_matches_finite_differences() {
        let a = args(2, 3, 4, 2, 3);
        let dim = a.heads * a.head_dim;
        let mut r = rng(301);
        let q = rand_vec(&mut r, a.batch * a.q_len * dim);
        let kv = rand_vec(&mut r, a.batch * a.kv_len * 2 * dim);
        let w = rand_vec(&mut r, q.len());
        let p_len = a.batch * a.heads * a.q_len * a.kv_len;
        let f = |x: &[f64]| {
            let (q, kv) = x.split_at(w.len());
            let (mut out, mut probs) = (vec![0.0; w.len()], vec![0.0; p_len]);
            cross_attention_forward(&mut out, &mut probs, q, kv, &a);
            weighted_sum(&w, &out)
        };
        let (mut out, mut probs) = (vec![0.0; w.len()], vec![0.0; p_len]);
        cross_attention_forward(&mut out, &mut probs, &q, &kv, &a);
        let mut dq = vec![f64::NAN; q.len()];
        let mut dkv = vec![f64::NAN; kv.len()];
        let mut scratch = vec![f64::NAN; p_len];
        cross_attention_backward(&mut dq, &mut dkv, &mut scratch, &w, &q, &kv, &probs, &a);
        let x: Vec<f64> = q.iter().chain(&kv).copied().collect();
        let grad: Vec<f64> = dq.iter().chain(&dkv).copied().collect();
        fd_check(f, &x, &grad);
    }

    #[test]
    fn nan_reaches_what_depends_on_it() {
        let a = args(2, 3, 3, 2, 2);
        let dim = a.heads * a.head_dim;
        let mut r = rng(302);
        let clean = rand_vec(&mut r, a.batch * a.q_len * 3 * dim);
        let p_len = a.batch * a.heads * a.q_len * a.kv_len;
        let run = |qkv: &[f64]| {
            let (mut out, mut probs) = (vec![0.0; a.batch * a.q_len * dim], vec![0.0; p_len]);
            self_attention_forward(&mut out, &mut probs, qkv, &a);
            out
        };
        let out_at = |out: &[f64], b: usize, i: usize, c: usize| out[(b * a.q_len + i) * dim + c];
        // A NaN in query 1 of batch 1, head 0: that query's head-0 outputs only.
        let mut qkv = clean.clone();
        qkv[(a.q_len + 1) * 3 * dim] = f64::NAN;
        let out = run(&qkv);
        for b in 0..a.batch {
            for i in 0..a.q_len {
                for c in 0..dim {
                    let hit = b == 1 && i == 1 && c < a.head_dim;
                    assert_eq!(out_at(&out, b, i, c).is_nan(), hit, "q: ({b},{i},{c})");
                }
            }
        }
        // A NaN in key 2 of batch 0, head 1: every head-1 output of batch 0.
        let mut qkv = clean.clone();
        qkv[2 * 3 * dim + dim + a.head_dim] = f64::NAN;
        let out = run(&qkv);
        for b in 0..a.batch {
            for i in 0..a.q_len {
                for c in 0..dim {
                    let hit = b == 0 && c >= a.head_dim;
                    assert_eq!(out_at(&out, b, i, c).is_nan(), hit, "k: ({b},{i},{c})");
                }
            }
        }
        // A NaN in value channel 3 of token 0, batch 0: channel 3 of every batch-0 output.
        let mut qkv = clean.clone();
        qkv[2 * dim + 3] = f64::NAN;
        let out = run(&qkv);
        for b in 0..a.batch {
            for i in 0..a.q_len {
                for c in 0..dim {
                    assert_eq!(
                        out_at(&out, b, i, c).is_nan(),
                        b == 0 && c == 3,
                        "v: ({b},{i},{c})"
                    );
                }
            }
        }
    }
}
