//! The tolerance table: how far a backend may be from the f64 reference, per op and
//! precision, each row with its reason.
//!
//! Fixed in advance from error analysis, never loosened to make a failing test pass
//! (DESIGN.md). The comparison is normwise, so cancellation in one element does not turn
//! a correct result into a failure: an output `x` passes against the reference `r` when
//! for every element `|x_i - r_i| <= abs + rel * max_j |r_j|`, computed in f64. `u` below
//! is the unit roundoff of the storage type (f32: 2^-24 ~ 6e-8; bf16: 2^-9 ~ 2e-3).
//! The reference sees the same f32 inputs the backend got (bf16 backends round them on
//! upload, which the bf16 column accounts for).

use crate::backend::Precision;

/// Every op direction the conformance suite checks, plus the whole training step.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Gemm,
    AddAssign,
    Scale,
    AddBroadcast,
    SumBroadcast,
    RepeatForward,
    RepeatBackward,
    GeluForward,
    GeluBackward,
    LayerNormForward,
    LayerNormBackward,
    SelfAttentionForward,
    SelfAttentionBackward,
    CrossAttentionForward,
    CrossAttentionBackward,
    Patchify,
    PrependClsForward,
    PrependClsBackward,
    MeanPoolForward,
    MeanPoolBackward,
    UpsampleForward,
    UpsampleBackward,
    DepthwiseXcorrForward,
    DepthwiseXcorrBackward,
    ConvTransposeForward,
    ConvTransposeBackward,
    MapLossForward,
    MapLossBackward,
    AdamW,
    Ema,
    SumSquares,
    ClipByNorm,
    /// Loss of whole training steps (issue 3 whole-step check).
    StepLoss,
    /// Every parameter gradient of a whole step.
    StepGradients,
    /// Parameters after AdamW and the target after EMA, several steps in.
    StepParameters,
}

/// An allowed deviation: `|x_i - r_i| <= abs + rel * max_j |r_j|`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Absolute floor (for outputs that are all zero in the reference).
    pub abs: f64,
    /// Relative to the largest reference magnitude of the output.
    pub rel: f64,
}

impl Tolerance {
    /// The worst ratio `|x_i - r_i| / (abs + rel * max|r|)` over the output: at most 1
    /// passes. NaN anywhere in `x` where `r` is finite (or the reverse) gives infinity;
    /// NaN where the reference has NaN, and equal infinities, match.
    pub fn worst_ratio(&self, x: &[f32], r: &[f64]) -> (f64, usize) {
        let scale = r
            .iter()
            .filter(|v| v.is_finite())
            .fold(0.0f64, |m, v| m.max(v.abs()));
        let bound = self.abs + self.rel * scale;
        let mut worst = (0.0f64, 0usize);
        for (i, (&xi, &ri)) in x.iter().zip(r).enumerate() {
            let xi = f64::from(xi);
            let ratio = if ri.is_nan() && xi.is_nan() {
                0.0
            } else if ri.is_infinite() || xi.is_infinite() || xi.is_nan() || ri.is_nan() {
                if xi == ri { 0.0 } else { f64::INFINITY }
            } else {
                let err = (xi - ri).abs();
                if err == 0.0 {
                    0.0
                } else if bound > 0.0 {
                    err / bound
                } else {
                    f64::INFINITY
                }
            };
            if ratio > worst.0 || (ratio.is_infinite() && !worst.0.is_infinite()) {
                worst = (ratio, i);
            }
        }
        worst
    }
}

/// One row of the table.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    /// The op direction.
    pub op: Op,
    /// Allowed deviation of an f32 backend.
    pub f32: Tolerance,
    /// Allowed deviation of a bf16-mixed backend.
    pub bf16: Tolerance,
    /// Why these numbers.
    pub reason: &'static str,
}

const fn t(rel: f64) -> Tolerance {
    Tolerance { abs: 1e-30, rel }
}

/// The table. Sizes assumed by the reasons: reductions of at most ~10^4 terms per output
/// (k <= 4096 in GEMMs, D <= 1280 in norms, sequences <= 257 tokens), LayerNorm rows whose
/// mean lies within ~30 standard deviations of zero (measured: an f32 row sum reaches the
/// bound near 30 std at D = 768; backends that take the mean in f64 or compensated have
/// more room).
pub const TABLE: &[Row] = &[
    Row {
        op: Op::Gemm,
        f32: t(1e-5),
        bf16: t(2e-2),
        reason: "f32: k-term dot products, rounding error grows like sqrt(k) u ~ 4e-6 of the output scale at k = 4096; bf16: both inputs rounded to bf16 (2u relative per product), f32 accumulation, output rounded once",
    },
    Row {
        op: Op::AddAssign,
        f32: t(1.2e-7),
        bf16: t(8e-3),
        reason: "one rounding of the sum (u of the result, below 2^-23 of the largest); bf16: the stored sum and its inputs are rounded",
    },
    Row {
        op: Op::Scale,
        f32: t(1.2e-7),
        bf16: t(8e-3),
        reason: "one rounding of a product; bf16: one rounding of input and output",
    },
    Row {
        op: Op::AddBroadcast,
        f32: t(1.2e-7),
        bf16: t(8e-3),
        reason: "one rounding of each sum; bf16: rounding of inputs and output",
    },
    Row {
        op: Op::SumBroadcast,
        f32: t(1e-5),
        bf16: t(1e-2),
        reason: "a reduction over up to 10^4 terms in f32 (pairwise or wider accumulation keeps it below 1e-6 typically); bf16 inputs rounded, f32 accumulation",
    },
    Row {
        op: Op::RepeatForward,
        f32: t(0.0),
        bf16: t(4e-3),
        reason: "a copy: exact in f32; bf16 storage rounds once",
    },
    Row {
        op: Op::RepeatBackward,
        f32: t(1e-6),
        bf16: t(1e-2),
        reason: "a sum over K copies (K <= 64): a few roundings",
    },
    Row {
        op: Op::GeluForward,
        f32: t(1e-6),
        bf16: t(8e-3),
        reason: "erf evaluated to a few ulp in f32 plus two roundings; bf16 rounding of input and output",
    },
    Row {
        op: Op::GeluBackward,
        f32: t(1e-6),
        bf16: t(1e-2),
        reason: "erf and exp to a few ulp, a product with the incoming gradient",
    },
    Row {
        op: Op::LayerNormForward,
        f32: t(1e-5),
        bf16: t(2e-2),
        reason: "mean and variance reductions over D <= 1280 in f32; the centring cancels up to u |x|/std, at most ~30 u for the admitted inputs; bf16: input rounded (u relative) and amplified by gamma",
    },
    Row {
        op: Op::LayerNormBackward,
        f32: t(2e-5),
        bf16: t(3e-2),
        reason: "two row reductions on top of the forward's error, and column sums over up to 10^4 rows for gamma and beta",
    },
    Row {
        op: Op::SelfAttentionForward,
        f32: t(1e-5),
        bf16: t(3e-2),
        reason: "q.k dot products over head_dim <= 80, exp, a row sum and the PV product over <= 257 keys",
    },
    Row {
        op: Op::SelfAttentionBackward,
        f32: t(3e-5),
        bf16: t(5e-2),
        reason: "three chained products (dP, dS with a row reduction, dq/dk/dv) on the forward's probabilities",
    },
    Row {
        op: Op::CrossAttentionForward,
        f32: t(1e-5),
        bf16: t(3e-2),
        reason: "as self-attention: same arithmetic with separate query and key/value tensors",
    },
    Row {
        op: Op::CrossAttentionBackward,
        f32: t(3e-5),
        bf16: t(5e-2),
        reason: "as self-attention backward",
    },
    Row {
        op: Op::Patchify,
        f32: t(0.0),
        bf16: t(4e-3),
        reason: "a permutation of the pixels: exact; bf16 storage rounds once",
    },
    Row {
        op: Op::PrependClsForward,
        f32: t(0.0),
        bf16: t(4e-3),
        reason: "copies: exact; bf16 storage rounds once",
    },
    Row {
        op: Op::PrependClsBackward,
        f32: t(1e-6),
        bf16: t(1e-2),
        reason: "the class-token gradient sums over the batch (<= 1024 terms); the rest are copies",
    },
    Row {
        op: Op::MeanPoolForward,
        f32: t(1e-6),
        bf16: t(8e-3),
        reason: "a mean over <= 256 tokens",
    },
    Row {
        op: Op::MeanPoolBackward,
        f32: t(1.2e-7),
        bf16: t(8e-3),
        reason: "one division per element",
    },
    Row {
        op: Op::UpsampleForward,
        f32: t(1e-6),
        bf16: t(8e-3),
        reason: "four-tap interpolation with weights computed in f32",
    },
    Row {
        op: Op::UpsampleBackward,
        f32: t(1e-5),
        bf16: t(1e-2),
        reason: "each input pixel gathers (H/h)(W/w) <= 256 weighted output gradients",
    },
    Row {
        op: Op::DepthwiseXcorrForward,
        f32: t(1e-5),
        bf16: t(2e-2),
        reason: "per output a dot product of at most kh kw <= 400 terms (the GEMM row's analysis with a far shorter k) times one scale; bf16: both operands rounded to bf16, f32 accumulation, as GEMM",
    },
    Row {
        op: Op::DepthwiseXcorrBackward,
        f32: t(1e-5),
        bf16: t(2e-2),
        reason: "dx: dot products of at most kh kw terms; dt: dot products over the map's H W <= 400 pixels; both below the GEMM row's k = 4096 analysis",
    },
    Row {
        op: Op::ConvTransposeForward,
        f32: t(1e-5),
        bf16: t(2e-2),
        reason: "a GEMM over C_in (k <= 4096) whose products are then gathered by at most ceil(k/s)^2 <= 16 taps, plus the bias: the GEMM row's error with a few more roundings",
    },
    Row {
        op: Op::ConvTransposeBackward,
        f32: t(1e-5),
        bf16: t(2e-2),
        reason: "dx: dot products over C_out k^2 terms; dweight: sums over N H W <= 10^4 pixels, dbias over N OH OW <= 10^4 pixels, as the GEMM and sum_broadcast rows",
    },
    Row {
        op: Op::MapLossForward,
        f32: t(1e-5),
        bf16: t(1e-2),
        reason: "log-sum-exp per pixel, then a sum over up to 10^6 pixels that must be accumulated pairwise or in f64; bf16: logits rounded",
    },
    Row {
        op: Op::MapLossBackward,
        f32: t(1e-6),
        bf16: t(8e-3),
        reason: "per pixel: softmax or sigmoid to a few ulp, times the scale",
    },
    Row {
        op: Op::AdamW,
        f32: t(2e-6),
        bf16: t(2e-6),
        reason: "a few roundings per element on f32 master weights and moments (the same in mixed precision); the quotient m/(sqrt v + eps) amplifies by at most a few ulp",
    },
    Row {
        op: Op::Ema,
        f32: t(1e-6),
        bf16: t(1e-6),
        reason: "two products and a sum per element in f32 (target weights stay f32 in mixed precision)",
    },
    Row {
        op: Op::SumSquares,
        f32: t(1e-5),
        bf16: t(1e-5),
        reason: "a reduction over the whole gradient (10^8 terms at ViT-B): must be accumulated pairwise or in f64 to stay within this; gradients are f32 in both precisions",
    },
    Row {
        op: Op::ClipByNorm,
        f32: t(1e-6),
        bf16: t(1e-6),
        reason: "a square root, a division and one product per element, on f32 gradients",
    },
    Row {
        op: Op::StepLoss,
        f32: t(1e-4),
        bf16: t(5e-2),
        reason: "tens of chained ops, each within its row; errors of the forward pass add up roughly linearly with depth",
    },
    Row {
        op: Op::StepGradients,
        f32: t(1e-3),
        bf16: t(1e-1),
        reason: "the backward chain doubles the depth of the forward, and small gradients of deep layers are measured against the tensor's own largest value",
    },
    Row {
        op: Op::StepParameters,
        f32: t(1e-5),
        bf16: t(1e-3),
        reason: "after a few AdamW steps the parameters move by about lr per step, so gradient errors reach the parameters scaled by lr; the bound is relative to the parameter tensor's magnitude",
    },
];

/// The tolerance of `op` at `precision`. Every [`Op`] has a row (a test checks it).
pub fn tolerance(op: Op, precision: Precision) -> Tolerance {
    let row = TABLE
        .iter()
        .find(|r| r.op == op)
        .expect("every Op has a row in the tolerance table");
    match precision {
        Precision::F32 => row.f32,
        // TF32 GEMM inputs carry more bits than bf16 ones and nothing else differs from
        // f32, so the bf16 bounds cover them.
        Precision::Bf16Mixed | Precision::Tf32 => row.bf16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_has_exactly_one_row() {
        for (i, a) in TABLE.iter().enumerate() {
            assert_eq!(
                TABLE.iter().filter(|b| b.op == a.op).count(),
                1,
                "{:?}",
                a.op
            );
            assert!(!a.reason.is_empty());
            assert!(a.bf16.rel >= a.f32.rel, "row {i}: bf16 tighter than f32");
        }
        assert_eq!(TABLE.len(), Op::StepParameters as usize + 1);
    }

    #[test]
    fn worst_ratio_is_normwise_and_nan_aware() {
        let tol = Tolerance {
            abs: 0.0,
            rel: 1e-3,
        };
        // Error 5e-4 on a tiny element, measured against the largest (1.0): passes.
        let (w, _) = tol.worst_ratio(&[1.0, 0.0005], &[1.0, 0.0]);
        assert!((w - 0.5).abs() < 1e-6);
        let (w, i) = tol.worst_ratio(&[1.0, f32::NAN], &[1.0, 0.0]);
        assert!(w.is_infinite() && i == 1);
        let (w, _) = tol.worst_ratio(&[f32::NAN, f32::INFINITY], &[f64::NAN, f64::INFINITY]);
        assert_eq!(w, 0.0);
        let (w, _) = tol.worst_ratio(&[0.0], &[0.0]);
        assert_eq!(w, 0.0);
    }
}
