//! [`Reference`]: the backend traits of [`cim_spec::backend`] implemented by calling the
//! pure functions of this crate on `Vec<f64>` buffers.
//!
//! Memory is host memory, ops run synchronously and cannot fail once the checked wrappers
//! of [`cim_spec::ops`] have accepted their sizes, so the error type is [`HostError`].
//! Scalars given as `f32` (GEMM alpha/beta, eps, momentum, ...) are widened exactly to
//! f64.

use core::ops::Range;

use cim_spec::backend::{
    AdamWArgs, Attention, AttentionArgs, Backend, Conv, ConvTransposeArgs, Elementwise, Gemm,
    GemmArgs, MapLossArgs, MapLossOps, Memory, Norm, Optim, PatchArgs, Precision, Role, Tokens,
    XcorrArgs,
};
use cim_spec::error::HostError;

use crate::{attention, conv, elementwise, gemm, loss, norm, optim, tokens};

/// The oracle backend: every op as naive loops with f64 storage and f64 arithmetic.
///
/// It reports [`Precision::F32`] because it is compared under, and serves as the
/// reference for, the f32 column of the tolerance table; it actually computes in f64, so
/// its own rounding error is far below that column. Values cross the host boundary as
/// f32: [`Memory::upload`] widens them exactly, [`Memory::download`] rounds to nearest.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reference;

impl Reference {
    /// The reference backend (it holds no state).
    pub fn new() -> Self {
        Reference
    }
}

impl Memory for Reference {
    type Error = HostError;
    type Buffer = Vec<f64>;
    type View<'a> = &'a [f64];
    type ViewMut<'a> = &'a mut [f64];

    /// Zero-filled, whatever the role (everything is f64 here).
    fn alloc(&self, len: usize, _role: Role) -> Result<Vec<f64>, HostError> {
        Ok(vec![0.0; len])
    }

    fn buffer_len(buf: &Vec<f64>) -> usize {
        buf.len()
    }

    fn view_len(view: &&[f64]) -> usize {
        view.len()
    }

    fn view_mut_len(view: &&mut [f64]) -> usize {
        view.len()
    }

    fn view<'a>(&'a self, buf: &'a Vec<f64>, range: Range<usize>) -> &'a [f64] {
        &buf[range]
    }

    fn view_mut<'a>(&'a self, buf: &'a mut Vec<f64>, range: Range<usize>) -> &'a mut [f64] {
        &mut buf[range]
    }

    fn reborrow<'b>(view: &'b mut Self::ViewMut<'_>) -> Self::ViewMut<'b>
    where
        Self: 'b,
    {
        view
    }

    fn as_view<'b>(view: &'b Self::ViewMut<'_>) -> Self::View<'b>
    where
        Self: 'b,
    {
        view
    }

    fn sub_view<'a>(view: Self::View<'a>, range: Range<usize>) -> Self::View<'a> {
        &view[range]
    }

    fn split_mut<'a>(view: Self::ViewMut<'a>, at: usize) -> (Self::ViewMut<'a>, Self::ViewMut<'a>) {
        view.split_at_mut(at)
    }

    /// Widens each f32 exactly.
    fn upload(&self, dst: &mut [f64], src: &[f32]) -> Result<(), HostError> {
        assert_eq!(dst.len(), src.len(), "upload: lengths differ");
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = f64::from(s);
        }
        Ok(())
    }

    /// Rounds each f64 to the nearest f32.
    fn download(&self, src: &[f64], dst: &mut [f32]) -> Result<(), HostError> {
        assert_eq!(dst.len(), src.len(), "download: lengths differ");
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s as f32;
        }
        Ok(())
    }

    fn copy(&self, dst: &mut [f64], src: &[f64]) -> Result<(), HostError> {
        dst.copy_from_slice(src);
        Ok(())
    }

    fn fill(&self, dst: &mut [f64], value: f32) -> Result<(), HostError> {
        dst.fill(f64::from(value));
        Ok(())
    }

    /// Nothing is ever queued.
    fn synchronize(&self) -> Result<(), HostError> {
        Ok(())
    }
}

impl Gemm for Reference {
    fn gemm(&self, c: &mut [f64], a: &[f64], b: &[f64], args: &GemmArgs) -> Result<(), HostError> {
        gemm::gemm(c, a, b, args);
        Ok(())
    }
}

impl Elementwise for Reference {
    fn add_assign(&self, x: &mut [f64], y: &[f64]) -> Result<(), HostError> {
        elementwise::add_assign(x, y);
        Ok(())
    }

    fn scale(&self, x: &mut [f64], alpha: f32) -> Result<(), HostError> {
        elementwise::scale(x, f64::from(alpha));
        Ok(())
    }

    fn add_broadcast(
        &self,
        out: &mut [f64],
        v: &[f64],
        outer: usize,
        len: usize,
        inner: usize,
    ) -> Result<(), HostError> {
        elementwise::add_broadcast(out, v, outer, len, inner);
        Ok(())
    }

    fn sum_broadcast(
        &self,
        dv: &mut [f64],
        dout: &[f64],
        outer: usize,
        len: usize,
        inner: usize,
    ) -> Result<(), HostError> {
        elementwise::sum_broadcast(dv, dout, outer, len, inner);
        Ok(())
    }

    fn repeat_forward(
        &self,
        out: &mut [f64],
        x: &[f64],
        batch: usize,
        copies: usize,
        len: usize,
    ) -> Result<(), HostError> {
        elementwise::repeat_forward(out, x, batch, copies, len);
        Ok(())
    }

    fn repeat_backward(
        &self,
        dx: &mut [f64],
        dout: &[f64],
        batch: usize,
        copies: usize,
        len: usize,
    ) -> Result<(), HostError> {
        elementwise::repeat_backward(dx, dout, batch, copies, len);
        Ok(())
    }

    fn gelu_forward(&self, out: &mut [f64], x: &[f64]) -> Result<(), HostError> {
        elementwise::gelu_forward(out, x);
        Ok(())
    }

    fn gelu_backward(&self, d: &mut [f64], x: &[f64]) -> Result<(), HostError> {
        elementwise::gelu_backward(d, x);
        Ok(())
    }
}

impl Norm for Reference {
    fn layernorm_forward(
        &self,
        out: &mut [f64],
        mean: &mut [f64],
        rstd: &mut [f64],
        x: &[f64],
        gamma: &[f64],
        beta: &[f64],
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(), HostError> {
        norm::layernorm_forward(out, mean, rstd, x, gamma, beta, rows, cols, f64::from(eps));
        Ok(())
    }

    fn layernorm_backward(
        &self,
        dx: &mut [f64],
        dgamma: &mut [f64],
        dbeta: &mut [f64],
        dout: &[f64],
        x: &[f64],
        gamma: &[f64],
        mean: &[f64],
        rstd: &[f64],
        rows: usize,
        cols: usize,
    ) -> Result<(), HostError> {
        norm::layernorm_backward(dx, dgamma, dbeta, dout, x, gamma, mean, rstd, rows, cols);
        Ok(())
    }
}

impl Attention for Reference {
    fn self_attention_forward(
        &self,
        out: &mut [f64],
        probs: &mut [f64],
        qkv: &[f64],
        args: &AttentionArgs,
    ) -> Result<(), HostError> {
        attention::self_attention_forward(out, probs, qkv, args);
        Ok(())
    }

    fn self_attention_backward(
        &self,
        dqkv: &mut [f64],
        scratch: &mut [f64],
        dout: &[f64],
        qkv: &[f64],
        probs: &[f64],
        args: &AttentionArgs,
    ) -> Result<(), HostError> {
        attention::self_attention_backward(dqkv, scratch, dout, qkv, probs, args);
        Ok(())
    }

    fn cross_attention_forward(
        &self,
        out: &mut [f64],
        probs: &mut [f64],
        q: &[f64],
        kv: &[f64],
        args: &AttentionArgs,
    ) -> Result<(), HostError> {
        attention::cross_attention_forward(out, probs, q, kv, args);
        Ok(())
    }

    fn cross_attention_backward(
        &self,
        dq: &mut [f64],
        dkv: &mut [f64],
        scratch: &mut [f64],
        dout: &[f64],
        q: &[f64],
        kv: &[f64],
        probs: &[f64],
        args: &AttentionArgs,
    ) -> Result<(), HostError> {
        attention::cross_attention_backward(dq, dkv, scratch, dout, q, kv, probs, args);
        Ok(())
    }
}

impl Tokens for Reference {
    fn patchify(&self, out: &mut [f64], img: &[f64], args: &PatchArgs) -> Result<(), HostError> {
        tokens::patchify(out, img, args);
        Ok(())
    }

    fn prepend_cls_forward(
        &self,
        out: &mut [f64],
        patches: &[f64],
        cls: &[f64],
        batch: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<(), HostError> {
        tokens::prepend_cls_forward(out, patches, cls, batch, tokens, dim);
        Ok(())
    }

    fn prepend_cls_backward(
        &self,
        dpatches: Option<&mut [f64]>,
        dcls: &mut [f64],
        dout: &[f64],
        batch: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<(), HostError> {
        tokens::prepend_cls_backward(dpatches, dcls, dout, batch, tokens, dim);
        Ok(())
    }

    fn mean_pool_forward(
        &self,
        out: &mut [f64],
        x: &[f64],
        batch: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<(), HostError> {
        tokens::mean_pool_forward(out, x, batch, tokens, dim);
        Ok(())
    }

    fn mean_pool_backward(
        &self,
        dx: &mut [f64],
        dout: &[f64],
        batch: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<(), HostError> {
        tokens::mean_pool_backward(dx, dout, batch, tokens, dim);
        Ok(())
    }

    fn upsample_bilinear_forward(
        &self,
        out: &mut [f64],
        x: &[f64],
        planes: usize,
        in_h: usize,
        in_w: usize,
        out_h: usize,
        out_w: usize,
    ) -> Result<(), HostError> {
        tokens::upsample_bilinear_forward(out, x, planes, in_h, in_w, out_h, out_w);
        Ok(())
    }

    fn upsample_bilinear_backward(
        &self,
        dx: &mut [f64],
        dout: &[f64],
        planes: usize,
        in_h: usize,
        in_w: usize,
        out_h: usize,
        out_w: usize,
    ) -> Result<(), HostError> {
        tokens::upsample_bilinear_backward(dx, dout, planes, in_h, in_w, out_h, out_w);
        Ok(())
    }
}

impl Conv for Reference {
    fn depthwise_xcorr_forward(
        &self,
        out: &mut [f64],
        x: &[f64],
        t: &[f64],
        args: &XcorrArgs,
    ) -> Result<(), HostError> {
        conv::depthwise_xcorr_forward(out, x, t, args);
        Ok(())
    }

    fn depthwise_xcorr_backward(
        &self,
        dx: &mut [f64],
        dt: &mut [f64],
        dout: &[f64],
        x: &[f64],
        t: &[f64],
        args: &XcorrArgs,
    ) -> Result<(), HostError> {
        conv::depthwise_xcorr_backward(dx, dt, dout, x, t, args);
        Ok(())
    }

    fn conv_transpose_forward(
        &self,
        out: &mut [f64],
        x: &[f64],
        weight: &[f64],
        bias: &[f64],
        args: &ConvTransposeArgs,
    ) -> Result<(), HostError> {
        conv::conv_transpose_forward(out, x, weight, bias, args);
        Ok(())
    }

    fn conv_transpose_backward(
        &self,
        dx: &mut [f64],
        dweight: &mut [f64],
        dbias: &mut [f64],
        dout: &[f64],
        x: &[f64],
        weight: &[f64],
        args: &ConvTransposeArgs,
    ) -> Result<(), HostError> {
        conv::conv_transpose_backward(dx, dweight, dbias, dout, x, weight, args);
        Ok(())
    }
}

impl MapLossOps for Reference {
    fn map_loss_forward(
        &self,
        loss: &mut [f64],
        logits: &[f64],
        target: &[f64],
        args: &MapLossArgs,
    ) -> Result<(), HostError> {
        loss[0] = loss::map_loss_forward(logits, target, args);
        Ok(())
    }

    fn map_loss_backward(
        &self,
        dlogits: &mut [f64],
        logits: &[f64],
        target: &[f64],
        args: &MapLossArgs,
    ) -> Result<(), HostError> {
        loss::map_loss_backward(dlogits, logits, target, args);
        Ok(())
    }
}

impl Optim for Reference {
    fn adamw_update(
        &self,
        param: &mut [f64],
        m: &mut [f64],
        v: &mut [f64],
        grad: &[f64],
        args: &AdamWArgs,
    ) -> Result<(), HostError> {
        optim::adamw_update(param, m, v, grad, args);
        Ok(())
    }

    fn ema_update(
        &self,
        target: &mut [f64],
        online: &[f64],
        momentum: f64,
    ) -> Result<(), HostError> {
        optim::ema_update(target, online, momentum);
        Ok(())
    }

    fn sum_squares(&self, out: &mut [f64], x: &[f64]) -> Result<(), HostError> {
        out[0] = optim::sum_squares(x);
        Ok(())
    }

    fn clip_by_norm(&self, x: &mut [f64], norm_sq: &[f64], max_norm: f32) -> Result<(), HostError> {
        optim::clip_by_norm(x, norm_sq[0], f64::from(max_norm));
        Ok(())
    }
}

impl Backend for Reference {
    fn name(&self) -> &str {
        "reference"
    }

    /// F32: the column of the tolerance table it anchors (it computes in f64).
    fn precision(&self) -> Precision {
        Precision::F32
    }
}
