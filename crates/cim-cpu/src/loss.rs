//! The S5 map losses, one task per block of maps, using cim-spec's per-pixel formulas.
//!
//! The default loss (two-class softmax cross-entropy) has a vectorised f32 path (see
//! [`crate::math::softmax_ce_margin`]: the spec's quantities in a form that keeps a few
//! ulp in f32). The other kinds, maps with non-finite logits, and calls in which every
//! pixel is saturated use the spec's formulas in f64: in f32 the sigmoid-based gradients
//! lose their relative accuracy where logits saturate (`1 - s` in the MSE and focal
//! derivatives cancels to nothing when `s` rounds to 1), which the normwise tolerance of
//! an all-saturated call does not forgive; f64 costs about 20% more than f32 there
//! because the elementary functions dominate either way. The forward sums each map's
//! pixels in f64 inside one task, keeps the per-map sums, and adds them in map order:
//! the loss has the same bits for any thread count. Per-map results wait in reused
//! per-thread buffers.

use core::cell::Cell;

use crate::Cpu;
use crate::math::softmax_ce_margin;
use crate::par::{Home, Lease, for_chunk_pairs, for_chunks, multiversion};
use cim_spec::backend::{MapLossArgs, MapLossOps};
use cim_spec::error::HostError;
use cim_spec::loss::{
    MapLoss, balanced_weights, bce_pixel, focal_pixel, mse_pixel, softmax_ce_pixel,
};

thread_local! {
    /// Per-map sums of the fast forward (`None`: a logit is not finite).
    static FAST_SUMS: Home<Option<f64>> = const { Cell::new(Vec::new()) };
    /// Per-map sums of the f64 forward.
    static SUMS: Home<f64> = const { Cell::new(Vec::new()) };
    /// Per-map largest wrong-class probability of the fast backward (`None`: a logit is
    /// not finite).
    static TOPS: Home<Option<f32>> = const { Cell::new(Vec::new()) };
}

/// Pixels per step of the vectorised softmax cross-entropy.
const LANES: usize = 16;

/// A call whose mean pixel loss is below this is saturated everywhere: the spec
/// formula's `lse - l_target` in f64 (what the reference computes) is then accurate to
/// only about 1e-16 of the logits per pixel, so the f32 path (accurate to a few ulp of the
/// tiny losses) would disagree with it; such calls take the f64 formula.
const SATURATED_LOSS: f64 = 1e-6;

/// Likewise for the gradient: when no pixel's wrong class has a probability above this,
/// the spec formula's `p_right - 1` (accurate to 1.1e-16 absolute in f64) is compared at
/// the scale of these tiny gradients, and the call takes the f64 formula.
const SATURATED_PROB: f32 = 1e-8;

/// `(loss, p)` of one pixel in f32: `p` is the probability of its wrong class.
#[inline(always)]
fn softmax_ce_fast(l0: f32, l1: f32, t: f32) -> (f32, f32) {
    if t > 0.5 {
        softmax_ce_margin(l0, l1)
    } else {
        softmax_ce_margin(l1, l0)
    }
}

/// 0 when both logits are finite, NaN otherwise (`inf * 0` and `NaN * 0` are NaN): summed
/// over a map, a float flag that keeps the loops in vector registers.
#[inline(always)]
fn nonfinite_flag(l0: f32, l1: f32) -> f32 {
    (l0 - l1) * 0.0
}

multiversion! {
    /// Sum of the f32 softmax cross-entropy over one map's pixels, in f64; `None` when a
    /// logit is not finite. Lane-wise accumulators keep the loop in vector registers.
    fn softmax_ce_sum(l0: &[f32], l1: &[f32], t: &[f32]) -> Option<f64> {
        let (c0, r0) = l0.as_chunks::<LANES>();
        let (c1, r1) = l1.as_chunks::<LANES>();
        let (ct, rt) = t.as_chunks::<LANES>();
        let mut acc = [0.0f64; LANES];
        let mut flag = [0.0f32; LANES];
        // f32 lane sums over blocks of 32 x 16 pixels (at most 32 terms each, within
        // 2e-6 relative), added into f64 lane sums.
        const BLOCK: usize = 32;
        for ((a, b), tt) in c0.chunks(BLOCK).zip(c1.chunks(BLOCK)).zip(ct.chunks(BLOCK)) {
            let mut part = [0.0f32; LANES];
            for ((a, b), tt) in a.iter().zip(b).zip(tt) {
                for j in 0..LANES {
                    part[j] += softmax_ce_fast(a[j], b[j], tt[j]).0;
                    flag[j] += nonfinite_flag(a[j], b[j]);
                }
            }
            for j in 0..LANES {
                acc[j] += f64::from(part[j]);
            }
        }
        let mut total: f64 = acc.iter().sum();
        let mut flag: f32 = flag.iter().sum();
        for ((&a, &b), &tt) in r0.iter().zip(r1).zip(rt) {
            total += f64::from(softmax_ce_fast(a, b, tt).0);
            flag += nonfinite_flag(a, b);
        }
        (flag == 0.0).then_some(total)
    }
}

multiversion! {
    /// `d0, d1 = factor * dloss/dl0, dl1` over one map's pixels in f32; returns the
    /// largest wrong-class probability, or `None` when a logit is not finite.
    fn softmax_ce_grad(d0: &mut [f32], d1: &mut [f32], l0: &[f32], l1: &[f32], t: &[f32], factor: f32) -> Option<f32> {
        let (g0c, g0r) = d0.as_chunks_mut::<LANES>();
        let (g1c, g1r) = d1.as_chunks_mut::<LANES>();
        let (c0, r0) = l0.as_chunks::<LANES>();
        let (c1, r1) = l1.as_chunks::<LANES>();
        let (ct, rt) = t.as_chunks::<LANES>();
        let mut top = [0.0f32; LANES];
        let mut flag = [0.0f32; LANES];
        // Wrong class +p, right class -p (the spec's `p_right - 1` is exactly -p).
        for ((((g0, g1), a), b), tt) in g0c.iter_mut().zip(g1c).zip(c0).zip(c1).zip(ct) {
            for j in 0..LANES {
                let (_, p) = softmax_ce_fast(a[j], b[j], tt[j]);
                let g = if tt[j] > 0.5 { p } else { -p } * factor;
                g0[j] = g;
                g1[j] = -g;
                top[j] = if p > top[j] { p } else { top[j] };
                flag[j] += nonfinite_flag(a[j], b[j]);
            }
        }
        let mut top = top.iter().fold(0.0f32, |m, &p| if p > m { p } else { m });
        let mut flag: f32 = flag.iter().sum();
        for ((((g0, g1), &a), &b), &tt) in g0r.iter_mut().zip(g1r).zip(r0).zip(r1).zip(rt) {
            let (_, p) = softmax_ce_fast(a, b, tt);
            let g = if tt > 0.5 { p } else { -p } * factor;
            *g0 = g;
            *g1 = -g;
            top = if p > top { p } else { top };
            flag += nonfinite_flag(a, b);
        }
        (flag == 0.0).then_some(top)
    }
}

/// Calls `f(pixel, loss, dloss/dlogit per channel)` for every pixel of one map, with
/// `logits` the map's `[C, P]` block and `target` its `[P]` block; evaluated in f64.
#[inline(always)]
fn for_each_pixel(
    kind: MapLoss,
    logits: &[f32],
    target: &[f32],
    mut f: impl FnMut(usize, f64, [f64; 2]),
) {
    let p = target.len();
    let pixels = logits.iter().map(|&z| f64::from(z)).zip(target);
    match kind {
        MapLoss::SoftmaxCrossEntropy => {
            let (l0, l1) = logits.split_at(p);
            for (i, ((&a, &b), &t)) in l0.iter().zip(l1).zip(target).enumerate() {
                let (l, g0, g1) = softmax_ce_pixel(f64::from(a), f64::from(b), t > 0.5);
                f(i, l, [g0, g1]);
            }
        }
        MapLoss::BinaryCrossEntropy => {
            for (i, (z, &t)) in pixels.enumerate() {
                let (l, g) = bce_pixel(z, t > 0.5, 1.0);
                f(i, l, [g, 0.0]);
            }
        }
        MapLoss::BalancedBinaryCrossEntropy => {
            let positives = target.iter().filter(|&&t| t > 0.5).count();
            let (w_in, w_out) = balanced_weights::<f64>(positives, p);
            for (i, (z, &t)) in pixels.enumerate() {
                let inside = t > 0.5;
                let (l, g) = bce_pixel(z, inside, if inside { w_in } else { w_out });
                f(i, l, [g, 0.0]);
            }
        }
        MapLoss::MeanSquaredError => {
            for (i, (z, &t)) in pixels.enumerate() {
                let (l, g) = mse_pixel(z, t > 0.5);
                f(i, l, [g, 0.0]);
            }
        }
        MapLoss::Focal { alpha, gamma } => {
            for (i, (z, &t)) in pixels.enumerate() {
                let (l, g) = focal_pixel(z, t > 0.5, alpha, gamma);
                f(i, l, [g, 0.0]);
            }
        }
    }
}

impl MapLossOps for Cpu {
    fn map_loss_forward(
        &self,
        loss: &mut [f32],
        logits: &[f32],
        target: &[f32],
        args: &MapLossArgs,
    ) -> Result<(), HostError> {
        let (maps, p, ch) = (args.maps, args.pixels, args.kind.channels());
        assert!(logits.len() == maps * ch * p && target.len() == maps * p && loss.len() == 1);
        let map = |n: usize| {
            (
                &logits[n * ch * p..(n + 1) * ch * p],
                &target[n * p..(n + 1) * p],
            )
        };
        let per_task = (1 << 14) / p.max(1) + 1;
        let fast = args.kind == MapLoss::SoftmaxCrossEntropy;
        // Per-map pixel sums, then the sum of the per-map means in map order.
        let mut total = None;
        if fast {
            let mut sums = Lease::new(&FAST_SUMS, maps);
            self.run_chunked(maps, per_task, || {
                for_chunks(&mut sums, per_task, |ci, chunk| {
                    for (i, sum) in chunk.iter_mut().enumerate() {
                        let (m, t) = map(ci * per_task + i);
                        let (l0, l1) = m.split_at(p);
                        *sum = softmax_ce_sum(l0, l1, t);
                    }
                });
            });
            total = sums
                .iter()
                .try_fold(0.0f64, |acc, s| s.map(|s| acc + s / p as f64))
                .filter(|t| maps == 0 || t / maps as f64 >= SATURATED_LOSS);
        }
        let total = total.unwrap_or_else(|| {
            let mut sums = Lease::new(&SUMS, maps);
            self.run_chunked(maps, per_task, || {
                for_chunks(&mut sums, per_task, |ci, chunk| {
                    for (i, sum) in chunk.iter_mut().enumerate() {
                        let (m, t) = map(ci * per_task + i);
                        *sum = 0.0;
                        for_each_pixel(args.kind, m, t, |_, l, _| *sum += l);
                    }
                });
            });
            sums.iter().map(|s| s / p as f64).sum()
        });
        loss[0] = (f64::from(args.scale) * total) as f32;
        Ok(())
    }

    fn map_loss_backward(
        &self,
        dlogits: &mut [f32],
        logits: &[f32],
        target: &[f32],
        args: &MapLossArgs,
    ) -> Result<(), HostError> {
        let (maps, p, ch) = (args.maps, args.pixels, args.kind.channels());
        assert!(logits.len() == maps * ch * p && target.len() == maps * p);
        assert_eq!(dlogits.len(), logits.len());
        if dlogits.is_empty() {
            return Ok(());
        }
        let map = |n: usize| {
            (
                &logits[n * ch * p..(n + 1) * ch * p],
                &target[n * p..(n + 1) * p],
            )
        };
        let per_task = (1 << 14) / p + 1;
        let factor = f64::from(args.scale) / p as f64;
        let len = ch * p;
        if args.kind == MapLoss::SoftmaxCrossEntropy {
            let mut tops = Lease::new(&TOPS, maps);
            self.run_chunked(maps, per_task, || {
                for_chunk_pairs(dlogits, &mut tops, (len, 1), per_task, |n0, d, top| {
                    for (i, (d, top)) in d.chunks_exact_mut(len).zip(top).enumerate() {
                        let (d0, d1) = d.split_at_mut(p);
                        let (m, t) = map(n0 + i);
                        let (l0, l1) = m.split_at(p);
                        *top = softmax_ce_grad(d0, d1, l0, l1, t, factor as f32);
                    }
                });
            });
            let top = tops.iter().try_fold(0.0f32, |acc, t| t.map(|t| acc.max(t)));
            if top.is_some_and(|t| t >= SATURATED_PROB) {
                return Ok(());
            }
        }
        self.run_chunked(maps, per_task, || {
            for_chunks(dlogits, per_task * len, |ci, chunk| {
                for (k, d) in chunk.chunks_exact_mut(len).enumerate() {
                    let (d0, d1) = d.split_at_mut(p);
                    let (m, t) = map(ci * per_task + k);
                    for_each_pixel(args.kind, m, t, |i, _, g| {
                        d0[i] = (factor * g[0]) as f32;
                        if let Some(x) = d1.get_mut(i) {
                            *x = (factor * g[1]) as f32;
                        }
                    });
                }
            });
        });
        Ok(())
    }
}
