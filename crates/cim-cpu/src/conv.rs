//! The decoder's Figure 4 options (S4): the depthwise cross-correlation of the "conv"
//! correlation and the transposed convolution of the deconvolution predictor.
//!
//! The correlation is a few multiply-adds per channel (at most kh kw taps per output), so
//! it runs as vector loops over the contiguous channels of a token, one map per task;
//! the kernel gradient sums over a whole map and accumulates in f64. The transposed
//! convolution is a GEMM into columns (`[H W, C_out k k]` per map, the weight viewed as
//! `[C_in, C_out k k]` needs no transpose) followed by a gather of each output pixel's
//! at most `ceil(k / s)^2` column entries (col2im written as a gather, so each output has
//! one owner and a fixed summation order); its backward is the same in reverse: an
//! im2col gather of the output gradient, one GEMM for the input gradient, and
//! fixed-size blocks of per-map weight-gradient GEMMs whose results are added in f64 in
//! map order. Every split depends on the shapes only, so the bits do not depend on the
//! thread count. Columns, per-map products and sums live in reused per-thread buffers.

use core::cell::Cell;

use cim_spec::backend::{Conv, ConvTransposeArgs, Elementwise, GemmArgs, XcorrArgs};
use cim_spec::error::HostError;

use crate::Cpu;
use crate::elementwise::{COLS, GRAIN};
use crate::gemm;
use crate::par::{Home, Lease, for_chunk_pairs, for_chunks, multiversion, rows_per_task};

thread_local! {
    /// The transposed convolution's columns (forward) or their gradient (backward).
    static COLUMNS: Home<f32> = const { Cell::new(Vec::new()) };
    /// A block of per-map weight-gradient products of the transposed convolution.
    static MAP_PRODUCTS: Home<f32> = const { Cell::new(Vec::new()) };
    /// Their f64 sum over the maps.
    static WEIGHT_SUMS: Home<f64> = const { Cell::new(Vec::new()) };
}

/// Maps whose weight-gradient products are computed at once (bounds the scratch to
/// this many `C_in x C_out k k` matrices).
const WEIGHT_GRAD_MAPS: usize = 16;

multiversion! {
    /// `acc[c] += a[c] * b[c]` (the correlation's per-channel products, f32).
    fn mul_add(acc: &mut [f32], a: &[f32], b: &[f32]) {
        for ((s, &x), &y) in acc.iter_mut().zip(a).zip(b) {
            *s += x * y;
        }
    }
}

multiversion! {
    /// `acc[c] += a[c] * b[c]` with the products and the sum in f64 (long sums).
    fn mul_add_f64(acc: &mut [f64], a: &[f32], b: &[f32]) {
        for ((s, &x), &y) in acc.iter_mut().zip(a).zip(b) {
            *s += f64::from(x) * f64::from(y);
        }
    }
}

/// In-map source row of output `i` at tap `u` with `pad` leading zero rows.
#[inline]
fn tap(i: usize, u: usize, pad: usize, len: usize) -> Option<usize> {
    (i + u).checked_sub(pad).filter(|&y| y < len)
}

/// The (input index, kernel tap) pairs that reach output `o` along one axis of a
/// transposed convolution over `inp` inputs (`o = i s - p + k`), in increasing input
/// order.
fn deconv_taps(
    o: usize,
    inp: usize,
    a: &ConvTransposeArgs,
) -> impl Iterator<Item = (usize, usize)> {
    let reach = o + a.padding;
    let first = (reach + 1).saturating_sub(a.kernel).div_ceil(a.stride);
    (first..inp.min(reach / a.stride + 1)).map(move |i| (i, reach - i * a.stride))
}

impl Conv for Cpu {
    fn depthwise_xcorr_forward(
        &self,
        out: &mut [f32],
        x: &[f32],
        t: &[f32],
        a: &XcorrArgs,
    ) -> Result<(), HostError> {
        let (h, w, c) = (a.height, a.width, a.channels);
        let (kh, kw) = (a.kernel_h, a.kernel_w);
        let (map, kernel) = ((1 + h * w) * c, (1 + kh * kw) * c);
        debug_assert_eq!(x.len(), a.batch * map);
        debug_assert_eq!(t.len(), a.batch * kernel);
        if out.is_empty() {
            return Ok(());
        }
        let (ph, pw) = (a.pad_h(), a.pad_w());
        let per = rows_per_task(map * kh * kw, GRAIN);
        self.run_chunked(out.len(), per * map, || {
            for_chunks(out, per * map, |ci, chunk| {
                for (m, o) in chunk.chunks_exact_mut(map).enumerate() {
                    let n = ci * per + m;
                    let (xm, tm) = (&x[n * map..(n + 1) * map], &t[n * kernel..(n + 1) * kernel]);
                    let (head, pixels) = o.split_at_mut(c);
                    head.fill(0.0);
                    for (p, acc) in pixels.chunks_exact_mut(c).enumerate() {
                        let (i, j) = (p / w, p % w);
                        acc.fill(0.0);
                        for u in 0..kh {
                            let Some(y) = tap(i, u, ph, h) else { continue };
                            for v in 0..kw {
                                let Some(xx) = tap(j, v, pw, w) else { continue };
                                let src = (1 + y * w + xx) * c;
                                let ker = (1 + u * kw + v) * c;
                                mul_add(acc, &xm[src..src + c], &tm[ker..ker + c]);
                            }
                        }
                        acc.iter_mut().for_each(|s| *s *= a.scale);
                    }
                }
            });
        });
        Ok(())
    }

    fn depthwise_xcorr_backward(
        &self,
        dx: &mut [f32],
        dt: &mut [f32],
        dout: &[f32],
        x: &[f32],
        t: &[f32],
        a: &XcorrArgs,
    ) -> Result<(), HostError> {
        let (h, w, c) = (a.height, a.width, a.channels);
        let (kh, kw) = (a.kernel_h, a.kernel_w);
        let (map, kernel) = ((1 + h * w) * c, (1 + kh * kw) * c);
        debug_assert_eq!(dout.len(), a.batch * map);
        if dx.is_empty() {
            return Ok(());
        }
        let (ph, pw) = (a.pad_h(), a.pad_w());
        // Both gradients cost about one forward each.
        let per = rows_per_task(2 * map * kh * kw, GRAIN);
        let work = |n0: usize, dxc: &mut [f32], dtc: &mut [f32]| {
            for (m, (dxm, dtm)) in dxc
                .chunks_exact_mut(map)
                .zip(dtc.chunks_exact_mut(kernel))
                .enumerate()
            {
                let n = n0 + m;
                let xm = &x[n * map..(n + 1) * map];
                let gm = &dout[n * map..(n + 1) * map];
                let tm = &t[n * kernel..(n + 1) * kernel];
                // dx: input (y, xx) was read by output (y - u + ph, xx - v + pw) at (u, v).
                let (head, pixels) = dxm.split_at_mut(c);
                head.fill(0.0);
                for (p, acc) in pixels.chunks_exact_mut(c).enumerate() {
                    let (y, xx) = (p / w, p % w);
                    acc.fill(0.0);
                    for u in 0..kh {
                        let Some(i) = (y + ph).checked_sub(u).filter(|&i| i < h) else {
                            continue;
                        };
                        for v in 0..kw {
                            let Some(j) = (xx + pw).checked_sub(v).filter(|&j| j < w) else {
                                continue;
                            };
                            let g = (1 + i * w + j) * c;
                            let ker = (1 + u * kw + v) * c;
                            mul_add(acc, &gm[g..g + c], &tm[ker..ker + c]);
                        }
                    }
                    acc.iter_mut().for_each(|s| *s *= a.scale);
                }
                // dt: tap (u, v) carried input (i + u - ph, j + v - pw) to output (i, j);
                // a sum over the whole map, in f64 stack accumulators for a block of
                // channels at a time.
                let (head, taps) = dtm.split_at_mut(c);
                head.fill(0.0);
                for (q, out) in taps.chunks_exact_mut(c).enumerate() {
                    let (u, v) = (q / kw, q % kw);
                    for (blk, out) in out.chunks_mut(COLS).enumerate() {
                        let mut sums = [0.0f64; COLS];
                        let (sums, lo) = (&mut sums[..out.len()], blk * COLS);
                        for i in 0..h {
                            let Some(y) = tap(i, u, ph, h) else { continue };
                            for j in 0..w {
                                let Some(xx) = tap(j, v, pw, w) else { continue };
                                let g = (1 + i * w + j) * c + lo;
                                let src = (1 + y * w + xx) * c + lo;
                                let n = sums.len();
                                mul_add_f64(sums, &gm[g..g + n], &xm[src..src + n]);
                            }
                        }
                        let scale = f64::from(a.scale);
                        out.iter_mut()
                            .zip(sums.iter())
                            .for_each(|(o, &s)| *o = (scale * s) as f32);
                    }
                }
            }
        };
        self.run_chunked(dx.len(), per * map, || {
            for_chunk_pairs(dx, dt, (map, kernel), per, work);
        });
        Ok(())
    }

    fn conv_transpose_forward(
        &self,
        out: &mut [f32],
        x: &[f32],
        weight: &[f32],
        bias: &[f32],
        a: &ConvTransposeArgs,
    ) -> Result<(), HostError> {
        let (h, w, ci, co, k) = (a.height, a.width, a.in_channels, a.out_channels, a.kernel);
        let (oh, ow) = (a.out_height(), a.out_width());
        let (hw, ck) = (h * w, co * k * k);
        if out.is_empty() {
            return Ok(());
        }
        // Columns: cols[n, pixel, (o, ky, kx)] = sum_c x[n, 1 + pixel, c] weight[c, (o, ky, kx)];
        // the view from token 1 of map 0 with a stride of one token map skips the class
        // tokens.
        // Every element is written by the product (beta 0).
        let mut cols = Lease::new(&COLUMNS, a.batch * hw * ck);
        let args = GemmArgs {
            batch: a.batch,
            m: hw,
            n: ck,
            k: ci,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
            stride_a: (1 + hw) * ci,
            stride_b: 0,
            stride_c: hw * ck,
        };
        let xs = &x[ci..];
        gemm::check(cols.len(), xs.len(), weight.len(), &args)?;
        let threads = self.threads();
        let plane = oh * ow;
        let per = rows_per_task(co * plane * 4, GRAIN);
        self.run(|| {
            gemm::gemm(threads, &mut cols, xs, weight, &args);
            for_chunks(out, per * co * plane, |chunk_i, chunk| {
                for (m, om) in chunk.chunks_exact_mut(co * plane).enumerate() {
                    let cm = &cols[(chunk_i * per + m) * hw * ck..][..hw * ck];
                    for (o, op) in om.chunks_exact_mut(plane).enumerate() {
                        for (oy, orow) in op.chunks_exact_mut(ow).enumerate() {
                            for (ox, v) in orow.iter_mut().enumerate() {
                                let mut s = 0.0f32;
                                for (iy, ky) in deconv_taps(oy, h, a) {
                                    for (ix, kx) in deconv_taps(ox, w, a) {
                                        s += cm[(iy * w + ix) * ck + (o * k + ky) * k + kx];
                                    }
                                }
                                *v = bias[o] + s;
                            }
                        }
                    }
                }
            });
        });
        Ok(())
    }

    fn conv_transpose_backward(
        &self,
        dx: &mut [f32],
        dweight: &mut [f32],
        dbias: &mut [f32],
        dout: &[f32],
        x: &[f32],
        weight: &[f32],
        a: &ConvTransposeArgs,
    ) -> Result<(), HostError> {
        let (h, w, ci, co, k) = (a.height, a.width, a.in_channels, a.out_channels, a.kernel);
        let (oh, ow) = (a.out_height(), a.out_width());
        let (hw, ck, plane) = (h * w, co * k * k, oh * ow);
        let tokens = (1 + hw) * ci;
        if a.batch == 0 {
            return Ok(());
        }
        // im2col of the output gradient: dcols[n, (iy, ix), (o, ky, kx)] is the gradient
        // of the output pixel that tap (ky, kx) of input (iy, ix) wrote (0 if cut off).
        // Every element is written by the gather below.
        let mut dcols = Lease::new(&COLUMNS, a.batch * hw * ck);
        let target = |i: usize, kk: usize, len: usize| {
            (i * a.stride + kk)
                .checked_sub(a.padding)
                .filter(|&o| o < len)
        };
        let per = rows_per_task(hw * ck, GRAIN);
        let threads = self.threads();
        self.run(|| {
            for_chunks(&mut dcols, per * hw * ck, |chunk_i, chunk| {
                for (m, dm) in chunk.chunks_exact_mut(hw * ck).enumerate() {
                    let g = &dout[(chunk_i * per + m) * co * plane..][..co * plane];
                    for (p, row) in dm.chunks_exact_mut(ck).enumerate() {
                        let (iy, ix) = (p / w, p % w);
                        for (q, v) in row.iter_mut().enumerate() {
                            let (o, ky, kx) = (q / (k * k), (q / k) % k, q % k);
                            *v = match (target(iy, ky, oh), target(ix, kx, ow)) {
                                (Some(oy), Some(ox)) => g[o * plane + oy * ow + ox],
                                _ => 0.0,
                            };
                        }
                    }
                }
            });
        });
        // dx[n, 1 + pixel, :] = dcols[n, pixel, :] weight^T (weight stored [C_in, C_out k k]).
        let dx_args = GemmArgs {
            batch: a.batch,
            m: hw,
            n: ci,
            k: ck,
            trans_a: false,
            trans_b: true,
            alpha: 1.0,
            beta: 0.0,
            stride_a: hw * ck,
            stride_b: 0,
            stride_c: tokens,
        };
        let dxs = &mut dx[ci..];
        gemm::check(dxs.len(), dcols.len(), weight.len(), &dx_args)?;
        self.run(|| gemm::gemm(threads, dxs, &dcols, weight, &dx_args));
        for n in 0..a.batch {
            dx[n * tokens..n * tokens + ci].fill(0.0);
        }
        // dweight[c, (o, ky, kx)] += sum_n sum_pixel x[n, 1 + pixel, c] dcols[n, pixel, ...]:
        // per-map products (x's patch rows are the `[k, m]` operand, read transposed) in
        // blocks of WEIGHT_GRAD_MAPS maps, added in f64 in map order.
        let size = ci * ck;
        let mut total = Lease::new(&WEIGHT_SUMS, size);
        total.fill(0.0);
        // Every element is written by the products (beta 0).
        let mut scratch = Lease::new(&MAP_PRODUCTS, WEIGHT_GRAD_MAPS.min(a.batch) * size);
        for n0 in (0..a.batch).step_by(WEIGHT_GRAD_MAPS) {
            let maps = WEIGHT_GRAD_MAPS.min(a.batch - n0);
            let args = GemmArgs {
                batch: maps,
                m: ci,
                n: ck,
                k: hw,
                trans_a: true,
                trans_b: false,
                alpha: 1.0,
                beta: 0.0,
                stride_a: tokens,
                stride_b: hw * ck,
                stride_c: size,
            };
            let xa = &x[n0 * tokens + ci..];
            let db = &dcols[n0 * hw * ck..];
            let sc = &mut scratch[..maps * size];
            gemm::check(sc.len(), xa.len(), db.len(), &args)?;
            self.run(|| gemm::gemm(threads, sc, xa, db, &args));
            for m in sc.chunks_exact(size) {
                total
                    .iter_mut()
                    .zip(m)
                    .for_each(|(t, &v)| *t += f64::from(v));
            }
        }
        dweight
            .iter_mut()
            .zip(total.iter())
            .for_each(|(d, &s)| *d = (f64::from(*d) + s) as f32);
        self.sum_broadcast(dbias, dout, a.batch, co, plane)
    }
}
