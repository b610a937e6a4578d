//! The backend contract: every op of the CIM training step (S3-S7) as a small trait.
//!
//! A [`Backend`] is the bundle of [`Memory`], [`Gemm`], [`Elementwise`], [`Norm`],
//! [`Attention`], [`Tokens`], [`Conv`], [`MapLossOps`] and [`Optim`], plus the linear
//! layer's two composite ops ([`Backend::linear_forward`],
//! [`Backend::linear_backward_params`]), provided as compositions of the others so that a
//! backend overrides them only to fuse (issue 6: bias epilogues of cuBLASLt). Conventions,
//! once for all ops:
//! - Arguments come as outputs first, then inputs, then sizes as plain `usize`. Buffers
//!   are contiguous and row-major (S1); a view is an offset and a length in one buffer.
//! - Sizes are checked once, by the wrappers in [`crate::ops`]; callers should go through
//!   them. Backends may assume the lengths fit and `debug_assert!` them.
//! - "writes" (`=`) means every element of the output is overwritten whatever it held
//!   (NaN included); "accumulates" (`+=`) means the result is added to what it holds.
//!   Forward outputs are written; which gradients accumulate is said per op and chosen so
//!   the model needs no extra adds: weight and bias gradients accumulate (gradient
//!   accumulation across micro-batches, modules applied twice such as the decoder's
//!   shared LN1), LayerNorm's input gradient accumulates into the residual stream, other
//!   input gradients are written.
//! - NaN: a NaN or infinity in an input reaches every output element that depends on it
//!   (no op hides one, e.g. with a max that drops NaN); the trainer relies on this to
//!   detect non-finite gradients from the global norm alone.
//! - Determinism: with the same inputs, an op gives the same bits on every run on the same
//!   backend and device (no atomics whose order varies). The conformance suite reruns to
//!   check it.
//! - Asynchrony: an op may return before the device has finished. Errors raised while it
//!   runs surface at the latest at [`Memory::synchronize`] or [`Memory::download`]. Inputs
//!   must stay untouched until then only in the sense the borrow checker already enforces.
//! - Precision: values cross the host boundary as `f32`. A backend stores each buffer in
//!   the precision it chooses for its [`Role`] (the CPU and reference backends: f32 and
//!   f64 everywhere; a mixed-precision GPU backend: bf16 activations, f32 parameters,
//!   gradients and optimizer state) and reports it through [`Backend::precision`], which
//!   selects the column of the tolerance table ([`crate::tolerance`]).

use core::ops::Range;

use crate::error::Error;
use crate::loss::MapLoss;

/// What a buffer holds; a backend may pick a storage precision per role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Model parameters (master weights).
    Param,
    /// Activations and their gradients inside a step.
    Activation,
    /// Parameter gradients.
    Gradient,
    /// Optimizer moments and other long-lived state (loss, norms).
    State,
}

/// The arithmetic a backend uses for activations; selects the tolerance column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// f32 storage, f32 (or wider) arithmetic throughout.
    F32,
    /// bf16 activations and GEMM inputs, f32 accumulation, f32 master weights.
    Bf16Mixed,
    /// f32 storage and arithmetic, except that GEMM inputs are rounded to TF32 (10
    /// mantissa bits) for tensor cores, with f32 accumulation. Compared under the bf16
    /// column: its bounds assume 8 mantissa bits on the same GEMM inputs, and every other
    /// op is f32.
    Tf32,
}

/// Device memory: buffers, views into them, transfers and synchronisation.
pub trait Memory {
    /// The backend's error type.
    type Error: Error;
    /// An owned allocation of `len` elements.
    type Buffer;
    /// A shared view: a contiguous range of one buffer.
    type View<'a>: Copy
    where
        Self: 'a;
    /// An exclusive view: a contiguous range of one buffer that ops may write.
    type ViewMut<'a>
    where
        Self: 'a;

    /// Allocates `len` elements for `role`. Contents are unspecified until written.
    fn alloc(&self, len: usize, role: Role) -> Result<Self::Buffer, Self::Error>;
    /// Elements in `buf`.
    fn buffer_len(buf: &Self::Buffer) -> usize;
    /// Elements in a view.
    fn view_len(view: &Self::View<'_>) -> usize;
    /// Elements in an exclusive view.
    fn view_mut_len(view: &Self::ViewMut<'_>) -> usize;
    /// A shared view of `range` of `buf`. Panics if the range is out of bounds (a
    /// programming error of the caller, like slice indexing).
    fn view<'a>(&'a self, buf: &'a Self::Buffer, range: Range<usize>) -> Self::View<'a>;
    /// An exclusive view of `range` of `buf`. Panics if out of bounds.
    fn view_mut<'a>(&'a self, buf: &'a mut Self::Buffer, range: Range<usize>) -> Self::ViewMut<'a>;
    /// A shorter-lived exclusive view of the same range, so one view can feed several ops.
    fn reborrow<'b>(view: &'b mut Self::ViewMut<'_>) -> Self::ViewMut<'b>
    where
        Self: 'b;
    /// A shared view of an exclusive view's range, to read back what an op wrote.
    fn as_view<'b>(view: &'b Self::ViewMut<'_>) -> Self::View<'b>
    where
        Self: 'b;
    /// A sub-range of a view. Panics if out of bounds.
    fn sub_view<'a>(view: Self::View<'a>, range: Range<usize>) -> Self::View<'a>;
    /// Splits an exclusive view at `at` into two disjoint exclusive views (like
    /// `split_at_mut`). Panics if `at` exceeds the length.
    fn split_mut<'a>(view: Self::ViewMut<'a>, at: usize) -> (Self::ViewMut<'a>, Self::ViewMut<'a>);
    /// Writes `src` into `dst` (same length).
    fn upload(&self, dst: Self::ViewMut<'_>, src: &[f32]) -> Result<(), Self::Error>;
    /// Reads `src` into `dst` (same length), after all work queued before it has finished;
    /// errors of that work surface here.
    fn download(&self, src: Self::View<'_>, dst: &mut [f32]) -> Result<(), Self::Error>;
    /// `dst = src` (same length, different buffers).
    fn copy(&self, dst: Self::ViewMut<'_>, src: Self::View<'_>) -> Result<(), Self::Error>;
    /// Sets every element of `dst` to `value`.
    fn fill(&self, dst: Self::ViewMut<'_>, value: f32) -> Result<(), Self::Error>;
    /// Waits until all queued work has finished; reports any error it raised.
    fn synchronize(&self) -> Result<(), Self::Error>;
}

/// Sizes and scalars of a batched, strided, row-major GEMM.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmArgs {
    /// Number of independent products.
    pub batch: usize,
    /// Rows of `op(A)` and of `C`.
    pub m: usize,
    /// Columns of `op(B)` and of `C`.
    pub n: usize,
    /// Columns of `op(A)`, rows of `op(B)`.
    pub k: usize,
    /// `op(A) = A^T`: A is stored `[k, m]` instead of `[m, k]`.
    pub trans_a: bool,
    /// `op(B) = B^T`: B is stored `[n, k]` instead of `[k, n]` (a `[out, in]` weight).
    pub trans_b: bool,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the old `C`; exactly 0 means `C` is written (its old contents, NaN
    /// included, are ignored), 1 means accumulate.
    pub beta: f32,
    /// Elements between consecutive A matrices (0 broadcasts one matrix).
    pub stride_a: usize,
    /// Elements between consecutive B matrices (0 broadcasts one matrix).
    pub stride_b: usize,
    /// Elements between consecutive C matrices (at least `m * n`).
    pub stride_c: usize,
}

impl GemmArgs {
    /// One plain product `C[m,n] = op(A) op(B)` (alpha 1, beta 0, batch 1).
    pub fn single(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Self {
        GemmArgs {
            batch: 1,
            m,
            n,
            k,
            trans_a,
            trans_b,
            alpha: 1.0,
            beta: 0.0,
            stride_a: m * k,
            stride_b: k * n,
            stride_c: m * n,
        }
    }
}

/// Matrix products.
pub trait Gemm: Memory {
    /// For each b < batch: `C_b = alpha * op(A_b) op(B_b) + beta * C_b`, where
    /// `A_b = a[b*stride_a ..]` is `[m,k]` (`[k,m]` if `trans_a`), `B_b = b[b*stride_b ..]`
    /// is `[k,n]` (`[n,k]` if `trans_b`), `C_b = c[b*stride_c ..]` is `[m,n]`, all
    /// row-major and contiguous. With `beta == 0` C is written, otherwise accumulated.
    /// Accumulation is in f32 or wider. Linear layers call it with `trans_b` and the
    /// `[out,in]` weight (S1); the predictor's 1x1 conv (S4) with strides.
    fn gemm(
        &self,
        c: Self::ViewMut<'_>,
        a: Self::View<'_>,
        b: Self::View<'_>,
        args: &GemmArgs,
    ) -> Result<(), Self::Error>;
}

/// Sizes of a linear layer applied to `rows` vectors: `x` `[rows, inp]`, weight `[out, inp]`
/// (S1: PyTorch's order), bias `[out]`, `y` `[rows, out]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearArgs {
    /// Vectors (tokens) the layer is applied to.
    pub rows: usize,
    /// Input features.
    pub inp: usize,
    /// Output features.
    pub out: usize,
}

impl LinearArgs {
    /// The forward product `y = x W^T` (written).
    pub fn forward_gemm(&self) -> GemmArgs {
        GemmArgs::single(self.rows, self.out, self.inp, false, true)
    }

    /// The weight-gradient product `dW += dy^T x` (accumulated).
    pub fn weight_gradient_gemm(&self) -> GemmArgs {
        GemmArgs {
            beta: 1.0,
            ..GemmArgs::single(self.out, self.inp, self.rows, true, false)
        }
    }
}

/// Element-wise and broadcast ops.
pub trait Elementwise: Memory {
    /// `x += y` (same length): the residual add of S3/S4.
    fn add_assign(&self, x: Self::ViewMut<'_>, y: Self::View<'_>) -> Result<(), Self::Error>;
    /// `x *= alpha`.
    fn scale(&self, x: Self::ViewMut<'_>, alpha: f32) -> Result<(), Self::Error>;
    /// Broadcast add: `out[o, l, i] += v[l]` for `out` of shape `[outer, len, inner]` and
    /// `v` of `[len]`. A bias over `[rows, D]` is `(rows, D, 1)`; a position embedding
    /// `[N*D]` over `[B, N, D]` is `(B, N*D, 1)`; a per-channel bias over `[N, C, P]` is
    /// `(N, C, P)`.
    fn add_broadcast(
        &self,
        out: Self::ViewMut<'_>,
        v: Self::View<'_>,
        outer: usize,
        len: usize,
        inner: usize,
    ) -> Result<(), Self::Error>;
    /// Backward of [`Elementwise::add_broadcast`]: `dv[l] += sum_{o,i} dout[o, l, i]`
    /// (accumulates).
    fn sum_broadcast(
        &self,
        dv: Self::ViewMut<'_>,
        dout: Self::View<'_>,
        outer: usize,
        len: usize,
        inner: usize,
    ) -> Result<(), Self::Error>;
    /// `out[b, k, :] = x[b, :]` for `out` `[B, K, L]` and `x` `[B, L]` (writes): one
    /// context's decoder tokens for each of its K exemplars (S4).
    fn repeat_forward(
        &self,
        out: Self::ViewMut<'_>,
        x: Self::View<'_>,
        batch: usize,
        copies: usize,
        len: usize,
    ) -> Result<(), Self::Error>;
    /// Backward of [`Elementwise::repeat_forward`]: `dx[b, :] = sum_k dout[b, k, :]`
    /// (writes).
    fn repeat_backward(
        &self,
        dx: Self::ViewMut<'_>,
        dout: Self::View<'_>,
        batch: usize,
        copies: usize,
        len: usize,
    ) -> Result<(), Self::Error>;
    /// Exact GELU (S3): `out = x * (1 + erf(x / sqrt 2)) / 2` (writes).
    fn gelu_forward(&self, out: Self::ViewMut<'_>, x: Self::View<'_>) -> Result<(), Self::Error>;
    /// In place: `d = d * gelu'(x)` with `gelu'(x) = Phi(x) + x phi(x)`; `d` holds the
    /// output gradient on entry and the input gradient on return.
    fn gelu_backward(&self, d: Self::ViewMut<'_>, x: Self::View<'_>) -> Result<(), Self::Error>;
}

/// LayerNorm (S3: eps 1e-6, biased variance over the last axis).
pub trait Norm: Memory {
    /// For each of `rows` rows of `cols`: `mean = sum x / cols`,
    /// `rstd = 1 / sqrt(sum (x - mean)^2 / cols + eps)`, `out = (x - mean) rstd gamma + beta`.
    /// Writes `out` `[rows, cols]`, `mean` and `rstd` `[rows]` (kept for the backward).
    #[allow(clippy::too_many_arguments)]
    fn layernorm_forward(
        &self,
        out: Self::ViewMut<'_>,
        mean: Self::ViewMut<'_>,
        rstd: Self::ViewMut<'_>,
        x: Self::View<'_>,
        gamma: Self::View<'_>,
        beta: Self::View<'_>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(), Self::Error>;
    /// With `xhat = (x - mean) rstd` and `g = dout * gamma`:
    /// `dx += rstd (g - mean_c(g) - xhat mean_c(g xhat))` (accumulates into the residual
    /// stream), `dgamma += sum_rows dout xhat`, `dbeta += sum_rows dout` (accumulate).
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(
        &self,
        dx: Self::ViewMut<'_>,
        dgamma: Self::ViewMut<'_>,
        dbeta: Self::ViewMut<'_>,
        dout: Self::View<'_>,
        x: Self::View<'_>,
        gamma: Self::View<'_>,
        mean: Self::View<'_>,
        rstd: Self::View<'_>,
        rows: usize,
        cols: usize,
    ) -> Result<(), Self::Error>;
}

/// Sizes of a multi-head attention call; `dim = heads * head_dim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionArgs {
    /// Independent sequences.
    pub batch: usize,
    /// Query tokens per sequence.
    pub q_len: usize,
    /// Key/value tokens per sequence (equal to `q_len` for self-attention).
    pub kv_len: usize,
    /// Heads.
    pub heads: usize,
    /// Channels per head.
    pub head_dim: usize,
}

/// Multi-head attention with the softmax inside; scale `1/sqrt(head_dim)` (S3, S4).
/// Head `h` uses channels `h*head_dim .. (h+1)*head_dim` of q, k, v and the output.
/// `probs[b, h, i, j] = softmax_j(scale q_i . k_j)` is written for the backward, and
/// `out[b, i, h*hd + c] = sum_j probs[b,h,i,j] v[b, j, h*hd + c]` (writes).
pub trait Attention: Memory {
    /// Self-attention over packed `qkv` `[B, N, 3D]` (q | k | v along the last axis, as
    /// timm's fused qkv linear produces them). Writes `out` `[B, N, D]` and `probs`
    /// `[B, H, N, N]`.
    fn self_attention_forward(
        &self,
        out: Self::ViewMut<'_>,
        probs: Self::ViewMut<'_>,
        qkv: Self::View<'_>,
        args: &AttentionArgs,
    ) -> Result<(), Self::Error>;
    /// Writes `dqkv` `[B, N, 3D]`; `scratch` (`[B, H, N, N]`) is working memory whose
    /// contents on return are unspecified.
    fn self_attention_backward(
        &self,
        dqkv: Self::ViewMut<'_>,
        scratch: Self::ViewMut<'_>,
        dout: Self::View<'_>,
        qkv: Self::View<'_>,
        probs: Self::View<'_>,
        args: &AttentionArgs,
    ) -> Result<(), Self::Error>;
    /// Cross-attention: queries `q` `[B, Nq, D]`, packed `kv` `[B, Nk, 2D]` (k | v).
    /// Writes `out` `[B, Nq, D]` and `probs` `[B, H, Nq, Nk]`.
    fn cross_attention_forward(
        &self,
        out: Self::ViewMut<'_>,
        probs: Self::ViewMut<'_>,
        q: Self::View<'_>,
        kv: Self::View<'_>,
        args: &AttentionArgs,
    ) -> Result<(), Self::Error>;
    /// Writes `dq` `[B, Nq, D]` and `dkv` `[B, Nk, 2D]`; `scratch` (`[B, H, Nq, Nk]`) is
    /// working memory whose contents on return are unspecified.
    #[allow(clippy::too_many_arguments)]
    fn cross_attention_backward(
        &self,
        dq: Self::ViewMut<'_>,
        dkv: Self::ViewMut<'_>,
        scratch: Self::ViewMut<'_>,
        dout: Self::View<'_>,
        q: Self::View<'_>,
        kv: Self::View<'_>,
        probs: Self::View<'_>,
        args: &AttentionArgs,
    ) -> Result<(), Self::Error>;
}

/// Sizes of an image-to-patch or token-sequence op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchArgs {
    /// Images.
    pub batch: usize,
    /// Channels per image (3 for RGB).
    pub channels: usize,
    /// Image height in pixels (a multiple of `patch`).
    pub height: usize,
    /// Image width in pixels (a multiple of `patch`).
    pub width: usize,
    /// Patch side p.
    pub patch: usize,
}

/// Patch embedding, class token, position embedding, pooling and resampling.
pub trait Tokens: Memory {
    /// im2col for the patch embedding (S3): `img` `[B, C, H, W]` to `out`
    /// `[B, (H/p)(W/p), C p p]`, patches in row-major grid order, each patch's values in
    /// `(c, ky, kx)` order, the order of a conv weight `[D, C, p, p]` viewed as
    /// `[D, C p p]`. The patch embedding is then this, a GEMM with that weight
    /// (`trans_b`) and a bias add. Writes. (No backward: images need no gradient; the
    /// weight gradient is a GEMM of the patches.)
    fn patchify(
        &self,
        out: Self::ViewMut<'_>,
        img: Self::View<'_>,
        args: &PatchArgs,
    ) -> Result<(), Self::Error>;
    /// Sequence assembly (S3): `out[b, 0, :] = cls`, `out[b, 1 + t, :] = patches[b, t, :]`
    /// for `out` `[B, 1+T, D]`, `patches` `[B, T, D]`, `cls` `[D]` (writes). The position
    /// embedding is added after it with [`Elementwise::add_broadcast`].
    fn prepend_cls_forward(
        &self,
        out: Self::ViewMut<'_>,
        patches: Self::View<'_>,
        cls: Self::View<'_>,
        batch: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<(), Self::Error>;
    /// Backward of [`Tokens::prepend_cls_forward`]: `dcls += sum_b dout[b, 0, :]`
    /// (accumulates) and, when given, `dpatches[b, t, :] = dout[b, 1 + t, :]` (writes).
    #[allow(clippy::too_many_arguments)]
    fn prepend_cls_backward(
        &self,
        dpatches: Option<Self::ViewMut<'_>>,
        dcls: Self::ViewMut<'_>,
        dout: Self::View<'_>,
        batch: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<(), Self::Error>;
    /// Mean of the patch tokens (S10 features): `out[b, :] = mean_{t>=1} x[b, t, :]` for
    /// `x` `[B, 1+T, D]` (writes; `T >= 1`).
    fn mean_pool_forward(
        &self,
        out: Self::ViewMut<'_>,
        x: Self::View<'_>,
        batch: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<(), Self::Error>;
    /// Backward of the mean pool: `dx[b, 0, :] = 0`, `dx[b, t, :] = dout[b, :] / T`
    /// (writes).
    fn mean_pool_backward(
        &self,
        dx: Self::ViewMut<'_>,
        dout: Self::View<'_>,
        batch: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<(), Self::Error>;
    /// Bilinear resampling with `align_corners = true` (S4): `x` `[N, h, w]` to `out`
    /// `[N, H, W]`; output pixel (i, j) reads source (i (h-1)/(H-1), j (w-1)/(W-1)) (0 when
    /// the output side is 1), interpolating the four neighbours (writes).
    #[allow(clippy::too_many_arguments)]
    fn upsample_bilinear_forward(
        &self,
        out: Self::ViewMut<'_>,
        x: Self::View<'_>,
        planes: usize,
        in_h: usize,
        in_w: usize,
        out_h: usize,
        out_w: usize,
    ) -> Result<(), Self::Error>;
    /// Backward: `dx` is the transpose of the interpolation applied to `dout` (writes).
    #[allow(clippy::too_many_arguments)]
    fn upsample_bilinear_backward(
        &self,
        dx: Self::ViewMut<'_>,
        dout: Self::View<'_>,
        planes: usize,
        in_h: usize,
        in_w: usize,
        out_h: usize,
        out_w: usize,
    ) -> Result<(), Self::Error>;
}

/// Sizes of a per-channel (depthwise) cross-correlation of token maps: the S4 "conv"
/// correlation option, SiamFC's correlation with the exemplar's features as kernels slid
/// over the context's features, one kernel per channel.
///
/// Both operands are *token maps*: sequences in the S1 token layout, `[N, 1 + H W, C]`,
/// whose token 0 (the class token) is not part of the map and tokens `1 + y W + x` are
/// the map's pixels in row-major order, channels last, exactly as the decoder holds its
/// tokens (no reshape or transpose is materialised).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct XcorrArgs {
    /// Independent (map, kernel) pairs: B K in the decoder.
    pub batch: usize,
    /// Channels C: the decoder width d.
    pub channels: usize,
    /// Map height H: the context grid g.
    pub height: usize,
    /// Map width W.
    pub width: usize,
    /// Kernel height kh: the exemplar grid n / p.
    pub kernel_h: usize,
    /// Kernel width kw.
    pub kernel_w: usize,
    /// Multiplier of every sum; the decoder uses `1 / sqrt(kh kw)` (see the model).
    pub scale: f32,
}

impl XcorrArgs {
    /// Zero rows above the map, `(kh - 1) / 2` (rounded down): PyTorch's `padding='same'`
    /// split, which puts the odd one of an even kernel's `kh - 1` padding rows below.
    pub fn pad_h(&self) -> usize {
        self.kernel_h.saturating_sub(1) / 2
    }
    /// Zero columns left of the map, `(kw - 1) / 2` (rounded down).
    pub fn pad_w(&self) -> usize {
        self.kernel_w.saturating_sub(1) / 2
    }
}

/// Sizes of a 2-D transposed convolution (PyTorch's `ConvTranspose2d` with groups 1,
/// dilation 1, output padding 0, a square kernel): the S4 deconvolution predictor option.
/// The input is a token map `[N, 1 + H W, C_in]` (see [`XcorrArgs`]), the output NCHW
/// planes `[N, C_out, OH, OW]` with `OH = (H - 1) stride + kernel - 2 padding` (and `OW`
/// alike), the layout the bilinear upsampling reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTransposeArgs {
    /// Maps N.
    pub batch: usize,
    /// Input channels C_in (the decoder width d).
    pub in_channels: usize,
    /// Output channels C_out (the loss's logit channels).
    pub out_channels: usize,
    /// Input height H.
    pub height: usize,
    /// Input width W.
    pub width: usize,
    /// Kernel side k.
    pub kernel: usize,
    /// Stride s.
    pub stride: usize,
    /// Implicit zero padding p removed from each side of the full output.
    pub padding: usize,
}

impl ConvTransposeArgs {
    /// Output side for an input side: `(side - 1) stride + kernel - 2 padding`, or `None`
    /// when that is not positive (or the input side is 0, or it overflows).
    pub fn out_side(&self, side: usize) -> Option<usize> {
        side.checked_sub(1)?
            .checked_mul(self.stride)?
            .checked_add(self.kernel)?
            .checked_sub(self.padding.checked_mul(2)?)
            .filter(|&o| o > 0)
    }
    /// Output height OH (0 when the sizes admit no output).
    pub fn out_height(&self) -> usize {
        self.out_side(self.height).unwrap_or(0)
    }
    /// Output width OW (0 when the sizes admit no output).
    pub fn out_width(&self) -> usize {
        self.out_side(self.width).unwrap_or(0)
    }
}

/// The convolutions of the decoder's Figure 4 options (S4): the depthwise
/// cross-correlation that replaces cross-attention, and the transposed convolution that
/// replaces the 1x1 predictor conv. Both read token maps (see [`XcorrArgs`]): token 0 of
/// each sequence is never read, and the input gradients write zeros there.
pub trait Conv: Memory {
    /// Depthwise cross-correlation with 'same' zero padding: for `x` `[N, 1 + H W, C]`
    /// (the maps), `t` `[N, 1 + kh kw, C]` (one kh x kw kernel per map and channel),
    /// `out[n, 1 + i W + j, c] = scale * sum_{u < kh, v < kw} x[n, 1 + (i + u - ph) W +
    /// (j + v - pw), c] * t[n, 1 + u kw + v, c]` over the terms whose row `i + u - ph` lies
    /// in `[0, H)` and column `j + v - pw` in `[0, W)` (the others read zero padding),
    /// `ph = (kh - 1) / 2`, `pw = (kw - 1) / 2` ([`XcorrArgs::pad_h`]); and
    /// `out[n, 0, :] = 0`. Writes `out` `[N, 1 + H W, C]`. As PyTorch's
    /// `conv2d(x, t, padding='same', groups=C)` per map (a cross-correlation: the kernel is
    /// not flipped).
    fn depthwise_xcorr_forward(
        &self,
        out: Self::ViewMut<'_>,
        x: Self::View<'_>,
        t: Self::View<'_>,
        args: &XcorrArgs,
    ) -> Result<(), Self::Error>;
    /// Backward of [`Conv::depthwise_xcorr_forward`] (`dout[n, 0, :]` is not read):
    /// `dx[n, 1 + y W + x, c] = scale * sum dout[n, 1 + i W + j, c] t[n, 1 + u kw + v, c]`
    /// over the in-map outputs `(i, j) = (y - u + ph, x - v + pw)`, and
    /// `dt[n, 1 + u kw + v, c] = scale * sum_{i, j} dout[n, 1 + i W + j, c]
    /// x[n, 1 + (i + u - ph) W + (j + v - pw), c]` over the in-map inputs. Writes `dx`
    /// `[N, 1 + H W, C]` and `dt` `[N, 1 + kh kw, C]`, each with zeros in its token 0
    /// (input gradients are written, as the contract's rule for them says).
    #[allow(clippy::too_many_arguments)]
    fn depthwise_xcorr_backward(
        &self,
        dx: Self::ViewMut<'_>,
        dt: Self::ViewMut<'_>,
        dout: Self::View<'_>,
        x: Self::View<'_>,
        t: Self::View<'_>,
        args: &XcorrArgs,
    ) -> Result<(), Self::Error>;
    /// Transposed convolution: for `x` `[N, 1 + H W, C_in]`, `weight` `[C_in, C_out, k, k]`
    /// (PyTorch's `ConvTranspose2d` storage) and `bias` `[C_out]`,
    /// `out[n, o, oy, ox] = bias[o] + sum x[n, 1 + iy W + ix, c] weight[c, o, ky, kx]`
    /// over all `c` and all `(iy, ky)`, `(ix, kx)` with `oy = iy s - p + ky`,
    /// `ox = ix s - p + kx`, `0 <= ky, kx < k`: each input pixel scatters a k x k patch of
    /// its weights at stride s, and p rows and columns are cut from each side. Writes
    /// `out` `[N, C_out, OH, OW]`.
    fn conv_transpose_forward(
        &self,
        out: Self::ViewMut<'_>,
        x: Self::View<'_>,
        weight: Self::View<'_>,
        bias: Self::View<'_>,
        args: &ConvTransposeArgs,
    ) -> Result<(), Self::Error>;
    /// Backward of [`Conv::conv_transpose_forward`]: with the same index relation,
    /// `dx[n, 1 + iy W + ix, c] = sum_{o, ky, kx} dout[n, o, iy s - p + ky, ix s - p + kx]
    /// weight[c, o, ky, kx]` over in-range output pixels, written, with `dx[n, 0, :] = 0`;
    /// `dweight[c, o, ky, kx] += sum_{n, iy, ix} x[n, 1 + iy W + ix, c] dout[n, o, oy, ox]`
    /// and `dbias[o] += sum_{n, oy, ox} dout[n, o, oy, ox]` (parameter gradients
    /// accumulate).
    #[allow(clippy::too_many_arguments)]
    fn conv_transpose_backward(
        &self,
        dx: Self::ViewMut<'_>,
        dweight: Self::ViewMut<'_>,
        dbias: Self::ViewMut<'_>,
        dout: Self::View<'_>,
        x: Self::View<'_>,
        weight: Self::View<'_>,
        args: &ConvTransposeArgs,
    ) -> Result<(), Self::Error>;
}

/// Sizes and scaling of a map-loss call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MapLossArgs {
    /// Which S5 loss.
    pub kind: MapLoss,
    /// Maps (batch x exemplars).
    pub maps: usize,
    /// Pixels per map (m^2).
    pub pixels: usize,
    /// Multiplier of the summed per-map means: `1 / (B * accum_iter)` gives S5's "mean
    /// over pixels and batch, sum over exemplars" for one micro-batch.
    pub scale: f32,
}

/// The S5 map losses; per-pixel formulas are in [`crate::loss`].
pub trait MapLossOps: Memory {
    /// `loss[0] = scale * sum_n (1/P) sum_p l(logits[n, :, p], target[n, p])` with `logits`
    /// `[maps, C, P]` (C = `kind.channels()`), `target` `[maps, P]` holding 0 or 1
    /// (a value above 0.5 counts as inside). Writes the one-element `loss`.
    fn map_loss_forward(
        &self,
        loss: Self::ViewMut<'_>,
        logits: Self::View<'_>,
        target: Self::View<'_>,
        args: &MapLossArgs,
    ) -> Result<(), Self::Error>;
    /// `dlogits = d loss / d logits` for the same loss (writes).
    fn map_loss_backward(
        &self,
        dlogits: Self::ViewMut<'_>,
        logits: Self::View<'_>,
        target: Self::View<'_>,
        args: &MapLossArgs,
    ) -> Result<(), Self::Error>;
}

/// Scalars of one AdamW update, computed on the host in f64 (S6).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWArgs {
    /// Learning rate of this step.
    pub lr: f64,
    /// Decoupled weight decay of this group (0 for 1-D tensors and biases).
    pub weight_decay: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// 1-based step count t.
    pub step: u64,
}

/// Optimizer, EMA and gradient-norm ops (S6, S7).
pub trait Optim: Memory {
    /// In place over equal-length views, in PyTorch's order (S6): `theta *= 1 - lr wd`;
    /// `m = b1 m + (1-b1) g`; `v = b2 v + (1-b2) g^2`;
    /// `theta -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
    fn adamw_update(
        &self,
        param: Self::ViewMut<'_>,
        m: Self::ViewMut<'_>,
        v: Self::ViewMut<'_>,
        grad: Self::View<'_>,
        args: &AdamWArgs,
    ) -> Result<(), Self::Error>;
    /// In place (S7): `target = momentum * target + (1 - momentum) * online`. The
    /// momentum comes in f64 because `1 - momentum` is what moves the target: an f32
    /// momentum near 1 would lose most of its digits. f32 backends take `momentum` and
    /// `1 - momentum` (computed in f64) each rounded to f32, as PyTorch does with the
    /// release's Python floats ([`crate::schedule::ema_scalar`]).
    fn ema_update(
        &self,
        target: Self::ViewMut<'_>,
        online: Self::View<'_>,
        momentum: f64,
    ) -> Result<(), Self::Error>;
    /// `out[0] = sum x^2` (writes; accumulated in f32 or wider, deterministic order).
    /// Over the whole gradient buffer it is the global norm squared; a non-finite
    /// gradient anywhere makes it non-finite.
    fn sum_squares(&self, out: Self::ViewMut<'_>, x: Self::View<'_>) -> Result<(), Self::Error>;
    /// Clipping by global norm (S6 option), reading the norm on the device:
    /// `x *= min(1, max_norm / (sqrt(norm_sq[0]) + 1e-6))`, as
    /// `torch.nn.utils.clip_grad_norm_`.
    fn clip_by_norm(
        &self,
        x: Self::ViewMut<'_>,
        norm_sq: Self::View<'_>,
        max_norm: f32,
    ) -> Result<(), Self::Error>;
}

/// A complete CIM backend: every op of the training step.
pub trait Backend:
    Gemm + Elementwise + Norm + Attention + Tokens + Conv + MapLossOps + Optim
{
    /// A short name for reports (`"reference"`, `"cpu"`, `"cuda:0"`).
    fn name(&self) -> &str;
    /// The activation precision, which selects the tolerance column.
    fn precision(&self) -> Precision;

    /// A linear layer's forward (S1, S3): `y = x W^T + bias` (writes `y`). Provided as
    /// [`linear_forward_separate`]; a backend may instead fuse the bias into the product
    /// (a GEMM epilogue) and is then compared under the GEMM row of the tolerance table.
    fn linear_forward(
        &self,
        y: Self::ViewMut<'_>,
        x: Self::View<'_>,
        weight: Self::View<'_>,
        bias: Self::View<'_>,
        args: &LinearArgs,
    ) -> Result<(), Self::Error> {
        linear_forward_separate(self, y, x, weight, bias, args)
    }

    /// A linear layer's parameter gradients, accumulated: `dweight += dy^T x`,
    /// `dbias += sum_rows dy`. Provided as [`linear_backward_params_separate`]; a backend
    /// may instead compute the bias gradient inside the product (a GEMM epilogue).
    fn linear_backward_params(
        &self,
        dweight: Self::ViewMut<'_>,
        dbias: Self::ViewMut<'_>,
        dy: Self::View<'_>,
        x: Self::View<'_>,
        args: &LinearArgs,
    ) -> Result<(), Self::Error> {
        linear_backward_params_separate(self, dweight, dbias, dy, x, args)
    }
}

/// [`Backend::linear_forward`] as two ops: [`Gemm::gemm`] with
/// [`LinearArgs::forward_gemm`], then [`Elementwise::add_broadcast`] of the bias. The
/// provided method, and the fallback of backends that fuse only some calls.
pub fn linear_forward_separate<B: Backend + ?Sized>(
    b: &B,
    mut y: B::ViewMut<'_>,
    x: B::View<'_>,
    weight: B::View<'_>,
    bias: B::View<'_>,
    args: &LinearArgs,
) -> Result<(), B::Error> {
    b.gemm(B::reborrow(&mut y), x, weight, &args.forward_gemm())?;
    b.add_broadcast(y, bias, args.rows, args.out, 1)
}

/// [`Backend::linear_backward_params`] as two ops: [`Gemm::gemm`] with
/// [`LinearArgs::weight_gradient_gemm`], then [`Elementwise::sum_broadcast`] of `dy`. The
/// provided method, and the fallback of backends that fuse only some calls.
pub fn linear_backward_params_separate<B: Backend + ?Sized>(
    b: &B,
    dweight: B::ViewMut<'_>,
    dbias: B::ViewMut<'_>,
    dy: B::View<'_>,
    x: B::View<'_>,
    args: &LinearArgs,
) -> Result<(), B::Error> {
    b.gemm(dweight, dy, x, &args.weight_gradient_gemm())?;
    b.sum_broadcast(dbias, dy, args.rows, args.out, 1)
}
