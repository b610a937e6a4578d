//! Element-wise and broadcast ops (residual adds, biases, position embeddings, the
//! decoder's repeat, GELU), split into fixed-size chunks on the pool.
//!
//! Reductions (`sum_broadcast`, `repeat_backward`) accumulate in f64; `sum_broadcast`
//! sums fixed-size blocks of rows into per-block partials (in a reused per-thread
//! buffer) that are then added in block order, so its bits do not depend on the thread
//! count.

use core::cell::Cell;

use cim_spec::backend::Elementwise;
use cim_spec::error::HostError;

use crate::Cpu;
use crate::math;
use crate::par::{Home, Lease, for_chunks, multiversion, rows_per_task};

thread_local! {
    /// Per-block partial sums of [`column_sums`].
    static PARTIALS: Home<f64> = const { Cell::new(Vec::new()) };
}

/// Elements per task for cheap element-wise work.
pub(crate) const GRAIN: usize = 1 << 15;
/// Elements per task for GELU (about 20x the work per element of an add).
const GELU_GRAIN: usize = 1 << 13;
/// Input elements summed by one task of a column reduction.
pub(crate) const REDUCE_GRAIN: usize = 1 << 16;
/// Most blocks a column reduction is cut into (bounds its scratch of partial sums).
pub(crate) const MAX_REDUCE_BLOCKS: usize = 32;
/// Columns summed at once with f64 accumulators on the stack.
pub(crate) const COLS: usize = 256;

/// Rows per block of a column reduction over `rows` rows of `row_cost` elements: about
/// `REDUCE_GRAIN` elements, and at most `MAX_REDUCE_BLOCKS` blocks. Depends on the shape
/// only, so the summation order does too.
pub(crate) fn reduce_block_rows(rows: usize, row_cost: usize) -> usize {
    rows_per_task(row_cost, REDUCE_GRAIN).max(rows.div_ceil(MAX_REDUCE_BLOCKS))
}

/// Elements per step of the GELU loops: several vectors' worth, so that the long
/// dependency chains of independent elements overlap.
const GELU_UNROLL: usize = 16;

multiversion! {
    fn gelu_kernel(out: &mut [f32], x: &[f32]) {
        let (oc, ot) = out.as_chunks_mut::<GELU_UNROLL>();
        let (xc, xt) = x.as_chunks::<GELU_UNROLL>();
        for (o, v) in oc.iter_mut().zip(xc) {
            for j in 0..GELU_UNROLL {
                o[j] = math::gelu(v[j]);
            }
        }
        for (o, &v) in ot.iter_mut().zip(xt) {
            *o = math::gelu(v);
        }
    }
}

multiversion! {
    fn gelu_backward_kernel(d: &mut [f32], x: &[f32]) {
        let (dc, dt) = d.as_chunks_mut::<GELU_UNROLL>();
        let (xc, xt) = x.as_chunks::<GELU_UNROLL>();
        for (g, v) in dc.iter_mut().zip(xc) {
            for j in 0..GELU_UNROLL {
                g[j] *= math::gelu_grad(v[j]);
            }
        }
        for (g, &v) in dt.iter_mut().zip(xt) {
            *g *= math::gelu_grad(v);
        }
    }
}

/// `acc[j] += row[j]` in f64.
#[inline]
pub(crate) fn accumulate_f64(acc: &mut [f64], row: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(row) {
        *a += f64::from(v);
    }
}

/// Column sums of a `[rows, width]` problem in f64, handed to `finish`: `body(rows,
/// partial)` adds the contribution of a range of rows into `partial` (`width` zeros on
/// entry). Rows are cut into fixed blocks of about `REDUCE_GRAIN` elements; blocks run in
/// parallel and their partials (at most `MAX_REDUCE_BLOCKS` of them) are added in block
/// order. Must run in the pool.
pub(crate) fn column_sums<F>(
    rows: usize,
    width: usize,
    row_cost: usize,
    body: F,
    finish: impl FnOnce(&[f64]),
) where
    F: Fn(core::ops::Range<usize>, &mut [f64]) + Sync + Send,
{
    if width == 0 {
        return finish(&[]);
    }
    let per_block = reduce_block_rows(rows, row_cost).max(1);
    let blocks = rows.div_ceil(per_block).max(1);
    let mut partial = Lease::new(&PARTIALS, blocks * width);
    partial.fill(0.0);
    for_chunks(&mut partial, width, |bi, p| {
        let lo = bi * per_block;
        body(lo..(lo + per_block).min(rows), p);
    });
    let (total, rest) = partial.split_at_mut(width);
    for block in rest.chunks_exact(width) {
        for (t, &v) in total.iter_mut().zip(block) {
            *t += v;
        }
    }
    finish(total);
}

impl Elementwise for Cpu {
    fn add_assign(&self, x: &mut [f32], y: &[f32]) -> Result<(), HostError> {
        assert_eq!(x.len(), y.len(), "add_assign: lengths differ");
        self.run_chunked(x.len(), GRAIN, || {
            for_chunks(x, GRAIN, |i, c| {
                let y = &y[i * GRAIN..i * GRAIN + c.len()];
                c.iter_mut().zip(y).for_each(|(a, &b)| *a += b);
            });
        });
        Ok(())
    }

    fn scale(&self, x: &mut [f32], alpha: f32) -> Result<(), HostError> {
        self.run_chunked(x.len(), GRAIN, || {
            for_chunks(x, GRAIN, |_, c| c.iter_mut().for_each(|a| *a *= alpha));
        });
        Ok(())
    }

    fn add_broadcast(
        &self,
        out: &mut [f32],
        v: &[f32],
        outer: usize,
        len: usize,
        inner: usize,
    ) -> Result<(), HostError> {
        debug_assert_eq!(out.len(), outer * len * inner);
        if out.is_empty() {
            return Ok(());
        }
        let inner = inner.max(1);
        // Chunks hold whole segments of `inner` elements; segment s adds v[s % len].
        let segs = (GRAIN / inner).max(1);
        self.run_chunked(out.len(), segs * inner, || {
            for_chunks(out, segs * inner, |ci, c| {
                let first = ci * segs;
                if inner == 1 {
                    let mut l = first % len;
                    let mut rest = c;
                    while !rest.is_empty() {
                        let take = (len - l).min(rest.len());
                        let (head, tail) = rest.split_at_mut(take);
                        head.iter_mut()
                            .zip(&v[l..l + take])
                            .for_each(|(a, &b)| *a += b);
                        rest = tail;
                        l = 0;
                    }
                } else {
                    for (s, seg) in c.chunks_mut(inner).enumerate() {
                        let b = v[(first + s) % len];
                        seg.iter_mut().for_each(|a| *a += b);
                    }
                }
            });
        });
        Ok(())
    }

    fn sum_broadcast(
        &self,
        dv: &mut [f32],
        dout: &[f32],
        outer: usize,
        len: usize,
        inner: usize,
    ) -> Result<(), HostError> {
        debug_assert_eq!(dout.len(), outer * len * inner);
        debug_assert_eq!(dv.len(), len);
        if len == 0 {
            return Ok(());
        }
        let body = |rows: core::ops::Range<usize>, acc: &mut [f64]| {
            for o in rows {
                let block = &dout[o * len * inner..(o + 1) * len * inner];
                if inner == 1 {
                    accumulate_f64(acc, block);
                } else {
                    for (a, seg) in acc.iter_mut().zip(block.chunks_exact(inner)) {
                        *a += seg.iter().map(|&x| f64::from(x)).sum::<f64>();
                    }
                }
            }
        };
        self.run(|| {
            column_sums(outer, len, len * inner, body, |sums| {
                for (d, &s) in dv.iter_mut().zip(sums) {
                    *d = (f64::from(*d) + s) as f32;
                }
            })
        });
        Ok(())
    }

    fn repeat_forward(
        &self,
        out: &mut [f32],
        x: &[f32],
        batch: usize,
        copies: usize,
        len: usize,
    ) -> Result<(), HostError> {
        debug_assert_eq!(out.len(), batch * copies * len);
        if out.is_empty() {
            return Ok(());
        }
        let rows = rows_per_task(len, GRAIN);
        self.run_chunked(out.len(), rows * len, || {
            for_chunks(out, rows * len, |ci, c| {
                for (r, row) in c.chunks_exact_mut(len).enumerate() {
                    let b = (ci * rows + r) / copies;
                    row.copy_from_slice(&x[b * len..(b + 1) * len]);
                }
            });
        });
        Ok(())
    }

    fn repeat_backward(
        &self,
        dx: &mut [f32],
        dout: &[f32],
        batch: usize,
        copies: usize,
        len: usize,
    ) -> Result<(), HostError> {
        debug_assert_eq!(dx.len(), batch * len);
        if dx.is_empty() {
            return Ok(());
        }
        let rows = rows_per_task(len * copies.max(1), GRAIN);
        self.run_chunked(dx.len(), rows * len, || {
            for_chunks(dx, rows * len, |ci, c| {
                for (r, row) in c.chunks_exact_mut(len).enumerate() {
                    let b = ci * rows + r;
                    let src = &dout[b * copies * len..(b + 1) * copies * len];
                    for (blk, out) in row.chunks_mut(COLS).enumerate() {
                        let mut acc = [0.0f64; COLS];
                        let acc = &mut acc[..out.len()];
                        for k in 0..copies {
                            let lo = k * len + blk * COLS;
                            accumulate_f64(acc, &src[lo..lo + out.len()]);
                        }
                        out.iter_mut()
                            .zip(acc.iter())
                            .for_each(|(o, &a)| *o = a as f32);
                    }
                }
            });
        });
        Ok(())
    }

    fn gelu_forward(&self, out: &mut [f32], x: &[f32]) -> Result<(), HostError> {
        assert_eq!(out.len(), x.len(), "gelu_forward: lengths differ");
        self.run_chunked(out.len(), GELU_GRAIN, || {
            for_chunks(out, GELU_GRAIN, |i, c| {
                gelu_kernel(c, &x[i * GELU_GRAIN..i * GELU_GRAIN + c.len()]);
            });
        });
        Ok(())
    }

    fn gelu_backward(&self, d: &mut [f32], x: &[f32]) -> Result<(), HostError> {
        assert_eq!(d.len(), x.len(), "gelu_backward: lengths differ");
        self.run_chunked(d.len(), GELU_GRAIN, || {
            for_chunks(d, GELU_GRAIN, |i, c| {
                gelu_backward_kernel(c, &x[i * GELU_GRAIN..i * GELU_GRAIN + c.len()]);
            });
        });
        Ok(())
    }
}
