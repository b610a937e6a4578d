//! The cases the checks run on: sizes, scalars and a seed, nothing else.
//!
//! A case is small, plain data (`Clone + Debug`), so a failing one prints in full and can
//! be rebuilt by hand; the tensors themselves are generated from `seed` with
//! [`cim_spec::rng::CimRng`], identically for the backend and the reference. The
//! strategies in [`crate::strategies`] produce them; a third party may also write cases
//! directly. `scale`-like fields set the magnitude of the generated values.

use cim_spec::backend::{
    AttentionArgs, ConvTransposeArgs, GemmArgs, LinearArgs, MapLossArgs, PatchArgs, XcorrArgs,
};
use cim_spec::loss::MapLoss;

/// Where consecutive matrices of a batched GEMM operand start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Back to back: stride = matrix size.
    Packed,
    /// One matrix for the whole batch: stride 0.
    Broadcast,
    /// Back to back with a gap of this many elements: stride = size + gap.
    Padded(usize),
}

impl Layout {
    /// The stride for matrices of `size` elements.
    pub fn stride(self, size: usize) -> usize {
        match self {
            Layout::Packed => size,
            Layout::Broadcast => 0,
            Layout::Padded(gap) => size + gap,
        }
    }
}

/// Elements spanned by `batch` matrices of `size` elements placed `stride` apart.
pub(crate) fn span(batch: usize, stride: usize, size: usize) -> usize {
    if batch == 0 {
        0
    } else {
        (batch - 1) * stride + size
    }
}

/// A batched, strided GEMM.
#[derive(Clone, Debug, PartialEq)]
pub struct GemmCase {
    /// Seed of the inputs.
    pub seed: u64,
    /// Independent products (0 is legal).
    pub batch: usize,
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// Inner dimension (0 is legal: `C = beta C`).
    pub k: usize,
    /// A stored `[k, m]`.
    pub trans_a: bool,
    /// B stored `[n, k]`.
    pub trans_b: bool,
    /// Scale of the product.
    pub alpha: f32,
    /// 0 (C written, starts as NaN) or 1 (C accumulated, starts nonzero).
    pub beta: f32,
    /// Placement of the A matrices.
    pub a_layout: Layout,
    /// Placement of the B matrices.
    pub b_layout: Layout,
    /// Gap between consecutive C matrices (the gap must stay untouched).
    pub c_gap: usize,
    /// Magnitude of the entries of A and B.
    pub scale: f32,
}

impl GemmCase {
    /// The op's arguments.
    pub fn args(&self) -> GemmArgs {
        let (m, n, k) = (self.m, self.n, self.k);
        GemmArgs {
            batch: self.batch,
            m,
            n,
            k,
            trans_a: self.trans_a,
            trans_b: self.trans_b,
            alpha: self.alpha,
            beta: self.beta,
            stride_a: self.a_layout.stride(m * k),
            stride_b: self.b_layout.stride(k * n),
            stride_c: m * n + self.c_gap,
        }
    }
}

/// A linear layer's forward or parameter gradients (`linear_forward`,
/// `linear_backward_params`).
#[derive(Clone, Debug, PartialEq)]
pub struct LinearCase {
    /// Seed of the inputs.
    pub seed: u64,
    /// Vectors the layer is applied to (0 is legal).
    pub rows: usize,
    /// Input features (0 is legal: `y = bias`).
    pub inp: usize,
    /// Output features.
    pub out: usize,
    /// Magnitude of the entries of x, W and dy.
    pub scale: f32,
}

impl LinearCase {
    /// The op's arguments.
    pub fn args(&self) -> LinearArgs {
        LinearArgs {
            rows: self.rows,
            inp: self.inp,
            out: self.out,
        }
    }
}

/// A flat vector op (`add_assign`, GELU, `sum_squares`).
#[derive(Clone, Debug, PartialEq)]
pub struct VectorCase {
    /// Seed of the inputs.
    pub seed: u64,
    /// Elements (0 is legal).
    pub len: usize,
    /// Magnitude of the values.
    pub scale: f32,
}

/// `x *= alpha`.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleCase {
    /// Seed of the inputs.
    pub seed: u64,
    /// Elements.
    pub len: usize,
    /// The factor.
    pub alpha: f32,
    /// Magnitude of the values.
    pub scale: f32,
}

/// `add_broadcast` / `sum_broadcast` over `[outer, len, inner]`.
#[derive(Clone, Debug, PartialEq)]
pub struct BroadcastCase {
    /// Seed of the inputs.
    pub seed: u64,
    /// Leading extent (0 is legal).
    pub outer: usize,
    /// Extent of the broadcast vector.
    pub len: usize,
    /// Trailing extent.
    pub inner: usize,
    /// Magnitude of the values.
    pub scale: f32,
}

/// `repeat_forward` / `repeat_backward`: `[B, L]` to `[B, K, L]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RepeatCase {
    /// Seed of the inputs.
    pub seed: u64,
    /// B.
    pub batch: usize,
    /// K.
    pub copies: usize,
    /// L.
    pub len: usize,
    /// Magnitude of the values.
    pub scale: f32,
}

/// LayerNorm over `[rows, cols]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNormCase {
    /// Seed of the inputs.
    pub seed: u64,
    /// Rows (0 is legal).
    pub rows: usize,
    /// Columns (at least 1).
    pub cols: usize,
    /// Standard deviation of each row of x.
    pub scale: f32,
    /// Largest row mean in units of the row's standard deviation (the table assumes at
    /// most ~100); at least 1, so the `mean` output is not all rounding noise.
    pub offset: f32,
    /// The epsilon under the square root.
    pub eps: f32,
    /// Magnitude of the output gradient (backward).
    pub grad_scale: f32,
}

/// Multi-head attention (self-attention cases have `q_len == kv_len`).
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionCase {
    /// Seed of the inputs.
    pub seed: u64,
    /// Sizes.
    pub args: AttentionArgs,
    /// Magnitude of q and k (scores are about `qk_scale^2`).
    pub qk_scale: f32,
    /// Magnitude of v.
    pub v_scale: f32,
    /// Magnitude of the output gradient (backward).
    pub grad_scale: f32,
}

/// `patchify` of `[B, C, H, W]` images.
#[derive(Clone, Debug, PartialEq)]
pub struct PatchifyCase {
    /// Seed of the pixels.
    pub seed: u64,
    /// Sizes.
    pub args: PatchArgs,
}

/// `prepend_cls_forward` / `prepend_cls_backward`.
#[derive(Clone, Debug, PartialEq)]
pub struct PrependClsCase {
    /// Seed of the inputs.
    pub seed: u64,
    /// B (0 is legal).
    pub batch: usize,
    /// Patch tokens T (0 is legal).
    pub tokens: usize,
    /// D.
    pub dim: usize,
    /// Whether the backward is asked for the patch gradient too.
    pub with_dpatches: bool,
    /// Magnitude of the values.
    pub scale: f32,
}

/// `mean_pool_forward` / `mean_pool_backward` over `[B, 1 + T, D]`.
#[derive(Clone, Debug, PartialEq)]
pub struct MeanPoolCase {
    /// Seed of the inputs.
    pub seed: u64,
    /// B.
    pub batch: usize,
    /// Patch tokens T (at least 1).
    pub tokens: usize,
    /// D.
    pub dim: usize,
    /// Magnitude of the values.
    pub scale: f32,
}

/// Bilinear resampling (align_corners) of `[planes, in_h, in_w]` to `[planes, out_h, out_w]`.
#[derive(Clone, Debug, PartialEq)]
pub struct UpsampleCase {
    /// Seed of the inputs.
    pub seed: u64,
    /// Planes (0 is legal).
    pub planes: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
    /// Magnitude of the values.
    pub scale: f32,
}

/// Depthwise cross-correlation of token maps (the S4 "conv" correlation), both
/// directions.
#[derive(Clone, Debug, PartialEq)]
pub struct XcorrCase {
    /// Seed of the inputs.
    pub seed: u64,
    /// Sizes and the scale of the sums.
    pub args: XcorrArgs,
    /// Magnitude of the maps x.
    pub x_scale: f32,
    /// Magnitude of the kernels t.
    pub t_scale: f32,
    /// Magnitude of the output gradient (backward).
    pub grad_scale: f32,
}

/// Transposed convolution (the S4 deconvolution predictor), both directions.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvTransposeCase {
    /// Seed of the inputs.
    pub seed: u64,
    /// Sizes (the output has at least one pixel a side).
    pub args: ConvTransposeArgs,
    /// Magnitude of the input token maps.
    pub x_scale: f32,
    /// Magnitude of the weight and bias.
    pub w_scale: f32,
    /// Magnitude of the output gradient (backward).
    pub grad_scale: f32,
}

/// A map loss (S5) over `[maps, C, pixels]` logits.
#[derive(Clone, Debug, PartialEq)]
pub struct MapLossCase {
    /// Seed of the logits and targets.
    pub seed: u64,
    /// Which loss.
    pub kind: MapLoss,
    /// Maps (0 is legal).
    pub maps: usize,
    /// Pixels per map.
    pub pixels: usize,
    /// The loss multiplier.
    pub scale: f32,
    /// Magnitude of the logits.
    pub logit_scale: f32,
    /// Share of inside pixels in the random maps.
    pub density: f64,
    /// Map 0 all outside and map 1 all inside (the balanced loss's edge cases).
    pub edge_maps: bool,
    /// Targets 0.2 / 0.8 instead of 0 / 1 (the contract: above 0.5 counts as inside).
    pub soft_targets: bool,
}

impl MapLossCase {
    /// The op's arguments.
    pub fn args(&self) -> MapLossArgs {
        MapLossArgs {
            kind: self.kind,
            maps: self.maps,
            pixels: self.pixels,
            scale: self.scale,
        }
    }
}

/// One AdamW update.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWCase {
    /// Seed of parameters, moments and gradient.
    pub seed: u64,
    /// Elements.
    pub len: usize,
    /// Learning rate.
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Step t (at least 1).
    pub step: u64,
    /// Magnitude of the parameters.
    pub param_scale: f32,
    /// Magnitude of the gradient (and of the moments).
    pub grad_scale: f32,
}

/// One EMA update.
#[derive(Clone, Debug, PartialEq)]
pub struct EmaCase {
    /// Seed of target and online values.
    pub seed: u64,
    /// Elements.
    pub len: usize,
    /// The momentum.
    pub momentum: f64,
    /// Magnitude of the values.
    pub scale: f32,
}

/// `clip_by_norm` with the norm of the vector itself.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipCase {
    /// Seed of the vector.
    pub seed: u64,
    /// Elements.
    pub len: usize,
    /// Magnitude of the values.
    pub scale: f32,
    /// `max_norm` as a multiple of the vector's norm (below 1 clips, above leaves alone).
    pub max_norm_ratio: f32,
}
