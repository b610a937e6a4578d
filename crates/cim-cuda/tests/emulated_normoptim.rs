//! Paths of the norm and optimizer kernels that the conformance suite's small cases do not
//! reach, on the host emulator: the unrolled row loop of the gamma/beta gradient (more
//! than three times 128 rows), the multi-block sum of squares with its unrolled loads
//! (about a million elements), and the bit-for-bit agreement of AdamW and EMA with the
//! f32 scalar definitions in `cim_spec::schedule`.

mod buffers;

use cim_cuda::Cuda;
use cim_spec::backend::{AdamWArgs, Memory, Optim};
use cim_spec::schedule::{AdamW, ema_scalar};
use conformance::cases::{ClipCase, LayerNormCase, VectorCase};

use buffers::{download, upload};

/// A deterministic spread of values in `[-scale/2, scale/2)`.
fn spread(n: usize, mul: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * mul) as f32 * 0.618_034).fract() - 0.5) * scale)
        .collect()
}

#[test]
fn layernorm_with_many_rows_and_wide_rows() {
    let b = Cuda::emulated();
    for (rows, cols) in [(600, 24), (3, 1300)] {
        let case = LayerNormCase {
            seed: 7,
            rows,
            cols,
            scale: 1.0,
            offset: 30.0,
            eps: 1e-6,
            grad_scale: 1.0,
        };
        conformance::layernorm_forward_case(&b, &case).unwrap();
        conformance::layernorm_backward_case(&b, &case).unwrap();
    }
}

#[test]
fn sum_squares_over_many_blocks() {
    let b = Cuda::emulated();
    let len = 1_000_003;
    conformance::sum_squares_case(
        &b,
        &VectorCase {
            seed: 3,
            len,
            scale: 1.0,
        },
    )
    .unwrap();
    let case = ClipCase {
        seed: 4,
        len,
        scale: 1.0,
        max_norm_ratio: 0.5,
    };
    conformance::clip_by_norm_case(&b, &case).unwrap();
    // Exact squares of 1000 distinct values: f64 partial sums round to the f32 result.
    let x: Vec<f32> = (0..len)
        .map(|i| ((i % 1000) as f32 - 500.0) * 1e-3)
        .collect();
    let exact: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let mut out = upload(&b, &[f32::NAN]);
    for (poison, want) in [(None, exact as f32), (Some(f32::INFINITY), f32::INFINITY)] {
        let mut x = x.clone();
        if let Some(p) = poison {
            x[777_777] = p;
        }
        let xb = upload(&b, &x);
        b.sum_squares(b.view_mut(&mut out, 0..1), b.view(&xb, 0..len))
            .unwrap();
        assert_eq!(download(&b, &out)[0], want);
    }
}

#[test]
fn adamw_matches_the_spec_scalar_update_bit_for_bit() {
    let b = Cuda::emulated();
    let n = 10_007;
    let (theta, m, g) = (spread(n, 1, 2.0), spread(n, 7, 0.01), spread(n, 11, 0.1));
    let v: Vec<f32> = spread(n, 3, 0.01).iter().map(|x| x * x).collect();
    // beta1 0.3 takes PyTorch's other lerp branch (weight 0.7 >= 0.5).
    for (beta1, weight_decay, step) in [(0.9, 0.05, 1), (0.9, 0.0, 1000), (0.3, 0.1, 7)] {
        let opt = AdamW {
            lr: 1.5e-3,
            beta1,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay,
        };
        let scalars = opt.step_scalars(step);
        let (mut tb, mut mb, mut vb, gb) = (
            upload(&b, &theta),
            upload(&b, &m),
            upload(&b, &v),
            upload(&b, &g),
        );
        let args = AdamWArgs {
            lr: opt.lr,
            weight_decay,
            beta1,
            beta2: 0.95,
            eps: 1e-8,
            step,
        };
        let (tv, mv, vv) = (
            b.view_mut(&mut tb, 0..n),
            b.view_mut(&mut mb, 0..n),
            b.view_mut(&mut vb, 0..n),
        );
        b.adamw_update(tv, mv, vv, b.view(&gb, 0..n), &args)
            .unwrap();
        let (t2, m2, v2) = (download(&b, &tb), download(&b, &mb), download(&b, &vb));
        for i in 0..n {
            let (t, mm, vv) = scalars.apply(theta[i], m[i], v[i], g[i], true);
            assert_eq!(t2[i].to_bits(), t.to_bits(), "theta {i}, step {step}");
            assert_eq!(m2[i].to_bits(), mm.to_bits(), "m {i}, step {step}");
            assert_eq!(v2[i].to_bits(), vv.to_bits(), "v {i}, step {step}");
        }
    }
}

#[test]
fn ema_matches_the_spec_scalar_update_bit_for_bit() {
    let b = Cuda::emulated();
    let n = 10_007;
    let (target, online) = (spread(n, 5, 2.0), spread(n, 13, 2.0));
    for momentum in [0.996, 0.999_999, 0.0, 1.0] {
        let mut tb = upload(&b, &target);
        let ob = upload(&b, &online);
        b.ema_update(b.view_mut(&mut tb, 0..n), b.view(&ob, 0..n), momentum)
            .unwrap();
        for (i, got) in download(&b, &tb).into_iter().enumerate() {
            let want = ema_scalar(target[i], online[i], momentum);
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "element {i}, momentum {momentum}"
            );
        }
    }
}
