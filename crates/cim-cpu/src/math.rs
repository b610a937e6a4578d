//! Branch-free f32 `exp`, `erfc` and the GELU pieces built on them, written so that loops
//! calling them compile to vector code (no library calls, only arithmetic, bit casts and
//! selects).
//!
//! Accuracy, measured by the tests against f64 `libm` over dense grids: `exp` within
//! 3.6e-7 relative (3 ulp); `erfc` within 4.3e-7 relative for every argument; the GELU
//! value and derivative within 7e-7 relative (a few ulp) on `[-12, 12]`, tails and the
//! derivative's zero included. What makes the tails accurate: `z^2` and the argument
//! `-x / sqrt 2` are carried as exact pairs of f32 (products and their FMA residuals;
//! on a CPU without FMA `mul_add` is a slow but exact library call), since erfc's
//! condition number grows like `2 z^2`; near its zero at -0.7518 the derivative is a
//! polynomial in the distance to the zero instead of a difference of two 0.23s. The
//! polynomials were fitted for this crate (iteratively reweighted least squares against
//! 40-digit values): `ln(erfc(a) / t) + a^2` in `t = 1 / (1 + a/2)` on `0 <= a <= 10`,
//! and `gelu'(x) / (x - x0)` near the zero. They are evaluated with Estrin's scheme,
//! whose short dependency chains let the vector units overlap several of them.
//! NaN arguments give NaN.

use core::f32::consts::{FRAC_1_SQRT_2, LN_2, LOG2_E};

/// `e^(hi + lo)` for `|lo|` much smaller than `|hi|`, without rounding `hi + lo`:
/// Cody-Waite reduction of the pair to `r` in about `[-ln2/2, ln2/2]` (the product
/// `n * LN2_HI` is exact and cancels `hi` exactly), a degree-7 Taylor polynomial
/// (truncation below 6e-9 relative) and a scaling by `2^n`. Exact to 3 ulp on
/// `[-87.3, 88]`; below it the result is 0 and above it infinity (the true value
/// overflows from 88.72 on; every caller passes arguments <= 0).
#[inline(always)]
pub(crate) fn exp_parts(hi: f32, lo: f32) -> f32 {
    const LO: f32 = -87.33;
    const HI: f32 = 88.0;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const SHIFT: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = LN_2 - 0.693_359_4;
    let x = hi + lo;
    let (hc, lc) = if x < LO {
        (LO, 0.0)
    } else if x > HI {
        (HI, 0.0)
    } else {
        (hi, lo)
    };
    let v = (hc + lc) * LOG2_E + SHIFT;
    let n = v - SHIFT;
    // n is in [-126, 127], so 2^n is a normal f32.
    let ni = (v.to_bits() as i32).wrapping_sub(SHIFT.to_bits() as i32);
    let r = (hc - n * LN2_HI) + lc - n * LN2_LO;
    // Estrin's scheme: the same polynomial with a short dependency chain.
    let r2 = r * r;
    let r4 = r2 * r2;
    let p = (1.0 + r)
        + r2 * (0.5 + r * (1.0 / 6.0))
        + r4 * ((1.0 / 24.0 + r * (1.0 / 120.0)) + r2 * (1.0 / 720.0 + r * (1.0 / 5040.0)));
    let y = p * f32::from_bits(((ni + 127) as u32) << 23);
    if x > HI {
        f32::INFINITY
    } else if x < LO {
        0.0
    } else {
        y
    }
}

/// `e^x` (see [`exp_parts`]).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    exp_parts(x, 0.0)
}

/// `a * a` as an unevaluated sum `hi + lo`: the fused multiply-add gives the exact
/// rounding error (one instruction where the CPU has FMA, a correctly rounded library
/// call elsewhere; the same bits either way).
#[inline(always)]
fn square_parts(a: f32) -> (f32, f32) {
    let hi = a * a;
    (hi, a.mul_add(a, -hi))
}

/// `ln(erfc(a) / t) + a^2` with `t = 1 / (1 + a/2)`, as a polynomial in `t` on
/// `0 <= a <= 10` (absolute error 4.5e-8 in f64, 2e-7 evaluated in f32).
#[allow(clippy::excessive_precision)] // the fitted digits; rounded to f32 at compile time
const ERFC_Q: [f32; 10] = [
    -1.265_441_439,
    9.984_925_404e-1,
    3.878_995_321e-1,
    2.835_798_9e-2,
    2.019_355_019e-2,
    -1.167_832_8e-1,
    -6.512_531_317e-1,
    1.122_404_103,
    -6.660_642_5e-1,
    1.421_944_316e-1,
];

/// `erfc(z + z_lo)` for any `z`, with `|z_lo|` at most an ulp of `z` (the rounding error
/// of an argument computed in f32), with relative accuracy in the tails: `erfc(a) =
/// t e^(Q(t) - a^2)` for `a = |z|`, and `2 - erfc(a)` for negative `z`. `z_lo` matters in
/// the tails: erfc's condition number is about `2 z^2`, so dropping it would cost up to
/// 200 ulp at `z = 10`.
#[inline(always)]
fn erfc_parts(z: f32, z_lo: f32) -> f32 {
    let a = z.abs();
    let (ac, a_lo) = if a < 10.0 {
        (a, if z < 0.0 { -z_lo } else { z_lo })
    } else {
        (10.0, 0.0)
    };
    let t = 1.0 / (1.0 + 0.5 * ac);
    // Estrin's scheme for Q(t).
    let c = &ERFC_Q;
    let t2 = t * t;
    let t4 = t2 * t2;
    let t8 = t4 * t4;
    let q03 = (c[0] + c[1] * t) + t2 * (c[2] + c[3] * t);
    let q47 = (c[4] + c[5] * t) + t2 * (c[6] + c[7] * t);
    let q = (q03 + t4 * q47) + t8 * (c[8] + c[9] * t);
    // a^2 is kept exact as two parts so that its rounding (an ulp of up to 100) does not
    // become a relative error of the result; `a_lo` enters through
    // (a + a_lo)^2 = a^2 + 2 a a_lo (its effect on t and Q is an ulp).
    let (sq_hi, sq_lo) = square_parts(ac);
    let e = t * exp_parts(-sq_hi, q - sq_lo - 2.0 * ac * a_lo);
    let r = if z < 0.0 { 2.0 - e } else { e };
    if z.is_nan() { z } else { r }
}

/// `erfc(z) = 1 - erf(z)` for any `z` (see [`erfc_parts`]).
#[cfg(test)]
pub(crate) fn erfc(z: f32) -> f32 {
    erfc_parts(z, 0.0)
}

/// `1/sqrt 2` as the f32 `C` and its remainder.
const C: f32 = FRAC_1_SQRT_2;
#[allow(clippy::excessive_precision)] // the exact digits; rounded to f32 at compile time
const C_REST: f32 = 1.210_161_7e-8;

/// The standard normal CDF `Phi(x) = (1 + erf(x / sqrt 2)) / 2 = erfc(-x / sqrt 2) / 2`,
/// with `-x / sqrt 2` carried to twice f32 precision (the exact product error by FMA).
#[inline(always)]
pub(crate) fn normal_cdf(x: f32) -> f32 {
    let p = x * C;
    let err = x.mul_add(C, -p);
    0.5 * erfc_parts(-p, -(err + x * C_REST))
}

/// Exact GELU `x Phi(x)` (S3).
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    x * normal_cdf(x)
}

/// The zero of `gelu'` (about -0.7518) as an f32 and its remainder.
#[allow(clippy::excessive_precision)] // the fitted digits; rounded to f32 at compile time
const GELU_GRAD_ROOT_HI: f32 = -0.751_791_54;
#[allow(clippy::excessive_precision)] // the fitted digits; rounded to f32 at compile time
const GELU_GRAD_ROOT_LO: f32 = 1.211_444_9e-8;

/// `gelu'(x) / u` with `u = x - root`, as a polynomial in `u` on `|u| <= 0.32` (relative
/// error 1.5e-9 in f64).
#[allow(clippy::excessive_precision)] // the fitted digits; rounded to f32 at compile time
const GELU_GRAD_NEAR_ROOT: [f32; 8] = [
    4.314_939_929_2e-1,
    3.882_849_777_9e-1,
    -1.819_986_760_2e-2,
    -1.140_077_903_9e-1,
    -1.476_207_25e-2,
    1.941_158_034_5e-2,
    4.389_842_809_6e-3,
    -2.158_822_770_1e-3,
];

/// `gelu'(x) = Phi(x) + x phi(x)` with `phi(x) = e^{-x^2/2} / sqrt(2 pi)`. Near its zero
/// at -0.7518 the two terms (about 0.23 each) cancel, so there it is evaluated as
/// `(x - root) R(x - root)` instead, which keeps a few-ulp relative accuracy.
#[inline(always)]
pub(crate) fn gelu_grad(x: f32) -> f32 {
    const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
    let (sq_hi, sq_lo) = square_parts(x);
    let general = normal_cdf(x) + x * (FRAC_1_SQRT_2PI * exp_parts(-0.5 * sq_hi, -0.5 * sq_lo));
    // Exact for x in [-1.07, -0.43] (Sterbenz), the only place it is used.
    let u = (x - GELU_GRAD_ROOT_HI) - GELU_GRAD_ROOT_LO;
    let c = &GELU_GRAD_NEAR_ROOT;
    let u2 = u * u;
    let u4 = u2 * u2;
    let r = ((c[0] + c[1] * u) + u2 * (c[2] + c[3] * u))
        + u4 * ((c[4] + c[5] * u) + u2 * (c[6] + c[7] * u));
    if u.abs() < 0.3 { u * r } else { general }
}

/// `atanh(w) / w` as a polynomial in `w^2` on `w^2 <= 1/9` (relative error 4e-9 in f64).
#[allow(clippy::excessive_precision)] // the fitted digits; rounded to f32 at compile time
const ATANH_OVER_W: [f32; 5] = [
    1.000_000_004,
    3.333_315_734_6e-1,
    2.001_245_502_5e-1,
    1.398_030_219_4e-1,
    1.408_916_653_6e-1,
];

/// `ln(1 + y)` for `y` in `[0, 1]`, to a few ulp of the result (also for tiny `y`, where
/// `1 + y` would round to 1): `2 atanh(w)` with `w = y / (2 + y)` in `[0, 1/3]`.
#[inline(always)]
pub(crate) fn ln_1p_unit(y: f32) -> f32 {
    let w = y / (2.0 + y);
    let w2 = w * w;
    let w4 = w2 * w2;
    let c = &ATANH_OVER_W;
    let p = (c[0] + c[1] * w2) + w4 * ((c[2] + c[3] * w2) + w4 * c[4]);
    2.0 * w * p
}

/// `a - b` as an unevaluated sum `hi + lo` (Knuth's TwoSum: exact).
#[inline(always)]
pub(crate) fn difference_parts(a: f32, b: f32) -> (f32, f32) {
    let hi = a - b;
    let bb = hi - a;
    let lo = (a - (hi - bb)) - (b + bb);
    (hi, lo)
}

/// One pixel of the two-class softmax cross-entropy for finite logits: `(loss, p)` where
/// `d = l_other - l_target` is the margin of the wrong class, `loss = softplus(d)` and
/// `p = sigmoid(d)` its probability. These are the quantities of
/// `cim_spec::loss::softmax_ce_pixel` (`lse - l_target = softplus(d)`; the gradient is
/// `+p` for the wrong class and `-p` for the right one, the spec's `p_right - 1` being
/// exactly `-p`), in the form that keeps every output to a few ulp in f32: the margin is
/// carried exactly (TwoSum) into `e = exp(-|d|)`, and `ln(1 + e)` never rounds `1 + e`.
#[inline(always)]
pub(crate) fn softmax_ce_margin(l_other: f32, l_target: f32) -> (f32, f32) {
    let (d, d_lo) = difference_parts(l_other, l_target);
    let positive = d >= 0.0;
    let (ad, ad_lo) = if positive { (d, d_lo) } else { (-d, -d_lo) };
    let e = exp_parts(-ad, -ad_lo);
    let loss = if positive { d + d_lo } else { 0.0 } + ln_1p_unit(e);
    let p = if positive { 1.0 } else { e } / (1.0 + e);
    (loss, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(lo: f32, hi: f32, n: usize) -> impl Iterator<Item = f32> {
        (0..=n).map(move |i| lo + (hi - lo) * i as f32 / n as f32)
    }

    #[test]
    fn exp_is_within_three_ulp() {
        let mut worst = 0.0f64;
        for x in grid(-87.0, 88.0, 2_000_000) {
            let want = libm::exp(f64::from(x));
            worst = worst.max((f64::from(exp(x)) - want).abs() / want);
        }
        assert!(worst < 4e-7, "exp: {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn erfc_is_accurate_relative_to_its_value() {
        let mut worst = (0.0f64, 0.0);
        for z in grid(-6.0, 9.0, 3_000_000) {
            let want = libm::erfc(f64::from(z));
            let rel = (f64::from(erfc(z)) - want).abs() / want;
            if rel > worst.0 {
                worst = (rel, z);
            }
        }
        assert!(worst.0 < 7e-7, "erfc: {:e} at {}", worst.0, worst.1);
        assert!(erfc(f32::NAN).is_nan());
        assert_eq!(erfc(f32::INFINITY), 0.0);
        assert_eq!(erfc(f32::NEG_INFINITY), 2.0);
    }

    #[test]
    fn gelu_and_its_derivative_match_f64() {
        let (mut worst_v, mut worst_d) = (0.0f64, 0.0f64);
        for x in grid(-12.0, 12.0, 1_000_000) {
            let xd = f64::from(x);
            let cdf = 0.5 * libm::erfc(-xd / core::f64::consts::SQRT_2);
            let want_v = xd * cdf;
            let want_d = cdf + xd * (-0.5 * xd * xd).exp() / (2.0 * core::f64::consts::PI).sqrt();
            // Purely relative: both keep their accuracy through the derivative's zero
            // and down the tail (the floor only excludes exact zeros).
            worst_v = worst_v.max((f64::from(gelu(x)) - want_v).abs() / want_v.abs().max(1e-35));
            worst_d =
                worst_d.max((f64::from(gelu_grad(x)) - want_d).abs() / want_d.abs().max(1e-35));
        }
        assert!(worst_v < 8e-7, "gelu: {worst_v:e}");
        assert!(worst_d < 8e-7, "gelu': {worst_d:e}");
        assert!(gelu(f32::NAN).is_nan() && gelu_grad(f32::NAN).is_nan());
        assert_eq!(gelu(f32::INFINITY), f32::INFINITY);
    }

    #[test]
    fn softmax_ce_margin_is_accurate() {
        let (mut worst_l, mut worst_p) = (0.0f64, 0.0f64);
        for i in 0..=400_000 {
            let a = -40.0 + 80.0 * i as f32 / 400_000.0;
            for b in [0.0f32, 0.37, -3.1, 17.0] {
                let (l, p) = softmax_ce_margin(a, b);
                let d = f64::from(a) - f64::from(b);
                let want_l = d.max(0.0) + libm::log1p((-d.abs()).exp());
                let want_p = 1.0 / (1.0 + (-d).exp());
                worst_l = worst_l.max((f64::from(l) - want_l).abs() / want_l);
                worst_p = worst_p.max((f64::from(p) - want_p).abs() / want_p);
                // The spec formula agrees where its f64 `p_right - 1` is accurate.
                if d.abs() < 20.0 {
                    let (sl, sp, sq) =
                        cim_spec::loss::softmax_ce_pixel(f64::from(a), f64::from(b), true);
                    assert!((sl - want_l).abs() <= 1e-6 * want_l);
                    assert!((sp - want_p).abs() <= 1e-9 * want_p);
                    assert!((sq + want_p).abs() <= 1e-6 * want_p);
                }
            }
        }
        assert!(worst_l < 5e-7, "loss {worst_l:e}");
        assert!(worst_p < 5e-7, "p {worst_p:e}");
        let y = 1e-20f32;
        assert!((ln_1p_unit(y) - y).abs() <= f32::EPSILON * y);
        assert!((f64::from(ln_1p_unit(1.0)) - core::f64::consts::LN_2).abs() < 1e-7);
    }
}
