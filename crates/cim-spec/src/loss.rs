//! The map losses of S5 as scalar formulas, one pixel at a time.
//!
//! Every backend's loss op is these formulas summed over pixels, so they are written once,
//! generic over the float type (the reference runs them in f64, the CPU backend in f32),
//! in numerically stable forms (log-sum-exp, softplus) that stay finite for any finite
//! logit. Each returns the pixel's loss and its derivative with respect to the logits.

use num_traits::Float;

/// Which S5 loss compares the predicted maps with the ground truth.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MapLoss {
    /// Default: two-class softmax cross-entropy over two logit maps (channel 1 = inside).
    SoftmaxCrossEntropy,
    /// Single-logit binary cross-entropy on a sigmoid (paper Eq. 7).
    BinaryCrossEntropy,
    /// Class-balanced BCE (HED-style): each pixel of a class is weighted by the other
    /// class's pixel share in the same map.
    BalancedBinaryCrossEntropy,
    /// Squared error between the sigmoid probability and the 0/1 target.
    MeanSquaredError,
    /// Focal loss on a sigmoid: -alpha_t (1 - p_t)^gamma log p_t.
    Focal {
        /// Weight of the positive class (1 - alpha for the negative one); paper: 0.25.
        alpha: f64,
        /// Focusing exponent; paper: 2.
        gamma: f64,
    },
}

impl MapLoss {
    /// Logit maps per exemplar the predictor must produce for this loss.
    pub fn channels(self) -> usize {
        match self {
            MapLoss::SoftmaxCrossEntropy => 2,
            _ => 1,
        }
    }

    /// The paper's focal loss (alpha 0.25, gamma 2).
    pub fn focal() -> Self {
        MapLoss::Focal {
            alpha: 0.25,
            gamma: 2.0,
        }
    }
}

/// log(1 + e^x) without overflow.
pub fn softplus<F: Float>(x: F) -> F {
    let zero = F::zero();
    x.max(zero) + (-x.abs()).exp().ln_1p()
}

/// 1 / (1 + e^-x), evaluated on the side where the exponential cannot overflow.
pub fn sigmoid<F: Float>(x: F) -> F {
    let one = F::one();
    if x >= F::zero() {
        one / (one + (-x).exp())
    } else {
        let e = x.exp();
        e / (one + e)
    }
}

/// Two-class softmax cross-entropy of one pixel: returns (loss, dloss/dl0, dloss/dl1)
/// for logits (l0, l1) and target `inside` (class 1). Written without cancellation: the
/// loss is softplus(other - target) and the target's derivative is minus the other
/// class's probability, so confident pixels keep full relative accuracy.
pub fn softmax_ce_pixel<F: Float>(l0: F, l1: F, inside: bool) -> (F, F, F) {
    // p1 = sigmoid(l1 - l0), p0 = sigmoid(l0 - l1).
    let (p0, p1) = (sigmoid(l0 - l1), sigmoid(l1 - l0));
    if inside {
        (softplus(l0 - l1), p0, -p0)
    } else {
        (softplus(l1 - l0), -p1, p1)
    }
}

/// Binary cross-entropy of one logit `z` against `inside`, weighted by `weight`:
/// returns (loss, dloss/dz).
pub fn bce_pixel<F: Float>(z: F, inside: bool, weight: F) -> (F, F) {
    // softplus(z) - z = softplus(-z) and sigmoid(z) - 1 = -sigmoid(-z), without cancellation.
    if inside {
        (weight * softplus(-z), -weight * sigmoid(-z))
    } else {
        (weight * softplus(z), weight * sigmoid(z))
    }
}

/// Squared error of the sigmoid probability: returns (loss, dloss/dz).
pub fn mse_pixel<F: Float>(z: F, inside: bool) -> (F, F) {
    let two = F::one() + F::one();
    // s - 1 = -sigmoid(-z): both factors of s (1 - s) come from a sigmoid directly.
    let (s, one_minus_s) = (sigmoid(z), sigmoid(-z));
    let d = if inside { -one_minus_s } else { s };
    (d * d, two * d * s * one_minus_s)
}

/// Focal loss of one logit: returns (loss, dloss/dz). With s = sigmoid(z):
/// inside: -a (1-s)^g ln s, derivative a (1-s)^g (g s ln s - (1 - s));
/// outside: -(1-a) s^g ln(1-s), derivative (1-a) s^g (s - g (1-s) ln(1-s)).
/// Both cases are the same formula in t = +-z, evaluated without cancellation.
pub fn focal_pixel<F: Float>(z: F, inside: bool, alpha: F, gamma: F) -> (F, F) {
    // With t = z inside and -z outside, p_t = sigmoid(t), 1 - p_t = sigmoid(-t) and
    // ln p_t = -softplus(-t): the loss is w (1-p_t)^gamma softplus(-t) and its derivative
    // in t is w (1-p_t)^gamma (gamma p_t ln p_t - (1 - p_t)); dz = +-dt.
    let (t, w, sign) = if inside {
        (z, alpha, F::one())
    } else {
        (-z, F::one() - alpha, -F::one())
    };
    let (pt, one_minus_pt) = (sigmoid(t), sigmoid(-t));
    let ln_pt = -softplus(-t);
    let weight = w * one_minus_pt.powf(gamma);
    (
        -weight * ln_pt,
        sign * weight * (gamma * pt * ln_pt - one_minus_pt),
    )
}

/// The class weights of the balanced BCE for one map with `positives` of `pixels`
/// inside: (weight of an inside pixel, weight of an outside pixel) = (negative share,
/// positive share).
pub fn balanced_weights<F: Float>(positives: usize, pixels: usize) -> (F, F) {
    // Both shares from counts, so neither is a difference of nearly equal numbers.
    let n = F::from(pixels).unwrap_or_else(F::one);
    let pos = F::from(positives).unwrap_or_else(F::zero);
    let neg = F::from(pixels.saturating_sub(positives)).unwrap_or_else(F::zero);
    (neg / n, pos / n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd<Fn1: Fn(f64) -> f64>(f: Fn1, x: f64) -> f64 {
        let h = 1e-6;
        (f(x + h) - f(x - h)) / (2.0 * h)
    }

    #[test]
    fn derivatives_match_finite_differences() {
        for &z in &[-30.0, -3.0, -0.4, 0.0, 0.7, 5.0, 25.0] {
            for &inside in &[false, true] {
                let (_, g) = bce_pixel(z, inside, 0.7);
                assert!((g - fd(|z| bce_pixel(z, inside, 0.7).0, z)).abs() < 1e-6);
                let (_, g) = mse_pixel(z, inside);
                assert!((g - fd(|z| mse_pixel(z, inside).0, z)).abs() < 1e-6);
                let (_, g) = focal_pixel(z, inside, 0.25, 2.0);
                assert!(
                    (g - fd(|z| focal_pixel(z, inside, 0.25, 2.0).0, z)).abs() < 1e-6,
                    "focal z={z} inside={inside}"
                );
                let (_, g0, g1) = softmax_ce_pixel(z, 0.3, inside);
                assert!((g0 - fd(|a| softmax_ce_pixel(a, 0.3, inside).0, z)).abs() < 1e-6);
                assert!((g1 - fd(|b| softmax_ce_pixel(z, b, inside).0, 0.3)).abs() < 1e-6);
            }
        }
    }

    /// Golden values computed by hand from the definitions (ln 2, softplus, sigmoid).
    #[test]
    fn golden_values() {
        let ln2 = core::f64::consts::LN_2;
        assert!((softmax_ce_pixel(0.0f64, 0.0, true).0 - ln2).abs() < 1e-15);
        assert!((bce_pixel(0.0f64, false, 1.0).0 - ln2).abs() < 1e-15);
        // ln(1 + e^2) - 2 = 0.12692801104297263
        assert!((bce_pixel(2.0f64, true, 1.0).0 - 0.126_928_011_042_972_63).abs() < 1e-15);
        // focal at z = 0, inside: -0.25 * 0.5^2 * ln 0.5
        assert!((focal_pixel(0.0f64, true, 0.25, 2.0).0 - 0.0625 * ln2).abs() < 1e-15);
        assert!((mse_pixel(0.0f64, true).0 - 0.25).abs() < 1e-15);
        assert_eq!(balanced_weights::<f64>(25, 100), (0.75, 0.25));
    }

    /// Confident pixels keep f32's relative accuracy (no cancellation in 1 - p, lse - l).
    #[test]
    fn confident_pixels_are_accurate_in_f32() {
        let rel = |a: f32, b: f64| ((a as f64 - b) / b.abs().max(1e-300)).abs();
        for &z in &[4.0f64, 9.0, 17.0, -6.0, -13.0] {
            for &inside in &[false, true] {
                let (l32, g32) = focal_pixel(z as f32, inside, 0.25, 2.0);
                let (l64, g64) = focal_pixel(z, inside, 0.25, 2.0);
                assert!(
                    rel(l32, l64) < 2e-6 && rel(g32, g64) < 2e-6,
                    "focal z={z} {inside}"
                );
                let (l32, g32) = bce_pixel(z as f32, inside, 1.0);
                let (l64, g64) = bce_pixel(z, inside, 1.0);
                assert!(
                    rel(l32, l64) < 2e-6 && rel(g32, g64) < 2e-6,
                    "bce z={z} {inside}: {l32} {l64} {g32} {g64}"
                );
                let (l32, a32, b32) = softmax_ce_pixel(z as f32, 0.0, inside);
                let (l64, a64, b64) = softmax_ce_pixel(z, 0.0, inside);
                assert!(
                    rel(l32, l64) < 2e-6 && rel(a32, a64) < 2e-6 && rel(b32, b64) < 2e-6,
                    "ce z={z}"
                );
                let (l32, g32) = mse_pixel(z as f32, inside);
                let (l64, g64) = mse_pixel(z, inside);
                assert!(rel(l32, l64) < 2e-6 && rel(g32, g64) < 2e-6, "mse z={z}");
            }
        }
    }

    #[test]
    fn extreme_logits_stay_finite() {
        for &z in &[-1e30f32, -100.0, 100.0, 1e30] {
            for &inside in &[false, true] {
                let (l, g) = bce_pixel(z, inside, 1.0);
                assert!(l.is_finite() && g.is_finite());
                let (l, g) = focal_pixel(z, inside, 0.25, 2.0);
                assert!(l.is_finite() && g.is_finite());
                let (l, a, b) = softmax_ce_pixel(z, -z, inside);
                assert!(l.is_finite() && a.is_finite() && b.is_finite());
            }
        }
        assert!(softmax_ce_pixel(f32::NAN, 0.0, true).0.is_nan());
        assert!(bce_pixel(f32::NAN, true, 1.0).0.is_nan());
    }
}
