//! Token-sequence ops: im2col of the patch embedding and the class token (S3), the mean
//! pool of the S10 features, and the align-corners bilinear upsampling of the predicted
//! maps (S4).

use cim_spec::backend::PatchArgs;

/// Implements [`cim_spec::backend::Tokens::patchify`]: `img` `[B, C, H, W]` to `out`
/// `[B, (H/p)(W/p), C p p]`; patch `t = gy * (W/p) + gx` (row-major grid), its values in
/// `(c, ky, kx)` order: `out[b, t, (c p + ky) p + kx] = img[b, c, gy p + ky, gx p + kx]`.
/// Writes.
pub fn patchify(out: &mut [f64], img: &[f64], args: &PatchArgs) {
    let PatchArgs {
        batch,
        channels,
        height,
        width,
        patch,
    } = *args;
    assert!(
        patch > 0 && height % patch == 0 && width % patch == 0,
        "patchify: sizes"
    );
    assert_eq!(
        img.len(),
        batch * channels * height * width,
        "patchify: img"
    );
    assert_eq!(out.len(), img.len(), "patchify: out");
    let (grid_h, grid_w) = (height / patch, width / patch);
    let patch_len = channels * patch * patch;
    for b in 0..batch {
        for gy in 0..grid_h {
            for gx in 0..grid_w {
                let t = gy * grid_w + gx;
                for c in 0..channels {
                    for ky in 0..patch {
                        for kx in 0..patch {
                            let (y, x) = (gy * patch + ky, gx * patch + kx);
                            let pixel = ((b * channels + c) * height + y) * width + x;
                            let slot = (b * grid_h * grid_w + t) * patch_len
                                + (c * patch + ky) * patch
                                + kx;
                            out[slot] = img[pixel];
                        }
                    }
                }
            }
        }
    }
}

/// Implements [`cim_spec::backend::Tokens::prepend_cls_forward`]: `out[b, 0, :] = cls`,
/// `out[b, 1 + t, :] = patches[b, t, :]` for `out` `[B, 1+T, D]` (writes).
pub fn prepend_cls_forward(
    out: &mut [f64],
    patches: &[f64],
    cls: &[f64],
    batch: usize,
    tokens: usize,
    dim: usize,
) {
    assert_eq!(
        out.len(),
        batch * (tokens + 1) * dim,
        "prepend_cls_forward: out"
    );
    assert_eq!(
        patches.len(),
        batch * tokens * dim,
        "prepend_cls_forward: patches"
    );
    assert_eq!(cls.len(), dim, "prepend_cls_forward: cls");
    for b in 0..batch {
        for d in 0..dim {
            out[b * (tokens + 1) * dim + d] = cls[d];
        }
        for t in 0..tokens {
            for d in 0..dim {
                out[(b * (tokens + 1) + 1 + t) * dim + d] = patches[(b * tokens + t) * dim + d];
            }
        }
    }
}

/// Implements [`cim_spec::backend::Tokens::prepend_cls_backward`]: `dcls += sum_b dout[b, 0, :]`
/// (accumulates) and, when given, `dpatches[b, t, :] = dout[b, 1 + t, :]` (writes).
pub fn prepend_cls_backward(
    dpatches: Option<&mut [f64]>,
    dcls: &mut [f64],
    dout: &[f64],
    batch: usize,
    tokens: usize,
    dim: usize,
) {
    assert_eq!(
        dout.len(),
        batch * (tokens + 1) * dim,
        "prepend_cls_backward: dout"
    );
    assert_eq!(dcls.len(), dim, "prepend_cls_backward: dcls");
    for d in 0..dim {
        let mut sum = 0.0;
        for b in 0..batch {
            sum += dout[b * (tokens + 1) * dim + d];
        }
        dcls[d] += sum;
    }
    if let Some(dpatches) = dpatches {
        assert_eq!(
            dpatches.len(),
            batch * tokens * dim,
            "prepend_cls_backward: dpatches"
        );
        for b in 0..batch {
            for t in 0..tokens {
                for d in 0..dim {
                    dpatches[(b * tokens + t) * dim + d] =
                        dout[(b * (tokens + 1) + 1 + t) * dim + d];
                }
            }
        }
    }
}

/// Implements [`cim_spec::backend::Tokens::mean_pool_forward`]: `out[b, :] = mean_{t=1..=T} x[b, t, :]`
/// for `x` `[B, 1+T, D]`, the class token excluded (writes; `T >= 1`).
pub fn mean_pool_forward(out: &mut [f64], x: &[f64], batch: usize, tokens: usize, dim: usize) {
    assert!(tokens > 0, "mean_pool_forward: tokens");
    assert_eq!(x.len(), batch * (tokens + 1) * dim, "mean_pool_forward: x");
    assert_eq!(out.len(), batch * dim, "mean_pool_forward: out");
    for b in 0..batch {
        for d in 0..dim {
            let mut sum = 0.0;
            for t in 1..=tokens {
                sum += x[(b * (tokens + 1) + t) * dim + d];
            }
            out[b * dim + d] = sum / tokens as f64;
        }
    }
}

/// Implements [`cim_spec::backend::Tokens::mean_pool_backward`]: `dx[b, 0, :] = 0`,
/// `dx[b, t, :] = dout[b, :] / T` for `t >= 1` (writes).
pub fn mean_pool_backward(dx: &mut [f64], dout: &[f64], batch: usize, tokens: usize, dim: usize) {
    assert!(tokens > 0, "mean_pool_backward: tokens");
    assert_eq!(
        dx.len(),
        batch * (tokens + 1) * dim,
        "mean_pool_backward: dx"
    );
    assert_eq!(dout.len(), batch * dim, "mean_pool_backward: dout");
    for b in 0..batch {
        for d in 0..dim {
            dx[b * (tokens + 1) * dim + d] = 0.0;
            for t in 1..=tokens {
                dx[(b * (tokens + 1) + t) * dim + d] = dout[b * dim + d] / tokens as f64;
            }
        }
    }
}

/// The two source taps and the weight of the upper one for output index `i` of an axis
/// resampled from `in_len` to `out_len` with `align_corners = true` (S4): the source
/// coordinate is `s = i (in_len - 1) / (out_len - 1)` (0 when `out_len == 1`), read as
/// `(1 - f) x[lo] + f x[hi]` with `lo = floor(s)`, `hi = min(lo + 1, in_len - 1)`,
/// `f = s - lo`. The quotient is formed from the exact integer product, one rounding.
pub fn upsample_source(i: usize, in_len: usize, out_len: usize) -> (usize, usize, f64) {
    assert!(
        in_len > 0 && out_len > 0 && i < out_len,
        "upsample_source: sizes"
    );
    let s = if out_len == 1 {
        0.0
    } else {
        (i * (in_len - 1)) as f64 / (out_len - 1) as f64
    };
    let lo = (s.floor() as usize).min(in_len - 1);
    let hi = (lo + 1).min(in_len - 1);
    (lo, hi, s - lo as f64)
}

/// Implements [`cim_spec::backend::Tokens::upsample_bilinear_forward`]: `x` `[N, h, w]` to `out`
/// `[N, H, W]`, output (i, j) interpolating the four source neighbours of
/// [`upsample_source`] on each axis (writes). All four taps are always read, as PyTorch
/// does, so a NaN also reaches the outputs for which its weight is 0.
pub fn upsample_bilinear_forward(
    out: &mut [f64],
    x: &[f64],
    planes: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
) {
    assert_eq!(
        x.len(),
        planes * in_h * in_w,
        "upsample_bilinear_forward: x"
    );
    assert_eq!(
        out.len(),
        planes * out_h * out_w,
        "upsample_bilinear_forward: out"
    );
    for n in 0..planes {
        let src = |y: usize, x_: usize| x[(n * in_h + y) * in_w + x_];
        for i in 0..out_h {
            let (y0, y1, fy) = upsample_source(i, in_h, out_h);
            for j in 0..out_w {
                let (x0, x1, fx) = upsample_source(j, in_w, out_w);
                let top = (1.0 - fx) * src(y0, x0) + fx * src(y0, x1);
                let bottom = (1.0 - fx) * src(y1, x0) + fx * src(y1, x1);
                out[(n * out_h + i) * out_w + j] = (1.0 - fy) * top + fy * bottom;
            }
        }
    }
}

/// Implements [`cim_spec::backend::Tokens::upsample_bilinear_backward`]: the transpose of
/// [`upsample_bilinear_forward`], where each `dout[n, i, j]` is spread onto its four source
/// taps with the forward's weights (writes `dx`, zeroed first; contributions are added
/// in output order).
pub fn upsample_bilinear_backward(
    dx: &mut [f64],
    dout: &[f64],
    planes: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
) {
    assert_eq!(
        dx.len(),
        planes * in_h * in_w,
        "upsample_bilinear_backward: dx"
    );
    assert_eq!(
        dout.len(),
        planes * out_h * out_w,
        "upsample_bilinear_backward: dout"
    );
    dx.fill(0.0);
    for n in 0..planes {
        for i in 0..out_h {
            let (y0, y1, fy) = upsample_source(i, in_h, out_h);
            for j in 0..out_w {
                let (x0, x1, fx) = upsample_source(j, in_w, out_w);
                let g = dout[(n * out_h + i) * out_w + j];
                let slot = |y: usize, x: usize| (n * in_h + y) * in_w + x;
                dx[slot(y0, x0)] += (1.0 - fy) * (1.0 - fx) * g;
                dx[slot(y0, x1)] += (1.0 - fy) * fx * g;
                dx[slot(y1, x0)] += fy * (1.0 - fx) * g;
                dx[slot(y1, x1)] += fy * fx * g;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{fd_check, rand_vec, rng, weighted_sum};
    use proptest::prelude::*;

    #[test]
    fn patchify_by_hand() {
        // One 2-channel 2x4 image, patch 2: two patches, each [c0 2x2, c1 2x2].
        let img: Vec<f64> = (0..16).map(f64::from).collect();
        let mut out = vec![0.0; 16];
        let args = PatchArgs {
            batch: 1,
            channels: 2,
            height: 2,
            width: 4,
            patch: 2,
        };
        patchify(&mut out, &img, &args);
        // Channel 0 rows [0 1 2 3], [4 5 6 7]; channel 1 adds 8.
        let expected = [
            0.0, 1.0, 4.0, 5.0, 8.0, 9.0, 12.0, 13.0, //
            2.0, 3.0, 6.0, 7.0, 10.0, 11.0, 14.0, 15.0,
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn upsample_two_by_two_to_three_by_three_by_hand() {
        let x = [1.0, 2.0, 3.0, 4.0];
        let mut out = [0.0; 9];
        upsample_bilinear_forward(&mut out, &x, 1, 2, 2, 3, 3);
        assert_eq!(out, [1.0, 1.5, 2.0, 2.0, 2.5, 3.0, 3.0, 3.5, 4.0]);
        // Transpose of all-ones: corner 1, two edge halves, a quarter of the centre.
        let mut dx = [f64::NAN; 4];
        upsample_bilinear_backward(&mut dx, &[1.0; 9], 1, 2, 2, 3, 3);
        assert_eq!(dx, [2.25; 4]);
        // An output side of 1 reads source 0.
        let mut one = [0.0; 2];
        upsample_bilinear_forward(&mut one, &x, 1, 2, 2, 1, 2);
        assert_eq!(one, [1.0, 2.0]);
    }

    #[test]
    fn upsample_backward_matches_finite_differences() {
        let (planes, in_h, in_w, out_h, out_w) = (2, 3, 4, 7, 5);
        let mut r = rng(400);
        let x = rand_vec(&mut r, planes * in_h * in_w);
        let w = rand_vec(&mut r, planes * out_h * out_w);
        let f = |x: &[f64]| {
            let mut out = vec![0.0; w.len()];
            upsample_bilinear_forward(&mut out, x, planes, in_h, in_w, out_h, out_w);
            weighted_sum(&w, &out)
        };
        let mut dx = vec![f64::NAN; x.len()];
        upsample_bilinear_backward(&mut dx, &w, planes, in_h, in_w, out_h, out_w);
        fd_check(f, &x, &dx);
    }

    proptest! {
        /// `<up(x), y> = <x, up^T(y)>` for any sizes, including sides of 1 both ways.
        #[test]
        fn upsample_backward_is_the_adjoint(
            in_h in 1usize..5, in_w in 1usize..5, out_h in 1usize..9, out_w in 1usize..9,
            seed in 0u64..1000,
        ) {
            let mut r = rng(seed);
            let x = rand_vec(&mut r, 2 * in_h * in_w);
            let y = rand_vec(&mut r, 2 * out_h * out_w);
            let mut up = vec![0.0; y.len()];
            upsample_bilinear_forward(&mut up, &x, 2, in_h, in_w, out_h, out_w);
            let mut down = vec![0.0; x.len()];
            upsample_bilinear_backward(&mut down, &y, 2, in_h, in_w, out_h, out_w);
            let lhs = weighted_sum(&up, &y);
            let rhs = weighted_sum(&x, &down);
            prop_assert!((lhs - rhs).abs() <= 1e-12 * (1.0 + lhs.abs()));
        }
    }

    #[test]
    fn prepend_cls_backward_matches_finite_differences() {
        let (batch, tokens, dim) = (2, 3, 4);
        let mut r = rng(401);
        let patches = rand_vec(&mut r, batch * tokens * dim);
        let cls = rand_vec(&mut r, dim);
        let w = rand_vec(&mut r, batch * (tokens + 1) * dim);
        let f = |x: &[f64]| {
            let (patches, cls) = x.split_at(batch * tokens * dim);
            let mut out = vec![0.0; w.len()];
            prepend_cls_forward(&mut out, patches, cls, batch, tokens, dim);
            weighted_sum(&w, &out)
        };
        let mut dpatches = vec![f64::NAN; patches.len()];
        let mut dcls = vec![0.0; dim];
        prepend_cls_backward(Some(&mut dpatches), &mut dcls, &w, batch, tokens, dim);
        let x: Vec<f64> = patches.iter().chain(&cls).copied().collect();
        let grad: Vec<f64> = dpatches.iter().chain(&dcls).copied().collect();
        fd_check(f, &x, &grad);
        // Without dpatches, dcls still accumulates.
        prepend_cls_backward(None, &mut dcls, &w, batch, tokens, dim);
        let once: Vec<f64> = grad[patches.len()..].to_vec();
        assert_eq!(dcls, once.iter().map(|v| 2.0 * v).collect::<Vec<_>>());
    }

    #[test]
    fn mean_pool_backward_matches_finite_differences() {
        let (batch, tokens, dim) = (2, 3, 4);
        let mut r = rng(402);
        let x = rand_vec(&mut r, batch * (tokens + 1) * dim);
        let w = rand_vec(&mut r, batch * dim);
        let f = |x: &[f64]| {
            let mut out = vec![0.0; w.len()];
            mean_pool_forward(&mut out, x, batch, tokens, dim);
            weighted_sum(&w, &out)
        };
        let mut dx = vec![f64::NAN; x.len()];
        mean_pool_backward(&mut dx, &w, batch, tokens, dim);
        fd_check(f, &x, &dx);
        let mut out = [0.0];
        mean_pool_forward(&mut out, &[9.0, 1.0, 2.0, 6.0], 1, 3, 1);
        assert_eq!(out, [3.0]);
    }
}
