//! The pre-norm transformer block of S3 (self-attention, encoder) and S4 (cross-attention,
//! decoder): `x += Proj(Attn(LN1(x), ...)); x += FC2(GELU(FC1(LN2(x))))`, forward with the
//! activations the backward needs, and the backward calling the ops in exact reverse
//! order. In the cross block the queries come from `x` and the keys and values from the
//! exemplar tokens `t`, both normalised by the same LN1 (S4). The S4 "conv" correlation
//! option replaces the attention with the depthwise cross-correlation of the two
//! normalised maps, `x += Proj(XCorr(LN1(x), LN1(t)))`, and keeps the rest of the block.

use core::ops::Range;

use alloc::vec::Vec;
use cim_spec::backend::{AttentionArgs, Backend, Role, XcorrArgs};
use cim_spec::ops;

use crate::layout::BlockParams;
use crate::nn::{LN_EPS, Linear, Res, all, all_mut, pair_mut};

/// Sizes of one block application.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockDims {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence of the stream `x`.
    pub tokens: usize,
    /// Tokens per sequence of `t` (cross) or `tokens` (self).
    pub kv_tokens: usize,
    /// Width.
    pub dim: usize,
    /// Heads.
    pub heads: usize,
    /// MLP hidden width.
    pub hidden: usize,
    /// What mixes the tokens in the first half of the block.
    pub mixer: Mixer,
}

/// The token mixer of a block's first half.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mixer {
    /// Self-attention over the stream (encoder, S3).
    SelfAttention,
    /// The stream's queries attend to the exemplar tokens `t` (decoder, S4).
    CrossAttention,
    /// Depthwise cross-correlation of the stream's `grid x grid` map (its patch tokens)
    /// with the exemplar's `kernel x kernel` map (decoder, S4 conv option).
    Xcorr {
        /// Side of the stream's map (the context grid g).
        grid: usize,
        /// Side of the exemplar's map (n / p).
        kernel: usize,
    },
}

impl BlockDims {
    fn rows(&self) -> usize {
        self.batch * self.tokens
    }
    fn kv_rows(&self) -> usize {
        self.batch * self.kv_tokens
    }
    /// Width of the query projection: fused qkv (self), q alone (cross), none (xcorr).
    fn q_width(&self) -> usize {
        match self.mixer {
            Mixer::SelfAttention => 3 * self.dim,
            Mixer::CrossAttention => self.dim,
            Mixer::Xcorr { .. } => 0,
        }
    }
    /// Rows of the exemplar stream `t` the block reads (0 for self-attention).
    fn t_rows(&self) -> usize {
        match self.mixer {
            Mixer::SelfAttention => 0,
            Mixer::CrossAttention | Mixer::Xcorr { .. } => self.kv_rows(),
        }
    }
    /// Rows of the fused kv projection (cross-attention only).
    fn kv_proj_rows(&self) -> usize {
        if self.mixer == Mixer::CrossAttention {
            self.kv_rows()
        } else {
            0
        }
    }
    /// The correlation's sizes. Its scale `1 / sqrt(kernel^2) = 1 / kernel` keeps a sum
    /// of `kernel^2` products of unit-variance LayerNorm outputs at unit variance, as
    /// attention's `1 / sqrt(head_dim)` does for its dot products.
    fn xcorr(&self, grid: usize, kernel: usize) -> XcorrArgs {
        XcorrArgs {
            batch: self.batch,
            channels: self.dim,
            height: grid,
            width: grid,
            kernel_h: kernel,
            kernel_w: kernel,
            scale: 1.0 / kernel as f32,
        }
    }
    fn attention(&self) -> AttentionArgs {
        AttentionArgs {
            batch: self.batch,
            q_len: self.tokens,
            kv_len: self.kv_tokens,
            heads: self.heads,
            head_dim: self.dim / self.heads,
        }
    }
    fn probs(&self) -> usize {
        match self.mixer {
            Mixer::SelfAttention | Mixer::CrossAttention => {
                self.batch * self.heads * self.tokens * self.kv_tokens
            }
            Mixer::Xcorr { .. } => 0,
        }
    }
}

/// Activations of one block kept for its backward.
pub(crate) struct BlockActs<B: Backend> {
    ln1: B::Buffer,
    mean1: B::Buffer,
    rstd1: B::Buffer,
    /// Fused qkv (self) or q (cross); empty for the correlation.
    q: B::Buffer,
    /// Cross-attention and correlation: LN1(t) and its statistics; cross-attention only:
    /// the fused kv (empty otherwise).
    ln1_t: B::Buffer,
    mean1_t: B::Buffer,
    rstd1_t: B::Buffer,
    kv: B::Buffer,
    probs: B::Buffer,
    attn: B::Buffer,
    /// The residual stream after the attention half.
    pub mid: B::Buffer,
    ln2: B::Buffer,
    mean2: B::Buffer,
    rstd2: B::Buffer,
    h: B::Buffer,
    g: B::Buffer,
    /// The block's output (the residual stream after the MLP half).
    pub out: B::Buffer,
}

/// Scratch gradients of one block, shared by all blocks of a stream.
pub(crate) struct BlockScratch<B: Backend> {
    dln: B::Buffer,
    dattn: B::Buffer,
    dq: B::Buffer,
    dscores: B::Buffer,
    dh: B::Buffer,
    dln_t: B::Buffer,
    dkv: B::Buffer,
}

fn alloc<B: Backend>(b: &B, len: usize) -> Result<B::Buffer, B::Error> {
    b.alloc(len, Role::Activation)
}

impl<B: Backend> BlockActs<B> {
    pub(crate) fn new(b: &B, d: &BlockDims) -> Result<Self, B::Error> {
        let (rows, dim) = (d.rows(), d.dim);
        let t_rows = d.t_rows();
        Ok(BlockActs {
            ln1: alloc(b, rows * dim)?,
            mean1: alloc(b, rows)?,
            rstd1: alloc(b, rows)?,
            q: alloc(b, rows * d.q_width())?,
            ln1_t: alloc(b, t_rows * dim)?,
            mean1_t: alloc(b, t_rows)?,
            rstd1_t: alloc(b, t_rows)?,
            kv: alloc(b, d.kv_proj_rows() * 2 * dim)?,
            probs: alloc(b, d.probs())?,
            attn: alloc(b, rows * dim)?,
            mid: alloc(b, rows * dim)?,
            ln2: alloc(b, rows * dim)?,
            mean2: alloc(b, rows)?,
            rstd2: alloc(b, rows)?,
            h: alloc(b, rows * d.hidden)?,
            g: alloc(b, rows * d.hidden)?,
            out: alloc(b, rows * dim)?,
        })
    }
}

impl<B: Backend> BlockScratch<B> {
    pub(crate) fn new(b: &B, d: &BlockDims) -> Result<Self, B::Error> {
        let (rows, dim) = (d.rows(), d.dim);
        Ok(BlockScratch {
            dln: alloc(b, rows * dim)?,
            dattn: alloc(b, rows * dim)?,
            dq: alloc(b, rows * d.q_width())?,
            dscores: alloc(b, d.probs())?,
            dh: alloc(b, rows * d.hidden)?,
            dln_t: alloc(b, d.t_rows() * dim)?,
            dkv: alloc(b, d.kv_proj_rows() * 2 * dim)?,
        })
    }
}

/// Where a block's weights sit: ranges of the online layout, less `shift` when the buffer
/// holds only the EMA'd encoder (the target network).
pub(crate) struct Weights<'p, B: Backend> {
    pub buf: &'p B::Buffer,
    pub shift: usize,
}

impl<B: Backend> Weights<'_, B> {
    pub(crate) fn get<'a>(&'a self, b: &'a B, r: &Range<usize>) -> B::View<'a> {
        b.view(self.buf, r.start - self.shift..r.end - self.shift)
    }
}

/// Forward: reads the block input `x` (`[rows, D]`) and, for the decoder's blocks, the
/// exemplar tokens `t` (`[kv_rows, D]`, given exactly when the mixer is not
/// self-attention); fills `acts` (its `out` is the block output).
pub(crate) fn forward<B: Backend>(
    b: &B,
    w: &Weights<'_, B>,
    p: &BlockParams,
    acts: &mut BlockActs<B>,
    x: B::View<'_>,
    t: Option<B::View<'_>>,
    d: &BlockDims,
) -> Res<B> {
    let (rows, dim) = (d.rows(), d.dim);
    let a = &mut *acts;
    ops::layernorm_forward(
        b,
        all_mut(b, &mut a.ln1),
        all_mut(b, &mut a.mean1),
        all_mut(b, &mut a.rstd1),
        x,
        w.get(b, &p.norm1_w),
        w.get(b, &p.norm1_b),
        rows,
        dim,
        LN_EPS,
    )?;
    let qlin = Linear {
        rows,
        inp: dim,
        out: d.q_width(),
    };
    if d.q_width() > 0 {
        qlin.forward(
            b,
            all_mut(b, &mut a.q),
            all(b, &a.ln1),
            w.get(b, &p.q_w),
            w.get(b, &p.q_b),
        )?;
    }
    if let Some(t) = t {
        let t_rows = d.t_rows();
        ops::layernorm_forward(
            b,
            all_mut(b, &mut a.ln1_t),
            all_mut(b, &mut a.mean1_t),
            all_mut(b, &mut a.rstd1_t),
            t,
            w.get(b, &p.norm1_w),
            w.get(b, &p.norm1_b),
            t_rows,
            dim,
            LN_EPS,
        )?;
    }
    match d.mixer {
        Mixer::SelfAttention => ops::self_attention_forward(
            b,
            all_mut(b, &mut a.attn),
            all_mut(b, &mut a.probs),
            all(b, &a.q),
            &d.attention(),
        )?,
        Mixer::CrossAttention => {
            let kvlin = Linear {
                rows: d.kv_rows(),
                inp: dim,
                out: 2 * dim,
            };
            kvlin.forward(
                b,
                all_mut(b, &mut a.kv),
                all(b, &a.ln1_t),
                w.get(b, &p.kv_w),
                w.get(b, &p.kv_b),
            )?;
            ops::cross_attention_forward(
                b,
                all_mut(b, &mut a.attn),
                all_mut(b, &mut a.probs),
                all(b, &a.q),
                all(b, &a.kv),
                &d.attention(),
            )?;
        }
        Mixer::Xcorr { grid, kernel } => ops::depthwise_xcorr_forward(
            b,
            all_mut(b, &mut a.attn),
            all(b, &a.ln1),
            all(b, &a.ln1_t),
            &d.xcorr(grid, kernel),
        )?,
    }
    let proj = Linear {
        rows,
        inp: dim,
        out: dim,
    };
    proj.forward(
        b,
        all_mut(b, &mut a.mid),
        all(b, &a.attn),
        w.get(b, &p.proj_w),
        w.get(b, &p.proj_b),
    )?;
    ops::add_assign(b, all_mut(b, &mut a.mid), x)?;
    ops::layernorm_forward(
        b,
        all_mut(b, &mut a.ln2),
        all_mut(b, &mut a.mean2),
        all_mut(b, &mut a.rstd2),
        all(b, &a.mid),
        w.get(b, &p.norm2_w),
        w.get(b, &p.norm2_b),
        rows,
        dim,
        LN_EPS,
    )?;
    let fc1 = Linear {
        rows,
        inp: dim,
        out: d.hidden,
    };
    fc1.forward(
        b,
        all_mut(b, &mut a.h),
        all(b, &a.ln2),
        w.get(b, &p.fc1_w),
        w.get(b, &p.fc1_b),
    )?;
    ops::gelu_forward(b, all_mut(b, &mut a.g), all(b, &a.h))?;
    let fc2 = Linear {
        rows,
        inp: d.hidden,
        out: dim,
    };
    fc2.forward(
        b,
        all_mut(b, &mut a.out),
        all(b, &a.g),
        w.get(b, &p.fc2_w),
        w.get(b, &p.fc2_b),
    )?;
    ops::add_assign(b, all_mut(b, &mut a.out), all(b, &a.mid))
}

/// Backward. On entry `dres` holds the gradient of the block output; on return that of
/// the block input `x`. Parameter gradients accumulate into `grads` (online layout); for
/// the decoder's blocks the gradient of `t` accumulates into `dt`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<B: Backend>(
    b: &B,
    w: &Weights<'_, B>,
    p: &BlockParams,
    grads: &mut B::Buffer,
    acts: &BlockActs<B>,
    x: B::View<'_>,
    t: Option<(B::View<'_>, &mut B::Buffer)>,
    dres: &mut B::Buffer,
    s: &mut BlockScratch<B>,
    d: &BlockDims,
) -> Res<B> {
    let (rows, dim) = (d.rows(), d.dim);
    let a = acts;
    // MLP half: out = mid + FC2(GELU(FC1(LN2(mid)))).
    let fc2 = Linear {
        rows,
        inp: d.hidden,
        out: dim,
    };
    fc2.backward_params(b, grads, &p.fc2_w, &p.fc2_b, all(b, dres), all(b, &a.g))?;
    fc2.backward_input(
        b,
        all_mut(b, &mut s.dh),
        all(b, dres),
        w.get(b, &p.fc2_w),
        false,
    )?;
    ops::gelu_backward(b, all_mut(b, &mut s.dh), all(b, &a.h))?;
    let fc1 = Linear {
        rows,
        inp: dim,
        out: d.hidden,
    };
    fc1.backward_params(b, grads, &p.fc1_w, &p.fc1_b, all(b, &s.dh), all(b, &a.ln2))?;
    fc1.backward_input(
        b,
        all_mut(b, &mut s.dln),
        all(b, &s.dh),
        w.get(b, &p.fc1_w),
        false,
    )?;
    layernorm_backward(
        b,
        w,
        grads,
        &p.norm2_w,
        &p.norm2_b,
        dres,
        &s.dln,
        all(b, &a.mid),
        &a.mean2,
        &a.rstd2,
        rows,
        dim,
    )?;
    // Attention half: mid = x + Proj(Attn(...)).
    let proj = Linear {
        rows,
        inp: dim,
        out: dim,
    };
    proj.backward_params(
        b,
        grads,
        &p.proj_w,
        &p.proj_b,
        all(b, dres),
        all(b, &a.attn),
    )?;
    proj.backward_input(
        b,
        all_mut(b, &mut s.dattn),
        all(b, dres),
        w.get(b, &p.proj_w),
        false,
    )?;
    let qlin = Linear {
        rows,
        inp: dim,
        out: d.q_width(),
    };
    match d.mixer {
        Mixer::SelfAttention => ops::self_attention_backward(
            b,
            all_mut(b, &mut s.dq),
            all_mut(b, &mut s.dscores),
            all(b, &s.dattn),
            all(b, &a.q),
            all(b, &a.probs),
            &d.attention(),
        )?,
        Mixer::CrossAttention => {
            ops::cross_attention_backward(
                b,
                all_mut(b, &mut s.dq),
                all_mut(b, &mut s.dkv),
                all_mut(b, &mut s.dscores),
                all(b, &s.dattn),
                all(b, &a.q),
                all(b, &a.kv),
                all(b, &a.probs),
                &d.attention(),
            )?;
            let kvlin = Linear {
                rows: d.kv_rows(),
                inp: dim,
                out: 2 * dim,
            };
            kvlin.backward_params(b, grads, &p.kv_w, &p.kv_b, all(b, &s.dkv), all(b, &a.ln1_t))?;
            kvlin.backward_input(
                b,
                all_mut(b, &mut s.dln_t),
                all(b, &s.dkv),
                w.get(b, &p.kv_w),
                false,
            )?;
        }
        // Writes both normalised streams' gradients; no projection sits before it.
        Mixer::Xcorr { grid, kernel } => ops::depthwise_xcorr_backward(
            b,
            all_mut(b, &mut s.dln),
            all_mut(b, &mut s.dln_t),
            all(b, &s.dattn),
            all(b, &a.ln1),
            all(b, &a.ln1_t),
            &d.xcorr(grid, kernel),
        )?,
    }
    if let Some((t, dt)) = t {
        layernorm_backward(
            b,
            w,
            grads,
            &p.norm1_w,
            &p.norm1_b,
            dt,
            &s.dln_t,
            t,
            &a.mean1_t,
            &a.rstd1_t,
            d.t_rows(),
            dim,
        )?;
    }
    if d.q_width() > 0 {
        qlin.backward_params(b, grads, &p.q_w, &p.q_b, all(b, &s.dq), all(b, &a.ln1))?;
        qlin.backward_input(
            b,
            all_mut(b, &mut s.dln),
            all(b, &s.dq),
            w.get(b, &p.q_w),
            false,
        )?;
    }
    layernorm_backward(
        b, w, grads, &p.norm1_w, &p.norm1_b, dres, &s.dln, x, &a.mean1, &a.rstd1, rows, dim,
    )
}

/// LayerNorm backward with its parameter gradients taken from the gradient buffer:
/// `dx += ...`, `dgamma += ...`, `dbeta += ...`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layernorm_backward<B: Backend>(
    b: &B,
    w: &Weights<'_, B>,
    grads: &mut B::Buffer,
    gamma: &Range<usize>,
    beta: &Range<usize>,
    dx: &mut B::Buffer,
    dout: &B::Buffer,
    x: B::View<'_>,
    mean: &B::Buffer,
    rstd: &B::Buffer,
    rows: usize,
    cols: usize,
) -> Res<B> {
    let (dg, db) = pair_mut(b, grads, gamma.clone(), beta.clone());
    ops::layernorm_backward(
        b,
        all_mut(b, dx),
        dg,
        db,
        all(b, dout),
        x,
        w.get(b, gamma),
        all(b, mean),
        all(b, rstd),
        rows,
        cols,
    )
}

/// Activations of a stack of blocks.
pub(crate) fn stack<B: Backend>(
    b: &B,
    d: &BlockDims,
    depth: usize,
) -> Result<Vec<BlockActs<B>>, B::Error> {
    (0..depth).map(|_| BlockActs::new(b, d)).collect()
}
