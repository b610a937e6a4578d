//! The CPU backend's determinism claim, stronger than the conformance rerun: every op
//! gives the same bits with 1, 2 and 5 worker threads, on inputs large enough to be cut
//! into many tasks (so splits and partial sums are exercised).

use cim_cpu::Cpu;
use cim_spec::backend::{
    AdamWArgs, AttentionArgs, ConvTransposeArgs, GemmArgs, MapLossArgs, PatchArgs, XcorrArgs,
};
use cim_spec::loss::MapLoss;
use cim_spec::ops;

fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect()
}

/// Runs `op` on fresh copies of `init` with each thread count; all results must agree
/// bit for bit.
fn same_bits(name: &str, init: &[Vec<f32>], op: impl Fn(&Cpu, &mut Vec<Vec<f32>>)) {
    let mut first: Option<Vec<Vec<f32>>> = None;
    for threads in [1, 2, 5] {
        let cpu = Cpu::with_threads(threads);
        let mut bufs = init.to_vec();
        op(&cpu, &mut bufs);
        match &first {
            None => first = Some(bufs),
            Some(f) => {
                for (k, (a, b)) in f.iter().zip(&bufs).enumerate() {
                    let same = a.len() == b.len()
                        && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{name}: output {k} differs with {threads} threads");
                }
            }
        }
    }
}

#[test]
fn gemm_is_independent_of_the_thread_count() {
    for (m, n, k, ta, tb) in [
        (3200, 576, 192, false, true),
        (576, 192, 3200, true, false),
        (100, 700, 50, false, false),
    ] {
        let init = vec![
            values(m * n, 1, 1.0),
            values(m * k, 2, 1.0),
            values(k * n, 3, 1.0),
        ];
        same_bits("gemm", &init, |cpu, b| {
            let mut args = GemmArgs::single(m, n, k, ta, tb);
            args.beta = 1.0;
            let (c, rest) = b.split_first_mut().unwrap();
            ops::gemm(cpu, c, &rest[0], &rest[1], &args).unwrap();
        });
    }
}

#[test]
fn reductions_are_independent_of_the_thread_count() {
    let (rows, cols) = (3001, 192);
    let init = vec![
        values(cols, 4, 1.0),
        values(rows * cols, 5, 3.0),
        values(rows * cols, 6, 1.0),
    ];
    same_bits("sum_broadcast", &init, |cpu, b| {
        let (dv, rest) = b.split_first_mut().unwrap();
        ops::sum_broadcast(cpu, dv, &rest[0], rows, cols, 1).unwrap();
        ops::sum_broadcast(cpu, dv, &rest[1][..7 * cols * 400], 7, cols, 400).unwrap();
    });
    same_bits("sum_squares", &init, |cpu, b| {
        let mut out = vec![0.0f32];
        ops::sum_squares(cpu, &mut out, &b[1]).unwrap();
        b[0][0] = out[0];
    });
    same_bits("repeat_backward", &init, |cpu, b| {
        let mut dx = vec![0.0f32; 3 * cols];
        ops::repeat_backward(cpu, &mut dx, &b[1][..3 * 1000 * cols], 3, 1000, cols).unwrap();
        b[0] = dx;
    });
}

#[test]
fn layernorm_is_independent_of_the_thread_count() {
    let (rows, cols) = (4099, 192);
    let init = vec![
        values(rows * cols, 7, 2.0),
        values(cols, 8, 1.0),
        values(cols, 9, 0.5),
        values(rows * cols, 10, 1.0),
        values(rows * cols, 11, 1.0),
        values(cols, 12, 1.0),
        values(cols, 13, 1.0),
    ];
    same_bits("layernorm", &init, |cpu, b| {
        let (x, gamma, beta) = (b[0].clone(), b[1].clone(), b[2].clone());
        let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
        let mut out = vec![0.0; rows * cols];
        ops::layernorm_forward(
            cpu, &mut out, &mut mean, &mut rstd, &x, &gamma, &beta, rows, cols, 1e-6,
        )
        .unwrap();
        let dout = b[3].clone();
        let [_, _, _, _, dx, dg, db] = &mut b[..] else {
            unreachable!()
        };
        ops::layernorm_backward(cpu, dx, dg, db, &dout, &x, &gamma, &mean, &rstd, rows, cols)
            .unwrap();
        b[0] = out;
    });
}

#[test]
fn elementwise_ops_are_independent_of_the_thread_count() {
    let n = 300_001;
    let init = vec![values(n, 14, 6.0), values(n, 15, 1.0)];
    same_bits("gelu", &init, |cpu, b| {
        let x = b[0].clone();
        let mut out = vec![0.0; n];
        ops::gelu_forward(cpu, &mut out, &x).unwrap();
        ops::gelu_backward(cpu, &mut b[1], &x).unwrap();
        b[0] = out;
    });
    same_bits("optim", &init, |cpu, b| {
        let (mut m, mut v) = (values(n, 16, 0.01), values(n, 17, 0.01));
        v.iter_mut().for_each(|x| *x *= *x);
        let args = AdamWArgs {
            lr: 1e-3,
            weight_decay: 0.05,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            step: 5,
        };
        let g = b[1].clone();
        ops::adamw_update(cpu, &mut b[0], &mut m, &mut v, &g, &args).unwrap();
        ops::ema_update(cpu, &mut b[1], &m, 0.99).unwrap();
    });
}

#[test]
fn attention_is_independent_of_the_thread_count() {
    let a = AttentionArgs {
        batch: 7,
        q_len: 101,
        kv_len: 17,
        heads: 4,
        head_dim: 32,
    };
    let d = a.heads * a.head_dim;
    let (nq, nk, p) = (
        a.batch * a.q_len * d,
        a.batch * a.kv_len * d,
        a.batch * a.heads * a.q_len * a.kv_len,
    );
    let init = vec![
        values(nq, 18, 1.0),
        values(2 * nk, 19, 1.0),
        values(nq, 20, 1.0),
    ];
    same_bits("cross_attention", &init, |cpu, b| {
        let (q, kv, dout) = (b[0].clone(), b[1].clone(), b[2].clone());
        let (mut out, mut probs) = (vec![0.0; nq], vec![0.0; p]);
        ops::cross_attention_forward(cpu, &mut out, &mut probs, &q, &kv, &a).unwrap();
        let (mut dq, mut dkv, mut s) = (vec![0.0; nq], vec![0.0; 2 * nk], vec![0.0; p]);
        ops::cross_attention_backward(cpu, &mut dq, &mut dkv, &mut s, &dout, &q, &kv, &probs, &a)
            .unwrap();
        *b = vec![out, probs, dq, dkv];
    });
}

#[test]
fn tokens_and_loss_are_independent_of_the_thread_count() {
    let (maps, pixels) = (37, 1600);
    let mut target = values(maps * pixels, 21, 1.0);
    target
        .iter_mut()
        .for_each(|t| *t = f32::from(u8::from(*t > 0.3)));
    let init = vec![values(maps * 2 * 100, 22, 3.0), target];
    same_bits("upsample+loss", &init, |cpu, b| {
        let mut logits = vec![0.0; maps * 2 * pixels];
        ops::upsample_bilinear_forward(cpu, &mut logits, &b[0], maps * 2, 10, 10, 40, 40).unwrap();
        for kind in [MapLoss::SoftmaxCrossEntropy, MapLoss::focal()] {
            let args = MapLossArgs {
                kind,
                maps: if kind.channels() == 2 { maps } else { 2 * maps },
                pixels,
                scale: 1.0 / 3.0,
            };
            let target = if kind.channels() == 2 {
                b[1].clone()
            } else {
                [b[1].clone(), b[1].clone()].concat()
            };
            let mut loss = vec![0.0];
            ops::map_loss_forward(cpu, &mut loss, &logits, &target, &args).unwrap();
            let mut dlogits = vec![0.0; logits.len()];
            ops::map_loss_backward(cpu, &mut dlogits, &logits, &target, &args).unwrap();
            let mut dx = vec![0.0; maps * 2 * 100];
            ops::upsample_bilinear_backward(cpu, &mut dx, &dlogits, maps * 2, 10, 10, 40, 40)
                .unwrap();
            b.push(loss);
            b.push(dx);
        }
        let img = values(3 * 2 * 64 * 48, 23, 1.0);
        let mut patches = vec![0.0; img.len()];
        let args = PatchArgs {
            batch: 2,
            channels: 3,
            height: 64,
            width: 48,
            patch: 16,
        };
        ops::patchify(cpu, &mut patches, &img, &args).unwrap();
        b.push(patches);
    });
}

#[test]
fn decoder_options_are_independent_of_the_thread_count() {
    // The S4 options at the paper's per-map sizes (10 x 10 context grid, 4 x 4 exemplar
    // grid, the predictor's kernel 4 / stride 2 / padding 1) over enough maps to be split.
    let xa = XcorrArgs {
        batch: 30,
        channels: 96,
        height: 10,
        width: 10,
        kernel_h: 4,
        kernel_w: 4,
        scale: 0.25,
    };
    let (nx, nt) = (30 * 101 * 96, 30 * 17 * 96);
    let init = vec![
        values(nx, 24, 1.0),
        values(nt, 25, 1.0),
        values(nx, 26, 1.0),
    ];
    same_bits("depthwise_xcorr", &init, |cpu, b| {
        let (x, t, dout) = (b[0].clone(), b[1].clone(), b[2].clone());
        let mut out = vec![0.0; nx];
        ops::depthwise_xcorr_forward(cpu, &mut out, &x, &t, &xa).unwrap();
        let (mut dx, mut dt) = (vec![0.0; nx], vec![0.0; nt]);
        ops::depthwise_xcorr_backward(cpu, &mut dx, &mut dt, &dout, &x, &t, &xa).unwrap();
        *b = vec![out, dx, dt];
    });
    let ca = ConvTransposeArgs {
        batch: 70,
        in_channels: 96,
        out_channels: 2,
        height: 10,
        width: 10,
        kernel: 4,
        stride: 2,
        padding: 1,
    };
    let (nx, nw, no) = (70 * 101 * 96, 96 * 2 * 16, 70 * 2 * 20 * 20);
    let init = vec![
        values(nx, 27, 1.0),
        values(nw, 28, 0.1),
        values(2, 29, 0.1),
        values(no, 30, 1.0),
        values(nw, 31, 1.0),
        values(2, 32, 1.0),
    ];
    same_bits("conv_transpose", &init, |cpu, b| {
        let (x, w, bias, dout) = (b[0].clone(), b[1].clone(), b[2].clone(), b[3].clone());
        let mut out = vec![0.0; no];
        ops::conv_transpose_forward(cpu, &mut out, &x, &w, &bias, &ca).unwrap();
        let mut dx = vec![0.0; nx];
        let [.., dw, db] = &mut b[..] else {
            unreachable!()
        };
        ops::conv_transpose_backward(cpu, &mut dx, dw, db, &dout, &x, &w, &ca).unwrap();
        b[0] = out;
        b[1] = dx;
    });
}
