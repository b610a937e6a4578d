//! Token assembly and resampling: im2col for the patch embedding, class token, mean
//! pooling and bilinear upsampling (S3, S4, S10).
//!
//! Every op but `prepend_cls_backward`'s class-token sum is split by output rows or
//! planes, each owned by one task; sums (class token, pooling, the upsampling's
//! transpose) accumulate in f64 in a fixed order. The upsampling's taps and its
//! transpose's accumulators live in reused per-thread buffers.

use core::cell::Cell;

use cim_spec::backend::{PatchArgs, Tokens};
use cim_spec::error::HostError;

use crate::Cpu;
use crate::elementwise::{COLS, GRAIN, accumulate_f64};
use crate::par::{Home, Lease, for_chunks, for_chunks_with, rows_per_task};

thread_local! {
    /// The upsampling's column taps, then its row taps.
    static TAPS: Home<Tap> = const { Cell::new(Vec::new()) };
    /// Each task's f64 plane and line of the upsampling's transpose.
    static PLANE: Home<f64> = const { Cell::new(Vec::new()) };
}

/// One output coordinate of an `align_corners = true` resampling: the two source
/// indices and the weight of the second.
#[derive(Clone, Copy, Default)]
struct Tap {
    lo: usize,
    hi: usize,
    w: f32,
}

/// Writes the taps of the `out.len()` output positions of an axis with `inp` source
/// positions. The source coordinate `i (inp - 1) / (out - 1)` is formed in f64 so that
/// only the weight's final rounding to f32 remains.
fn taps(out: &mut [Tap], inp: usize) {
    let n = out.len();
    for (i, tap) in out.iter_mut().enumerate() {
        let src = if n > 1 {
            (i * (inp - 1)) as f64 / (n - 1) as f64
        } else {
            0.0
        };
        let lo = (src.floor() as usize).min(inp - 1);
        let hi = (lo + 1).min(inp - 1);
        *tap = Tap {
            lo,
            hi,
            w: (src - lo as f64) as f32,
        };
    }
}

/// The column taps (`out_w`) and row taps (`out_h`) of a resampling, leased together.
fn leased_taps(in_h: usize, in_w: usize, out_h: usize, out_w: usize) -> Lease<Tap> {
    let mut all = Lease::new(&TAPS, out_w + out_h);
    let (cols, rows) = all.split_at_mut(out_w);
    taps(cols, in_w);
    taps(rows, in_h);
    all
}

impl Tokens for Cpu {
    fn patchify(&self, out: &mut [f32], img: &[f32], args: &PatchArgs) -> Result<(), HostError> {
        let PatchArgs {
            batch,
            channels,
            height,
            width,
            patch: p,
        } = *args;
        debug_assert_eq!(img.len(), batch * channels * height * width);
        if out.is_empty() {
            return Ok(());
        }
        let (gh, gw) = (height / p, width / p);
        let per_patch = channels * p * p;
        // One unit of work: one row of patches of one image.
        let unit = gw * per_patch;
        let units = rows_per_task(unit, GRAIN);
        self.run_chunked(out.len(), units * unit, || {
            for_chunks(out, units * unit, |ci, chunk| {
                for (u, row) in chunk.chunks_exact_mut(unit).enumerate() {
                    let (b, gy) = ((ci * units + u) / gh, (ci * units + u) % gh);
                    for (gx, dst) in row.chunks_exact_mut(per_patch).enumerate() {
                        for c in 0..channels {
                            for ky in 0..p {
                                let src =
                                    ((b * channels + c) * height + gy * p + ky) * width + gx * p;
                                let at = (c * p + ky) * p;
                                dst[at..at + p].copy_from_slice(&img[src..src + p]);
                            }
                        }
                    }
                }
            });
        });
        Ok(())
    }

    fn prepend_cls_forward(
        &self,
        out: &mut [f32],
        patches: &[f32],
        cls: &[f32],
        batch: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<(), HostError> {
        debug_assert_eq!(out.len(), batch * (tokens + 1) * dim);
        if out.is_empty() {
            return Ok(());
        }
        let seq = (tokens + 1) * dim;
        let per = rows_per_task(seq, GRAIN);
        self.run_chunked(out.len(), per * seq, || {
            for_chunks(out, per * seq, |ci, chunk| {
                for (i, s) in chunk.chunks_exact_mut(seq).enumerate() {
                    let b = ci * per + i;
                    let (head, rest) = s.split_at_mut(dim);
                    head.copy_from_slice(cls);
                    rest.copy_from_slice(&patches[b * tokens * dim..(b + 1) * tokens * dim]);
                }
            });
        });
        Ok(())
    }

    fn prepend_cls_backward(
        &self,
        dpatches: Option<&mut [f32]>,
        dcls: &mut [f32],
        dout: &[f32],
        batch: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<(), HostError> {
        debug_assert_eq!(dout.len(), batch * (tokens + 1) * dim);
        let seq = (tokens + 1) * dim;
        for (blk, d) in dcls.chunks_mut(COLS).enumerate() {
            let mut acc = [0.0f64; COLS];
            let acc = &mut acc[..d.len()];
            for b in 0..batch {
                let lo = b * seq + blk * COLS;
                accumulate_f64(acc, &dout[lo..lo + d.len()]);
            }
            d.iter_mut()
                .zip(acc.iter())
                .for_each(|(x, &s)| *x = (f64::from(*x) + s) as f32);
        }
        if let Some(dp) = dpatches
            && !dp.is_empty()
        {
            let row = tokens * dim;
            let per = rows_per_task(row, GRAIN);
            self.run_chunked(dp.len(), per * row, || {
                for_chunks(dp, per * row, |ci, chunk| {
                    for (i, r) in chunk.chunks_exact_mut(row).enumerate() {
                        let b = ci * per + i;
                        r.copy_from_slice(&dout[b * seq + dim..(b + 1) * seq]);
                    }
                });
            });
        }
        Ok(())
    }

    fn mean_pool_forward(
        &self,
        out: &mut [f32],
        x: &[f32],
        batch: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<(), HostError> {
        debug_assert_eq!(x.len(), batch * (tokens + 1) * dim);
        if out.is_empty() {
            return Ok(());
        }
        let seq = (tokens + 1) * dim;
        let per = rows_per_task(seq, GRAIN);
        self.run_chunked(out.len(), per * dim, || {
            for_chunks(out, per * dim, |ci, chunk| {
                for (i, o) in chunk.chunks_exact_mut(dim).enumerate() {
                    let b = ci * per + i;
                    for (blk, ob) in o.chunks_mut(COLS).enumerate() {
                        let mut acc = [0.0f64; COLS];
                        let acc = &mut acc[..ob.len()];
                        for t in 1..=tokens {
                            let lo = b * seq + t * dim + blk * COLS;
                            accumulate_f64(acc, &x[lo..lo + ob.len()]);
                        }
                        ob.iter_mut()
                            .zip(acc.iter())
                            .for_each(|(v, &s)| *v = (s / tokens as f64) as f32);
                    }
                }
            });
        });
        Ok(())
    }

    fn mean_pool_backward(
        &self,
        dx: &mut [f32],
        dout: &[f32],
        batch: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<(), HostError> {
        debug_assert_eq!(dx.len(), batch * (tokens + 1) * dim);
        if dx.is_empty() {
            return Ok(());
        }
        let seq = (tokens + 1) * dim;
        let per = rows_per_task(seq, GRAIN);
        let count = tokens as f32;
        self.run_chunked(dx.len(), per * seq, || {
            for_chunks(dx, per * seq, |ci, chunk| {
                for (i, s) in chunk.chunks_exact_mut(seq).enumerate() {
                    let b = ci * per + i;
                    let g = &dout[b * dim..(b + 1) * dim];
                    let (head, rest) = s.split_at_mut(dim);
                    head.fill(0.0);
                    for r in rest.chunks_exact_mut(dim) {
                        r.iter_mut().zip(g).for_each(|(v, &d)| *v = d / count);
                    }
                }
            });
        });
        Ok(())
    }

    fn upsample_bilinear_forward(
        &self,
        out: &mut [f32],
        x: &[f32],
        planes: usize,
        in_h: usize,
        in_w: usize,
        out_h: usize,
        out_w: usize,
    ) -> Result<(), HostError> {
        debug_assert_eq!(x.len(), planes * in_h * in_w);
        if out.is_empty() {
            return Ok(());
        }
        let all = leased_taps(in_h, in_w, out_h, out_w);
        let (cols, rows) = all.split_at(out_w);
        let plane = out_h * out_w;
        let per = rows_per_task(plane, GRAIN);
        self.run_chunked(out.len(), per * plane, || {
            for_chunks(out, per * plane, |ci, chunk| {
                for (i, o) in chunk.chunks_exact_mut(plane).enumerate() {
                    let src = &x[(ci * per + i) * in_h * in_w..][..in_h * in_w];
                    for (orow, ty) in o.chunks_exact_mut(out_w).zip(rows) {
                        let top = &src[ty.lo * in_w..(ty.lo + 1) * in_w];
                        let bot = &src[ty.hi * in_w..(ty.hi + 1) * in_w];
                        let wy = ty.w;
                        for (v, tx) in orow.iter_mut().zip(cols) {
                            let t = (1.0 - tx.w) * top[tx.lo] + tx.w * top[tx.hi];
                            let b = (1.0 - tx.w) * bot[tx.lo] + tx.w * bot[tx.hi];
                            *v = (1.0 - wy) * t + wy * b;
                        }
                    }
                }
            });
        });
        Ok(())
    }

    fn upsample_bilinear_backward(
        &self,
        dx: &mut [f32],
        dout: &[f32],
        planes: usize,
        in_h: usize,
        in_w: usize,
        out_h: usize,
        out_w: usize,
    ) -> Result<(), HostError> {
        debug_assert_eq!(dout.len(), planes * out_h * out_w);
        if dx.is_empty() {
            return Ok(());
        }
        let all = leased_taps(in_h, in_w, out_h, out_w);
        let (cols, rows) = all.split_at(out_w);
        let plane = in_h * in_w;
        let per = rows_per_task(out_h * out_w, GRAIN);
        self.run_chunked(dx.len(), per * plane, || {
            for_chunks_with(
                dx,
                per * plane,
                &PLANE,
                plane + in_w,
                |ci, chunk, scratch| {
                    // Separable transpose: each output row is first folded onto the input
                    // columns (`line`), then spread onto its two input rows (`acc`), all in
                    // f64 and in output order.
                    let (acc, line) = scratch.split_at_mut(plane);
                    for (i, d) in chunk.chunks_exact_mut(plane).enumerate() {
                        let g = &dout[(ci * per + i) * out_h * out_w..][..out_h * out_w];
                        acc.fill(0.0);
                        for (grow, ty) in g.chunks_exact(out_w).zip(rows) {
                            line.fill(0.0);
                            for (&v, tx) in grow.iter().zip(cols) {
                                let v = f64::from(v);
                                let w = f64::from(tx.w);
                                line[tx.lo] += (1.0 - w) * v;
                                line[tx.hi] += w * v;
                            }
                            let wy = f64::from(ty.w);
                            for (a, &l) in acc[ty.lo * in_w..(ty.lo + 1) * in_w]
                                .iter_mut()
                                .zip(line.iter())
                            {
                                *a += (1.0 - wy) * l;
                            }
                            for (a, &l) in acc[ty.hi * in_w..(ty.hi + 1) * in_w]
                                .iter_mut()
                                .zip(line.iter())
                            {
                                *a += wy * l;
                            }
                        }
                        d.iter_mut()
                            .zip(acc.iter())
                            .for_each(|(o, &a)| *o = a as f32);
                    }
                },
            );
        });
        Ok(())
    }
}
