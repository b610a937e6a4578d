//! The oracle against an independent implementation: cim-reference's pure f64 functions
//! compared with candle's CPU ops (candle-core and candle-nn 0.11, f32).
//!
//! The conformance suite trusts cim-reference; these checks give that trust a second
//! source. Each function builds f32 inputs from a case (the same generators as the
//! suite), runs candle on them and the reference function on the same values widened to
//! f64, and compares under the f32 column of the tolerance table for the matching op.
//! Covered: matmul (GEMM with transposes and alpha), the last-axis softmax, attention
//! composed from matmul and softmax, LayerNorm (candle-nn's fused op and its two-pass
//! `layer_norm_slow`), exact GELU (`gelu_erf`), the patch embedding as a strided conv2d
//! against patchify + GEMM + bias, align-corners bilinear upsampling, and the decoder
//! options' depthwise cross-correlation (a grouped conv2d on explicitly padded maps) and
//! transposed convolution (`conv_transpose2d`).
//! Not covered, because candle has no counterpart: the backward ops, the map losses,
//! AdamW, EMA and clipping; the GEMM's strides and accumulation (candle's matmul has
//! neither).

use candle_core::{DType, Device, Tensor};
use cim_reference as reference;
use cim_spec::backend::{AttentionArgs, GemmArgs, PatchArgs, Precision};
use cim_spec::tolerance::Op;

use crate::cases::{
    AttentionCase, ConvTransposeCase, GemmCase, LayerNormCase, Layout, PatchifyCase, UpsampleCase,
    VectorCase, XcorrCase,
};
use crate::checks::{conv, elementwise, gemm, norm};
use crate::harness::{Found, Gen, check_output};
use crate::mismatch::{Mismatch, Problem};

const BACKEND: &str = "candle-cpu";

/// A softmax over the last axis of `[rows, cols]`.
#[derive(Clone, Debug, PartialEq)]
pub struct SoftmaxCase {
    /// Seed of the inputs.
    pub seed: u64,
    /// Rows.
    pub rows: usize,
    /// Columns (the softmax axis).
    pub cols: usize,
    /// Magnitude of the inputs (the spread of the exponents).
    pub scale: f32,
}

/// Runs candle, turning its error into a [`Mismatch`] for `op`.
fn candle<T>(
    op: Op,
    case: &impl core::fmt::Debug,
    f: impl FnOnce() -> candle_core::Result<T>,
) -> Result<T, Mismatch> {
    f().map_err(|e| Mismatch {
        backend: BACKEND.to_string(),
        op,
        tensor: "-",
        case: format!("{case:?}"),
        problem: Problem::BackendError(e.to_string()),
    })
}

/// Compares candle's `values` for output `tensor` with the reference's.
fn compare(
    op: Op,
    case: &impl core::fmt::Debug,
    tensor: &'static str,
    values: &[f32],
    want: &[f64],
) -> Result<(), Mismatch> {
    let found = Found {
        backend: BACKEND,
        precision: Precision::F32,
        tensor,
        values,
    };
    check_output(op, &format!("{case:?}"), found, want)
}

fn wide(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| f64::from(v)).collect()
}

fn tensor(values: &[f32], shape: &[usize]) -> candle_core::Result<Tensor> {
    Tensor::from_vec(values.to_vec(), shape, &Device::Cpu)
}

fn values(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
}

/// `C = alpha op(A) op(B)` with candle's batched `matmul` against `reference::gemm::gemm`
/// (f32 GEMM tolerance), on the suite's GEMM inputs. The case's layouts, `c_gap` and
/// `beta` are not used (candle's matmul has no strides and no accumulation): the matrices
/// are packed and C is written.
pub fn matmul(case: &GemmCase) -> Result<(), Mismatch> {
    let packed = GemmCase {
        beta: 0.0,
        a_layout: Layout::Packed,
        b_layout: Layout::Packed,
        c_gap: 0,
        ..case.clone()
    };
    let (batch, m, n, k) = (case.batch, case.m, case.n, case.k);
    let args = packed.args();
    let (setup, _) = gemm::gemm_setup(&packed);
    let (a, b) = (&setup.slots[1].init, &setup.slots[2].init);
    let got = candle(Op::Gemm, case, || {
        let ta = if case.trans_a {
            tensor(a, &[batch, k, m])?.transpose(1, 2)?
        } else {
            tensor(a, &[batch, m, k])?
        };
        let tb = if case.trans_b {
            tensor(b, &[batch, n, k])?.transpose(1, 2)?
        } else {
            tensor(b, &[batch, k, n])?
        };
        let c = ta.contiguous()?.matmul(&tb.contiguous()?)?;
        values(&c.affine(f64::from(case.alpha), 0.0)?)
    })?;
    let mut want = vec![0.0; batch * m * n];
    reference::gemm::gemm(&mut want, &wide(a), &wide(b), &args);
    compare(Op::Gemm, case, "c", &got, &want)
}

/// candle-nn's `softmax_last_dim` against `reference::attention::softmax_rows`, under the
/// attention-forward tolerance (the softmax is the heart of that op).
pub fn softmax(case: &SoftmaxCase) -> Result<(), Mismatch> {
    let x = Gen::new(case.seed).normal(case.rows * case.cols, f64::from(case.scale));
    let op = Op::SelfAttentionForward;
    let got = candle(op, case, || {
        values(&candle_nn::ops::softmax_last_dim(&tensor(
            &x,
            &[case.rows, case.cols],
        )?)?)
    })?;
    let mut want = wide(&x);
    reference::attention::softmax_rows(&mut want, case.cols);
    compare(op, case, "probs", &got, &want)
}

/// Multi-head cross-attention composed from candle ops (per head `q k^T / sqrt(hd)`,
/// `softmax_last_dim`, times `v`) against `reference::attention::cross_attention_forward`;
/// both `out` and `probs` under the f32 cross-attention tolerance.
pub fn attention(case: &AttentionCase) -> Result<(), Mismatch> {
    let AttentionArgs {
        batch,
        q_len,
        kv_len,
        heads,
        head_dim,
    } = case.args;
    let dim = heads * head_dim;
    let mut data = Gen::new(case.seed);
    let q = data.normal(batch * q_len * dim, f64::from(case.qk_scale));
    let k = data.normal(batch * kv_len * dim, f64::from(case.qk_scale));
    let v = data.normal(batch * kv_len * dim, f64::from(case.v_scale));
    let op = Op::CrossAttentionForward;
    let (got_out, got_probs) = candle(op, case, || {
        // [B, N, D] -> [B, H, N, hd]
        let split = |x: &[f32], n: usize| -> candle_core::Result<Tensor> {
            tensor(x, &[batch, n, heads, head_dim])?
                .transpose(1, 2)?
                .contiguous()
        };
        let (tq, tk, tv) = (split(&q, q_len)?, split(&k, kv_len)?, split(&v, kv_len)?);
        let scores = tq.matmul(&tk.t()?.contiguous()?)?;
        let scores = scores.affine(1.0 / (head_dim as f64).sqrt(), 0.0)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&tv)?.transpose(1, 2)?.contiguous()?;
        Ok((values(&out)?, values(&probs)?))
    })?;
    // The reference takes k and v packed as [B, Nk, 2D].
    let mut kv = vec![0.0; 2 * k.len()];
    for t in 0..batch * kv_len {
        for c in 0..dim {
            kv[t * 2 * dim + c] = f64::from(k[t * dim + c]);
            kv[t * 2 * dim + dim + c] = f64::from(v[t * dim + c]);
        }
    }
    let mut out = vec![0.0; q.len()];
    let mut probs = vec![0.0; batch * heads * q_len * kv_len];
    reference::attention::cross_attention_forward(&mut out, &mut probs, &wide(&q), &kv, &case.args);
    compare(op, case, "out", &got_out, &out)?;
    compare(op, case, "probs", &got_probs, &probs)
}

/// A LayerNorm implementation of candle-nn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerNormImpl {
    /// `candle_nn::ops::layer_norm`: fused, one pass, variance as `E[x^2] - mean^2` in f32.
    Fused,
    /// `candle_nn::ops::layer_norm_slow`: mean, then the variance of the centred values.
    TwoPass,
}

/// candle-nn's LayerNorm against `reference::norm::layernorm_forward` (the output only:
/// candle returns no mean or rstd), under the f32 LayerNorm-forward tolerance. The inputs
/// are the suite's (see `checks::norm`).
pub fn layer_norm(case: &LayerNormCase, which: LayerNormImpl) -> Result<(), Mismatch> {
    let (rows, cols) = (case.rows, case.cols);
    let (x, gamma, beta) = norm::inputs(case, &mut Gen::new(case.seed));
    let op = Op::LayerNormForward;
    let got = candle(op, case, || {
        let (tx, tg, tb) = (
            tensor(&x, &[rows, cols])?,
            tensor(&gamma, &[cols])?,
            tensor(&beta, &[cols])?,
        );
        let y = match which {
            LayerNormImpl::Fused => candle_nn::ops::layer_norm(&tx, &tg, &tb, case.eps)?,
            LayerNormImpl::TwoPass => candle_nn::ops::layer_norm_slow(&tx, &tg, &tb, case.eps)?,
        };
        values(&y)
    })?;
    let mut want = vec![0.0; rows * cols];
    let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
    let (x, gamma, beta) = (wide(&x), wide(&gamma), wide(&beta));
    let eps = f64::from(case.eps);
    reference::norm::layernorm_forward(
        &mut want, &mut mean, &mut rstd, &x, &gamma, &beta, rows, cols, eps,
    );
    compare(op, case, "out", &got, &want)
}

/// candle's `gelu_erf` against `reference::elementwise::gelu_forward` (f32 GELU tolerance),
/// on the suite's GELU inputs.
pub fn gelu(case: &VectorCase) -> Result<(), Mismatch> {
    let x = elementwise::gelu_inputs(&mut Gen::new(case.seed), case);
    let op = Op::GeluForward;
    let got = candle(op, case, || values(&tensor(&x, &[case.len])?.gelu_erf()?))?;
    let mut want = vec![0.0; case.len];
    reference::elementwise::gelu_forward(&mut want, &wide(&x));
    compare(op, case, "out", &got, &want)
}

/// The patch embedding two ways: candle's `conv2d` (kernel p, stride p, weight
/// `[dim, C, p, p]`) plus bias, permuted to tokens `[B, T, dim]`, against the reference's
/// `patchify`, a GEMM with the weight viewed as `[dim, C p p]` (`trans_b`) and
/// `add_broadcast` of the bias (f32 GEMM tolerance).
pub fn patch_embedding(case: &PatchifyCase, dim: usize) -> Result<(), Mismatch> {
    let PatchArgs {
        batch,
        channels,
        height,
        width,
        patch,
    } = case.args;
    let (tokens, fan_in) = ((height / patch) * (width / patch), channels * patch * patch);
    let mut data = Gen::new(case.seed);
    let img = data.normal(batch * channels * height * width, 1.0);
    let mut weight = data.normal(dim * fan_in, 1.0 / (fan_in as f64).sqrt());
    let mut bias = data.normal(dim, 0.1);
    if batch * tokens * dim < 16 {
        // As in the GEMM check: with few outputs, keep the first one free of cancellation
        // (its terms all non-negative) so max|output| is of the size of its terms.
        for c in 0..channels {
            for ky in 0..patch {
                for kx in 0..patch {
                    let (j, pixel) = (
                        (c * patch + ky) * patch + kx,
                        (c * height + ky) * width + kx,
                    );
                    if weight[j] * img[pixel] < 0.0 {
                        weight[j] = -weight[j];
                    }
                }
            }
        }
        bias[0] = bias[0].abs();
    }
    let op = Op::Gemm;
    let got = candle(op, case, || {
        let x = tensor(&img, &[batch, channels, height, width])?;
        let w = tensor(&weight, &[dim, channels, patch, patch])?;
        let y = x.conv2d(&w, 0, patch, 1, 1)?; // [B, dim, H/p, W/p]
        let y = y.broadcast_add(&tensor(&bias, &[1, dim, 1, 1])?)?;
        values(&y.flatten_from(2)?.transpose(1, 2)?.contiguous()?)
    })?;
    let mut patches = vec![0.0; batch * tokens * fan_in];
    reference::tokens::patchify(&mut patches, &wide(&img), &case.args);
    let mut want = vec![0.0; batch * tokens * dim];
    let args = GemmArgs::single(batch * tokens, dim, fan_in, false, true);
    reference::gemm::gemm(&mut want, &patches, &wide(&weight), &args);
    reference::elementwise::add_broadcast(&mut want, &wide(&bias), batch * tokens, dim, 1);
    compare(op, case, "tokens", &got, &want)
}

/// candle's `upsample_bilinear2d(.., align_corners = true)` against
/// `reference::tokens::upsample_bilinear_forward` (f32 upsample tolerance).
pub fn upsample(case: &UpsampleCase) -> Result<(), Mismatch> {
    let (n, ih, iw, oh, ow) = (case.planes, case.in_h, case.in_w, case.out_h, case.out_w);
    let x = Gen::new(case.seed).normal(n * ih * iw, f64::from(case.scale));
    let op = Op::UpsampleForward;
    let got = candle(op, case, || {
        values(&tensor(&x, &[1, n, ih, iw])?.upsample_bilinear2d(oh, ow, true)?)
    })?;
    let mut want = vec![0.0; n * oh * ow];
    reference::tokens::upsample_bilinear_forward(&mut want, &wide(&x), n, ih, iw, oh, ow);
    compare(op, case, "out", &got, &want)
}

/// The patch tokens of token maps `[N, 1 + H W, C]` as NCHW `[N, C, H, W]`.
fn token_maps(x: &[f32], n: usize, c: usize, h: usize, w: usize) -> candle_core::Result<Tensor> {
    tensor(x, &[n, 1 + h * w, c])?
        .narrow(1, 1, h * w)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((n, c, h, w))
}

/// The depthwise cross-correlation with candle's grouped `conv2d`, map by map: the map
/// padded with PyTorch's 'same' split (`(k - 1) / 2` zeros before, the rest after), the
/// kernels `[C, 1, kh, kw]`, `groups = C`, times the scale; against
/// `reference::conv::depthwise_xcorr_forward` (f32 correlation tolerance), on the suite's
/// inputs. Needs `batch >= 1`.
pub fn depthwise_xcorr(case: &XcorrCase) -> Result<(), Mismatch> {
    let a = case.args;
    let (c, h, w, kh, kw) = (a.channels, a.height, a.width, a.kernel_h, a.kernel_w);
    let (setup, _) = conv::xcorr_forward_setup(case);
    let (x, t) = (&setup.slots[1].init, &setup.slots[2].init);
    let op = Op::DepthwiseXcorrForward;
    let got = candle(op, case, || {
        let maps = token_maps(x, a.batch, c, h, w)?
            .pad_with_zeros(2, a.pad_h(), kh - 1 - a.pad_h())?
            .pad_with_zeros(3, a.pad_w(), kw - 1 - a.pad_w())?;
        let kernels = token_maps(t, a.batch, c, kh, kw)?;
        let mut out = Vec::with_capacity(a.batch * (1 + h * w) * c);
        for n in 0..a.batch {
            let k = kernels.get(n)?.unsqueeze(1)?.contiguous()?; // [C, 1, kh, kw]
            let y = maps
                .get(n)?
                .unsqueeze(0)?
                .contiguous()?
                .conv2d(&k, 0, 1, 1, c)?;
            let y = y.affine(f64::from(a.scale), 0.0)?; // [1, C, H, W]
            out.extend(std::iter::repeat_n(0.0f32, c));
            out.extend(values(&y.flatten_from(2)?.transpose(1, 2)?.contiguous()?)?);
        }
        Ok(out)
    })?;
    let mut want = vec![0.0; got.len()];
    reference::conv::depthwise_xcorr_forward(&mut want, &wide(x), &wide(t), &a);
    compare(op, case, "out", &got, &want)
}

/// The transposed convolution with candle's `conv_transpose2d` (weight `[C_in, C_out, k,
/// k]`, PyTorch's layout) plus the bias, against `reference::conv::conv_transpose_forward`
/// (f32 transposed-convolution tolerance), on the suite's inputs. Needs `batch >= 1`.
pub fn conv_transpose(case: &ConvTransposeCase) -> Result<(), Mismatch> {
    let a = case.args;
    let (setup, _) = conv::deconv_forward_setup(case);
    let (x, weight, bias) = (
        &setup.slots[1].init,
        &setup.slots[2].init,
        &setup.slots[3].init,
    );
    let op = Op::ConvTransposeForward;
    let got = candle(op, case, || {
        let tx = token_maps(x, a.batch, a.in_channels, a.height, a.width)?;
        let k = a.kernel;
        let tw = tensor(weight, &[a.in_channels, a.out_channels, k, k])?;
        let y = tx.conv_transpose2d(&tw, a.padding, 0, a.stride, 1)?;
        let y = y.broadcast_add(&tensor(bias, &[1, a.out_channels, 1, 1])?)?;
        values(&y)
    })?;
    let mut want = vec![0.0; got.len()];
    reference::conv::conv_transpose_forward(&mut want, &wide(x), &wide(weight), &wide(bias), &a);
    compare(op, case, "out", &got, &want)
}
