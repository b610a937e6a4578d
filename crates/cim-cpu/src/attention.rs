//! Multi-head self- and cross-attention (S3, S4), one task per sequence.
//!
//! Each head's products are single-threaded [`crate::sgemm`] calls that read q, k and v
//! in place through row strides (no copies out of the packed qkv or kv tensors), with
//! the softmax (and its backward) on the score rows in between. (Plain loops of dot
//! products over `head_dim` were tried for these short sequences and were 2-3x slower:
//! the per-pair horizontal sums cost more than the packing.) A task owns
//! its sequence's slices of every output (and of `probs` and `scratch`), so no element
//! is written by two tasks and all sums run in a fixed order: the results do not depend
//! on scheduling. Self-attention is cross-attention whose q, k and v are the three
//! thirds of one tensor.

use cim_spec::backend::{Attention, AttentionArgs};
use cim_spec::error::HostError;
use rayon::prelude::*;

use crate::Cpu;
use crate::math;
use crate::par::multiversion;
use crate::sgemm::{Shape, Strided, sgemm};

/// Where one operand lives inside a sequence's slice: channel c of head h of token t is
/// at `t * ld + off + h * head_dim + c`.
#[derive(Clone, Copy)]
struct Operand {
    off: usize,
    ld: usize,
}

/// The layout of one attention call (per sequence).
#[derive(Clone, Copy)]
struct Layout {
    q: Operand,
    k: Operand,
    v: Operand,
    /// Elements per sequence of the q tensor and of the kv tensor.
    q_seq: usize,
    kv_seq: usize,
    args: AttentionArgs,
}

impl Layout {
    fn self_attention(args: &AttentionArgs) -> Self {
        let d = args.heads * args.head_dim;
        let op = |off| Operand { off, ld: 3 * d };
        Layout {
            q: op(0),
            k: op(d),
            v: op(2 * d),
            q_seq: args.q_len * 3 * d,
            kv_seq: args.kv_len * 3 * d,
            args: *args,
        }
    }

    fn cross_attention(args: &AttentionArgs) -> Self {
        let d = args.heads * args.head_dim;
        Layout {
            q: Operand { off: 0, ld: d },
            k: Operand { off: 0, ld: 2 * d },
            v: Operand { off: d, ld: 2 * d },
            q_seq: args.q_len * d,
            kv_seq: args.kv_len * 2 * d,
            args: *args,
        }
    }

    fn dim(&self) -> usize {
        self.args.heads * self.args.head_dim
    }

    /// Elements of `probs` per sequence.
    fn probs_seq(&self) -> usize {
        self.args.heads * self.args.q_len * self.args.kv_len
    }
}

/// Row-wise softmax in place over rows of `cols`. The rows are short (17 keys in the
/// exemplar encoder and the decoder), so the exponentials run over the whole block at
/// once, in full vectors, between a per-row max pass and a per-row sum pass. A NaN
/// anywhere in a row makes the whole row NaN (through the row sum).
#[inline(always)]
fn softmax_rows(p: &mut [f32], cols: usize) {
    for r in p.chunks_exact_mut(cols) {
        let mut max = f32::NEG_INFINITY;
        for &v in r.iter() {
            max = if v > max { v } else { max };
        }
        r.iter_mut().for_each(|v| *v -= max);
    }
    let (body, tail) = p.as_chunks_mut::<16>();
    for c in body {
        for v in c.iter_mut() {
            *v = math::exp(*v);
        }
    }
    for v in tail {
        *v = math::exp(*v);
    }
    for r in p.chunks_exact_mut(cols) {
        let mut sum = 0.0f32;
        for &v in r.iter() {
            sum += v;
        }
        let inv = 1.0 / sum;
        r.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Softmax backward in place over rows of `cols`: `ds[j] = p[j] (dp[j] - sum_j p[j]
/// dp[j])`, with `dp` held in `ds` on entry. In f64: `dp - sum p dp` cancels when the
/// row's `dp` are alike, and the rows are short, so the wider arithmetic costs little.
#[inline(always)]
fn softmax_backward_rows(ds: &mut [f32], p: &[f32], cols: usize) {
    for (d, pr) in ds.chunks_exact_mut(cols).zip(p.chunks_exact(cols)) {
        let mut dot = 0.0f64;
        for (&a, &b) in d.iter().zip(pr) {
            dot += f64::from(a) * f64::from(b);
        }
        for (a, &b) in d.iter_mut().zip(pr) {
            *a = (f64::from(b) * (f64::from(*a) - dot)) as f32;
        }
    }
}

multiversion! {
    fn softmax(p: &mut [f32], cols: usize) {
        softmax_rows(p, cols)
    }
}

multiversion! {
    fn softmax_backward(ds: &mut [f32], p: &[f32], cols: usize) {
        softmax_backward_rows(ds, p, cols)
    }
}

/// A matrix operand of one head: its first element and its row stride, inside a
/// sequence's slice.
#[derive(Clone, Copy)]
struct Mat {
    at: usize,
    ld: usize,
}

impl Mat {
    fn of(op: Operand, h: usize, hd: usize) -> Self {
        Mat {
            at: op.off + h * hd,
            ld: op.ld,
        }
    }
}

/// `C[m,n] = alpha op(A) op(B)` (written) with A `[m,k]` (`[k,m]` if `ta`) and B `[k,n]`
/// (`[n,k]` if `tb`) read from slices through row strides, C written into `c` with row
/// stride `c_mat.ld`. Checks every extent against its slice before the product.
#[allow(clippy::too_many_arguments)]
fn small_gemm(
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: &[f32],
    a_mat: Mat,
    ta: bool,
    b: &[f32],
    b_mat: Mat,
    tb: bool,
    c: &mut [f32],
    c_mat: Mat,
) {
    // Extent of a row-strided [rows, cols] matrix.
    let span = |mat: Mat, rows: usize, cols: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            mat.at + (rows - 1) * mat.ld + cols
        }
    };
    let (ar, ac) = if ta { (k, m) } else { (m, k) };
    let (br, bc) = if tb { (n, k) } else { (k, n) };
    assert!(span(a_mat, ar, ac) <= a.len(), "attention: A out of bounds");
    assert!(span(b_mat, br, bc) <= b.len(), "attention: B out of bounds");
    assert!(span(c_mat, m, n) <= c.len(), "attention: C out of bounds");
    assert!(
        ac <= a_mat.ld && bc <= b_mat.ld && n <= c_mat.ld,
        "attention: overlapping rows"
    );
    let (rs, cs) = if ta { (1, a_mat.ld) } else { (a_mat.ld, 1) };
    let a_op = Strided {
        ptr: a[a_mat.at..].as_ptr(),
        rs,
        cs,
    };
    let (rs, cs) = if tb { (1, b_mat.ld) } else { (b_mat.ld, 1) };
    let b_op = Strided {
        ptr: b[b_mat.at..].as_ptr(),
        rs,
        cs,
    };
    let c0 = c[c_mat.at..].as_mut_ptr();
    // SAFETY: the asserts above show that every element of A, B and C (rows of their
    // strides, which are at least as long as the rows, so rows do not overlap) lies
    // inside its slice; `c` is borrowed exclusively and A, B are shared borrows of other
    // slices, so C overlaps neither. With beta 0 C is only written.
    unsafe {
        sgemm(Shape { m, n, k }, alpha, a_op, b_op, 0.0, c0, c_mat.ld);
    }
}

/// Forward of one sequence: writes `out` (`[Nq, D]`) and `probs` (`[H, Nq, Nk]`).
fn forward_sequence(out: &mut [f32], probs: &mut [f32], q: &[f32], kv: &[f32], lay: &Layout) {
    let a = lay.args;
    let (nq, nk, hd, d) = (a.q_len, a.kv_len, a.head_dim, lay.dim());
    let scale = 1.0 / (hd as f32).sqrt();
    let p_mat = Mat { at: 0, ld: nk };
    for h in 0..a.heads {
        let p = &mut probs[h * nq * nk..(h + 1) * nq * nk];
        // S = scale Q K^T, softmax, O = P V.
        let (qm, km, vm) = (
            Mat::of(lay.q, h, hd),
            Mat::of(lay.k, h, hd),
            Mat::of(lay.v, h, hd),
        );
        small_gemm((nq, nk, hd), scale, q, qm, false, kv, km, true, p, p_mat);
        softmax(p, nk);
        let om = Mat { at: h * hd, ld: d };
        small_gemm((nq, hd, nk), 1.0, p, p_mat, false, kv, vm, false, out, om);
    }
}

/// Where the gradients of one sequence go: the packed `dqkv` of self-attention, or the
/// separate `dq` and `dkv` of cross-attention.
enum Grads<'a> {
    Packed(&'a mut [f32]),
    Split(&'a mut [f32], &'a mut [f32]),
}

impl Grads<'_> {
    fn q(&mut self) -> &mut [f32] {
        match self {
            Grads::Packed(g) | Grads::Split(g, _) => g,
        }
    }

    fn kv(&mut self) -> &mut [f32] {
        match self {
            Grads::Packed(g) | Grads::Split(_, g) => g,
        }
    }
}

/// Backward of one sequence: writes its q, k and v gradients and overwrites `scratch`
/// (`[H, Nq, Nk]`) with the score gradients.
#[allow(clippy::too_many_arguments)]
fn backward_sequence(
    grads: &mut Grads<'_>,
    scratch: &mut [f32],
    dout: &[f32],
    q: &[f32],
    kv: &[f32],
    probs: &[f32],
    lay: &Layout,
) {
    let a = lay.args;
    let (nq, nk, hd, d) = (a.q_len, a.kv_len, a.head_dim, lay.dim());
    let scale = 1.0 / (hd as f32).sqrt();
    let s_mat = Mat { at: 0, ld: nk };
    for h in 0..a.heads {
        let s = &mut scratch[h * nq * nk..(h + 1) * nq * nk];
        let p = &probs[h * nq * nk..(h + 1) * nq * nk];
        let (qm, km, vm) = (
            Mat::of(lay.q, h, hd),
            Mat::of(lay.k, h, hd),
            Mat::of(lay.v, h, hd),
        );
        let dom = Mat { at: h * hd, ld: d };
        // dP = dO V^T, then dS = P (dP - rowsum(P dP)) in place.
        small_gemm((nq, nk, hd), 1.0, dout, dom, false, kv, vm, true, s, s_mat);
        softmax_backward(s, p, nk);
        // dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO.
        small_gemm(
            (nq, hd, nk),
            scale,
            s,
            s_mat,
            false,
            kv,
            km,
            false,
            grads.q(),
            qm,
        );
        small_gemm(
            (nk, hd, nq),
            scale,
            s,
            s_mat,
            true,
            q,
            qm,
            false,
            grads.kv(),
            km,
        );
        small_gemm(
            (nk, hd, nq),
            1.0,
            p,
            s_mat,
            true,
            dout,
            dom,
            false,
            grads.kv(),
            vm,
        );
    }
}

/// Checks the slices of one call against its layout (panics on a contract violation).
fn assert_lengths(lay: &Layout, q: usize, kv: usize, out: usize, probs: usize) {
    let b = lay.args.batch;
    assert!(q == b * lay.q_seq, "attention: q has the wrong length");
    assert!(kv == b * lay.kv_seq, "attention: kv has the wrong length");
    assert!(
        out == b * lay.args.q_len * lay.dim(),
        "attention: out has the wrong length"
    );
    assert!(
        probs == b * lay.probs_seq(),
        "attention: probs has the wrong length"
    );
}

fn forward(cpu: &Cpu, lay: &Layout, out: &mut [f32], probs: &mut [f32], q: &[f32], kv: &[f32]) {
    let a = lay.args;
    assert!(
        a.heads > 0 && a.head_dim > 0 && a.kv_len > 0,
        "attention: empty heads"
    );
    assert_lengths(lay, q.len(), kv.len(), out.len(), probs.len());
    if a.batch == 0 || a.q_len == 0 {
        return;
    }
    let d = lay.dim();
    cpu.run(|| {
        out.par_chunks_mut(a.q_len * d)
            .zip(probs.par_chunks_mut(lay.probs_seq()))
            .zip(q.par_chunks(lay.q_seq).zip(kv.par_chunks(lay.kv_seq)))
            .for_each(|((o, p), (qb, kvb))| forward_sequence(o, p, qb, kvb, lay));
    });
}

#[allow(clippy::too_many_arguments)]
fn backward(
    cpu: &Cpu,
    lay: &Layout,
    dq: &mut [f32],
    dkv: Option<&mut [f32]>,
    scratch: &mut [f32],
    dout: &[f32],
    q: &[f32],
    kv: &[f32],
    probs: &[f32],
) {
    let a = lay.args;
    assert!(
        a.heads > 0 && a.head_dim > 0 && a.kv_len > 0,
        "attention: empty heads"
    );
    assert_lengths(lay, q.len(), kv.len(), dout.len(), probs.len());
    assert_eq!(
        scratch.len(),
        probs.len(),
        "attention: scratch has the wrong length"
    );
    assert_eq!(dq.len(), q.len(), "attention: dq has the wrong length");
    if let Some(g) = &dkv {
        assert_eq!(g.len(), kv.len(), "attention: dkv has the wrong length");
    }
    if a.batch == 0 {
        return;
    }
    let d = lay.dim();
    if a.q_len == 0 {
        // No queries: nothing flows back to the keys and values.
        if let Some(g) = dkv {
            g.fill(0.0);
        }
        return;
    }
    let inputs = dout
        .par_chunks(a.q_len * d)
        .zip(q.par_chunks(lay.q_seq))
        .zip(kv.par_chunks(lay.kv_seq))
        .zip(probs.par_chunks(lay.probs_seq()));
    let scratch = scratch.par_chunks_mut(lay.probs_seq());
    cpu.run(|| match dkv {
        None => dq
            .par_chunks_mut(lay.q_seq)
            .zip(scratch)
            .zip(inputs)
            .for_each(|((g, s), (((db, qb), kvb), pb))| {
                backward_sequence(&mut Grads::Packed(g), s, db, qb, kvb, pb, lay)
            }),
        Some(dkv) => dq
            .par_chunks_mut(lay.q_seq)
            .zip(dkv.par_chunks_mut(lay.kv_seq))
            .zip(scratch)
            .zip(inputs)
            .for_each(|(((gq, gkv), s), (((db, qb), kvb), pb))| {
                backward_sequence(&mut Grads::Split(gq, gkv), s, db, qb, kvb, pb, lay)
            }),
    });
}

impl Attention for Cpu {
    fn self_attention_forward(
        &self,
        out: &mut [f32],
        probs: &mut [f32],
        qkv: &[f32],
        args: &AttentionArgs,
    ) -> Result<(), HostError> {
        assert_eq!(args.q_len, args.kv_len, "self-attention: q_len != kv_len");
        forward(self, &Layout::self_attention(args), out, probs, qkv, qkv);
        Ok(())
    }

    fn self_attention_backward(
        &self,
        dqkv: &mut [f32],
        scratch: &mut [f32],
        dout: &[f32],
        qkv: &[f32],
        probs: &[f32],
        args: &AttentionArgs,
    ) -> Result<(), HostError> {
        assert_eq!(args.q_len, args.kv_len, "self-attention: q_len != kv_len");
        let lay = Layout::self_attention(args);
        backward(self, &lay, dqkv, None, scratch, dout, qkv, qkv, probs);
        Ok(())
    }

    fn cross_attention_forward(
        &self,
        out: &mut [f32],
        probs: &mut [f32],
        q: &[f32],
        kv: &[f32],
        args: &AttentionArgs,
    ) -> Result<(), HostError> {
        forward(self, &Layout::cross_attention(args), out, probs, q, kv);
        Ok(())
    }

    fn cross_attention_backward(
        &self,
        dq: &mut [f32],
        dkv: &mut [f32],
        scratch: &mut [f32],
        dout: &[f32],
        q: &[f32],
        kv: &[f32],
        probs: &[f32],
        args: &AttentionArgs,
    ) -> Result<(), HostError> {
        let lay = Layout::cross_attention(args);
        backward(self, &lay, dq, Some(dkv), scratch, dout, q, kv, probs);
        Ok(())
    }
}
