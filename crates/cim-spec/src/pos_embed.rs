//! The fixed position embeddings of the encoder and the decoder (S3, S4): the 2-D sin-cos
//! table with its all-zero class row, and its bicubic resize to another patch grid. Both
//! are computed once on the host and uploaded, so every backend and every exported
//! checkpoint holds the same bits.
//!
//! Layout: `[1 + g * g, dim]`, row-major; row 0 is the class token, row `1 + (y * g + x)`
//! the patch in grid row `y`, column `x` (S1).

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// Why a position-embedding request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PosEmbedError {
    /// The sin-cos table needs four channel blocks (sin x, cos x, sin y, cos y) of equal
    /// width, so the width must be a multiple of 4.
    DimNotMultipleOf4 {
        /// The width asked for.
        dim: usize,
    },
    /// A grid side or the width is zero: there is nothing to interpolate from or to.
    Empty {
        /// Source grid side.
        g0: usize,
        /// Target grid side.
        g: usize,
        /// Width.
        dim: usize,
    },
    /// PyTorch's output side `floor(g0 * (g + 0.1) / g0)` is not `g`, so the scale factor
    /// of S3 does not produce the grid asked for.
    OutputSide {
        /// Source grid side.
        g0: usize,
        /// Target grid side.
        g: usize,
        /// The side PyTorch would produce.
        side: usize,
    },
    /// The source table does not hold `(1 + g0 * g0) * dim` values.
    SourceLength {
        /// Values required.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// The table would not fit in memory (its length overflows `usize`).
    TooLarge,
}

impl fmt::Display for PosEmbedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PosEmbedError::DimNotMultipleOf4 { dim } => {
                write!(f, "position-embedding width {dim} is not a multiple of 4")
            }
            PosEmbedError::Empty { g0, g, dim } => write!(
                f,
                "empty position-embedding resize (grid {g0} -> {g}, width {dim})"
            ),
            PosEmbedError::OutputSide { g0, g, side } => write!(
                f,
                "scale factor ({g} + 0.1)/{g0} gives a {side} x {side} grid, not {g} x {g}"
            ),
            PosEmbedError::SourceLength { expected, got } => write!(
                f,
                "position-embedding table holds {got} values, {expected} required"
            ),
            PosEmbedError::TooLarge => write!(f, "position-embedding table too large"),
        }
    }
}

impl core::error::Error for PosEmbedError {}

/// `(1 + g * g) * dim`, or `TooLarge`.
fn table_len(dim: usize, g: usize) -> Result<usize, PosEmbedError> {
    g.checked_mul(g)
        .and_then(|n| n.checked_add(1))
        .and_then(|n| n.checked_mul(dim))
        .ok_or(PosEmbedError::TooLarge)
}

/// The fixed 2-D sin-cos embedding for a `grid x grid` patch grid with an all-zero class
/// row, shape `[1 + grid^2, dim]` (S3).
///
/// Channels `0..dim/2` encode the column `x`, channels `dim/2..dim` the row `y`; each half
/// is `[sin(pos * omega_k) for k in 0..dim/4, cos(pos * omega_k) for k in 0..dim/4]` with
/// `omega_k = 1 / 10000^(k / (dim/4))`. This is what MAE's `get_2d_sincos_pos_embed`
/// computes (its "emb_h" half is built from the first `meshgrid(w, h)` plane, which holds
/// the column index). Evaluated in f64 and rounded once to f32, as MAE builds the table
/// in numpy float64 and converts it with `.float()`.
pub fn sincos_2d(dim: usize, grid: usize) -> Result<Vec<f32>, PosEmbedError> {
    if !dim.is_multiple_of(4) {
        return Err(PosEmbedError::DimNotMultipleOf4 { dim });
    }
    let mut out = vec![0.0f32; table_len(dim, grid)?];
    let quarter = dim / 4;
    // MAE divides k by (dim/4) as a float and takes 1 / 10000^that; kept in that order so
    // the f64 values, and so the rounded f32 ones, agree.
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / libm::pow(10000.0, k as f64 / quarter as f64))
        .collect();
    for y in 0..grid {
        for x in 0..grid {
            let row = &mut out[(1 + y * grid + x) * dim..][..dim];
            let (first, second) = row.split_at_mut(dim / 2);
            for (half, pos) in [(first, x), (second, y)] {
                let (sin, cos) = half.split_at_mut(quarter);
                for k in 0..quarter {
                    let arg = pos as f64 * omega[k];
                    sin[k] = libm::sin(arg) as f32;
                    cos[k] = libm::cos(arg) as f32;
                }
            }
        }
    }
    Ok(out)
}

/// The scale factor S3 passes to PyTorch's `F.interpolate` to resize a `g0` grid to `g`:
/// `(g + 0.1) / g0`. The extra 0.1 is the DeiT/DINO guard against `floor` landing one
/// short; PyTorch then samples with its reciprocal, not with `g0 / g`.
pub fn resize_scale_factor(g0: usize, g: usize) -> f64 {
    (g as f64 + 0.1) / g0 as f64
}

/// Cubic-convolution kernel for `|x| <= 1`, in PyTorch's f32 operation order.
fn cubic_near(x: f32, a: f32) -> f32 {
    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
}

/// Cubic-convolution kernel for `1 < |x| < 2`, in PyTorch's f32 operation order.
fn cubic_far(x: f32, a: f32) -> f32 {
    ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
}

/// The four source indices and weights that one output index reads along one axis.
#[derive(Clone, Copy)]
struct Taps {
    index: [usize; 4],
    weight: [f32; 4],
}

/// Taps of every output index along an axis resized from `g0` to `g` with PyTorch's
/// `scale_factor` semantics (`align_corners = False`, `A = -0.75`).
fn axis_taps(g0: usize, g: usize, scale_factor: f64) -> Vec<Taps> {
    const A: f32 = -0.75;
    // PyTorch stores 1 / scale_factor (computed in double) as the f32 sampling step.
    let step = (1.0 / scale_factor) as f32;
    let last = g0 as i64 - 1;
    (0..g)
        .map(|t| {
            let s = step * (t as f32 + 0.5) - 0.5;
            // Cubic sampling does not clamp s at 0: left of the first centre the taps are
            // clamped instead, so the border value is repeated.
            let i0 = (libm::floorf(s) as i64).min(last);
            let lambda = (s - i0 as f32).clamp(0.0, 1.0);
            let mirrored = 1.0 - lambda;
            Taps {
                index: core::array::from_fn(|j| (i0 - 1 + j as i64).clamp(0, last) as usize),
                weight: [
                    cubic_far(lambda + 1.0, A),
                    cubic_near(lambda, A),
                    cubic_near(mirrored, A),
                    cubic_far(mirrored + 1.0, A),
                ],
            }
        })
        .collect()
}

/// Resizes a `[1 + g0^2, dim]` embedding to `[1 + g^2, dim]` as S3 prescribes: what
/// PyTorch's `F.interpolate(x, scale_factor=(g + 0.1)/g0, mode='bicubic',
/// align_corners=False)` computes on the `[1, dim, g0, g0]` patch grid (the DeiT/MAE
/// `interpolate_pos_embed`), with the class row copied unchanged.
///
/// Per axis, output index `t` reads source coordinate
/// `s = (t + 0.5) * (1 / scale_factor) - 0.5` (so `g0 / (g + 0.1)`, not `g0 / g`), with
/// cubic-convolution weights (`A = -0.75`) on taps `floor(s) - 1 ..= floor(s) + 2`
/// clamped to `[0, g0 - 1]`. The arithmetic is PyTorch's CPU kernel in its source order
/// in f32: weights per axis, then for each output `sum_a w_y[a] * (sum_b w_x[b] * src)`
/// accumulated left to right, with no fused multiply-add. PyTorch's AVX2/AVX-512 builds
/// let the compiler fuse some of them (measured: in the source coordinate and the outer
/// tap weights), which depends on the CPU and the compiler, so torch's output differs from
/// this one by rounding only (up to about 1e-6 on unit-magnitude tables); the tests pin
/// both.
///
/// `g == g0` is NOT the identity: the scale factor is then `(g0 + 0.1)/g0`, not 1, and
/// PyTorch interpolates (on the tests' unit-variance table values move by up to 0.12).
/// Callers that want the table unchanged when the grid already matches, as DINO-style
/// `interpolate_pos_encoding` helpers do, must skip the call themselves.
///
/// Errors: a zero side or width, a source of the wrong length, or a `g` that PyTorch's
/// output-side rule `floor(g0 * scale_factor)` would not produce (it does for every
/// practical size, e.g. 14 -> 10: `floor(10.1) = 10`).
pub fn resize_bicubic(
    src: &[f32],
    dim: usize,
    g0: usize,
    g: usize,
) -> Result<Vec<f32>, PosEmbedError> {
    if g0 == 0 || g == 0 || dim == 0 {
        return Err(PosEmbedError::Empty { g0, g, dim });
    }
    let expected = table_len(dim, g0)?;
    if src.len() != expected {
        return Err(PosEmbedError::SourceLength {
            expected,
            got: src.len(),
        });
    }
    let scale_factor = resize_scale_factor(g0, g);
    // PyTorch's output side: the double product truncated to an integer.
    let side = (g0 as f64 * scale_factor) as usize;
    if side != g {
        return Err(PosEmbedError::OutputSide { g0, g, side });
    }
    let mut out = vec![0.0f32; table_len(dim, g)?];
    out[..dim].copy_from_slice(&src[..dim]);
    let taps = axis_taps(g0, g, scale_factor);
    let patch = |y: usize, x: usize| &src[(1 + y * g0 + x) * dim..][..dim];
    for (ty, row_taps) in taps.iter().enumerate() {
        for (tx, col_taps) in taps.iter().enumerate() {
            let dst = &mut out[(1 + ty * g + tx) * dim..][..dim];
            for (c, value) in dst.iter_mut().enumerate() {
                let mut acc = 0.0f32;
                for a in 0..4 {
                    let y = row_taps.index[a];
                    let mut inner = 0.0f32;
                    for b in 0..4 {
                        let term = patch(y, col_taps.index[b])[c] * col_taps.weight[b];
                        // PyTorch starts each sum from its first product, not from 0; the
                        // two agree except for the sign of an all-zero sum.
                        inner = if b == 0 { term } else { inner + term };
                    }
                    let term = inner * row_taps.weight[a];
                    acc = if a == 0 { term } else { acc + term };
                }
                *value = acc;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! Golden values come from `tests/golden/pos_embed_golden.py` (torch 2.15.0, numpy
    //! 2.4.6): a numpy transcription of MAE's formula, `torch.nn.functional.interpolate`
    //! itself, and a plain-f32 numpy transcription of PyTorch's CPU bicubic source order.
    use super::*;

    /// Tolerance against real torch output, fixed from the error analysis before the
    /// comparison: each output sums 16 f32 products whose absolute weights add up to about
    /// 1.5, so each of the two f32 evaluations carries up to ~20 roundings of 2^-24 * 1.5
    /// (about 1.8e-6 apart at worst), and torch's fused multiply-adds move tap weights by
    /// a few ulps. Inputs here are of unit magnitude, so this is absolute.
    const TORCH_TOL: f64 = 2.5e-6;

    /// The unit-variance test table of the golden script: patch `i`, channel `c` ->
    /// sin(1.3 i + 0.7 c); class row cos(0.3 c).
    fn test_input(dim: usize, g0: usize) -> Vec<f32> {
        let mut x = vec![0.0f32; (1 + g0 * g0) * dim];
        for c in 0..dim {
            x[c] = libm::cos(0.3 * c as f64) as f32;
            for i in 0..g0 * g0 {
                x[(1 + i) * dim + c] = libm::sin(1.3 * i as f64 + 0.7 * c as f64) as f32;
            }
        }
        x
    }

    /// Sum and sum of squares in f64, sequentially (the golden script does the same).
    fn checksum(v: &[f32]) -> (f64, f64) {
        v.iter().fold((0.0, 0.0), |(s, s2), &x| {
            let x = x as f64;
            (s + x, s2 + x * x)
        })
    }

    #[test]
    fn sincos_rows_equal_mae_bit_for_bit() {
        let e = sincos_2d(16, 4).unwrap();
        assert_eq!(e.len(), 17 * 16);
        for (token, row) in SINCOS_16_4_ROWS {
            assert_eq!(&e[token * 16..][..16], &row[..], "token {token}");
        }
    }

    #[test]
    fn sincos_checksums_match_mae() {
        for (dim, grid, (sum, sum2)) in [(768, 14, SINCOS_768_14_SUM), (512, 10, SINCOS_512_10_SUM)]
        {
            let (s, s2) = checksum(&sincos_2d(dim, grid).unwrap());
            assert!(
                (s - sum).abs() <= 1e-9 * sum.abs(),
                "{dim}/{grid}: {s} vs {sum}"
            );
            assert!(
                (s2 - sum2).abs() <= 1e-9 * sum2,
                "{dim}/{grid}: {s2} vs {sum2}"
            );
        }
    }

    /// The first half depends on the column only and the second on the row only.
    #[test]
    fn sincos_halves_encode_column_then_row() {
        let (dim, g) = (8, 5);
        let e = sincos_2d(dim, g).unwrap();
        let row = |y: usize, x: usize| &e[(1 + y * g + x) * dim..][..dim];
        assert!(e[..dim].iter().all(|&v| v == 0.0));
        for y in 0..g {
            for x in 0..g {
                assert_eq!(row(y, x)[..dim / 2], row(0, x)[..dim / 2]);
                assert_eq!(row(y, x)[dim / 2..], row(y, 0)[dim / 2..]);
            }
        }
        // column 1 encodes sin(1 * omega_0) = sin(1) in channel 0; row 0 gives 0 there.
        assert_eq!(row(0, 1)[0], libm::sin(1.0) as f32);
        assert_eq!(row(1, 0)[0], 0.0);
    }

    #[test]
    fn sincos_rejects_bad_width_and_handles_empty_grid() {
        assert_eq!(
            sincos_2d(10, 4),
            Err(PosEmbedError::DimNotMultipleOf4 { dim: 10 })
        );
        assert_eq!(sincos_2d(8, 0).unwrap(), vec![0.0; 8]);
        assert_eq!(sincos_2d(4, usize::MAX), Err(PosEmbedError::TooLarge));
    }

    type Picks = [(usize, usize, f32); 8];

    /// Checks one resize case against the plain-f32 transcription (bit for bit, checksum
    /// to f64 rounding) and against torch (within `TORCH_TOL`).
    fn check_resize(
        src: &[f32],
        (dim, g0, g): (usize, usize, usize),
        plain: &Picks,
        plain_sum: (f64, f64),
        torch: &Picks,
        torch_sum: (f64, f64),
    ) {
        let out = resize_bicubic(src, dim, g0, g).unwrap();
        assert_eq!(out.len(), (1 + g * g) * dim);
        assert_eq!(out[..dim], src[..dim], "class row is copied");
        for &(token, c, v) in plain {
            assert_eq!(
                out[token * dim + c],
                v,
                "plain {dim}/{g0}->{g} token {token} c {c}"
            );
        }
        for &(token, c, v) in torch {
            let got = out[token * dim + c] as f64;
            assert!(
                (got - v as f64).abs() <= TORCH_TOL,
                "torch {dim}/{g0}->{g} token {token} c {c}: {got} vs {v}"
            );
        }
        let (s, s2) = checksum(&out);
        assert!((s - plain_sum.0).abs() <= 1e-12 * (1.0 + s.abs()), "{s}");
        assert!((s2 - plain_sum.1).abs() <= 1e-12 * s2, "{s2}");
        let n = out.len() as f64;
        assert!((s - torch_sum.0).abs() <= n * TORCH_TOL, "{s} vs torch");
        // |a^2 - b^2| = |a - b| |a + b| and |a + b| stays below 2.5 for these tables
        assert!(
            (s2 - torch_sum.1).abs() <= 2.5 * n * TORCH_TOL,
            "{s2} vs torch"
        );
    }

    #[test]
    fn resize_14_to_10_matches_torch() {
        check_resize(
            &test_input(16, 14),
            (16, 14, 10),
            &PLAIN_INPUT_16_14_10,
            PLAIN_INPUT_16_14_10_SUM,
            &TORCH_INPUT_16_14_10,
            TORCH_INPUT_16_14_10_SUM,
        );
    }

    #[test]
    fn resize_same_grid_matches_torch_and_is_not_identity() {
        let src = test_input(16, 14);
        check_resize(
            &src,
            (16, 14, 14),
            &PLAIN_INPUT_16_14_14,
            PLAIN_INPUT_16_14_14_SUM,
            &TORCH_INPUT_16_14_14,
            TORCH_INPUT_16_14_14_SUM,
        );
        let out = resize_bicubic(&src, 16, 14, 14).unwrap();
        let moved = out
            .iter()
            .zip(&src)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(moved > 0.1, "g == g0 must still interpolate, moved {moved}");
    }

    #[test]
    fn resize_upsampling_matches_torch() {
        check_resize(
            &test_input(8, 4),
            (8, 4, 7),
            &PLAIN_INPUT_8_4_7,
            PLAIN_INPUT_8_4_7_SUM,
            &TORCH_INPUT_8_4_7,
            TORCH_INPUT_8_4_7_SUM,
        );
    }

    #[test]
    fn resize_of_sincos_table_matches_torch() {
        check_resize(
            &sincos_2d(16, 14).unwrap(),
            (16, 14, 10),
            &PLAIN_SINCOS_16_14_10,
            PLAIN_SINCOS_16_14_10_SUM,
            &TORCH_SINCOS_16_14_10,
            TORCH_SINCOS_16_14_10_SUM,
        );
    }

    /// The S3 sampling rule by itself: the step is g0/(g + 0.1), and a constant table
    /// stays constant (the four weights sum to one).
    #[test]
    fn resize_uses_the_scale_factor_not_the_size_ratio() {
        let taps = axis_taps(14, 10, resize_scale_factor(14, 10));
        let s1 = (1.0f64 + 0.5) * 14.0 / 10.1 - 0.5; // 1.579..., floor 1
        assert_eq!(taps[1].index, [0, 1, 2, 3]);
        let lambda = (s1 - 1.0) as f32;
        assert!((taps[1].weight[1] - cubic_near(lambda, -0.75)).abs() < 1e-6);
        for t in &taps {
            let sum: f32 = t.weight.iter().sum();
            assert!((sum - 1.0).abs() < 1e-6);
        }
        let src = vec![0.25f32; (1 + 14 * 14) * 4];
        let out = resize_bicubic(&src, 4, 14, 10).unwrap();
        assert!(out.iter().all(|&v| (v - 0.25).abs() < 1e-6));
    }

    #[test]
    fn resize_rejects_bad_arguments() {
        let src = test_input(8, 4);
        assert_eq!(
            resize_bicubic(&src, 8, 4, 0),
            Err(PosEmbedError::Empty {
                g0: 4,
                g: 0,
                dim: 8
            })
        );
        assert_eq!(
            resize_bicubic(&src, 8, 0, 3),
            Err(PosEmbedError::Empty {
                g0: 0,
                g: 3,
                dim: 8
            })
        );
        assert_eq!(
            resize_bicubic(&src[1..], 8, 4, 3),
            Err(PosEmbedError::SourceLength {
                expected: 17 * 8,
                got: 17 * 8 - 1
            })
        );
    }

    // ---- golden values, printed by tests/golden/pos_embed_golden.py ----

    const SINCOS_16_4_ROWS: [(usize, [f32; 16]); 5] = [
        (0, [0_f32; 16]),
        (
            1,
            [
                0_f32, 0_f32, 0_f32, 0_f32, 1_f32, 1_f32, 1_f32, 1_f32, 0_f32, 0_f32, 0_f32, 0_f32,
                1_f32, 1_f32, 1_f32, 1_f32,
            ],
        ),
        (
            2,
            [
                0.84147096_f32,
                0.099833414_f32,
                0.009999833_f32,
                0.0009999998_f32,
                0.5403023_f32,
                0.9950042_f32,
                0.99995_f32,
                0.9999995_f32,
                0_f32,
                0_f32,
                0_f32,
                0_f32,
                1_f32,
                1_f32,
                1_f32,
                1_f32,
            ],
        ),
        (
            6,
            [
                0.84147096_f32,
                0.099833414_f32,
                0.009999833_f32,
                0.0009999998_f32,
                0.5403023_f32,
                0.9950042_f32,
                0.99995_f32,
                0.9999995_f32,
                0.84147096_f32,
                0.099833414_f32,
                0.009999833_f32,
                0.0009999998_f32,
                0.5403023_f32,
                0.9950042_f32,
                0.99995_f32,
                0.9999995_f32,
            ],
        ),
        (
            16,
            [
                0.14112_f32,
                0.29552022_f32,
                0.029995501_f32,
                0.0029999956_f32,
                -0.9899925_f32,
                0.9553365_f32,
                0.99955004_f32,
                0.9999955_f32,
                0.14112_f32,
                0.29552022_f32,
                0.029995501_f32,
                0.0029999956_f32,
                -0.9899925_f32,
                0.9553365_f32,
                0.99955004_f32,
                0.9999955_f32,
            ],
        ),
    ];
    const SINCOS_768_14_SUM: (f64, f64) = (69594.49384729861, 75263.99998141246);
    const SINCOS_512_10_SUM: (f64, f64) = (24566.324107794353, 25599.99998901049);

    const TORCH_INPUT_16_14_10: Picks = [
        (1, 0, 0.08426134_f32),
        (1, 5, -0.39371744_f32),
        (2, 3, -0.78572583_f32),
        (11, 7, -0.7513534_f32),
        (37, 15, -0.13572678_f32),
        (55, 8, 0.86766297_f32),
        (100, 2, -0.20101872_f32),
        (100, 15, -0.0817615_f32),
    ];
    const PLAIN_INPUT_16_14_10: Picks = [
        (1, 0, 0.08426122_f32),
        (1, 5, -0.39371723_f32),
        (2, 3, -0.78572565_f32),
        (11, 7, -0.7513533_f32),
        (37, 15, -0.135727_f32),
        (55, 8, 0.86766285_f32),
        (100, 2, -0.20101872_f32),
        (100, 15, -0.081761524_f32),
    ];
    const TORCH_INPUT_16_14_10_SUM: (f64, f64) = (-2.7497202020604163, 798.277324288456);
    const PLAIN_INPUT_16_14_10_SUM: (f64, f64) = (-2.749716983176768, 798.2773254897223);

    const TORCH_INPUT_16_14_14: Picks = [
        (1, 0, -0.00094557344_f32),
        (2, 3, -0.24238661_f32),
        (15, 1, 0.057584498_f32),
        (100, 9, 0.05754172_f32),
        (150, 4, 0.9955437_f32),
        (196, 15, 0.0656131_f32),
        (196, 0, 0.79529476_f32),
        (97, 12, 0.9221207_f32),
    ];
    const PLAIN_INPUT_16_14_14: Picks = [
        (1, 0, -0.0009455738_f32),
        (2, 3, -0.24238713_f32),
        (15, 1, 0.057584226_f32),
        (100, 9, 0.057541706_f32),
        (150, 4, 0.9955441_f32),
        (196, 15, 0.06561304_f32),
        (196, 0, 0.7952949_f32),
        (97, 12, 0.92212063_f32),
    ];
    const TORCH_INPUT_16_14_14_SUM: (f64, f64) = (-2.524156419909559, 1567.8496265674553);
    const PLAIN_INPUT_16_14_14_SUM: (f64, f64) = (-2.5241546776378527, 1567.8498492216886);

    const TORCH_INPUT_8_4_7: Picks = [
        (1, 0, -0.006662692_f32),
        (1, 7, -1.1201342_f32),
        (4, 2, -0.27330226_f32),
        (8, 3, 0.9983019_f32),
        (25, 5, -0.6523396_f32),
        (40, 6, -0.6958862_f32),
        (49, 0, 0.68096244_f32),
        (49, 7, -0.7427321_f32),
    ];
    const PLAIN_INPUT_8_4_7: Picks = [
        (1, 0, -0.006662689_f32),
        (1, 7, -1.1201338_f32),
        (4, 2, -0.27330223_f32),
        (8, 3, 0.9983015_f32),
        (25, 5, -0.6523396_f32),
        (40, 6, -0.69588625_f32),
        (49, 0, 0.68096244_f32),
        (49, 7, -0.7427321_f32),
    ];
    const TORCH_INPUT_8_4_7_SUM: (f64, f64) = (4.868287145160139, 198.43044541229412);
    const PLAIN_INPUT_8_4_7_SUM: (f64, f64) = (4.86828925088048, 198.43039133337766);

    const TORCH_SINCOS_16_14_10: Picks = [
        (1, 0, 0.14081328_f32),
        (1, 5, 0.99949193_f32),
        (2, 3, 0.0015599012_f32),
        (11, 7, 1_f32),
        (37, 15, 0.9999907_f32),
        (55, 8, 0.76388663_f32),
        (100, 2, 0.12707613_f32),
        (100, 15, 0.9999191_f32),
    ];
    const PLAIN_SINCOS_16_14_10: Picks = [
        (1, 0, 0.14081377_f32),
        (1, 5, 0.999493_f32),
        (2, 3, 0.001559902_f32),
        (11, 7, 1.0000006_f32),
        (37, 15, 0.9999908_f32),
        (55, 8, 0.7638864_f32),
        (100, 2, 0.127076_f32),
        (100, 15, 0.9999181_f32),
    ];
    const TORCH_SINCOS_16_14_10_SUM: (f64, f64) = (691.6774925226782, 801.3079307396962);
    const PLAIN_SINCOS_16_14_10_SUM: (f64, f64) = (691.677439104169, 801.30778777724);
}
