//! Parameter initialisation (S8): the initialisers the CIM network uses and the S8 rules
//! for their scales. Each tensor is filled from its own [`CimRng`] stream (callers derive
//! one per tensor with [`CimRng::derive`]), so a tensor's values depend only on the run
//! seed and the tensor's identity, never on how many tensors were initialised before it or
//! on the backend.
//!
//! Values are drawn in f64 in the row-major order of the stored tensor, one sample per
//! element, and rounded once to f32. Constant initialisers draw nothing.

use core::fmt;

use crate::rng::CimRng;

/// How to fill one tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// All zeros (biases, LayerNorm biases).
    Zeros,
    /// All ones (LayerNorm weights).
    Ones,
    /// `U(-b, b)` with `b = sqrt(6 / (fan_in + fan_out))` from the stored shape, as
    /// PyTorch's `nn.init.xavier_uniform_` (see [`xavier_uniform_bound`]).
    XavierUniform,
    /// `N(0, std^2)`, as PyTorch's `nn.init.normal_(std=std)` (not truncated).
    Normal {
        /// Standard deviation, finite and non-negative.
        std: f64,
    },
    /// `U(-bound, bound)`.
    Uniform {
        /// Half-width, finite and non-negative.
        bound: f64,
    },
}

/// Why a tensor could not be initialised. Checked before any draw, so a refused call
/// leaves the generator untouched.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum InitError {
    /// The output buffer does not hold one value per element of the shape.
    Length {
        /// Elements of the shape (`None` when the product overflows).
        expected: Option<usize>,
        /// Values in the buffer.
        got: usize,
    },
    /// Xavier-uniform needs fan-in and fan-out, so at least two dimensions.
    XavierRank {
        /// The rank given.
        rank: usize,
    },
    /// A standard deviation or bound is negative or not finite.
    Scale(f64),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            InitError::Length {
                expected: Some(n),
                got,
            } => write!(f, "buffer holds {got} values, the shape has {n} elements"),
            InitError::Length {
                expected: None,
                got,
            } => write!(f, "buffer holds {got} values, the shape overflows"),
            InitError::XavierRank { rank } => write!(
                f,
                "Xavier initialisation needs at least 2 dimensions, got {rank}"
            ),
            InitError::Scale(s) => write!(f, "initialisation scale {s} is negative or not finite"),
        }
    }
}

impl core::error::Error for InitError {}

/// The Xavier-uniform bound of a stored tensor, as PyTorch's `xavier_uniform_` computes
/// its fans: `fan_in = shape[1] * r`, `fan_out = shape[0] * r` with `r` the product of the
/// remaining dimensions; `bound = sqrt(6 / (fan_in + fan_out))`. Fused weights count as
/// one tensor (S8): the qkv weight `[3D, D]` gets `sqrt(6 / (4D))`. A tensor with a zero
/// dimension gives an infinite bound, harmless because it has no element to draw.
pub fn xavier_uniform_bound(shape: &[usize]) -> Result<f64, InitError> {
    if shape.len() < 2 {
        return Err(InitError::XavierRank { rank: shape.len() });
    }
    let receptive: f64 = shape[2..].iter().map(|&d| d as f64).product();
    let fan_in = shape[1] as f64 * receptive;
    let fan_out = shape[0] as f64 * receptive;
    Ok(libm::sqrt(6.0 / (fan_in + fan_out)))
}

/// The patch-embedding bound of S8, `sqrt(6 / (3 p^2 + D))`: Xavier-uniform on the
/// `[D, 3 p^2]` view of the `[D, 3, p, p]` conv weight, as MAE-style code initialises it.
/// Xavier on the stored 4-D shape would count the receptive field in both fans and give a
/// smaller bound, so fill the patch embedding with `Init::Uniform { bound }` from this.
pub fn patch_embed_bound(p: usize, d: usize) -> f64 {
    libm::sqrt(6.0 / (3.0 * (p as f64) * (p as f64) + d as f64))
}

/// The predictor conv weight's standard deviation of S8, `sqrt(2 / (k * k * out))` (He
/// initialisation over the fan-out); 1 for the 1x1 conv with two output maps.
pub fn predictor_conv_std(k: usize, out: usize) -> f64 {
    libm::sqrt(2.0 / ((k as f64) * (k as f64) * out as f64))
}

/// The predictor conv bias bound of S8, `1 / sqrt(fan_in)`, PyTorch's default conv bias
/// initialisation; for the 1x1 predictor conv `fan_in = d`, the decoder width.
pub fn predictor_bias_bound(fan_in: usize) -> f64 {
    1.0 / libm::sqrt(fan_in as f64)
}

/// Fills `out`, the row-major values of a tensor of `shape`, with `init`, drawing from
/// `rng` one sample per element in row-major order (a normal sample takes two uniform
/// words, see [`CimRng::normal`]); `Zeros` and `Ones` draw nothing. A zero-element tensor
/// is left as it is without a draw.
///
/// Errors (before any draw): `out.len()` is not the shape's element count, Xavier on a
/// tensor of rank < 2, or a negative or non-finite `std` / `bound`.
pub fn fill(
    init: Init,
    shape: &[usize],
    rng: &mut CimRng,
    out: &mut [f32],
) -> Result<(), InitError> {
    let expected = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if expected != Some(out.len()) {
        return Err(InitError::Length {
            expected,
            got: out.len(),
        });
    }
    if let Init::Normal { std: scale } | Init::Uniform { bound: scale } = init
        && !(scale.is_finite() && scale >= 0.0)
    {
        return Err(InitError::Scale(scale));
    }
    // The bound is computed even for an empty tensor so a rank error is reported the same
    // whatever the sizes.
    let xavier_bound = match init {
        Init::XavierUniform => xavier_uniform_bound(shape)?,
        _ => 0.0,
    };
    if out.is_empty() {
        return Ok(());
    }
    let mut uniform = |b: f64| out.iter_mut().for_each(|v| *v = rng.uniform(-b, b) as f32);
    match init {
        Init::Zeros => out.fill(0.0),
        Init::Ones => out.fill(1.0),
        Init::XavierUniform => uniform(xavier_bound),
        Init::Uniform { bound } => uniform(bound),
        Init::Normal { std } => out
            .iter_mut()
            .for_each(|v| *v = (std * rng.normal()) as f32),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Pinned values come from `tests/golden/init_golden.py`, an independent Python
    //! transcription of `CimRng` (SplitMix64 seeding, xoshiro256++, 53-bit `unit`,
    //! Box-Muller `normal`).
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    fn filled(init: Init, shape: &[usize], rng: &mut CimRng) -> Vec<f32> {
        let mut out = vec![f32::NAN; shape.iter().product()];
        fill(init, shape, rng, &mut out).unwrap();
        out
    }

    fn mean_var(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, var)
    }

    /// Uniform draws are pure arithmetic on the same 53-bit words: bit for bit.
    #[test]
    fn xavier_and_uniform_values_are_pinned() {
        let x = filled(Init::XavierUniform, &[6, 4], &mut CimRng::derive(42, &[7]));
        assert_eq!(x[..8], XAVIER_6X4_SEED42_7);
        let x = filled(
            Init::XavierUniform,
            &[8, 3, 2, 2],
            &mut CimRng::derive(42, &[8]),
        );
        assert_eq!(x[..6], XAVIER_8X3X2X2_SEED42_8);
        assert_eq!(patch_embed_bound(16, 768), PATCH_BOUND_16_768);
        let bound = patch_embed_bound(16, 768);
        let u = filled(
            Init::Uniform { bound },
            &[768, 3, 16, 16],
            &mut CimRng::new(9),
        );
        assert_eq!(u[..6], UNIFORM_PATCH_SEED9);
    }

    /// Normal draws go through log and cos, where libm and glibc may differ by an f64
    /// ulp; after rounding to f32 that is at most one f32 ulp.
    #[test]
    fn normal_values_are_pinned_within_one_f32_ulp() {
        let x = filled(Init::Normal { std: 0.02 }, &[1, 1, 8], &mut CimRng::new(5));
        for (got, want) in x.iter().zip(NORMAL_002_SEED5) {
            let ulps = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulps <= 1, "{got} vs {want}");
        }
    }

    #[test]
    fn xavier_uses_the_stored_shape() {
        assert_eq!(xavier_uniform_bound(&[6, 4]).unwrap(), libm::sqrt(0.6));
        // fused qkv [3D, D]: fan_in D, fan_out 3D
        assert_eq!(
            xavier_uniform_bound(&[3 * 768, 768]).unwrap(),
            libm::sqrt(6.0 / (4.0 * 768.0))
        );
        // conv [8, 3, 2, 2]: receptive field 4, fans 12 and 32
        assert_eq!(
            xavier_uniform_bound(&[8, 3, 2, 2]).unwrap(),
            libm::sqrt(6.0 / 44.0)
        );
        assert_eq!(
            xavier_uniform_bound(&[768, 3 * 16 * 16]).unwrap(),
            patch_embed_bound(16, 768)
        );
        assert_eq!(
            xavier_uniform_bound(&[768]),
            Err(InitError::XavierRank { rank: 1 })
        );
    }

    #[test]
    fn s8_scale_rules() {
        assert_eq!(predictor_conv_std(1, 2), 1.0);
        assert_eq!(predictor_conv_std(3, 4), libm::sqrt(2.0 / 36.0));
        assert_eq!(predictor_bias_bound(512), 1.0 / libm::sqrt(512.0));
        assert_eq!(
            patch_embed_bound(14, 1280),
            libm::sqrt(6.0 / (588.0 + 1280.0))
        );
    }

    #[test]
    fn xavier_statistics() {
        let shape = [768, 3072];
        let b = xavier_uniform_bound(&shape).unwrap();
        let x = filled(Init::XavierUniform, &shape, &mut CimRng::derive(1, &[2]));
        assert!(x.iter().all(|&v| v.abs() <= b as f32), "bound respected");
        assert!(
            x.iter().any(|&v| v.abs() > 0.999 * b as f32),
            "bound reached"
        );
        let (mean, var) = mean_var(&x);
        // 2.4M samples: the mean's standard error is b/sqrt(3n) ~ 1.4e-5, the
        // variance's relative one ~ 0.06%.
        assert!(mean.abs() < 1e-4, "mean {mean}");
        assert!((var / (b * b / 3.0) - 1.0).abs() < 0.005, "var {var}");
    }

    #[test]
    fn normal_and_uniform_statistics() {
        let x = filled(
            Init::Normal { std: 0.02 },
            &[1000, 1000],
            &mut CimRng::new(11),
        );
        let (mean, var) = mean_var(&x);
        assert!(mean.abs() < 1e-4, "mean {mean}");
        assert!(
            (var.sqrt() / 0.02 - 1.0).abs() < 0.003,
            "std {}",
            var.sqrt()
        );
        let x = filled(
            Init::Uniform { bound: 0.5 },
            &[1000, 1000],
            &mut CimRng::new(12),
        );
        let (mean, var) = mean_var(&x);
        assert!(x.iter().all(|&v| v.abs() <= 0.5));
        assert!(mean.abs() < 1e-3, "mean {mean}");
        assert!((var / (0.25 / 3.0) - 1.0).abs() < 0.005, "var {var}");
    }

    #[test]
    fn constants_draw_nothing_and_streams_are_independent() {
        let mut rng = CimRng::new(3);
        let before = rng.clone();
        assert_eq!(filled(Init::Zeros, &[2, 3], &mut rng), vec![0.0; 6]);
        assert_eq!(filled(Init::Ones, &[4], &mut rng), vec![1.0; 4]);
        assert_eq!(rng, before);
        // same stream, same values, whatever else was drawn elsewhere
        let a = filled(Init::XavierUniform, &[5, 7], &mut CimRng::derive(9, &[4]));
        let mut other = CimRng::derive(9, &[3]);
        filled(Init::Normal { std: 1.0 }, &[100], &mut other);
        let b = filled(Init::XavierUniform, &[5, 7], &mut CimRng::derive(9, &[4]));
        assert_eq!(a, b);
        // one draw per element, row-major: the first 6 of a [3, 4] fill are the first 6
        // draws of the same stream
        let mut r = CimRng::new(21);
        let direct: Vec<f32> = (0..6).map(|_| r.uniform(-0.1, 0.1) as f32).collect();
        let x = filled(Init::Uniform { bound: 0.1 }, &[3, 4], &mut CimRng::new(21));
        assert_eq!(x[..6], direct[..]);
    }

    #[test]
    fn bad_arguments_are_refused_before_drawing() {
        let mut rng = CimRng::new(1);
        let before = rng.clone();
        let mut out = vec![0.0f32; 5];
        assert_eq!(
            fill(Init::Zeros, &[2, 3], &mut rng, &mut out),
            Err(InitError::Length {
                expected: Some(6),
                got: 5
            })
        );
        assert_eq!(
            fill(Init::Zeros, &[usize::MAX, 2], &mut rng, &mut out),
            Err(InitError::Length {
                expected: None,
                got: 5
            })
        );
        assert_eq!(
            fill(Init::XavierUniform, &[5], &mut rng, &mut out),
            Err(InitError::XavierRank { rank: 1 })
        );
        assert_eq!(
            fill(Init::Normal { std: -1.0 }, &[5], &mut rng, &mut out),
            Err(InitError::Scale(-1.0))
        );
        assert!(matches!(
            fill(
                Init::Uniform {
                    bound: f64::INFINITY
                },
                &[5],
                &mut rng,
                &mut out
            ),
            Err(InitError::Scale(_))
        ));
        assert_eq!(rng, before);
        // a zero-element tensor is fine and draws nothing
        fill(Init::XavierUniform, &[0, 4], &mut rng, &mut []).unwrap();
        assert_eq!(rng, before);
    }

    // ---- golden values, printed by tests/golden/init_golden.py ----

    const XAVIER_6X4_SEED42_7: [f32; 8] = [
        -0.5433095,
        0.6431447,
        0.24308491,
        0.50630057,
        0.42930618,
        0.11400653,
        -0.08351367,
        0.034368794,
    ];
    const XAVIER_8X3X2X2_SEED42_8: [f32; 6] = [
        0.2949227,
        0.025450304,
        -0.31335363,
        -0.006342639,
        -0.20120132,
        -0.36158407,
    ];
    const NORMAL_002_SEED5: [f32; 8] = [
        -0.012710754,
        0.008472944,
        -0.007092819,
        0.020198485,
        0.025057107,
        0.03325042,
        -0.043098096,
        0.026880838,
    ];
    const PATCH_BOUND_16_768: f64 = 0.0625;
    const UNIFORM_PATCH_SEED9: [f32; 6] = [
        0.01237896,
        -0.00878295,
        -0.037668772,
        0.047976535,
        -0.053877465,
        -0.045758855,
    ];
}
