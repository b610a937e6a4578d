//! AdamW, the EMA target update, the global gradient norm and clipping (S6, S7).
//!
//! AdamW takes its f32 scalars from `cim_spec::schedule::AdamW::step_scalars` and
//! reproduces `AdamWStep::apply` bit for bit (PyTorch's rounding, fused multiply-adds
//! included) with hardware FMA where the CPU has it. `sum_squares` sums fixed-size
//! chunks in f64 and adds the chunk sums (kept in a reused per-thread buffer) in order,
//! so the norm has the same bits for any thread count.

use core::cell::Cell;

use cim_spec::backend::{AdamWArgs, Optim};
use cim_spec::error::HostError;
use cim_spec::schedule::{AdamW, AdamWStep};
use rayon::prelude::*;

use crate::Cpu;
use crate::elementwise::GRAIN;
use crate::par::{Home, Lease, for_chunks, multiversion};

thread_local! {
    /// Per-chunk sums of `sum_squares`.
    static CHUNK_SUMS: Home<f64> = const { Cell::new(Vec::new()) };
}

/// Elements per chunk of the norm reduction (fixed: it sets the summation order).
const NORM_CHUNK: usize = 1 << 15;

multiversion! {
    /// `AdamWStep::apply` over slices (decayed: with a zero weight decay the factor is
    /// exactly 1, which leaves theta unchanged).
    fn adamw_kernel(theta: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], s: &AdamWStep) {
        let (w, w1) = (s.lerp_weight, s.lerp_weight - 1.0);
        let small = s.lerp_weight.abs() < 0.5;
        for (((t, mm), vv), &gr) in theta.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            let th = *t * s.decay_factor;
            let diff = gr - *mm;
            let m_new = if small { w.mul_add(diff, *mm) } else { w1.mul_add(diff, gr) };
            let v_new = (s.one_minus_beta2 * gr).mul_add(gr, *vv * s.beta2);
            let denom = v_new.sqrt() / s.bias_correction2_sqrt + s.eps;
            *t = th + (s.neg_step_size * m_new) / denom;
            *mm = m_new;
            *vv = v_new;
        }
    }
}

multiversion! {
    /// Sum of squares of one chunk, in f64 with four lanes.
    fn sum_squares_kernel(x: &[f32]) -> f64 {
        let (body, tail) = x.as_chunks::<4>();
        let mut acc = [0.0f64; 4];
        for c in body {
            for j in 0..4 {
                let v = f64::from(c[j]);
                acc[j] += v * v;
            }
        }
        let mut total = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        for &v in tail {
            total += f64::from(v) * f64::from(v);
        }
        total
    }
}

impl Optim for Cpu {
    fn adamw_update(
        &self,
        param: &mut [f32],
        m: &mut [f32],
        v: &mut [f32],
        grad: &[f32],
        args: &AdamWArgs,
    ) -> Result<(), HostError> {
        let n = param.len();
        assert!(
            m.len() == n && v.len() == n && grad.len() == n,
            "adamw: lengths differ"
        );
        let scalars = AdamW {
            lr: args.lr,
            beta1: args.beta1,
            beta2: args.beta2,
            eps: args.eps,
            weight_decay: args.weight_decay,
        }
        .step_scalars(args.step);
        self.run(|| {
            param
                .par_chunks_mut(GRAIN)
                .zip(m.par_chunks_mut(GRAIN))
                .zip(v.par_chunks_mut(GRAIN))
                .zip(grad.par_chunks(GRAIN))
                .for_each(|(((t, mm), vv), g)| adamw_kernel(t, mm, vv, g, &scalars));
        });
        Ok(())
    }

    fn ema_update(
        &self,
        target: &mut [f32],
        online: &[f32],
        momentum: f64,
    ) -> Result<(), HostError> {
        assert_eq!(target.len(), online.len(), "ema: lengths differ");
        // `cim_spec::schedule::ema_scalar`: the release's `target * m + online * (1 - m)`
        // with both factors rounded to f32 from f64, as PyTorch rounds its Python floats.
        let keep = momentum as f32;
        let take = (1.0 - momentum) as f32;
        self.run_chunked(target.len(), GRAIN, || {
            for_chunks(target, GRAIN, |i, c| {
                let o = &online[i * GRAIN..i * GRAIN + c.len()];
                c.iter_mut()
                    .zip(o)
                    .for_each(|(t, &x)| *t = *t * keep + x * take);
            });
        });
        Ok(())
    }

    fn sum_squares(&self, out: &mut [f32], x: &[f32]) -> Result<(), HostError> {
        assert_eq!(out.len(), 1, "sum_squares: out must hold one element");
        let total: f64 = if x.len() <= NORM_CHUNK {
            sum_squares_kernel(x)
        } else {
            let mut partial = Lease::new(&CHUNK_SUMS, x.len().div_ceil(NORM_CHUNK));
            self.run(|| {
                for_chunks(&mut partial, 1, |i, sum| {
                    let chunk = &x[i * NORM_CHUNK..((i + 1) * NORM_CHUNK).min(x.len())];
                    sum[0] = sum_squares_kernel(chunk);
                });
            });
            partial.iter().sum()
        };
        out[0] = total as f32;
        Ok(())
    }

    fn clip_by_norm(&self, x: &mut [f32], norm_sq: &[f32], max_norm: f32) -> Result<(), HostError> {
        assert_eq!(
            norm_sq.len(),
            1,
            "clip_by_norm: norm_sq must hold one element"
        );
        let coef = f64::from(max_norm) / (f64::from(norm_sq[0]).sqrt() + 1e-6);
        // min(1, coef) that keeps a NaN coefficient (a non-finite norm) as NaN.
        let coef = if coef > 1.0 { 1.0 } else { coef } as f32;
        self.run_chunked(x.len(), GRAIN, || {
            for_chunks(x, GRAIN, |_, c| c.iter_mut().for_each(|v| *v *= coef));
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel (hardware FMA where available) gives exactly the bits of the spec's
    /// scalar `AdamWStep::apply`, for both branches of PyTorch's `lerp`.
    #[test]
    fn adamw_matches_the_spec_scalar_update_bit_for_bit() {
        let cpu = Cpu::with_threads(2);
        for (beta1, wd, step) in [(0.9, 0.05, 1), (0.9, 0.0, 1000), (0.3, 0.1, 7)] {
            let n = 100_003;
            let val = |i: usize, s: f32| ((i as f32 * 0.618_034).fract() - 0.5) * s;
            let mut theta: Vec<f32> = (0..n).map(|i| val(i, 2.0)).collect();
            let mut m: Vec<f32> = (0..n).map(|i| val(i * 7, 0.01)).collect();
            let mut v: Vec<f32> = (0..n).map(|i| val(i * 3, 0.01).powi(2)).collect();
            let g: Vec<f32> = (0..n).map(|i| val(i * 11, 0.1)).collect();
            let opt = AdamW {
                lr: 1.5e-3,
                beta1,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: wd,
            };
            let want: Vec<_> = (0..n)
                .map(|i| {
                    opt.step_scalars(step)
                        .apply(theta[i], m[i], v[i], g[i], true)
                })
                .collect();
            let args = AdamWArgs {
                lr: opt.lr,
                weight_decay: wd,
                beta1,
                beta2: 0.95,
                eps: 1e-8,
                step,
            };
            cpu.adamw_update(&mut theta, &mut m, &mut v, &g, &args)
                .unwrap();
            for i in 0..n {
                let (t, mm, vv) = want[i];
                assert_eq!(theta[i].to_bits(), t.to_bits(), "theta {i}");
                assert_eq!(m[i].to_bits(), mm.to_bits(), "m {i}");
                assert_eq!(v[i].to_bits(), vv.to_bits(), "v {i}");
            }
        }
    }

    #[test]
    fn ema_matches_the_spec_scalar_update() {
        let cpu = Cpu::with_threads(2);
        let n = 70_001;
        let mut target: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let online: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
        let momentum = 0.996_f64;
        let want: Vec<f32> = (0..n)
            .map(|i| cim_spec::schedule::ema_scalar(target[i], online[i], momentum))
            .collect();
        cpu.ema_update(&mut target, &online, momentum).unwrap();
        assert!(
            target
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
    }

    #[test]
    fn norm_is_exact_in_f64_and_independent_of_threads() {
        let n = 1_000_003;
        let x: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32 - 500.0) * 1e-3).collect();
        let want: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let mut a = [0.0f32];
        let mut b = [0.0f32];
        Cpu::with_threads(1).sum_squares(&mut a, &x).unwrap();
        Cpu::with_threads(3).sum_squares(&mut b, &x).unwrap();
        assert_eq!(a[0].to_bits(), b[0].to_bits());
        assert!((f64::from(a[0]) - want).abs() <= 1e-7 * want);
        let mut nan = x.clone();
        nan[123_456] = f32::NAN;
        Cpu::new().sum_squares(&mut a, &nan).unwrap();
        assert!(a[0].is_nan());
        let mut g = vec![1.0f32; 10];
        Cpu::new().clip_by_norm(&mut g, &[f32::NAN], 1.0).unwrap();
        assert!(g.iter().all(|v| v.is_nan()));
    }
}
