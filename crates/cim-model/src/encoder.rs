//! The ViT encoder of S3 as one stream: patch embedding (patchify, GEMM, bias), class
//! token, position embedding, the blocks and the final LayerNorm; the online network runs
//! it on the K exemplars of every context as one batch, the target network on the
//! contexts, with its own weights (EMA copy) and the online network's class token.

use alloc::vec::Vec;
use cim_spec::backend::{Backend, PatchArgs, Role};
use cim_spec::config::EncoderConfig;
use cim_spec::ops;

use crate::block::{self, BlockActs, BlockDims, BlockScratch, Mixer, Weights};
use crate::layout::EncoderParams;
use crate::nn::{LN_EPS, Linear, Ready, Res, all, all_mut, report};

/// One encoder stream: its sizes and the activations its backward needs.
pub(crate) struct EncoderStream<B: Backend> {
    pub dims: BlockDims,
    grid: usize,
    patch: usize,
    patches: B::Buffer,
    embed: B::Buffer,
    x0: B::Buffer,
    /// The fixed position embedding for this grid `[1 + grid^2, D]` (S3, resized).
    pos: B::Buffer,
    blocks: Vec<BlockActs<B>>,
    /// Final LayerNorm output `[batch, 1 + grid^2, D]`: the stream's features.
    pub hidden: B::Buffer,
    mean: B::Buffer,
    rstd: B::Buffer,
}

/// Gradient scratch of the online stream.
pub(crate) struct EncoderGrads<B: Backend> {
    dres: B::Buffer,
    dembed: B::Buffer,
    scratch: BlockScratch<B>,
}

impl<B: Backend> EncoderStream<B> {
    /// A stream of `batch` images of `grid x grid` patches, with position embedding `pos`
    /// (`[1 + grid^2, D]` values).
    pub(crate) fn new(
        b: &B,
        cfg: &EncoderConfig,
        batch: usize,
        grid: usize,
        pos: &[f32],
    ) -> Result<Self, B::Error> {
        let tokens = grid * grid + 1;
        let dims = BlockDims {
            batch,
            tokens,
            kv_tokens: tokens,
            dim: cfg.dim,
            heads: cfg.heads,
            hidden: cfg.dim * cfg.mlp_ratio,
            mixer: Mixer::SelfAttention,
        };
        let rows = batch * tokens;
        let patch_len = batch * grid * grid * 3 * cfg.patch * cfg.patch;
        let act = |n| b.alloc(n, Role::Activation);
        let mut pos_buf = b.alloc(pos.len(), Role::Param)?;
        b.upload(all_mut(b, &mut pos_buf), pos)?;
        Ok(EncoderStream {
            dims,
            grid,
            patch: cfg.patch,
            patches: act(patch_len)?,
            embed: act(batch * grid * grid * cfg.dim)?,
            x0: act(rows * cfg.dim)?,
            pos: pos_buf,
            blocks: block::stack(b, &dims, cfg.depth)?,
            hidden: act(rows * cfg.dim)?,
            mean: act(rows)?,
            rstd: act(rows)?,
        })
    }

    fn patch_linear(&self) -> Linear {
        Linear {
            rows: self.dims.batch * self.grid * self.grid,
            inp: 3 * self.patch * self.patch,
            out: self.dims.dim,
        }
    }

    /// Encodes `images` (`[batch, 3, grid p, grid p]`) into `hidden`.
    pub(crate) fn forward(
        &mut self,
        b: &B,
        w: &Weights<'_, B>,
        p: &EncoderParams,
        cls: B::View<'_>,
        images: B::View<'_>,
    ) -> Res<B> {
        let d = self.dims;
        let side = self.grid * self.patch;
        let patch_args = PatchArgs {
            batch: d.batch,
            channels: 3,
            height: side,
            width: side,
            patch: self.patch,
        };
        ops::patchify(b, all_mut(b, &mut self.patches), images, &patch_args)?;
        let lin = self.patch_linear();
        lin.forward(
            b,
            all_mut(b, &mut self.embed),
            all(b, &self.patches),
            w.get(b, &p.patch_w),
            w.get(b, &p.patch_b),
        )?;
        let tokens = self.grid * self.grid;
        ops::prepend_cls_forward(
            b,
            all_mut(b, &mut self.x0),
            all(b, &self.embed),
            cls,
            d.batch,
            tokens,
            d.dim,
        )?;
        ops::add_broadcast(
            b,
            all_mut(b, &mut self.x0),
            all(b, &self.pos),
            d.batch,
            d.tokens * d.dim,
            1,
        )?;
        for l in 0..self.blocks.len() {
            let (done, rest) = self.blocks.split_at_mut(l);
            let x = match done.last() {
                Some(prev) => all(b, &prev.out),
                None => all(b, &self.x0),
            };
            block::forward(b, w, &p.blocks[l], &mut rest[0], x, None, &d)?;
        }
        let last = &self.blocks[self.blocks.len() - 1].out;
        ops::layernorm_forward(
            b,
            all_mut(b, &mut self.hidden),
            all_mut(b, &mut self.mean),
            all_mut(b, &mut self.rstd),
            all(b, last),
            w.get(b, &p.norm_w),
            w.get(b, &p.norm_b),
            d.batch * d.tokens,
            d.dim,
            LN_EPS,
        )
    }

    /// Backward from `dhidden`, the gradient of `hidden`; parameter gradients (including
    /// the class token's, and the patch embedding's when `train_patch_embed`) accumulate
    /// into `grads`, each tensor's range going to `ready` once no later op writes it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward(
        &self,
        b: &B,
        w: &Weights<'_, B>,
        p: &EncoderParams,
        cls: &core::ops::Range<usize>,
        train_patch_embed: bool,
        grads: &mut B::Buffer,
        dhidden: &B::Buffer,
        g: &mut EncoderGrads<B>,
        ready: &mut Ready<'_, B>,
    ) -> Res<B> {
        let d = self.dims;
        b.fill(all_mut(b, &mut g.dres), 0.0)?;
        let last = &self.blocks[self.blocks.len() - 1].out;
        block::layernorm_backward(
            b,
            w,
            grads,
            &p.norm_w,
            &p.norm_b,
            &mut g.dres,
            dhidden,
            all(b, last),
            &self.mean,
            &self.rstd,
            d.batch * d.tokens,
            d.dim,
        )?;
        report::<B>(ready, grads, p.norm());
        for l in (0..self.blocks.len()).rev() {
            let x = if l == 0 {
                all(b, &self.x0)
            } else {
                all(b, &self.blocks[l - 1].out)
            };
            block::backward(
                b,
                w,
                &p.blocks[l],
                grads,
                &self.blocks[l],
                x,
                None,
                &mut g.dres,
                &mut g.scratch,
                &d,
            )?;
            report::<B>(ready, grads, p.blocks[l].ranges());
        }
        let tokens = self.grid * self.grid;
        let dpatches = if train_patch_embed {
            Some(all_mut(b, &mut g.dembed))
        } else {
            None
        };
        ops::prepend_cls_backward(
            b,
            dpatches,
            b.view_mut(grads, cls.clone()),
            all(b, &g.dres),
            d.batch,
            tokens,
            d.dim,
        )?;
        report::<B>(ready, grads, [cls]);
        if train_patch_embed {
            self.patch_linear().backward_params(
                b,
                grads,
                &p.patch_w,
                &p.patch_b,
                all(b, &g.dembed),
                all(b, &self.patches),
            )?;
            report::<B>(ready, grads, p.patch());
        }
        Ok(())
    }
}

impl<B: Backend> EncoderGrads<B> {
    pub(crate) fn new(b: &B, s: &EncoderStream<B>) -> Result<Self, B::Error> {
        let d = &s.dims;
        Ok(EncoderGrads {
            dres: b.alloc(d.batch * d.tokens * d.dim, Role::Activation)?,
            dembed: b.alloc(d.batch * s.grid * s.grid * d.dim, Role::Activation)?,
            scratch: BlockScratch::new(b, d)?,
        })
    }
}
