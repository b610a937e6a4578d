//! proptest strategies, one per case type.
//!
//! They favour the sizes where kernels break: one, odd primes-ish sizes (3, 7, 17, 33)
//! that straddle vector widths and tiles, zero-size batches where the contract allows them,
//! both transposes, stride-0 broadcast and padded strides; and values whose magnitude
//! sweeps 1e-3 to 1e3 (log-uniform, with the ends drawn often). Every case stays in the
//! low thousands of elements so a whole suite runs in seconds on the reference in a debug
//! build. Where the tolerance table assumes a range (LayerNorm row means within ~100
//! standard deviations, attention scores of moderate size) the strategies stay inside it.

use cim_spec::backend::{AttentionArgs, ConvTransposeArgs, PatchArgs, XcorrArgs};
use cim_spec::loss::MapLoss;
use proptest::prelude::*;
use proptest::sample::select;

use crate::cases::{
    AdamWCase, AttentionCase, BroadcastCase, ClipCase, ConvTransposeCase, EmaCase, GemmCase,
    LayerNormCase, Layout, LinearCase, MapLossCase, MeanPoolCase, PatchifyCase, PrependClsCase,
    RepeatCase, ScaleCase, UpsampleCase, VectorCase, XcorrCase,
};

/// A size in `1..=max`, with 1, 3, 7, 17 and 33 (those not above `max`) drawn often.
pub fn size(max: usize) -> impl Strategy<Value = usize> {
    let mut favoured: Vec<usize> = [1, 3, 7, 17, 33]
        .into_iter()
        .filter(|&s| s <= max)
        .collect();
    if favoured.is_empty() {
        favoured.push(max);
    }
    prop_oneof![select(favoured), 1..=max.max(1)]
}

/// A size in `0..=max`: zero one time in eight, otherwise as [`size`].
pub fn size_or_zero(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![1 => Just(0usize), 7 => size(max)]
}

/// A magnitude in `[1e-3, 1e3]`: the two ends and 1 often, log-uniform otherwise.
pub fn value_scale() -> impl Strategy<Value = f32> {
    prop_oneof![
        select(vec![1e-3f32, 1.0, 1e3]),
        (-3.0f64..=3.0).prop_map(|e| 10f64.powf(e) as f32),
    ]
}

/// A magnitude log-uniform in `[lo, hi]`.
fn log_range(lo: f64, hi: f64) -> impl Strategy<Value = f32> {
    (lo.log10()..=hi.log10()).prop_map(|e| 10f64.powf(e) as f32)
}

fn layout() -> impl Strategy<Value = Layout> {
    prop_oneof![
        3 => Just(Layout::Packed),
        1 => Just(Layout::Broadcast),
        1 => (1usize..=5).prop_map(Layout::Padded),
    ]
}

/// Linear layers: rows up to 70 (0 sometimes, often a size that divides nothing: 1, 3,
/// 7, 17, 33), inputs up to 40 (0 sometimes), outputs up to 40.
pub fn linear_cases() -> impl Strategy<Value = LinearCase> {
    (
        any::<u64>(),
        size_or_zero(70),
        size_or_zero(40),
        size(40),
        value_scale(),
    )
        .prop_map(|(seed, rows, inp, out, scale)| LinearCase {
            seed,
            rows,
            inp,
            out,
            scale,
        })
}

/// Batched GEMMs: batch 0 to 3, m and n up to 40, k up to 40 (0 sometimes), both
/// transposes, alpha in {1, -1, 0.5, 1.75}, beta in {0, 1}, packed / broadcast / padded A
/// and B, C packed or with a gap.
pub fn gemm_cases() -> impl Strategy<Value = GemmCase> {
    let sizes = (
        prop_oneof![1 => Just(0usize), 6 => Just(1), 3 => 2usize..=3],
        size(40),
        size(40),
        size_or_zero(40),
    );
    let flags = (
        any::<bool>(),
        any::<bool>(),
        select(vec![1.0f32, -1.0, 0.5, 1.75]),
        select(vec![0.0f32, 1.0]),
    );
    let layouts = (
        layout(),
        layout(),
        prop_oneof![3 => Just(0usize), 1 => 1usize..=4],
    );
    (any::<u64>(), sizes, flags, layouts, value_scale()).prop_map(
        |(seed, (batch, m, n, k), (trans_a, trans_b, alpha, beta), (a, b, c_gap), scale)| {
            GemmCase {
                seed,
                batch,
                m,
                n,
                k,
                trans_a,
                trans_b,
                alpha,
                beta,
                a_layout: a,
                b_layout: b,
                c_gap,
                scale,
            }
        },
    )
}

/// Flat vectors of 0 to 3000 elements.
pub fn vector_cases() -> impl Strategy<Value = VectorCase> {
    let len = prop_oneof![1 => Just(0usize), 1 => Just(1), 6 => 1usize..=3000];
    (any::<u64>(), len, value_scale()).prop_map(|(seed, len, scale)| VectorCase {
        seed,
        len,
        scale,
    })
}

/// `scale` with alpha in {0, -1, 0.5, 3.7, 1e-3}.
pub fn scale_cases() -> impl Strategy<Value = ScaleCase> {
    let alpha = select(vec![0.0f32, -1.0, 0.5, 3.7, 1e-3]);
    (vector_cases(), alpha).prop_map(|(v, alpha)| ScaleCase {
        seed: v.seed,
        len: v.len,
        alpha,
        scale: v.scale,
    })
}

/// `[outer, len, inner]` with outer 0 to 5, len up to 40, inner up to 17.
pub fn broadcast_cases() -> impl Strategy<Value = BroadcastCase> {
    (
        any::<u64>(),
        size_or_zero(5),
        size(40),
        size(17),
        value_scale(),
    )
        .prop_map(|(seed, outer, len, inner, scale)| BroadcastCase {
            seed,
            outer,
            len,
            inner,
            scale,
        })
}

/// `[B, K, L]` with B 0 to 4, K 0 to 6 (0 rarely), L up to 64.
pub fn repeat_cases() -> impl Strategy<Value = RepeatCase> {
    (
        any::<u64>(),
        size_or_zero(4),
        size_or_zero(6),
        size(64),
        value_scale(),
    )
        .prop_map(|(seed, batch, copies, len, scale)| RepeatCase {
            seed,
            batch,
            copies,
            len,
            scale,
        })
}

/// LayerNorm over rows 0 to 24 of 1 to 130 columns (64 and 129 favoured besides the odd
/// sizes), row means from 1 to 100 standard deviations, eps 1e-6 (the model's) or 1e-5.
pub fn layernorm_cases() -> impl Strategy<Value = LayerNormCase> {
    let cols = prop_oneof![size(130), select(vec![2usize, 64, 129])];
    let offset = prop_oneof![Just(1.0f32), Just(30.0), 1.0f32..30.0];
    (
        any::<u64>(),
        size_or_zero(24),
        cols,
        value_scale(),
        offset,
        select(vec![1e-6f32, 1e-5]),
        value_scale(),
    )
        .prop_map(
            |(seed, rows, cols, scale, offset, eps, grad_scale)| LayerNormCase {
                seed,
                rows,
                cols,
                scale,
                offset,
                eps,
                grad_scale,
            },
        )
}

fn attention_cases(self_attention: bool) -> impl Strategy<Value = AttentionCase> {
    let lens =
        (size_or_zero(9), size(17)).prop_map(
            move |(q, kv)| {
                if self_attention { (kv, kv) } else { (q, kv) }
            },
        );
    let shape = (
        prop_oneof![1 => Just(0usize), 5 => Just(1), 2 => Just(2)],
        lens,
        1usize..=3,
        select(vec![1usize, 2, 3, 8, 16]),
    );
    // Scores are about qk_scale^2; up to 3 keeps them below ~30, the range the table's
    // f32 error analysis covers (a score error of u |s| becomes a relative error of the
    // probability).
    (
        any::<u64>(),
        shape,
        log_range(1e-3, 3.0),
        value_scale(),
        value_scale(),
    )
        .prop_map(
            |(seed, (batch, (q_len, kv_len), heads, head_dim), qk_scale, v_scale, grad_scale)| {
                AttentionCase {
                    seed,
                    args: AttentionArgs {
                        batch,
                        q_len,
                        kv_len,
                        heads,
                        head_dim,
                    },
                    qk_scale,
                    v_scale,
                    grad_scale,
                }
            },
        )
}

/// Self-attention: batch 0 to 2, 1 to 17 tokens, 1 to 3 heads of 1 to 16 channels.
pub fn self_attention_cases() -> impl Strategy<Value = AttentionCase> {
    attention_cases(true)
}

/// Cross-attention: as [`self_attention_cases`] with 0 to 9 queries and 1 to 17 keys.
pub fn cross_attention_cases() -> impl Strategy<Value = AttentionCase> {
    attention_cases(false)
}

/// Images of batch 0 to 2, 1 or 3 channels, patch 1 to 5, grids of 1 to 4 patches a side.
pub fn patchify_cases() -> impl Strategy<Value = PatchifyCase> {
    (
        any::<u64>(),
        0usize..=2,
        select(vec![1usize, 3]),
        1usize..=5,
        1usize..=4,
        1usize..=4,
    )
        .prop_map(|(seed, batch, channels, patch, gh, gw)| PatchifyCase {
            seed,
            args: PatchArgs {
                batch,
                channels,
                height: gh * patch,
                width: gw * patch,
                patch,
            },
        })
}

/// `[B, 1 + T, D]` with B 0 to 3, T 0 to 17, D up to 40, with or without the patch
/// gradient.
pub fn prepend_cls_cases() -> impl Strategy<Value = PrependClsCase> {
    (
        any::<u64>(),
        size_or_zero(3),
        size_or_zero(17),
        size(40),
        any::<bool>(),
        value_scale(),
    )
        .prop_map(
            |(seed, batch, tokens, dim, with_dpatches, scale)| PrependClsCase {
                seed,
                batch,
                tokens,
                dim,
                with_dpatches,
                scale,
            },
        )
}

/// `[B, 1 + T, D]` with B 0 to 3, T 1 to 17, D up to 40.
pub fn mean_pool_cases() -> impl Strategy<Value = MeanPoolCase> {
    (
        any::<u64>(),
        size_or_zero(3),
        size(17),
        size(40),
        value_scale(),
    )
        .prop_map(|(seed, batch, tokens, dim, scale)| MeanPoolCase {
            seed,
            batch,
            tokens,
            dim,
            scale,
        })
}

/// 0 to 3 planes of 1 to 7 pixels a side resampled to 1 to 20 a side (down as well as up).
pub fn upsample_cases() -> impl Strategy<Value = UpsampleCase> {
    let side = || prop_oneof![Just(1usize), 1usize..=20];
    (
        any::<u64>(),
        size_or_zero(3),
        size(7),
        size(7),
        side(),
        side(),
        value_scale(),
    )
        .prop_map(
            |(seed, planes, in_h, in_w, out_h, out_w, scale)| UpsampleCase {
                seed,
                planes,
                in_h,
                in_w,
                out_h,
                out_w,
                scale,
            },
        )
}

/// Depthwise cross-correlations: batch 0 to 2, 1 to 17 channels, maps of 1 to 6 a side,
/// kernels of 1 to 5 a side (odd and even, so both 'same' padding splits, and kernels
/// larger than the map), scale 1, 1/2, 1/3 or 1/4 (the decoder's `1 / n'`).
pub fn xcorr_cases() -> impl Strategy<Value = XcorrCase> {
    let shape = (
        prop_oneof![1 => Just(0usize), 5 => Just(1), 2 => Just(2)],
        size(17),
        1usize..=6,
        1usize..=6,
        1usize..=5,
        1usize..=5,
    );
    (
        any::<u64>(),
        shape,
        select(vec![1.0f32, 0.5, 1.0 / 3.0, 0.25]),
        value_scale(),
        value_scale(),
        value_scale(),
    )
        .prop_map(
            |(seed, (batch, channels, height, width, kernel_h, kernel_w), scale, x, t, g)| {
                XcorrCase {
                    seed,
                    args: XcorrArgs {
                        batch,
                        channels,
                        height,
                        width,
                        kernel_h,
                        kernel_w,
                        scale,
                    },
                    x_scale: x,
                    t_scale: t,
                    grad_scale: g,
                }
            },
        )
}

/// Transposed convolutions: batch 0 to 2, 1 to 17 input and 1 to 3 output channels, maps
/// of 1 to 5 a side; the predictor's kernel 4 / stride 2 / padding 1 often, otherwise
/// kernel 1 to 5, stride 1 to 3 and padding 0 to 2, the padding lowered where it would
/// leave no output.
pub fn conv_transpose_cases() -> impl Strategy<Value = ConvTransposeCase> {
    let geometry = prop_oneof![
        1 => Just((4usize, 2usize, 1usize)),
        2 => (1usize..=5, 1usize..=3, 0usize..=2),
    ];
    let shape = (
        prop_oneof![1 => Just(0usize), 5 => Just(1), 2 => Just(2)],
        size(17),
        1usize..=3,
        1usize..=5,
        1usize..=5,
        geometry,
    );
    (
        any::<u64>(),
        shape,
        value_scale(),
        value_scale(),
        value_scale(),
    )
        .prop_map(
            |(seed, (batch, cin, cout, height, width, (kernel, stride, padding)), x, w, g)| {
                // The output side (side - 1) s + k - 2 p must stay positive on both axes.
                let side = height.min(width);
                let padding = padding.min(((side - 1) * stride + kernel - 1) / 2);
                ConvTransposeCase {
                    seed,
                    args: ConvTransposeArgs {
                        batch,
                        in_channels: cin,
                        out_channels: cout,
                        height,
                        width,
                        kernel,
                        stride,
                        padding,
                    },
                    x_scale: x,
                    w_scale: w,
                    grad_scale: g,
                }
            },
        )
}

/// Map losses of `kind`: 0 to 4 maps of 1 to 300 pixels, logits of magnitude 1e-3 to
/// 1e3, scale in {1, 1/2, 1/6, 1/256}, with edge maps and soft targets sometimes.
pub fn map_loss_cases(kind: MapLoss) -> impl Strategy<Value = MapLossCase> {
    let pixels = prop_oneof![select(vec![1usize, 7, 49, 100, 289]), 1usize..=300];
    (
        any::<u64>(),
        size_or_zero(4),
        pixels,
        select(vec![1.0f32, 0.5, 1.0 / 6.0, 1.0 / 256.0]),
        value_scale(),
        0.0f64..=1.0,
        any::<bool>(),
        prop_oneof![3 => Just(false), 1 => Just(true)],
    )
        .prop_map(
            move |(seed, maps, pixels, scale, logit_scale, density, edge_maps, soft_targets)| {
                MapLossCase {
                    seed,
                    kind,
                    maps,
                    pixels,
                    scale,
                    logit_scale,
                    density,
                    edge_maps,
                    soft_targets,
                }
            },
        )
}

/// Focal losses with the paper's (alpha 0.25, gamma 2) and other exponents, including a
/// fractional one.
pub fn focal_loss_cases() -> impl Strategy<Value = MapLossCase> {
    let kinds = select(vec![
        MapLoss::focal(),
        MapLoss::Focal {
            alpha: 0.6,
            gamma: 0.5,
        },
        MapLoss::Focal {
            alpha: 0.25,
            gamma: 0.0,
        },
        MapLoss::Focal {
            alpha: 0.9,
            gamma: 3.0,
        },
    ]);
    (kinds, map_loss_cases(MapLoss::focal())).prop_map(|(kind, case)| MapLossCase { kind, ..case })
}

/// AdamW on 0 to 2000 elements: steps of 1e-4 to 3e-2 of the parameters' magnitude
/// (`lr = step * param_scale`; in training lr is at most ~2e-3 against weights of ~2e-2
/// and more), weight decay 0 or 0.05, the paper's betas or (0.9, 0.999), steps 1, 2, 7 and
/// 1000.
pub fn adamw_cases() -> impl Strategy<Value = AdamWCase> {
    let len = prop_oneof![1 => Just(0usize), 1 => Just(1), 6 => 1usize..=2000];
    (
        any::<u64>(),
        len,
        log_range(1e-4, 3e-2),
        select(vec![0.0f64, 0.05]),
        select(vec![(0.9f64, 0.95f64), (0.9, 0.999)]),
        select(vec![1u64, 2, 7, 1000]),
        value_scale(),
        value_scale(),
    )
        .prop_map(
            |(seed, len, step_size, weight_decay, (beta1, beta2), step, p, g)| AdamWCase {
                seed,
                len,
                lr: f64::from(step_size) * f64::from(p),
                weight_decay,
                beta1,
                beta2,
                step,
                param_scale: p,
                grad_scale: g,
            },
        )
}

/// EMA on 0 to 3000 elements with momentum 0, 0.5, 0.99, 0.9995 or 1.
pub fn ema_cases() -> impl Strategy<Value = EmaCase> {
    let momentum = select(vec![0.0f64, 0.5, 0.99, 0.9995, 0.999_999, 1.0]);
    (vector_cases(), momentum).prop_map(|(v, momentum)| EmaCase {
        seed: v.seed,
        len: v.len,
        momentum,
        scale: v.scale,
    })
}

/// Clipping of 1 to 3000 elements with `max_norm` from a tenth to ten times the norm.
pub fn clip_cases() -> impl Strategy<Value = ClipCase> {
    let ratio = select(vec![0.1f32, 0.5, 0.999, 2.0, 10.0]);
    (any::<u64>(), 1usize..=3000, value_scale(), ratio).prop_map(
        |(seed, len, scale, max_norm_ratio)| ClipCase {
            seed,
            len,
            scale,
            max_norm_ratio,
        },
    )
}
