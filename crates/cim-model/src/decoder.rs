//! The correlation decoder of S4 and the map loss of S5.
//!
//! The context tokens are projected once per context (`E(h_c) + P_dec`) and repeated for
//! its K exemplars; each exemplar's tokens `t = E(h_z)` are the keys and values of the
//! cross blocks (or, with the S4 "conv" correlation, the kernels slid over the context
//! map); the final LayerNorm's patch tokens go through the 1x1 predictor conv (a batched
//! GEMM that skips the class token, so no reshape is materialised) or the deconvolution
//! predictor option (a stride-2 transposed conv reading the same tokens, doubling the
//! map), and are upsampled bilinearly (align_corners) to m x m logit maps.

use alloc::vec::Vec;
use cim_spec::backend::{Backend, ConvTransposeArgs, GemmArgs, MapLossArgs, Role};
use cim_spec::config::{Correlation, ModelConfig, Predictor};
use cim_spec::ops;

use crate::block::{self, BlockActs, BlockDims, BlockScratch, Mixer, Weights};
use crate::layout::DecoderParams;
use crate::nn::{LN_EPS, Linear, Ready, Res, all, all_mut, pair_mut, report};

/// Sizes of the decoder for one micro-batch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DecoderDims {
    /// Contexts B.
    pub batch: usize,
    /// Exemplars per context K.
    pub exemplars: usize,
    /// Encoder width D.
    pub enc_dim: usize,
    /// Context grid side g.
    pub grid: usize,
    /// Exemplar tokens per sequence (1 + its grid^2).
    pub ex_tokens: usize,
    /// Context side m.
    pub map: usize,
    /// Logit channels of the loss.
    pub channels: usize,
    /// The predictor before the upsampling.
    pub predictor: Predictor,
    /// The cross blocks' sizes (batch B K, context tokens, exemplar tokens).
    pub block: BlockDims,
}

impl DecoderDims {
    pub(crate) fn new(c: &ModelConfig, batch: usize) -> Self {
        let grid = c.context_grid();
        let ex_tokens = c.exemplar_grid().pow(2) + 1;
        let mixer = match c.decoder.correlation {
            Correlation::Attention => Mixer::CrossAttention,
            Correlation::Conv => Mixer::Xcorr {
                grid,
                kernel: c.exemplar_grid(),
            },
        };
        DecoderDims {
            batch,
            exemplars: c.exemplars,
            enc_dim: c.encoder.dim,
            grid,
            ex_tokens,
            map: c.context_size,
            channels: c.loss.channels(),
            predictor: c.decoder.predictor,
            block: BlockDims {
                batch: batch * c.exemplars,
                tokens: grid * grid + 1,
                kv_tokens: ex_tokens,
                dim: c.decoder.width,
                heads: c.decoder.heads,
                hidden: c.decoder.width * c.encoder.mlp_ratio,
                mixer,
            },
        }
    }
    fn maps(&self) -> usize {
        self.batch * self.exemplars
    }
    fn ctx_tokens(&self) -> usize {
        self.block.tokens
    }
    fn width(&self) -> usize {
        self.block.dim
    }
    fn pixels(&self) -> usize {
        self.grid * self.grid
    }
    /// Side of the predictor's logit planes (the upsampling's input).
    fn plane_side(&self) -> usize {
        self.predictor.out_side(self.grid)
    }
    /// Elements of the predictor's logit planes, `[B K, C, side, side]`.
    fn planes_len(&self) -> usize {
        self.maps() * self.channels * self.plane_side().pow(2)
    }
    /// The deconvolution predictor over the final tokens `[B K, 1 + g^2, d]`.
    fn deconv(&self) -> ConvTransposeArgs {
        ConvTransposeArgs {
            batch: self.maps(),
            in_channels: self.width(),
            out_channels: self.channels,
            height: self.grid,
            width: self.grid,
            kernel: Predictor::DECONV_KERNEL,
            stride: Predictor::DECONV_STRIDE,
            padding: Predictor::DECONV_PADDING,
        }
    }
    /// The predictor GEMM for each map: `[C, d] x tokens[1..]^T`, reading the final
    /// LayerNorm output from its second row (the class token is dropped by the view).
    fn predictor(&self) -> GemmArgs {
        let (d, n) = (self.width(), self.ctx_tokens());
        GemmArgs {
            batch: self.maps(),
            m: self.channels,
            n: self.pixels(),
            k: d,
            trans_a: false,
            trans_b: true,
            alpha: 1.0,
            beta: 0.0,
            stride_a: 0,
            stride_b: n * d,
            stride_c: self.channels * self.pixels(),
        }
    }
    /// Elements of the final tokens viewed from the first patch token of the first map.
    fn patch_view(&self) -> core::ops::Range<usize> {
        let d = self.width();
        d..self.maps() * self.ctx_tokens() * d
    }
}

/// Decoder activations.
pub(crate) struct DecoderActs<B: Backend> {
    pub dims: DecoderDims,
    pos: B::Buffer,
    ctx: B::Buffer,
    x0: B::Buffer,
    t: B::Buffer,
    blocks: Vec<BlockActs<B>>,
    fin: B::Buffer,
    mean: B::Buffer,
    rstd: B::Buffer,
    planes: B::Buffer,
    /// Logit maps `[B K, C, m, m]`.
    pub logits: B::Buffer,
}

/// Decoder gradient scratch.
pub(crate) struct DecoderGrads<B: Backend> {
    dlogits: B::Buffer,
    dplanes: B::Buffer,
    dpred: B::Buffer,
    dfin: B::Buffer,
    dres: B::Buffer,
    dt: B::Buffer,
    dctx: B::Buffer,
    /// Gradient of the online encoder's output, handed to its backward.
    pub dhz: B::Buffer,
    scratch: BlockScratch<B>,
}

impl<B: Backend> DecoderActs<B> {
    pub(crate) fn new(b: &B, c: &ModelConfig, batch: usize, pos: &[f32]) -> Result<Self, B::Error> {
        let d = DecoderDims::new(c, batch);
        let w = d.width();
        let act = |n| b.alloc(n, Role::Activation);
        let mut pos_buf = b.alloc(pos.len(), Role::Param)?;
        b.upload(all_mut(b, &mut pos_buf), pos)?;
        let rows = d.maps() * d.ctx_tokens();
        Ok(DecoderActs {
            dims: d,
            pos: pos_buf,
            ctx: act(batch * d.ctx_tokens() * w)?,
            x0: act(rows * w)?,
            t: act(d.maps() * d.ex_tokens * w)?,
            blocks: block::stack(b, &d.block, c.decoder.depth)?,
            fin: act(rows * w)?,
            mean: act(rows)?,
            rstd: act(rows)?,
            planes: act(d.planes_len())?,
            logits: act(d.maps() * d.channels * d.map * d.map)?,
        })
    }

    /// Decodes: `hc` `[B, 1+g^2, D]` (target features), `hz` `[B K, 1+n'^2, D]` (online
    /// features) into `logits`, and writes the loss against `maps` (`[B K, m, m]`) into
    /// `loss` with `scale` (S5).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &mut self,
        b: &B,
        w: &Weights<'_, B>,
        p: &DecoderParams,
        hc: B::View<'_>,
        hz: B::View<'_>,
        loss_args: Option<(&mut B::Buffer, B::View<'_>, &MapLossArgs)>,
    ) -> Res<B> {
        let d = self.dims;
        let (width, nc) = (d.width(), d.ctx_tokens());
        let embed = Linear {
            rows: d.batch * nc,
            inp: d.enc_dim,
            out: width,
        };
        embed.forward(
            b,
            all_mut(b, &mut self.ctx),
            hc,
            w.get(b, &p.embed_w),
            w.get(b, &p.embed_b),
        )?;
        ops::add_broadcast(
            b,
            all_mut(b, &mut self.ctx),
            all(b, &self.pos),
            d.batch,
            nc * width,
            1,
        )?;
        ops::repeat_forward(
            b,
            all_mut(b, &mut self.x0),
            all(b, &self.ctx),
            d.batch,
            d.exemplars,
            nc * width,
        )?;
        let embed_t = Linear {
            rows: d.maps() * d.ex_tokens,
            ..embed
        };
        embed_t.forward(
            b,
            all_mut(b, &mut self.t),
            hz,
            w.get(b, &p.embed_w),
            w.get(b, &p.embed_b),
        )?;
        for l in 0..self.blocks.len() {
            let (done, rest) = self.blocks.split_at_mut(l);
            let x = match done.last() {
                Some(prev) => all(b, &prev.out),
                None => all(b, &self.x0),
            };
            block::forward(
                b,
                w,
                &p.blocks[l],
                &mut rest[0],
                x,
                Some(all(b, &self.t)),
                &d.block,
            )?;
        }
        let last = &self.blocks[self.blocks.len() - 1].out;
        ops::layernorm_forward(
            b,
            all_mut(b, &mut self.fin),
            all_mut(b, &mut self.mean),
            all_mut(b, &mut self.rstd),
            all(b, last),
            w.get(b, &p.norm_w),
            w.get(b, &p.norm_b),
            d.maps() * nc,
            width,
            LN_EPS,
        )?;
        match d.predictor {
            Predictor::Conv1x1 => {
                let patches = b.view(&self.fin, d.patch_view());
                ops::gemm(
                    b,
                    all_mut(b, &mut self.planes),
                    w.get(b, &p.pred_w),
                    patches,
                    &d.predictor(),
                )?;
                ops::add_broadcast(
                    b,
                    all_mut(b, &mut self.planes),
                    w.get(b, &p.pred_b),
                    d.maps(),
                    d.channels,
                    d.pixels(),
                )?;
            }
            Predictor::Deconv => ops::conv_transpose_forward(
                b,
                all_mut(b, &mut self.planes),
                all(b, &self.fin),
                w.get(b, &p.pred_w),
                w.get(b, &p.pred_b),
                &d.deconv(),
            )?,
        }
        let planes = d.maps() * d.channels;
        let side = d.plane_side();
        ops::upsample_bilinear_forward(
            b,
            all_mut(b, &mut self.logits),
            all(b, &self.planes),
            planes,
            side,
            side,
            d.map,
            d.map,
        )?;
        if let Some((loss, maps, args)) = loss_args {
            ops::map_loss_forward(b, all_mut(b, loss), all(b, &self.logits), maps, args)?;
        }
        Ok(())
    }

    /// Backward of the loss and the decoder: parameter gradients accumulate into `grads`
    /// (each tensor's range goes to `ready` once no later op writes it), the gradient of
    /// `hz` is written into `g.dhz`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward(
        &self,
        b: &B,
        w: &Weights<'_, B>,
        p: &DecoderParams,
        grads: &mut B::Buffer,
        hc: B::View<'_>,
        hz: B::View<'_>,
        maps: B::View<'_>,
        loss_args: &MapLossArgs,
        g: &mut DecoderGrads<B>,
        ready: &mut Ready<'_, B>,
    ) -> Res<B> {
        let d = self.dims;
        let (width, nc) = (d.width(), d.ctx_tokens());
        let planes = d.maps() * d.channels;
        ops::map_loss_backward(
            b,
            all_mut(b, &mut g.dlogits),
            all(b, &self.logits),
            maps,
            loss_args,
        )?;
        let side = d.plane_side();
        ops::upsample_bilinear_backward(
            b,
            all_mut(b, &mut g.dplanes),
            all(b, &g.dlogits),
            planes,
            side,
            side,
            d.map,
            d.map,
        )?;
        match d.predictor {
            Predictor::Conv1x1 => self.conv1x1_backward(b, w, p, grads, g)?,
            // Writes every row of dfin, the class rows with zeros.
            Predictor::Deconv => {
                let (dw, db) = pair_mut(b, grads, p.pred_w.clone(), p.pred_b.clone());
                ops::conv_transpose_backward(
                    b,
                    all_mut(b, &mut g.dfin),
                    dw,
                    db,
                    all(b, &g.dplanes),
                    all(b, &self.fin),
                    w.get(b, &p.pred_w),
                    &d.deconv(),
                )?;
            }
        }
        report::<B>(ready, grads, p.predictor());
        // Final LayerNorm and the cross blocks.
        b.fill(all_mut(b, &mut g.dres), 0.0)?;
        let last = &self.blocks[self.blocks.len() - 1].out;
        block::layernorm_backward(
            b,
            w,
            grads,
            &p.norm_w,
            &p.norm_b,
            &mut g.dres,
            &g.dfin,
            all(b, last),
            &self.mean,
            &self.rstd,
            d.maps() * nc,
            width,
        )?;
        report::<B>(ready, grads, p.norm());
        b.fill(all_mut(b, &mut g.dt), 0.0)?;
        for l in (0..self.blocks.len()).rev() {
            let x = if l == 0 {
                all(b, &self.x0)
            } else {
                all(b, &self.blocks[l - 1].out)
            };
            let t = Some((all(b, &self.t), &mut g.dt));
            block::backward(
                b,
                w,
                &p.blocks[l],
                grads,
                &self.blocks[l],
                x,
                t,
                &mut g.dres,
                &mut g.scratch,
                &d.block,
            )?;
            report::<B>(ready, grads, p.blocks[l].ranges());
        }
        // The shared embedding E, from both streams.
        ops::repeat_backward(
            b,
            all_mut(b, &mut g.dctx),
            all(b, &g.dres),
            d.batch,
            d.exemplars,
            nc * width,
        )?;
        let embed = Linear {
            rows: d.batch * nc,
            inp: d.enc_dim,
            out: width,
        };
        embed.backward_params(b, grads, &p.embed_w, &p.embed_b, all(b, &g.dctx), hc)?;
        let embed_t = Linear {
            rows: d.maps() * d.ex_tokens,
            ..embed
        };
        embed_t.backward_params(b, grads, &p.embed_w, &p.embed_b, all(b, &g.dt), hz)?;
        report::<B>(ready, grads, p.embed());
        embed_t.backward_input(
            b,
            all_mut(b, &mut g.dhz),
            all(b, &g.dt),
            w.get(b, &p.embed_w),
            false,
        )
    }

    /// The 1x1 predictor conv's backward: bias and weight gradients accumulate into
    /// `grads`, the gradient of the final tokens is written into `g.dfin` (zeros in the
    /// class rows).
    fn conv1x1_backward(
        &self,
        b: &B,
        w: &Weights<'_, B>,
        p: &DecoderParams,
        grads: &mut B::Buffer,
        g: &mut DecoderGrads<B>,
    ) -> Res<B> {
        let d = self.dims;
        let (width, nc) = (d.width(), d.ctx_tokens());
        // Predictor: bias, weight (per-map products summed over maps), input.
        ops::sum_broadcast(
            b,
            b.view_mut(grads, p.pred_b.clone()),
            all(b, &g.dplanes),
            d.maps(),
            d.channels,
            d.pixels(),
        )?;
        let per_map = GemmArgs {
            batch: d.maps(),
            m: d.channels,
            n: width,
            k: d.pixels(),
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
            stride_a: d.channels * d.pixels(),
            stride_b: nc * width,
            stride_c: d.channels * width,
        };
        ops::gemm(
            b,
            all_mut(b, &mut g.dpred),
            all(b, &g.dplanes),
            b.view(&self.fin, d.patch_view()),
            &per_map,
        )?;
        ops::sum_broadcast(
            b,
            b.view_mut(grads, p.pred_w.clone()),
            all(b, &g.dpred),
            d.maps(),
            d.channels * width,
            1,
        )?;
        b.fill(all_mut(b, &mut g.dfin), 0.0)?;
        let to_tokens = GemmArgs {
            batch: d.maps(),
            m: d.pixels(),
            n: width,
            k: d.channels,
            trans_a: true,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
            stride_a: d.channels * d.pixels(),
            stride_b: 0,
            stride_c: nc * width,
        };
        let range = d.patch_view();
        ops::gemm(
            b,
            b.view_mut(&mut g.dfin, range),
            all(b, &g.dplanes),
            w.get(b, &p.pred_w),
            &to_tokens,
        )?;
        Ok(())
    }
}

impl<B: Backend> DecoderGrads<B> {
    pub(crate) fn new(b: &B, a: &DecoderActs<B>) -> Result<Self, B::Error> {
        let d = &a.dims;
        let w = d.width();
        let rows = d.maps() * d.ctx_tokens();
        let act = |n| b.alloc(n, Role::Activation);
        Ok(DecoderGrads {
            dlogits: act(d.maps() * d.channels * d.map * d.map)?,
            dplanes: act(d.planes_len())?,
            // Only the 1x1 conv's per-map weight gradients need it.
            dpred: act(if d.predictor == Predictor::Conv1x1 {
                d.maps() * d.channels * w
            } else {
                0
            })?,
            dfin: act(rows * w)?,
            dres: act(rows * w)?,
            dt: act(d.maps() * d.ex_tokens * w)?,
            dctx: act(d.batch * d.ctx_tokens() * w)?,
            dhz: act(d.maps() * d.ex_tokens * d.enc_dim)?,
            scratch: BlockScratch::new(b, &d.block)?,
        })
    }
}
