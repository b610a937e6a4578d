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
/// for logits (l0, l1) and target `inside` (class 1).
pub fn softmax_ce_pixel<F: Float>(l0: F, l1: F, inside: bool) -> (F, F, F) {
    let one = F::one();
    let m = l0.max(l1);
    let (e0, e1) = ((l0 - m).exp(), (l1 - m).exp());
    let sum = e0 + e1;
    let lse = m + sum.ln();
    let (p0, p1) = (e0 / sum, e1 / sum);
    if inside {
        (lse - l1, p0, p1 - one)
    } else {
        (lse - l0, p0 - one, p1)
    }
}

/// Binary cross-entropy of one logit `z` against `inside`, weighted by `weight`:
/// returns (loss, dloss/dz).
pub fn bce_pixel<F: Float>(z: F, inside: bool, weight: F) -> (F, F) {
    let y = if inside { F::one() } else { F::zero() };
    (weight * (softplus(z) - y * z), weight * (sigmoid(z) - y))
}

/// Squared error of the sigmoid probability: returns (loss, dloss/dz).
pub fn mse_pixel<F: Float>(z: F, inside: bool) -> (F, F) {
    let one = F::one();
    let y = if inside { one } else { F::zero() };
    let s = sigmoid(z);
    let d = s - y;
    (d * d, (one + one) * d * s * (one - s))
}

/// Focal loss of one logit: returns (loss, dloss/dz). With s = sigmoid(z):
/// inside: -a (1-s)^g ln s, derivative a (1-s)^g (g s ln s - (1 - s));
/// outside: -(1-a) s^g ln(1-s), derivative (1-a) s^g (s - g (1-s) ln(1-s)).
pub fn focal_pixel<F: Float>(z: F, inside: bool, alpha: F, gamma: F) -> (F, F) {
    let one = F::one();
    let s = sigmoid(z);
    if inside {
        let ln_s = -softplus(-z);
        let w = alpha * (one - s).powf(gamma);
        (-w * ln_s, w * (gamma * s * ln_s - (one - s)))
    } else {
        let ln_1ms = -softplus(z);
        let w = (one - alpha) * s.powf(gamma);
        (-w * ln_1ms, w * (s - gamma * (one - s) * ln_1ms))
    }
}

/// The class weights of the balanced BCE for one map with `positives` of `pixels`
/// inside: (weight of an inside pixel, weight of an outside pixel) = (negative share,
/// positive share).
pub fn balanced_weights<F: Float>(positives: usize, pixels: usize) -> (F, F) {
    let p = F::from(positives).unwrap_or_else(F::zero);
    let n = F::from(pixels).unwrap_or_else(F::one);
    let pos_share = p / n;
    (F::one() - pos_share, pos_share)
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
