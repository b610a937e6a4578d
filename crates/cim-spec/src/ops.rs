//! The checked entry points of every backend op.
//!
//! Callers (the model, the conformance suite, tools) go through these functions, never
//! through the trait methods directly: each checks that every view has exactly the length
//! the sizes imply, with overflow-checked arithmetic, and returns a [`ShapeError`] naming
//! the op and the argument before any backend code runs. Backends can then trust their
//! arguments (DESIGN.md: "shapes are checked once").

use crate::backend::{
    AdamWArgs, Attention, AttentionArgs, Backend, Conv, ConvTransposeArgs, Elementwise, Gemm,
    GemmArgs, LinearArgs, MapLossArgs, MapLossOps, Memory, Norm, Optim, PatchArgs, Tokens,
    XcorrArgs,
};
use crate::error::ShapeError;

/// `a * b * ...` with overflow reported as an impossible length.
fn prod(dims: &[usize]) -> usize {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .unwrap_or(usize::MAX)
}

/// Fails unless `actual == expected`.
fn expect(
    op: &'static str,
    argument: &'static str,
    expected: usize,
    actual: usize,
) -> Result<(), ShapeError> {
    if expected == actual && expected != usize::MAX {
        Ok(())
    } else {
        Err(ShapeError {
            op,
            argument,
            expected,
            actual,
        })
    }
}

/// Fails when a size that must be positive is zero (reported as "needs at least 1").
fn positive(op: &'static str, argument: &'static str, value: usize) -> Result<(), ShapeError> {
    if value == 0 {
        Err(ShapeError {
            op,
            argument,
            expected: 1,
            actual: 0,
        })
    } else {
        Ok(())
    }
}

fn len<B: Memory>(v: &B::View<'_>) -> usize {
    B::view_len(v)
}

fn len_mut<B: Memory>(v: &B::ViewMut<'_>) -> usize {
    B::view_mut_len(v)
}

/// Length spanned by `batch` matrices of `size` elements `stride` apart.
fn strided(batch: usize, stride: usize, size: usize) -> usize {
    if batch == 0 {
        return 0;
    }
    (batch - 1)
        .checked_mul(stride)
        .and_then(|s| s.checked_add(size))
        .unwrap_or(usize::MAX)
}

/// Checked [`Gemm::gemm`]. Output matrices must not overlap (`stride_c >= m n` when
/// `batch > 1`).
pub fn gemm<B: Gemm>(
    b: &B,
    c: B::ViewMut<'_>,
    a: B::View<'_>,
    bm: B::View<'_>,
    args: &GemmArgs,
) -> Result<(), B::Error> {
    const OP: &str = "gemm";
    let (m, n, k) = (args.m, args.n, args.k);
    if args.batch > 1 && args.stride_c < prod(&[m, n]) {
        return Err(ShapeError {
            op: OP,
            argument: "stride_c",
            expected: prod(&[m, n]),
            actual: args.stride_c,
        }
        .into());
    }
    expect(
        OP,
        "a",
        strided(args.batch, args.stride_a, prod(&[m, k])),
        len::<B>(&a),
    )?;
    expect(
        OP,
        "b",
        strided(args.batch, args.stride_b, prod(&[k, n])),
        len::<B>(&bm),
    )?;
    expect(
        OP,
        "c",
        strided(args.batch, args.stride_c, prod(&[m, n])),
        len_mut::<B>(&c),
    )?;
    b.gemm(c, a, bm, args)
}

/// Checked [`Backend::linear_forward`].
pub fn linear_forward<B: Backend>(
    b: &B,
    y: B::ViewMut<'_>,
    x: B::View<'_>,
    weight: B::View<'_>,
    bias: B::View<'_>,
    args: &LinearArgs,
) -> Result<(), B::Error> {
    const OP: &str = "linear_forward";
    let LinearArgs { rows, inp, out } = *args;
    expect(OP, "y", prod(&[rows, out]), len_mut::<B>(&y))?;
    expect(OP, "x", prod(&[rows, inp]), len::<B>(&x))?;
    expect(OP, "weight", prod(&[out, inp]), len::<B>(&weight))?;
    expect(OP, "bias", out, len::<B>(&bias))?;
    b.linear_forward(y, x, weight, bias, args)
}

/// Checked [`Backend::linear_backward_params`].
pub fn linear_backward_params<B: Backend>(
    b: &B,
    dweight: B::ViewMut<'_>,
    dbias: B::ViewMut<'_>,
    dy: B::View<'_>,
    x: B::View<'_>,
    args: &LinearArgs,
) -> Result<(), B::Error> {
    const OP: &str = "linear_backward_params";
    let LinearArgs { rows, inp, out } = *args;
    expect(OP, "dweight", prod(&[out, inp]), len_mut::<B>(&dweight))?;
    expect(OP, "dbias", out, len_mut::<B>(&dbias))?;
    expect(OP, "dy", prod(&[rows, out]), len::<B>(&dy))?;
    expect(OP, "x", prod(&[rows, inp]), len::<B>(&x))?;
    b.linear_backward_params(dweight, dbias, dy, x, args)
}

/// Checked [`Elementwise::add_assign`].
pub fn add_assign<B: Elementwise>(
    b: &B,
    x: B::ViewMut<'_>,
    y: B::View<'_>,
) -> Result<(), B::Error> {
    expect("add_assign", "y", len_mut::<B>(&x), len::<B>(&y))?;
    b.add_assign(x, y)
}

/// [`Elementwise::scale`] (any length is valid).
pub fn scale<B: Elementwise>(b: &B, x: B::ViewMut<'_>, alpha: f32) -> Result<(), B::Error> {
    b.scale(x, alpha)
}

/// Checked [`Elementwise::add_broadcast`].
pub fn add_broadcast<B: Elementwise>(
    b: &B,
    out: B::ViewMut<'_>,
    v: B::View<'_>,
    outer: usize,
    len_: usize,
    inner: usize,
) -> Result<(), B::Error> {
    const OP: &str = "add_broadcast";
    expect(OP, "out", prod(&[outer, len_, inner]), len_mut::<B>(&out))?;
    expect(OP, "v", len_, len::<B>(&v))?;
    b.add_broadcast(out, v, outer, len_, inner)
}

/// Checked [`Elementwise::sum_broadcast`].
pub fn sum_broadcast<B: Elementwise>(
    b: &B,
    dv: B::ViewMut<'_>,
    dout: B::View<'_>,
    outer: usize,
    len_: usize,
    inner: usize,
) -> Result<(), B::Error> {
    const OP: &str = "sum_broadcast";
    expect(OP, "dout", prod(&[outer, len_, inner]), len::<B>(&dout))?;
    expect(OP, "dv", len_, len_mut::<B>(&dv))?;
    b.sum_broadcast(dv, dout, outer, len_, inner)
}

/// Checked [`Elementwise::repeat_forward`].
pub fn repeat_forward<B: Elementwise>(
    b: &B,
    out: B::ViewMut<'_>,
    x: B::View<'_>,
    batch: usize,
    copies: usize,
    len_: usize,
) -> Result<(), B::Error> {
    const OP: &str = "repeat_forward";
    expect(OP, "out", prod(&[batch, copies, len_]), len_mut::<B>(&out))?;
    expect(OP, "x", prod(&[batch, len_]), len::<B>(&x))?;
    b.repeat_forward(out, x, batch, copies, len_)
}

/// Checked [`Elementwise::repeat_backward`].
pub fn repeat_backward<B: Elementwise>(
    b: &B,
    dx: B::ViewMut<'_>,
    dout: B::View<'_>,
    batch: usize,
    copies: usize,
    len_: usize,
) -> Result<(), B::Error> {
    const OP: &str = "repeat_backward";
    expect(OP, "dout", prod(&[batch, copies, len_]), len::<B>(&dout))?;
    expect(OP, "dx", prod(&[batch, len_]), len_mut::<B>(&dx))?;
    b.repeat_backward(dx, dout, batch, copies, len_)
}

/// Checked [`Elementwise::gelu_forward`].
pub fn gelu_forward<B: Elementwise>(
    b: &B,
    out: B::ViewMut<'_>,
    x: B::View<'_>,
) -> Result<(), B::Error> {
    expect("gelu_forward", "x", len_mut::<B>(&out), len::<B>(&x))?;
    b.gelu_forward(out, x)
}

/// Checked [`Elementwise::gelu_backward`].
pub fn gelu_backward<B: Elementwise>(
    b: &B,
    d: B::ViewMut<'_>,
    x: B::View<'_>,
) -> Result<(), B::Error> {
    expect("gelu_backward", "x", len_mut::<B>(&d), len::<B>(&x))?;
    b.gelu_backward(d, x)
}

/// Checked [`Norm::layernorm_forward`].
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward<B: Norm>(
    b: &B,
    out: B::ViewMut<'_>,
    mean: B::ViewMut<'_>,
    rstd: B::ViewMut<'_>,
    x: B::View<'_>,
    gamma: B::View<'_>,
    beta: B::View<'_>,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<(), B::Error> {
    const OP: &str = "layernorm_forward";
    positive(OP, "cols", cols)?;
    expect(OP, "x", prod(&[rows, cols]), len::<B>(&x))?;
    expect(OP, "out", prod(&[rows, cols]), len_mut::<B>(&out))?;
    expect(OP, "mean", rows, len_mut::<B>(&mean))?;
    expect(OP, "rstd", rows, len_mut::<B>(&rstd))?;
    expect(OP, "gamma", cols, len::<B>(&gamma))?;
    expect(OP, "beta", cols, len::<B>(&beta))?;
    b.layernorm_forward(out, mean, rstd, x, gamma, beta, rows, cols, eps)
}

/// Checked [`Norm::layernorm_backward`].
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<B: Norm>(
    b: &B,
    dx: B::ViewMut<'_>,
    dgamma: B::ViewMut<'_>,
    dbeta: B::ViewMut<'_>,
    dout: B::View<'_>,
    x: B::View<'_>,
    gamma: B::View<'_>,
    mean: B::View<'_>,
    rstd: B::View<'_>,
    rows: usize,
    cols: usize,
) -> Result<(), B::Error> {
    const OP: &str = "layernorm_backward";
    positive(OP, "cols", cols)?;
    let n = prod(&[rows, cols]);
    expect(OP, "dx", n, len_mut::<B>(&dx))?;
    expect(OP, "dout", n, len::<B>(&dout))?;
    expect(OP, "x", n, len::<B>(&x))?;
    expect(OP, "dgamma", cols, len_mut::<B>(&dgamma))?;
    expect(OP, "dbeta", cols, len_mut::<B>(&dbeta))?;
    expect(OP, "gamma", cols, len::<B>(&gamma))?;
    expect(OP, "mean", rows, len::<B>(&mean))?;
    expect(OP, "rstd", rows, len::<B>(&rstd))?;
    b.layernorm_backward(dx, dgamma, dbeta, dout, x, gamma, mean, rstd, rows, cols)
}

/// Element counts of an attention call: (q tokens x D, kv tokens x D, probs).
fn attention_sizes(
    op: &'static str,
    a: &AttentionArgs,
) -> Result<(usize, usize, usize), ShapeError> {
    positive(op, "heads", a.heads)?;
    positive(op, "head_dim", a.head_dim)?;
    positive(op, "kv_len", a.kv_len)?;
    let dim = prod(&[a.heads, a.head_dim]);
    Ok((
        prod(&[a.batch, a.q_len, dim]),
        prod(&[a.batch, a.kv_len, dim]),
        prod(&[a.batch, a.heads, a.q_len, a.kv_len]),
    ))
}

/// Checked [`Attention::self_attention_forward`] (`q_len` must equal `kv_len`).
pub fn self_attention_forward<B: Attention>(
    b: &B,
    out: B::ViewMut<'_>,
    probs: B::ViewMut<'_>,
    qkv: B::View<'_>,
    args: &AttentionArgs,
) -> Result<(), B::Error> {
    const OP: &str = "self_attention_forward";
    expect(OP, "q_len", args.kv_len, args.q_len)?;
    let (tokens, _, p) = attention_sizes(OP, args)?;
    expect(OP, "qkv", prod(&[tokens, 3]), len::<B>(&qkv))?;
    expect(OP, "out", tokens, len_mut::<B>(&out))?;
    expect(OP, "probs", p, len_mut::<B>(&probs))?;
    b.self_attention_forward(out, probs, qkv, args)
}

/// Checked [`Attention::self_attention_backward`].
pub fn self_attention_backward<B: Attention>(
    b: &B,
    dqkv: B::ViewMut<'_>,
    scratch: B::ViewMut<'_>,
    dout: B::View<'_>,
    qkv: B::View<'_>,
    probs: B::View<'_>,
    args: &AttentionArgs,
) -> Result<(), B::Error> {
    const OP: &str = "self_attention_backward";
    expect(OP, "q_len", args.kv_len, args.q_len)?;
    let (tokens, _, p) = attention_sizes(OP, args)?;
    expect(OP, "dqkv", prod(&[tokens, 3]), len_mut::<B>(&dqkv))?;
    expect(OP, "qkv", prod(&[tokens, 3]), len::<B>(&qkv))?;
    expect(OP, "dout", tokens, len::<B>(&dout))?;
    expect(OP, "probs", p, len::<B>(&probs))?;
    expect(OP, "scratch", p, len_mut::<B>(&scratch))?;
    b.self_attention_backward(dqkv, scratch, dout, qkv, probs, args)
}

/// Checked [`Attention::cross_attention_forward`].
pub fn cross_attention_forward<B: Attention>(
    b: &B,
    out: B::ViewMut<'_>,
    probs: B::ViewMut<'_>,
    q: B::View<'_>,
    kv: B::View<'_>,
    args: &AttentionArgs,
) -> Result<(), B::Error> {
    const OP: &str = "cross_attention_forward";
    let (qn, kvn, p) = attention_sizes(OP, args)?;
    expect(OP, "q", qn, len::<B>(&q))?;
    expect(OP, "kv", prod(&[kvn, 2]), len::<B>(&kv))?;
    expect(OP, "out", qn, len_mut::<B>(&out))?;
    expect(OP, "probs", p, len_mut::<B>(&probs))?;
    b.cross_attention_forward(out, probs, q, kv, args)
}

/// Checked [`Attention::cross_attention_backward`].
#[allow(clippy::too_many_arguments)]
pub fn cross_attention_backward<B: Attention>(
    b: &B,
    dq: B::ViewMut<'_>,
    dkv: B::ViewMut<'_>,
    scratch: B::ViewMut<'_>,
    dout: B::View<'_>,
    q: B::View<'_>,
    kv: B::View<'_>,
    probs: B::View<'_>,
    args: &AttentionArgs,
) -> Result<(), B::Error> {
    const OP: &str = "cross_attention_backward";
    let (qn, kvn, p) = attention_sizes(OP, args)?;
    expect(OP, "dq", qn, len_mut::<B>(&dq))?;
    expect(OP, "dkv", prod(&[kvn, 2]), len_mut::<B>(&dkv))?;
    expect(OP, "dout", qn, len::<B>(&dout))?;
    expect(OP, "q", qn, len::<B>(&q))?;
    expect(OP, "kv", prod(&[kvn, 2]), len::<B>(&kv))?;
    expect(OP, "probs", p, len::<B>(&probs))?;
    expect(OP, "scratch", p, len_mut::<B>(&scratch))?;
    b.cross_attention_backward(dq, dkv, scratch, dout, q, kv, probs, args)
}

/// Checked [`Tokens::patchify`] (height and width must be positive multiples of the patch).
pub fn patchify<B: Tokens>(
    b: &B,
    out: B::ViewMut<'_>,
    img: B::View<'_>,
    args: &PatchArgs,
) -> Result<(), B::Error> {
    const OP: &str = "patchify";
    positive(OP, "patch", args.patch)?;
    expect(OP, "height % patch", 0, args.height % args.patch)?;
    expect(OP, "width % patch", 0, args.width % args.patch)?;
    let pixels = prod(&[args.batch, args.channels, args.height, args.width]);
    expect(OP, "img", pixels, len::<B>(&img))?;
    expect(OP, "out", pixels, len_mut::<B>(&out))?;
    b.patchify(out, img, args)
}

/// Checked [`Tokens::prepend_cls_forward`].
pub fn prepend_cls_forward<B: Tokens>(
    b: &B,
    out: B::ViewMut<'_>,
    patches: B::View<'_>,
    cls: B::View<'_>,
    batch: usize,
    tokens: usize,
    dim: usize,
) -> Result<(), B::Error> {
    const OP: &str = "prepend_cls_forward";
    expect(
        OP,
        "out",
        prod(&[batch, tokens.saturating_add(1), dim]),
        len_mut::<B>(&out),
    )?;
    expect(
        OP,
        "patches",
        prod(&[batch, tokens, dim]),
        len::<B>(&patches),
    )?;
    expect(OP, "cls", dim, len::<B>(&cls))?;
    b.prepend_cls_forward(out, patches, cls, batch, tokens, dim)
}

/// Checked [`Tokens::prepend_cls_backward`].
#[allow(clippy::too_many_arguments)]
pub fn prepend_cls_backward<B: Tokens>(
    b: &B,
    dpatches: Option<B::ViewMut<'_>>,
    dcls: B::ViewMut<'_>,
    dout: B::View<'_>,
    batch: usize,
    tokens: usize,
    dim: usize,
) -> Result<(), B::Error> {
    const OP: &str = "prepend_cls_backward";
    expect(
        OP,
        "dout",
        prod(&[batch, tokens.saturating_add(1), dim]),
        len::<B>(&dout),
    )?;
    if let Some(d) = &dpatches {
        expect(OP, "dpatches", prod(&[batch, tokens, dim]), len_mut::<B>(d))?;
    }
    expect(OP, "dcls", dim, len_mut::<B>(&dcls))?;
    b.prepend_cls_backward(dpatches, dcls, dout, batch, tokens, dim)
}

/// Checked [`Tokens::mean_pool_forward`] (`tokens >= 1`).
pub fn mean_pool_forward<B: Tokens>(
    b: &B,
    out: B::ViewMut<'_>,
    x: B::View<'_>,
    batch: usize,
    tokens: usize,
    dim: usize,
) -> Result<(), B::Error> {
    const OP: &str = "mean_pool_forward";
    positive(OP, "tokens", tokens)?;
    expect(OP, "x", prod(&[batch, tokens + 1, dim]), len::<B>(&x))?;
    expect(OP, "out", prod(&[batch, dim]), len_mut::<B>(&out))?;
    b.mean_pool_forward(out, x, batch, tokens, dim)
}

/// Checked [`Tokens::mean_pool_backward`] (`tokens >= 1`).
pub fn mean_pool_backward<B: Tokens>(
    b: &B,
    dx: B::ViewMut<'_>,
    dout: B::View<'_>,
    batch: usize,
    tokens: usize,
    dim: usize,
) -> Result<(), B::Error> {
    const OP: &str = "mean_pool_backward";
    positive(OP, "tokens", tokens)?;
    expect(OP, "dx", prod(&[batch, tokens + 1, dim]), len_mut::<B>(&dx))?;
    expect(OP, "dout", prod(&[batch, dim]), len::<B>(&dout))?;
    b.mean_pool_backward(dx, dout, batch, tokens, dim)
}

fn upsample_check(
    op: &'static str,
    small: usize,
    big: usize,
    planes: usize,
    sizes: [usize; 4],
) -> Result<(), ShapeError> {
    let [in_h, in_w, out_h, out_w] = sizes;
    for (name, v) in [
        ("in_h", in_h),
        ("in_w", in_w),
        ("out_h", out_h),
        ("out_w", out_w),
    ] {
        positive(op, name, v)?;
    }
    expect(op, "input", prod(&[planes, in_h, in_w]), small)?;
    expect(op, "output", prod(&[planes, out_h, out_w]), big)
}

/// Checked [`Tokens::upsample_bilinear_forward`].
#[allow(clippy::too_many_arguments)]
pub fn upsample_bilinear_forward<B: Tokens>(
    b: &B,
    out: B::ViewMut<'_>,
    x: B::View<'_>,
    planes: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
) -> Result<(), B::Error> {
    upsample_check(
        "upsample_bilinear_forward",
        len::<B>(&x),
        len_mut::<B>(&out),
        planes,
        [in_h, in_w, out_h, out_w],
    )?;
    b.upsample_bilinear_forward(out, x, planes, in_h, in_w, out_h, out_w)
}

/// Checked [`Tokens::upsample_bilinear_backward`].
#[allow(clippy::too_many_arguments)]
pub fn upsample_bilinear_backward<B: Tokens>(
    b: &B,
    dx: B::ViewMut<'_>,
    dout: B::View<'_>,
    planes: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
) -> Result<(), B::Error> {
    upsample_check(
        "upsample_bilinear_backward",
        len_mut::<B>(&dx),
        len::<B>(&dout),
        planes,
        [in_h, in_w, out_h, out_w],
    )?;
    b.upsample_bilinear_backward(dx, dout, planes, in_h, in_w, out_h, out_w)
}

/// Element counts of a cross-correlation call: (maps, kernels), both token maps.
fn xcorr_sizes(op: &'static str, a: &XcorrArgs) -> Result<(usize, usize), ShapeError> {
    for (name, v) in [
        ("channels", a.channels),
        ("height", a.height),
        ("width", a.width),
        ("kernel_h", a.kernel_h),
        ("kernel_w", a.kernel_w),
    ] {
        positive(op, name, v)?;
    }
    let map = prod(&[a.height, a.width]).saturating_add(1);
    let kernel = prod(&[a.kernel_h, a.kernel_w]).saturating_add(1);
    Ok((
        prod(&[a.batch, map, a.channels]),
        prod(&[a.batch, kernel, a.channels]),
    ))
}

/// Checked [`Conv::depthwise_xcorr_forward`] (every size but `batch` positive).
pub fn depthwise_xcorr_forward<B: Conv>(
    b: &B,
    out: B::ViewMut<'_>,
    x: B::View<'_>,
    t: B::View<'_>,
    args: &XcorrArgs,
) -> Result<(), B::Error> {
    const OP: &str = "depthwise_xcorr_forward";
    let (maps, kernels) = xcorr_sizes(OP, args)?;
    expect(OP, "x", maps, len::<B>(&x))?;
    expect(OP, "t", kernels, len::<B>(&t))?;
    expect(OP, "out", maps, len_mut::<B>(&out))?;
    b.depthwise_xcorr_forward(out, x, t, args)
}

/// Checked [`Conv::depthwise_xcorr_backward`].
#[allow(clippy::too_many_arguments)]
pub fn depthwise_xcorr_backward<B: Conv>(
    b: &B,
    dx: B::ViewMut<'_>,
    dt: B::ViewMut<'_>,
    dout: B::View<'_>,
    x: B::View<'_>,
    t: B::View<'_>,
    args: &XcorrArgs,
) -> Result<(), B::Error> {
    const OP: &str = "depthwise_xcorr_backward";
    let (maps, kernels) = xcorr_sizes(OP, args)?;
    expect(OP, "dout", maps, len::<B>(&dout))?;
    expect(OP, "x", maps, len::<B>(&x))?;
    expect(OP, "t", kernels, len::<B>(&t))?;
    expect(OP, "dx", maps, len_mut::<B>(&dx))?;
    expect(OP, "dt", kernels, len_mut::<B>(&dt))?;
    b.depthwise_xcorr_backward(dx, dt, dout, x, t, args)
}

/// Element counts of a transposed-convolution call: (input token maps, weight, output
/// planes). The output must have at least one pixel a side.
fn conv_transpose_sizes(
    op: &'static str,
    a: &ConvTransposeArgs,
) -> Result<(usize, usize, usize), ShapeError> {
    for (name, v) in [
        ("in_channels", a.in_channels),
        ("out_channels", a.out_channels),
        ("height", a.height),
        ("width", a.width),
        ("kernel", a.kernel),
        ("stride", a.stride),
    ] {
        positive(op, name, v)?;
    }
    // `positive` reports a zero; an output side of zero is what too much padding gives.
    let oh = a.out_side(a.height).unwrap_or(0);
    let ow = a.out_side(a.width).unwrap_or(0);
    positive(op, "output height", oh)?;
    positive(op, "output width", ow)?;
    let map = prod(&[a.height, a.width]).saturating_add(1);
    Ok((
        prod(&[a.batch, map, a.in_channels]),
        prod(&[a.in_channels, a.out_channels, a.kernel, a.kernel]),
        prod(&[a.batch, a.out_channels, oh, ow]),
    ))
}

/// Checked [`Conv::conv_transpose_forward`] (every size but `batch` positive, and a
/// padding small enough to leave an output).
pub fn conv_transpose_forward<B: Conv>(
    b: &B,
    out: B::ViewMut<'_>,
    x: B::View<'_>,
    weight: B::View<'_>,
    bias: B::View<'_>,
    args: &ConvTransposeArgs,
) -> Result<(), B::Error> {
    const OP: &str = "conv_transpose_forward";
    let (xn, wn, on) = conv_transpose_sizes(OP, args)?;
    expect(OP, "x", xn, len::<B>(&x))?;
    expect(OP, "weight", wn, len::<B>(&weight))?;
    expect(OP, "bias", args.out_channels, len::<B>(&bias))?;
    expect(OP, "out", on, len_mut::<B>(&out))?;
    b.conv_transpose_forward(out, x, weight, bias, args)
}

/// Checked [`Conv::conv_transpose_backward`].
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose_backward<B: Conv>(
    b: &B,
    dx: B::ViewMut<'_>,
    dweight: B::ViewMut<'_>,
    dbias: B::ViewMut<'_>,
    dout: B::View<'_>,
    x: B::View<'_>,
    weight: B::View<'_>,
    args: &ConvTransposeArgs,
) -> Result<(), B::Error> {
    const OP: &str = "conv_transpose_backward";
    let (xn, wn, on) = conv_transpose_sizes(OP, args)?;
    expect(OP, "dout", on, len::<B>(&dout))?;
    expect(OP, "x", xn, len::<B>(&x))?;
    expect(OP, "weight", wn, len::<B>(&weight))?;
    expect(OP, "dx", xn, len_mut::<B>(&dx))?;
    expect(OP, "dweight", wn, len_mut::<B>(&dweight))?;
    expect(OP, "dbias", args.out_channels, len_mut::<B>(&dbias))?;
    b.conv_transpose_backward(dx, dweight, dbias, dout, x, weight, args)
}

fn map_loss_check(
    op: &'static str,
    logits: usize,
    target: usize,
    a: &MapLossArgs,
) -> Result<(), ShapeError> {
    positive(op, "pixels", a.pixels)?;
    expect(
        op,
        "logits",
        prod(&[a.maps, a.kind.channels(), a.pixels]),
        logits,
    )?;
    expect(op, "target", prod(&[a.maps, a.pixels]), target)
}

/// Checked [`MapLossOps::map_loss_forward`].
pub fn map_loss_forward<B: MapLossOps>(
    b: &B,
    loss: B::ViewMut<'_>,
    logits: B::View<'_>,
    target: B::View<'_>,
    args: &MapLossArgs,
) -> Result<(), B::Error> {
    const OP: &str = "map_loss_forward";
    map_loss_check(OP, len::<B>(&logits), len::<B>(&target), args)?;
    expect(OP, "loss", 1, len_mut::<B>(&loss))?;
    b.map_loss_forward(loss, logits, target, args)
}

/// Checked [`MapLossOps::map_loss_backward`].
pub fn map_loss_backward<B: MapLossOps>(
    b: &B,
    dlogits: B::ViewMut<'_>,
    logits: B::View<'_>,
    target: B::View<'_>,
    args: &MapLossArgs,
) -> Result<(), B::Error> {
    const OP: &str = "map_loss_backward";
    map_loss_check(OP, len::<B>(&logits), len::<B>(&target), args)?;
    expect(OP, "dlogits", len::<B>(&logits), len_mut::<B>(&dlogits))?;
    b.map_loss_backward(dlogits, logits, target, args)
}

/// Checked [`Optim::adamw_update`] (`step >= 1`).
pub fn adamw_update<B: Optim>(
    b: &B,
    param: B::ViewMut<'_>,
    m: B::ViewMut<'_>,
    v: B::ViewMut<'_>,
    grad: B::View<'_>,
    args: &AdamWArgs,
) -> Result<(), B::Error> {
    const OP: &str = "adamw_update";
    positive(OP, "step", usize::try_from(args.step).unwrap_or(usize::MAX))?;
    let n = len_mut::<B>(&param);
    expect(OP, "m", n, len_mut::<B>(&m))?;
    expect(OP, "v", n, len_mut::<B>(&v))?;
    expect(OP, "grad", n, len::<B>(&grad))?;
    b.adamw_update(param, m, v, grad, args)
}

/// Checked [`Optim::ema_update`].
pub fn ema_update<B: Optim>(
    b: &B,
    target: B::ViewMut<'_>,
    online: B::View<'_>,
    momentum: f64,
) -> Result<(), B::Error> {
    expect(
        "ema_update",
        "online",
        len_mut::<B>(&target),
        len::<B>(&online),
    )?;
    b.ema_update(target, online, momentum)
}

/// Checked [`Optim::sum_squares`].
pub fn sum_squares<B: Optim>(b: &B, out: B::ViewMut<'_>, x: B::View<'_>) -> Result<(), B::Error> {
    expect("sum_squares", "out", 1, len_mut::<B>(&out))?;
    b.sum_squares(out, x)
}

/// Checked [`Optim::clip_by_norm`].
pub fn clip_by_norm<B: Optim>(
    b: &B,
    x: B::ViewMut<'_>,
    norm_sq: B::View<'_>,
    max_norm: f32,
) -> Result<(), B::Error> {
    expect("clip_by_norm", "norm_sq", 1, len::<B>(&norm_sq))?;
    b.clip_by_norm(x, norm_sq, max_norm)
}
