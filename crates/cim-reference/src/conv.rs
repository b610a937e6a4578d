//! The decoder's Figure 4 options (S4): the depthwise cross-correlation of the "conv"
//! correlation and the transposed convolution of the deconvolution predictor, both
//! directions, on token maps `[N, 1 + H W, C]` whose token 0 is not part of the map.
//!
//! Each function spells out the index relation of its doc comment in
//! [`cim_spec::backend::Conv`]: a forward loops over its outputs and sums the terms that
//! reach each one; a backward loops over the gradient it writes and sums, in index order,
//! the terms of the forward that read that element, so every adjoint is visibly the same
//! relation read the other way.

use cim_spec::backend::{ConvTransposeArgs, XcorrArgs};

/// The input row (or column) read by output `i` at kernel tap `u` with `pad` leading
/// zero rows, if it lies inside a map of `len` rows: `i + u - pad`.
fn tap(i: usize, u: usize, pad: usize, len: usize) -> Option<usize> {
    (i + u).checked_sub(pad).filter(|&y| y < len)
}

/// Implements [`cim_spec::backend::Conv::depthwise_xcorr_forward`]:
/// `out[n, 1 + i W + j, c] = scale sum_{u, v} x[n, 1 + (i + u - ph) W + (j + v - pw), c]
/// t[n, 1 + u kw + v, c]` over in-map taps; `out[n, 0, :] = 0` (writes).
pub fn depthwise_xcorr_forward(out: &mut [f64], x: &[f64], t: &[f64], a: &XcorrArgs) {
    let (h, w, c) = (a.height, a.width, a.channels);
    let (kh, kw) = (a.kernel_h, a.kernel_w);
    let (map, kernel) = (1 + h * w, 1 + kh * kw);
    assert_eq!(x.len(), a.batch * map * c, "depthwise_xcorr_forward: x");
    assert_eq!(t.len(), a.batch * kernel * c, "depthwise_xcorr_forward: t");
    assert_eq!(out.len(), x.len(), "depthwise_xcorr_forward: out");
    let scale = f64::from(a.scale);
    for n in 0..a.batch {
        let xi = |y: usize, x_: usize, ch: usize| x[(n * map + 1 + y * w + x_) * c + ch];
        let ti = |u: usize, v: usize, ch: usize| t[(n * kernel + 1 + u * kw + v) * c + ch];
        out[n * map * c..(n * map + 1) * c].fill(0.0);
        for i in 0..h {
            for j in 0..w {
                for ch in 0..c {
                    let mut sum = 0.0;
                    for u in 0..kh {
                        let Some(y) = tap(i, u, a.pad_h(), h) else {
                            continue;
                        };
                        for v in 0..kw {
                            if let Some(x_) = tap(j, v, a.pad_w(), w) {
                                sum += xi(y, x_, ch) * ti(u, v, ch);
                            }
                        }
                    }
                    out[(n * map + 1 + i * w + j) * c + ch] = scale * sum;
                }
            }
        }
    }
}

/// Implements [`cim_spec::backend::Conv::depthwise_xcorr_backward`]: `dx` and `dt`
/// written, token 0 of each with zeros; `dout`'s token 0 is not read.
pub fn depthwise_xcorr_backward(
    dx: &mut [f64],
    dt: &mut [f64],
    dout: &[f64],
    x: &[f64],
    t: &[f64],
    a: &XcorrArgs,
) {
    let (h, w, c) = (a.height, a.width, a.channels);
    let (kh, kw) = (a.kernel_h, a.kernel_w);
    let (ph, pw) = (a.pad_h(), a.pad_w());
    let (map, kernel) = (1 + h * w, 1 + kh * kw);
    assert_eq!(x.len(), a.batch * map * c, "depthwise_xcorr_backward: x");
    assert_eq!(dout.len(), x.len(), "depthwise_xcorr_backward: dout");
    assert_eq!(dx.len(), x.len(), "depthwise_xcorr_backward: dx");
    assert_eq!(t.len(), a.batch * kernel * c, "depthwise_xcorr_backward: t");
    assert_eq!(dt.len(), t.len(), "depthwise_xcorr_backward: dt");
    let scale = f64::from(a.scale);
    for n in 0..a.batch {
        let px = |y: usize, x_: usize, ch: usize| (n * map + 1 + y * w + x_) * c + ch;
        let pt = |u: usize, v: usize, ch: usize| (n * kernel + 1 + u * kw + v) * c + ch;
        dx[n * map * c..(n * map + 1) * c].fill(0.0);
        dt[n * kernel * c..(n * kernel + 1) * c].fill(0.0);
        // dx: input (y, x_) was read by output (i, j) = (y - u + ph, x_ - v + pw) at tap
        // (u, v) whenever that output lies in the map.
        for y in 0..h {
            for x_ in 0..w {
                for ch in 0..c {
                    let mut sum = 0.0;
                    for u in 0..kh {
                        let Some(i) = (y + ph).checked_sub(u).filter(|&i| i < h) else {
                            continue;
                        };
                        for v in 0..kw {
                            if let Some(j) = (x_ + pw).checked_sub(v).filter(|&j| j < w) {
                                sum += dout[px(i, j, ch)] * t[pt(u, v, ch)];
                            }
                        }
                    }
                    dx[px(y, x_, ch)] = scale * sum;
                }
            }
        }
        // dt: tap (u, v) multiplied input (i + u - ph, j + v - pw) into output (i, j).
        for u in 0..kh {
            for v in 0..kw {
                for ch in 0..c {
                    let mut sum = 0.0;
                    for i in 0..h {
                        let Some(y) = tap(i, u, ph, h) else {
                            continue;
                        };
                        for j in 0..w {
                            if let Some(x_) = tap(j, v, pw, w) {
                                sum += dout[px(i, j, ch)] * x[px(y, x_, ch)];
                            }
                        }
                    }
                    dt[pt(u, v, ch)] = scale * sum;
                }
            }
        }
    }
}

/// The input index and kernel tap that reach output index `o` from input index `i`
/// (`o = i s - p + k_`), if the tap lies in the kernel.
fn deconv_tap(o: usize, i: usize, a: &ConvTransposeArgs) -> Option<usize> {
    (o + a.padding)
        .checked_sub(i * a.stride)
        .filter(|&k| k < a.kernel)
}

/// Implements [`cim_spec::backend::Conv::conv_transpose_forward`]:
/// `out[n, o, oy, ox] = bias[o] + sum_{c, iy, ix} x[n, 1 + iy W + ix, c]
/// weight[c, o, oy + p - iy s, ox + p - ix s]` over the taps inside the kernel (writes).
pub fn conv_transpose_forward(
    out: &mut [f64],
    x: &[f64],
    weight: &[f64],
    bias: &[f64],
    a: &ConvTransposeArgs,
) {
    let (h, w, ci, co, k) = (a.height, a.width, a.in_channels, a.out_channels, a.kernel);
    let (oh, ow) = (a.out_height(), a.out_width());
    let map = 1 + h * w;
    assert_eq!(x.len(), a.batch * map * ci, "conv_transpose_forward: x");
    assert_eq!(
        weight.len(),
        ci * co * k * k,
        "conv_transpose_forward: weight"
    );
    assert_eq!(bias.len(), co, "conv_transpose_forward: bias");
    assert_eq!(
        out.len(),
        a.batch * co * oh * ow,
        "conv_transpose_forward: out"
    );
    let wi = |c: usize, o: usize, ky: usize, kx: usize| weight[((c * co + o) * k + ky) * k + kx];
    for n in 0..a.batch {
        for o in 0..co {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut sum = 0.0;
                    for iy in 0..h {
                        let Some(ky) = deconv_tap(oy, iy, a) else {
                            continue;
                        };
                        for ix in 0..w {
                            let Some(kx) = deconv_tap(ox, ix, a) else {
                                continue;
                            };
                            for c in 0..ci {
                                sum += x[(n * map + 1 + iy * w + ix) * ci + c] * wi(c, o, ky, kx);
                            }
                        }
                    }
                    out[((n * co + o) * oh + oy) * ow + ox] = bias[o] + sum;
                }
            }
        }
    }
}

/// Implements [`cim_spec::backend::Conv::conv_transpose_backward`]: `dx` written (token 0
/// with zeros), `dweight` and `dbias` accumulated, each from a result computed in full
/// first.
pub fn conv_transpose_backward(
    dx: &mut [f64],
    dweight: &mut [f64],
    dbias: &mut [f64],
    dout: &[f64],
    x: &[f64],
    weight: &[f64],
    a: &ConvTransposeArgs,
) {
    let (h, w, ci, co, k) = (a.height, a.width, a.in_channels, a.out_channels, a.kernel);
    let (oh, ow) = (a.out_height(), a.out_width());
    let map = 1 + h * w;
    assert_eq!(x.len(), a.batch * map * ci, "conv_transpose_backward: x");
    assert_eq!(dx.len(), x.len(), "conv_transpose_backward: dx");
    assert_eq!(
        weight.len(),
        ci * co * k * k,
        "conv_transpose_backward: weight"
    );
    assert_eq!(
        dweight.len(),
        weight.len(),
        "conv_transpose_backward: dweight"
    );
    assert_eq!(dbias.len(), co, "conv_transpose_backward: dbias");
    assert_eq!(
        dout.len(),
        a.batch * co * oh * ow,
        "conv_transpose_backward: dout"
    );
    let pw = |c: usize, o: usize, ky: usize, kx: usize| ((c * co + o) * k + ky) * k + kx;
    let po = |n: usize, o: usize, oy: usize, ox: usize| ((n * co + o) * oh + oy) * ow + ox;
    // The output pixel tap (ky, kx) of input (iy, ix) writes, if it is not cut off.
    let target = |i: usize, kk: usize, len: usize| {
        (i * a.stride + kk)
            .checked_sub(a.padding)
            .filter(|&o| o < len)
    };
    let mut gw = vec![0.0; weight.len()];
    for n in 0..a.batch {
        dx[n * map * ci..(n * map + 1) * ci].fill(0.0);
        for iy in 0..h {
            for ix in 0..w {
                let row = (n * map + 1 + iy * w + ix) * ci;
                for c in 0..ci {
                    let mut sum = 0.0;
                    for o in 0..co {
                        for ky in 0..k {
                            let Some(oy) = target(iy, ky, oh) else {
                                continue;
                            };
                            for kx in 0..k {
                                if let Some(ox) = target(ix, kx, ow) {
                                    sum += dout[po(n, o, oy, ox)] * weight[pw(c, o, ky, kx)];
                                }
                            }
                        }
                    }
                    dx[row + c] = sum;
                }
            }
        }
    }
    for c in 0..ci {
        for o in 0..co {
            for ky in 0..k {
                for kx in 0..k {
                    let mut sum = 0.0;
                    for n in 0..a.batch {
                        for iy in 0..h {
                            let Some(oy) = target(iy, ky, oh) else {
                                continue;
                            };
                            for ix in 0..w {
                                if let Some(ox) = target(ix, kx, ow) {
                                    let xv = x[(n * map + 1 + iy * w + ix) * ci + c];
                                    sum += xv * dout[po(n, o, oy, ox)];
                                }
                            }
                        }
                    }
                    gw[pw(c, o, ky, kx)] = sum;
                }
            }
        }
    }
    for (d, g) in dweight.iter_mut().zip(&gw) {
        *d += g;
    }
    for o in 0..co {
        let mut sum = 0.0;
        for n in 0..a.batch {
            for p in 0..oh * ow {
                sum += dout[(n * co + o) * oh * ow + p];
            }
        }
        dbias[o] += sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{fd_check, rand_vec, rng, weighted_sum};

    fn xcorr_args(batch: usize, c: usize, h: usize, w: usize, kh: usize, kw: usize) -> XcorrArgs {
        XcorrArgs {
            batch,
            channels: c,
            height: h,
            width: w,
            kernel_h: kh,
            kernel_w: kw,
            scale: 0.5,
        }
    }

    #[test]
    fn xcorr_by_hand_matches_pytorch_same_padding() {
        // One 1-channel 3x3 map [1..9], a 2x2 kernel [[1, 2], [3, 4]]: 'same' pads the
        // even kernel's one extra row and column below and right (ph = pw = 0), so
        // out[i][j] = x[i][j] + 2 x[i][j+1] + 3 x[i+1][j] + 4 x[i+1][j+1] (zeros outside),
        // as torch.nn.functional.conv2d(x, k, padding='same') gives.
        let a = XcorrArgs {
            scale: 1.0,
            ..xcorr_args(1, 1, 3, 3, 2, 2)
        };
        let x = [99.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
        let t = [99.0, 1.0, 2.0, 3.0, 4.0];
        let mut out = [f64::NAN; 10];
        depthwise_xcorr_forward(&mut out, &x, &t, &a);
        assert_eq!(
            out,
            [0.0, 37.0, 47.0, 21.0, 67.0, 77.0, 33.0, 23.0, 26.0, 9.0]
        );
        // A 3x3 kernel pads one on every side: the centre tap alone is the identity.
        let a = XcorrArgs {
            scale: 1.0,
            ..xcorr_args(1, 1, 3, 3, 3, 3)
        };
        let mut t = [0.0; 10];
        t[1 + 4] = 1.0;
        depthwise_xcorr_forward(&mut out, &x, &t, &a);
        assert_eq!(out[1..], x[1..]);
        assert_eq!(out[0], 0.0);
    }

    #[test]
    fn xcorr_backward_matches_finite_differences() {
        // Odd and even kernels, a kernel wider than the map, several channels.
        for (batch, c, h, w, kh, kw) in [(2, 3, 4, 3, 2, 3), (1, 2, 3, 5, 3, 4), (1, 1, 2, 2, 3, 5)]
        {
            let a = xcorr_args(batch, c, h, w, kh, kw);
            let mut r = rng(500 + (kh * 10 + kw) as u64);
            let nx = batch * (1 + h * w) * c;
            let x = rand_vec(&mut r, nx);
            let t = rand_vec(&mut r, batch * (1 + kh * kw) * c);
            let g = rand_vec(&mut r, nx);
            let f = |v: &[f64]| {
                let (x, t) = v.split_at(nx);
                let mut out = vec![0.0; nx];
                depthwise_xcorr_forward(&mut out, x, t, &a);
                weighted_sum(&g, &out)
            };
            let mut dx = vec![f64::NAN; x.len()];
            let mut dt = vec![f64::NAN; t.len()];
            depthwise_xcorr_backward(&mut dx, &mut dt, &g, &x, &t, &a);
            let v: Vec<f64> = x.iter().chain(&t).copied().collect();
            let grad: Vec<f64> = dx.iter().chain(&dt).copied().collect();
            fd_check(f, &v, &grad);
            // The class tokens take no part: their gradients are written zeros.
            for n in 0..batch {
                assert!(dx[n * (1 + h * w) * c..][..c].iter().all(|&d| d == 0.0));
                assert!(dt[n * (1 + kh * kw) * c..][..c].iter().all(|&d| d == 0.0));
            }
        }
    }

    fn deconv_args(
        batch: usize,
        ci: usize,
        co: usize,
        h: usize,
        w: usize,
        k: usize,
        s: usize,
        p: usize,
    ) -> ConvTransposeArgs {
        ConvTransposeArgs {
            batch,
            in_channels: ci,
            out_channels: co,
            height: h,
            width: w,
            kernel: k,
            stride: s,
            padding: p,
        }
    }

    #[test]
    fn conv_transpose_by_hand() {
        // One pixel per channel in, kernel 2, stride 2: each input pixel becomes its own
        // 2x2 block of weight times value. Two pixels side by side give a 2x4 output.
        let a = deconv_args(1, 1, 1, 1, 2, 2, 2, 0);
        let x = [99.0, 2.0, 3.0];
        let weight = [1.0, 2.0, 3.0, 4.0];
        let mut out = [f64::NAN; 8];
        conv_transpose_forward(&mut out, &x, &weight, &[0.5], &a);
        assert_eq!(out, [2.5, 4.5, 3.5, 6.5, 6.5, 8.5, 9.5, 12.5]);
        // Kernel 4, stride 2, padding 1 (the predictor's) doubles the side; a single
        // input pixel's 4x4 patch loses its outer ring to the padding.
        let a = deconv_args(1, 1, 1, 1, 1, 4, 2, 1);
        assert_eq!((a.out_height(), a.out_width()), (2, 2));
        let weight: Vec<f64> = (0..16).map(f64::from).collect();
        let mut out = [f64::NAN; 4];
        conv_transpose_forward(&mut out, &[0.0, 1.0], &weight, &[0.0], &a);
        assert_eq!(out, [5.0, 6.0, 9.0, 10.0]);
    }

    #[test]
    fn conv_transpose_backward_matches_finite_differences() {
        for (batch, ci, co, h, w, k, s, p) in [
            (2, 3, 2, 2, 3, 4, 2, 1),
            (1, 2, 1, 3, 2, 3, 1, 0),
            (1, 2, 3, 2, 2, 2, 3, 0),
            (2, 1, 2, 3, 3, 5, 2, 2),
        ] {
            let a = deconv_args(batch, ci, co, h, w, k, s, p);
            let (oh, ow) = (a.out_height(), a.out_width());
            let mut r = rng(600 + (k * 10 + s) as u64);
            let nx = batch * (1 + h * w) * ci;
            let nw = ci * co * k * k;
            let x = rand_vec(&mut r, nx);
            let weight = rand_vec(&mut r, nw);
            let bias = rand_vec(&mut r, co);
            let g = rand_vec(&mut r, batch * co * oh * ow);
            let f = |v: &[f64]| {
                let (x, rest) = v.split_at(nx);
                let (weight, bias) = rest.split_at(nw);
                let mut out = vec![0.0; g.len()];
                conv_transpose_forward(&mut out, x, weight, bias, &a);
                weighted_sum(&g, &out)
            };
            let mut dx = vec![f64::NAN; nx];
            let mut dw = vec![0.0; nw];
            let mut db = vec![0.0; co];
            conv_transpose_backward(&mut dx, &mut dw, &mut db, &g, &x, &weight, &a);
            let v: Vec<f64> = x.iter().chain(&weight).chain(&bias).copied().collect();
            let grad: Vec<f64> = dx.iter().chain(&dw).chain(&db).copied().collect();
            fd_check(f, &v, &grad);
            for n in 0..batch {
                assert!(dx[n * (1 + h * w) * ci..][..ci].iter().all(|&d| d == 0.0));
            }
            // The parameter gradients accumulate: a second call doubles them.
            let (dw1, db1) = (dw.clone(), db.clone());
            conv_transpose_backward(&mut dx, &mut dw, &mut db, &g, &x, &weight, &a);
            assert_eq!(dw, dw1.iter().map(|v| 2.0 * v).collect::<Vec<_>>());
            assert_eq!(db, db1.iter().map(|v| 2.0 * v).collect::<Vec<_>>());
        }
    }
}
