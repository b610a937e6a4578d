//! The reference backend through the contract's checked entry points (`cim_spec::ops`):
//! memory, `=` versus `+=` semantics of every op's outputs, NaN handling, and the shape
//! errors the wrappers raise before the backend runs.

use cim_reference::Reference;
use cim_spec::backend::{
    AdamWArgs, AttentionArgs, Backend, GemmArgs, MapLossArgs, Memory, PatchArgs, Precision, Role,
};
use cim_spec::error::{Error, ErrorKind, HostError, ShapeError};
use cim_spec::loss::MapLoss;
use cim_spec::ops;
use cim_spec::rng::CimRng;

fn rand(seed: u64, len: usize) -> Vec<f64> {
    let mut r = CimRng::derive(77, &[seed]);
    (0..len).map(|_| r.uniform(-1.0, 1.0)).collect()
}

/// Whether an output is written (`=`) or accumulated (`+=`) by the op under test.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Writes,
    Accumulates,
}
use Mode::{Accumulates, Writes};

/// Runs `op` twice on the same outputs. Written outputs start as NaN (which must be
/// ignored) and must come out identical from both calls; accumulated outputs start at 0
/// and must hold exactly twice the first call's result after the second.
fn run_twice(name: &str, lens: &[usize], modes: &[Mode], mut op: impl FnMut(&mut [Vec<f64>])) {
    let mut outs: Vec<Vec<f64>> = lens
        .iter()
        .zip(modes)
        .map(|(&len, &mode)| vec![if mode == Writes { f64::NAN } else { 0.0 }; len])
        .collect();
    op(&mut outs);
    let first = outs.clone();
    for (i, out) in first.iter().enumerate() {
        assert!(
            out.iter().all(|v| v.is_finite()),
            "{name}: output {i} not finite"
        );
        assert!(
            out.iter().any(|&v| v != 0.0),
            "{name}: output {i} is all zero"
        );
    }
    op(&mut outs);
    for (i, ((once, twice), mode)) in first.iter().zip(&outs).zip(modes).enumerate() {
        for (a, b) in once.iter().zip(twice) {
            match mode {
                Writes => assert_eq!(a, b, "{name}: written output {i} changed"),
                Accumulates => assert_eq!(2.0 * a, *b, "{name}: output {i} did not accumulate"),
            }
        }
    }
}

#[test]
fn memory_round_trip() {
    let r = Reference::new();
    assert_eq!(r.name(), "reference");
    assert_eq!(r.precision(), Precision::F32);
    let mut buf = r.alloc(6, Role::Activation).unwrap();
    assert_eq!(buf, vec![0.0; 6]);
    assert_eq!(Reference::buffer_len(&buf), 6);
    let src = [0.1f32, -3.5, 1e-30, f32::MAX, f32::MIN_POSITIVE, 7.0];
    r.upload(r.view_mut(&mut buf, 0..6), &src).unwrap();
    assert_eq!(buf[0], f64::from(0.1f32));
    let mut back = [0.0f32; 6];
    r.download(r.view(&buf, 0..6), &mut back).unwrap();
    assert_eq!(back, src);
    // Downloads round to nearest.
    buf[0] = 1.0 + 2f64.powi(-30);
    buf[1] = 1.0 + 3.0 * 2f64.powi(-24);
    r.download(r.view(&buf, 0..2), &mut back[..2]).unwrap();
    assert_eq!(back[..2], [1.0, 1.0 + 2f32.powi(-22)]);
    // Views, splits, fill, copy.
    let mut view = r.view_mut(&mut buf, 1..5);
    assert_eq!(Reference::view_mut_len(&view), 4);
    r.fill(Reference::reborrow(&mut view), 2.5).unwrap();
    assert_eq!(Reference::as_view(&view), &[2.5; 4]);
    let (left, right) = Reference::split_mut(view, 1);
    r.copy(right, &[1.0, 2.0, 3.0]).unwrap();
    assert_eq!(left, &[2.5]);
    assert_eq!(buf[1..5], [2.5, 1.0, 2.0, 3.0]);
    let v = r.view(&buf, 0..6);
    assert_eq!(Reference::sub_view(v, 2..4), &[1.0, 2.0]);
    assert_eq!(Reference::view_len(&v), 6);
    r.synchronize().unwrap();
}

#[test]
fn gemm_writes_with_beta_zero_and_accumulates_with_beta_one() {
    let r = Reference::new();
    let (a, b) = (rand(1, 6), rand(2, 12));
    let args = GemmArgs::single(2, 4, 3, false, false);
    run_twice("gemm beta 0", &[8], &[Writes], |o| {
        ops::gemm(&r, &mut o[0][..], &a[..], &b[..], &args).unwrap()
    });
    let args = GemmArgs { beta: 1.0, ..args };
    run_twice("gemm beta 1", &[8], &[Accumulates], |o| {
        ops::gemm(&r, &mut o[0][..], &a[..], &b[..], &args).unwrap()
    });
}

#[test]
fn elementwise_semantics() {
    let r = Reference::new();
    let y = rand(3, 10);
    run_twice("add_assign", &[10], &[Accumulates], |o| {
        ops::add_assign(&r, &mut o[0][..], &y[..]).unwrap()
    });
    let v = rand(4, 5);
    run_twice("add_broadcast", &[30], &[Accumulates], |o| {
        ops::add_broadcast(&r, &mut o[0][..], &v[..], 2, 5, 3).unwrap()
    });
    let dout = rand(5, 30);
    run_twice("sum_broadcast", &[5], &[Accumulates], |o| {
        ops::sum_broadcast(&r, &mut o[0][..], &dout[..], 2, 5, 3).unwrap()
    });
    let x = rand(6, 10);
    run_twice("repeat_forward", &[30], &[Writes], |o| {
        ops::repeat_forward(&r, &mut o[0][..], &x[..], 2, 3, 5).unwrap()
    });
    run_twice("repeat_backward", &[10], &[Writes], |o| {
        ops::repeat_backward(&r, &mut o[0][..], &dout[..], 2, 3, 5).unwrap()
    });
    run_twice("gelu_forward", &[10], &[Writes], |o| {
        ops::gelu_forward(&r, &mut o[0][..], &x[..]).unwrap()
    });
    // In-place ops: scale and the GELU backward.
    let mut s = x.clone();
    ops::scale(&r, &mut s[..], -0.5).unwrap();
    assert_eq!(s, x.iter().map(|v| -0.5 * v).collect::<Vec<_>>());
    let mut d = vec![1.0; 10];
    ops::gelu_backward(&r, &mut d[..], &x[..]).unwrap();
    assert_eq!(
        d,
        x.iter()
            .map(|&v| cim_reference::elementwise::gelu_grad(v))
            .collect::<Vec<_>>()
    );
}

#[test]
fn layernorm_forward_writes_and_backward_accumulates() {
    let r = Reference::new();
    let (rows, cols) = (3, 4);
    let (x, gamma, beta, dout) = (rand(7, 12), rand(8, 4), rand(9, 4), rand(10, 12));
    let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
    run_twice("layernorm_forward", &[12, 3, 3], &[Writes; 3], |o| {
        let [out, m, s] = o else { unreachable!() };
        ops::layernorm_forward(
            &r,
            &mut out[..],
            &mut m[..],
            &mut s[..],
            &x[..],
            &gamma[..],
            &beta[..],
            rows,
            cols,
            1e-6,
        )
        .unwrap();
        mean.clone_from(m);
        rstd.clone_from(s);
    });
    // The wrapper passes eps through: rstd = 1 / sqrt(var + eps) with eps = 1e-6 as f32.
    let row = &x[..cols];
    let mu = row.iter().sum::<f64>() / 4.0;
    let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / 4.0;
    assert_eq!(rstd[0], 1.0 / (var + f64::from(1e-6f32)).sqrt());
    run_twice("layernorm_backward", &[12, 4, 4], &[Accumulates; 3], |o| {
        let [dx, dg, db] = o else { unreachable!() };
        ops::layernorm_backward(
            &r,
            &mut dx[..],
            &mut dg[..],
            &mut db[..],
            &dout[..],
            &x[..],
            &gamma[..],
            &mean[..],
            &rstd[..],
            rows,
            cols,
        )
        .unwrap()
    });
}

#[test]
fn attention_writes_every_output() {
    let r = Reference::new();
    let a = AttentionArgs {
        batch: 2,
        q_len: 3,
        kv_len: 3,
        heads: 2,
        head_dim: 2,
    };
    let (dim, p) = (4, 2 * 2 * 3 * 3);
    let qkv = rand(11, 2 * 3 * 3 * dim);
    let dout = rand(12, 2 * 3 * dim);
    let mut probs = vec![0.0; p];
    run_twice("self_attention_forward", &[24, p], &[Writes; 2], |o| {
        let [out, pr] = o else { unreachable!() };
        ops::self_attention_forward(&r, &mut out[..], &mut pr[..], &qkv[..], &a).unwrap();
        probs.clone_from(pr);
    });
    run_twice("self_attention_backward", &[72, p], &[Writes; 2], |o| {
        let [dqkv, scratch] = o else { unreachable!() };
        ops::self_attention_backward(
            &r,
            &mut dqkv[..],
            &mut scratch[..],
            &dout[..],
            &qkv[..],
            &probs[..],
            &a,
        )
        .unwrap()
    });

    let a = AttentionArgs {
        batch: 2,
        q_len: 3,
        kv_len: 5,
        heads: 2,
        head_dim: 2,
    };
    let p = 2 * 2 * 3 * 5;
    let (q, kv) = (rand(13, 2 * 3 * dim), rand(14, 2 * 5 * 2 * dim));
    let mut probs = vec![0.0; p];
    run_twice("cross_attention_forward", &[24, p], &[Writes; 2], |o| {
        let [out, pr] = o else { unreachable!() };
        ops::cross_attention_forward(&r, &mut out[..], &mut pr[..], &q[..], &kv[..], &a).unwrap();
        probs.clone_from(pr);
    });
    run_twice(
        "cross_attention_backward",
        &[24, 80, p],
        &[Writes; 3],
        |o| {
            let [dq, dkv, scratch] = o else {
                unreachable!()
            };
            ops::cross_attention_backward(
                &r,
                &mut dq[..],
                &mut dkv[..],
                &mut scratch[..],
                &dout[..],
                &q[..],
                &kv[..],
                &probs[..],
                &a,
            )
            .unwrap()
        },
    );
}

#[test]
fn token_ops_semantics() {
    let r = Reference::new();
    let img = rand(15, 2 * 3 * 4 * 6);
    let pa = PatchArgs {
        batch: 2,
        channels: 3,
        height: 4,
        width: 6,
        patch: 2,
    };
    run_twice("patchify", &[144], &[Writes], |o| {
        ops::patchify(&r, &mut o[0][..], &img[..], &pa).unwrap()
    });
    let (patches, cls, dout) = (rand(16, 2 * 3 * 4), rand(17, 4), rand(18, 2 * 4 * 4));
    run_twice("prepend_cls_forward", &[32], &[Writes], |o| {
        ops::prepend_cls_forward(&r, &mut o[0][..], &patches[..], &cls[..], 2, 3, 4).unwrap()
    });
    run_twice(
        "prepend_cls_backward",
        &[24, 4],
        &[Writes, Accumulates],
        |o| {
            let [dp, dc] = o else { unreachable!() };
            ops::prepend_cls_backward(&r, Some(&mut dp[..]), &mut dc[..], &dout[..], 2, 3, 4)
                .unwrap()
        },
    );
    run_twice("mean_pool_forward", &[8], &[Writes], |o| {
        ops::mean_pool_forward(&r, &mut o[0][..], &dout[..], 2, 3, 4).unwrap()
    });
    let dpool = rand(19, 8);
    run_twice("mean_pool_backward", &[32], &[Writes], |o| {
        ops::mean_pool_backward(&r, &mut o[0][..], &dpool[..], 2, 3, 4).unwrap()
    });
    let small = rand(20, 2 * 3 * 2);
    run_twice("upsample_bilinear_forward", &[2 * 5 * 4], &[Writes], |o| {
        ops::upsample_bilinear_forward(&r, &mut o[0][..], &small[..], 2, 3, 2, 5, 4).unwrap()
    });
    let big = rand(21, 2 * 5 * 4);
    run_twice("upsample_bilinear_backward", &[12], &[Writes], |o| {
        ops::upsample_bilinear_backward(&r, &mut o[0][..], &big[..], 2, 3, 2, 5, 4).unwrap()
    });
}

#[test]
fn loss_and_optimizer_semantics() {
    let r = Reference::new();
    let args = MapLossArgs {
        kind: MapLoss::SoftmaxCrossEntropy,
        maps: 2,
        pixels: 5,
        scale: 0.5,
    };
    let logits = rand(22, 20);
    let target = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
    run_twice("map_loss_forward", &[1], &[Writes], |o| {
        ops::map_loss_forward(&r, &mut o[0][..], &logits[..], &target[..], &args).unwrap()
    });
    run_twice("map_loss_backward", &[20], &[Writes], |o| {
        ops::map_loss_backward(&r, &mut o[0][..], &logits[..], &target[..], &args).unwrap()
    });
    let x = rand(23, 9);
    run_twice("sum_squares", &[1], &[Writes], |o| {
        ops::sum_squares(&r, &mut o[0][..], &x[..]).unwrap()
    });

    // In-place updates: the wrappers pass the f32 scalars through unchanged.
    let (mut p, mut m, mut v) = (x.clone(), vec![0.0; 9], vec![0.0; 9]);
    let g = rand(24, 9);
    let aw = AdamWArgs {
        lr: 1e-3,
        weight_decay: 0.05,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        step: 3,
    };
    ops::adamw_update(&r, &mut p[..], &mut m[..], &mut v[..], &g[..], &aw).unwrap();
    let (mut p2, mut m2, mut v2) = (x.clone(), vec![0.0; 9], vec![0.0; 9]);
    cim_reference::optim::adamw_update(&mut p2, &mut m2, &mut v2, &g, &aw);
    assert_eq!((p, m, v), (p2, m2, v2));
    let mut target = g.clone();
    ops::ema_update(&r, &mut target[..], &x[..], 0.996).unwrap();
    for i in 0..9 {
        let mom = 0.996;
        assert_eq!(target[i], mom * g[i] + (1.0 - mom) * x[i]);
    }
    let mut clipped = x.clone();
    ops::clip_by_norm(&r, &mut clipped[..], &[4.0][..], 0.5).unwrap();
    let factor = 0.5 / (2.0 + 1e-6);
    assert_eq!(clipped, x.iter().map(|v| v * factor).collect::<Vec<_>>());
}

#[test]
fn nan_inputs_reach_outputs_and_nan_outputs_are_overwritten() {
    let r = Reference::new();
    // A NaN-filled C with beta = 0 is overwritten with finite values.
    let mut c = [f64::NAN; 8];
    ops::gemm(
        &r,
        &mut c[..],
        &rand(25, 6)[..],
        &rand(26, 12)[..],
        &GemmArgs::single(2, 4, 3, false, true),
    )
    .unwrap();
    assert!(c.iter().all(|v| v.is_finite()));
    // A NaN logit makes the loss NaN.
    let args = MapLossArgs {
        kind: MapLoss::BinaryCrossEntropy,
        maps: 1,
        pixels: 3,
        scale: 1.0,
    };
    let mut loss = [0.0];
    ops::map_loss_forward(
        &r,
        &mut loss[..],
        &[0.0, f64::NAN, 1.0][..],
        &[0.0, 1.0, 0.0][..],
        &args,
    )
    .unwrap();
    assert!(loss[0].is_nan());
    // A NaN gradient makes the global norm NaN and clipping spreads it.
    let mut grad = [1.0, f64::NAN, 2.0];
    let mut norm_sq = [0.0];
    ops::sum_squares(&r, &mut norm_sq[..], &grad[..]).unwrap();
    assert!(norm_sq[0].is_nan());
    ops::clip_by_norm(&r, &mut grad[..], &norm_sq[..], 1.0).unwrap();
    assert!(grad.iter().all(|v| v.is_nan()));
}

fn shape(err: HostError) -> ShapeError {
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    match err {
        HostError::Shape(e) => e,
    }
}

#[test]
fn wrappers_reject_wrong_lengths_naming_the_argument() {
    let r = Reference::new();
    let (x, beta) = (vec![0.0; 6], vec![0.0; 3]);
    let (mut out, mut mean, mut rstd) = (vec![0.0; 6], vec![0.0; 2], vec![0.0; 2]);
    let gamma_too_short = [1.0; 2];
    let e = ops::layernorm_forward(
        &r,
        &mut out[..],
        &mut mean[..],
        &mut rstd[..],
        &x[..],
        &gamma_too_short[..],
        &beta[..],
        2,
        3,
        1e-6,
    )
    .unwrap_err();
    assert_eq!(
        shape(e),
        ShapeError {
            op: "layernorm_forward",
            argument: "gamma",
            expected: 3,
            actual: 2
        }
    );
    // The outputs were not touched.
    assert_eq!(out, vec![0.0; 6]);

    let mut c = [0.0; 7];
    let e = ops::gemm(
        &r,
        &mut c[..],
        &[0.0; 6][..],
        &[0.0; 12][..],
        &GemmArgs::single(2, 4, 3, false, false),
    )
    .unwrap_err();
    assert_eq!(
        shape(e),
        ShapeError {
            op: "gemm",
            argument: "c",
            expected: 8,
            actual: 7
        }
    );

    let a = AttentionArgs {
        batch: 1,
        q_len: 2,
        kv_len: 2,
        heads: 1,
        head_dim: 2,
    };
    let e =
        ops::self_attention_forward(&r, &mut [0.0; 4][..], &mut [0.0; 3][..], &[0.0; 12][..], &a)
            .unwrap_err();
    assert_eq!(shape(e).argument, "probs");

    let args = MapLossArgs {
        kind: MapLoss::SoftmaxCrossEntropy,
        maps: 1,
        pixels: 3,
        scale: 1.0,
    };
    let e = ops::map_loss_backward(&r, &mut [0.0; 6][..], &[0.0; 6][..], &[0.0; 2][..], &args)
        .unwrap_err();
    let e = shape(e);
    assert_eq!(
        (e.op, e.argument, e.expected, e.actual),
        ("map_loss_backward", "target", 3, 2)
    );
}

#[test]
fn conv_ops_write_inputs_gradients_and_accumulate_parameter_gradients() {
    use cim_spec::backend::{ConvTransposeArgs, XcorrArgs};
    let r = Reference::new();
    let xa = XcorrArgs {
        batch: 2,
        channels: 3,
        height: 3,
        width: 4,
        kernel_h: 2,
        kernel_w: 3,
        scale: 0.5,
    };
    let (x, t) = (rand(30, 2 * 13 * 3), rand(31, 2 * 7 * 3));
    run_twice("depthwise_xcorr_forward", &[78], &[Writes], |o| {
        ops::depthwise_xcorr_forward(&r, &mut o[0][..], &x[..], &t[..], &xa).unwrap()
    });
    let dout = rand(32, 78);
    run_twice("depthwise_xcorr_backward", &[78, 42], &[Writes; 2], |o| {
        let [dx, dt] = o else { unreachable!() };
        ops::depthwise_xcorr_backward(&r, &mut dx[..], &mut dt[..], &dout[..], &x[..], &t[..], &xa)
            .unwrap()
    });
    let ca = ConvTransposeArgs {
        batch: 2,
        in_channels: 3,
        out_channels: 2,
        height: 2,
        width: 3,
        kernel: 4,
        stride: 2,
        padding: 1,
    };
    let (x, w, bias) = (rand(33, 2 * 7 * 3), rand(34, 3 * 2 * 16), rand(35, 2));
    let out_len = 2 * 2 * 4 * 6;
    run_twice("conv_transpose_forward", &[out_len], &[Writes], |o| {
        ops::conv_transpose_forward(&r, &mut o[0][..], &x[..], &w[..], &bias[..], &ca).unwrap()
    });
    let dout = rand(36, out_len);
    run_twice(
        "conv_transpose_backward",
        &[42, 96, 2],
        &[Writes, Accumulates, Accumulates],
        |o| {
            let [dx, dw, db] = o else { unreachable!() };
            ops::conv_transpose_backward(
                &r,
                &mut dx[..],
                &mut dw[..],
                &mut db[..],
                &dout[..],
                &x[..],
                &w[..],
                &ca,
            )
            .unwrap()
        },
    );
    // Too much padding leaves no output: refused, naming the size.
    let e = ops::conv_transpose_forward(
        &r,
        &mut [0.0; 0][..],
        &x[..],
        &w[..],
        &bias[..],
        &ConvTransposeArgs {
            height: 1,
            width: 1,
            batch: 1,
            kernel: 2,
            padding: 1,
            ..ca
        },
    )
    .unwrap_err();
    assert_eq!(shape(e).argument, "output height");
}
