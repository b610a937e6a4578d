//! Element-wise and broadcast ops: the residual add (S3/S4), bias and position-embedding
//! adds with their reductions, the repeat of one context's decoder tokens over its K
//! exemplars (S4), and the exact erf GELU of the MLPs (S3) with its derivative.
//!
//! Shapes are written as `[outer, len, inner]` row-major, so element `(o, l, i)` sits at
//! `(o * len + l) * inner + i`.

/// `1 / sqrt(2)`, the argument scale of the GELU's erf.
const FRAC_1_SQRT_2: f64 = core::f64::consts::FRAC_1_SQRT_2;
/// `1 / sqrt(2 pi)`, the normal density's constant.
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// Implements [`cim_spec::backend::Elementwise::add_assign`]: `x += y` (the residual add).
pub fn add_assign(x: &mut [f64], y: &[f64]) {
    assert_eq!(x.len(), y.len(), "add_assign: y");
    for i in 0..x.len() {
        x[i] += y[i];
    }
}

/// Implements [`cim_spec::backend::Elementwise::scale`]: `x *= alpha`.
pub fn scale(x: &mut [f64], alpha: f64) {
    for v in x.iter_mut() {
        *v *= alpha;
    }
}

/// Implements [`cim_spec::backend::Elementwise::add_broadcast`]: `out[o, l, i] += v[l]` over
/// `out` `[outer, len, inner]` (bias, position embedding, per-channel bias).
pub fn add_broadcast(out: &mut [f64], v: &[f64], outer: usize, len: usize, inner: usize) {
    assert_eq!(out.len(), outer * len * inner, "add_broadcast: out");
    assert_eq!(v.len(), len, "add_broadcast: v");
    for o in 0..outer {
        for l in 0..len {
            for i in 0..inner {
                out[(o * len + l) * inner + i] += v[l];
            }
        }
    }
}

/// [`cim_spec::backend::Elementwise::sum_broadcast`], the backward of [`add_broadcast`]:
/// `dv[l] += sum_{o,i} dout[o, l, i]` (accumulates; the sum runs over `o` then `i`).
pub fn sum_broadcast(dv: &mut [f64], dout: &[f64], outer: usize, len: usize, inner: usize) {
    assert_eq!(dout.len(), outer * len * inner, "sum_broadcast: dout");
    assert_eq!(dv.len(), len, "sum_broadcast: dv");
    for l in 0..len {
        let mut sum = 0.0;
        for o in 0..outer {
            for i in 0..inner {
                sum += dout[(o * len + l) * inner + i];
            }
        }
        dv[l] += sum;
    }
}

/// Implements [`cim_spec::backend::Elementwise::repeat_forward`]: `out[b, k, :] = x[b, :]` for
/// `out` `[batch, copies, len]` and `x` `[batch, len]` (writes).
pub fn repeat_forward(out: &mut [f64], x: &[f64], batch: usize, copies: usize, len: usize) {
    assert_eq!(out.len(), batch * copies * len, "repeat_forward: out");
    assert_eq!(x.len(), batch * len, "repeat_forward: x");
    for b in 0..batch {
        for k in 0..copies {
            for l in 0..len {
                out[(b * copies + k) * len + l] = x[b * len + l];
            }
        }
    }
}

/// Implements [`cim_spec::backend::Elementwise::repeat_backward`]: `dx[b, :] = sum_k dout[b, k, :]`
/// (writes; the sum runs over `k` in order).
pub fn repeat_backward(dx: &mut [f64], dout: &[f64], batch: usize, copies: usize, len: usize) {
    assert_eq!(dout.len(), batch * copies * len, "repeat_backward: dout");
    assert_eq!(dx.len(), batch * len, "repeat_backward: dx");
    for b in 0..batch {
        for l in 0..len {
            let mut sum = 0.0;
            for k in 0..copies {
                sum += dout[(b * copies + k) * len + l];
            }
            dx[b * len + l] = sum;
        }
    }
}

/// The error function (libm's, accurate to about one ulp).
pub fn erf(x: f64) -> f64 {
    libm::erf(x)
}

/// Exact GELU (S3): `gelu(x) = x Phi(x) = x (1 + erf(x / sqrt 2)) / 2`.
pub fn gelu(x: f64) -> f64 {
    // 1 + erf(y) = erfc(-y): no cancellation for large negative x.
    0.5 * x * libm::erfc(-x * FRAC_1_SQRT_2)
}

/// Derivative of [`gelu`]: `gelu'(x) = Phi(x) + x phi(x)` with the standard normal
/// distribution `Phi(x) = (1 + erf(x / sqrt 2)) / 2` and density
/// `phi(x) = exp(-x^2 / 2) / sqrt(2 pi)`.
pub fn gelu_grad(x: f64) -> f64 {
    let cdf = 0.5 * libm::erfc(-x * FRAC_1_SQRT_2);
    let pdf = FRAC_1_SQRT_2PI * (-0.5 * x * x).exp();
    cdf + x * pdf
}

/// Implements [`cim_spec::backend::Elementwise::gelu_forward`]: `out = gelu(x)` (writes).
pub fn gelu_forward(out: &mut [f64], x: &[f64]) {
    assert_eq!(out.len(), x.len(), "gelu_forward: x");
    for i in 0..x.len() {
        out[i] = gelu(x[i]);
    }
}

/// [`cim_spec::backend::Elementwise::gelu_backward`], in place: `d = d * gelu'(x)`.
pub fn gelu_backward(d: &mut [f64], x: &[f64]) {
    assert_eq!(d.len(), x.len(), "gelu_backward: x");
    for i in 0..x.len() {
        d[i] *= gelu_grad(x[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{fd_check, rand_vec, rng, weighted_sum};

    #[test]
    fn gelu_golden_values() {
        // gelu(1) = Phi(1).
        assert!((gelu(1.0) - 0.841_344_746_068_542_9).abs() < 1e-15);
        assert_eq!(gelu(0.0), 0.0);
        // gelu(-1) = -Phi(-1) = -(1 - Phi(1)).
        assert!((gelu(-1.0) + 0.158_655_253_931_457_05).abs() < 1e-15);
        // Deep in the left tail: -10 Phi(-10) = -7.619853024160527e-23, which the
        // `1 + erf` form would lose to cancellation (it returns 0).
        assert!((gelu(-10.0) / -7.619_853_024_160_527e-23 - 1.0).abs() < 1e-12);
        // gelu'(0) = 1/2; gelu'(1) = Phi(1) + phi(1), phi(1) = 0.24197072451914337.
        assert_eq!(gelu_grad(0.0), 0.5);
        assert!(
            (gelu_grad(1.0) - (0.841_344_746_068_542_9 + 0.241_970_724_519_143_37)).abs() < 1e-15
        );
        assert!((erf(0.5) - 0.520_499_877_813_046_5).abs() < 1e-15);
    }

    #[test]
    fn gelu_backward_matches_finite_differences() {
        let mut r = rng(100);
        let x: Vec<f64> = rand_vec(&mut r, 11).iter().map(|v| 4.0 * v).collect();
        let w = rand_vec(&mut r, 11);
        let f = |x: &[f64]| {
            let mut out = vec![0.0; x.len()];
            gelu_forward(&mut out, x);
            weighted_sum(&w, &out)
        };
        let mut d = w.clone();
        gelu_backward(&mut d, &x);
        fd_check(f, &x, &d);
    }

    #[test]
    fn sum_broadcast_is_the_backward_of_add_broadcast() {
        let (outer, len, inner) = (3, 4, 2);
        let mut r = rng(101);
        let base = rand_vec(&mut r, outer * len * inner);
        let v = rand_vec(&mut r, len);
        let w = rand_vec(&mut r, outer * len * inner);
        let f = |v: &[f64]| {
            let mut out = base.clone();
            add_broadcast(&mut out, v, outer, len, inner);
            weighted_sum(&w, &out)
        };
        let mut dv = vec![0.0; len];
        sum_broadcast(&mut dv, &w, outer, len, inner);
        fd_check(f, &v, &dv);
    }

    #[test]
    fn add_broadcast_by_hand() {
        // [outer 1, len 2, inner 3] plus v = [10, 20].
        let mut out = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        add_broadcast(&mut out, &[10.0, 20.0], 1, 2, 3);
        assert_eq!(out, [10.0, 11.0, 12.0, 23.0, 24.0, 25.0]);
        let mut dv = [1.0, 1.0];
        sum_broadcast(&mut dv, &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], 1, 2, 3);
        assert_eq!(dv, [4.0, 13.0]);
    }

    #[test]
    fn repeat_backward_is_the_backward_of_repeat_forward() {
        let (batch, copies, len) = (2, 3, 5);
        let mut r = rng(102);
        let x = rand_vec(&mut r, batch * len);
        let w = rand_vec(&mut r, batch * copies * len);
        let f = |x: &[f64]| {
            let mut out = vec![0.0; batch * copies * len];
            repeat_forward(&mut out, x, batch, copies, len);
            weighted_sum(&w, &out)
        };
        let mut dx = vec![f64::NAN; batch * len];
        repeat_backward(&mut dx, &w, batch, copies, len);
        fd_check(f, &x, &dx);
    }

    #[test]
    fn nan_propagates_through_gelu() {
        let mut out = [0.0; 3];
        gelu_forward(&mut out, &[0.5, f64::NAN, f64::INFINITY]);
        assert!(out[0].is_finite() && out[1].is_nan());
        assert_eq!(out[2], f64::INFINITY);
        let mut d = [1.0, 1.0];
        gelu_backward(&mut d, &[f64::NAN, 0.0]);
        assert!(d[0].is_nan() && d[1] == 0.5);
    }
}
