//! The optimizer step (S6: AdamW in PyTorch's order), the target network's EMA (S7) and
//! the global gradient norm with the optional clipping (S6), element by element in f64.

use cim_spec::backend::AdamWArgs;

/// [`cim_spec::backend::Optim::adamw_update`], in place, in PyTorch's order (S6):
/// `theta *= 1 - lr wd`; `m = b1 m + (1 - b1) g`; `v = b2 v + (1 - b2) g^2`;
/// `theta -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)`, with the bias
/// corrections computed in f64 from `args.step` (t >= 1).
pub fn adamw_update(
    param: &mut [f64],
    m: &mut [f64],
    v: &mut [f64],
    grad: &[f64],
    args: &AdamWArgs,
) {
    let n = param.len();
    assert_eq!(m.len(), n, "adamw_update: m");
    assert_eq!(v.len(), n, "adamw_update: v");
    assert_eq!(grad.len(), n, "adamw_update: grad");
    assert!(args.step >= 1, "adamw_update: step counts from 1");
    let t = args.step as f64;
    let bias_correction1 = 1.0 - args.beta1.powf(t);
    let bias_correction2 = 1.0 - args.beta2.powf(t);
    let step_size = args.lr / bias_correction1;
    let decay = 1.0 - args.lr * args.weight_decay;
    for i in 0..n {
        let g = grad[i];
        param[i] *= decay;
        m[i] = args.beta1 * m[i] + (1.0 - args.beta1) * g;
        v[i] = args.beta2 * v[i] + (1.0 - args.beta2) * g * g;
        let denom = v[i].sqrt() / bias_correction2.sqrt() + args.eps;
        param[i] -= step_size * m[i] / denom;
    }
}

/// [`cim_spec::backend::Optim::ema_update`], in place (S7):
/// `target = momentum * target + (1 - momentum) * online`.
pub fn ema_update(target: &mut [f64], online: &[f64], momentum: f64) {
    assert_eq!(target.len(), online.len(), "ema_update: online");
    for i in 0..target.len() {
        target[i] = momentum * target[i] + (1.0 - momentum) * online[i];
    }
}

/// Implements [`cim_spec::backend::Optim::sum_squares`]: `sum x^2`, in index order (the trait writes
/// it to `out[0]`). Any NaN or infinity in `x` makes it non-finite.
pub fn sum_squares(x: &[f64]) -> f64 {
    let mut sum = 0.0;
    for &v in x {
        sum += v * v;
    }
    sum
}

/// [`cim_spec::backend::Optim::clip_by_norm`], in place:
/// `x *= min(1, max_norm / (sqrt(norm_sq) + 1e-6))`, as `torch.nn.utils.clip_grad_norm_`
/// (which always multiplies, by 1 when under the limit). A NaN norm makes the factor, and
/// so every element, NaN (a plain `f64::min` would return 1 and hide it).
pub fn clip_by_norm(x: &mut [f64], norm_sq: f64, max_norm: f64) {
    let coefficient = max_norm / (norm_sq.sqrt() + 1e-6);
    // NaN > 1 is false, so a NaN coefficient is kept.
    let factor = if coefficient > 1.0 { 1.0 } else { coefficient };
    for v in x.iter_mut() {
        *v *= factor;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_adamw_step_by_hand() {
        // theta 1, g 0.5, lr 0.1, wd 0.05, step 1: theta = 0.995; m = 0.05; v = 0.0125;
        // step size 0.1 / 0.1 = 1; denom = sqrt(0.0125) / sqrt(0.05) + 1e-8 = 0.5 + 1e-8.
        let args = AdamWArgs {
            lr: 0.1,
            weight_decay: 0.05,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            step: 1,
        };
        let (mut p, mut m, mut v) = ([1.0], [0.0], [0.0]);
        adamw_update(&mut p, &mut m, &mut v, &[0.5], &args);
        assert!((m[0] - 0.05).abs() < 1e-16);
        assert!((v[0] - 0.0125).abs() < 1e-16);
        assert!(
            (p[0] - (0.995 - 0.05 / (0.5 + 1e-8))).abs() < 1e-15,
            "{}",
            p[0]
        );
        // Second step, g = -0.5, no decay: m = 0.045 - 0.05 = -0.005;
        // v = 0.011875 + 0.0125 = 0.024375; bc1 = 0.19, bc2 = 0.0975.
        let args = AdamWArgs {
            weight_decay: 0.0,
            step: 2,
            ..args
        };
        let before = p[0];
        adamw_update(&mut p, &mut m, &mut v, &[-0.5], &args);
        let expected =
            before - (0.1 / 0.19) * -0.005 / (0.024_375f64.sqrt() / 0.0975f64.sqrt() + 1e-8);
        assert!((p[0] - expected).abs() < 1e-15, "{} vs {expected}", p[0]);
    }

    #[test]
    fn ema_by_hand() {
        let mut target = [1.0, -2.0];
        ema_update(&mut target, &[3.0, 2.0], 0.75);
        assert_eq!(target, [1.5, -1.0]);
        // Momentum 1 keeps the target, 0 copies the online network.
        ema_update(&mut target, &[9.0, 9.0], 1.0);
        assert_eq!(target, [1.5, -1.0]);
        ema_update(&mut target, &[9.0, 8.0], 0.0);
        assert_eq!(target, [9.0, 8.0]);
    }

    #[test]
    fn clip_by_norm_by_hand() {
        let mut x = [3.0, 4.0];
        let norm_sq = sum_squares(&x);
        assert_eq!(norm_sq, 25.0);
        clip_by_norm(&mut x, norm_sq, 1.0);
        assert!((x[0] - 3.0 / (5.0 + 1e-6)).abs() < 1e-16);
        assert!((x[1] - 4.0 / (5.0 + 1e-6)).abs() < 1e-16);
        let mut y = [3.0, 4.0];
        clip_by_norm(&mut y, 25.0, 10.0);
        assert_eq!(y, [3.0, 4.0]);
        let mut z = [3.0, 4.0];
        clip_by_norm(&mut z, f64::NAN, 10.0);
        assert!(z.iter().all(|v| v.is_nan()));
        assert!(sum_squares(&[1.0, f64::NAN]).is_nan());
        assert_eq!(sum_squares(&[1.0, f64::INFINITY]), f64::INFINITY);
    }
}
