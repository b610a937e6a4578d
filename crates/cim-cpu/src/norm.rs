//! LayerNorm forward and backward (S3), fused per row, rows split into fixed blocks.
//!
//! Row statistics use two passes (mean, then the centred sum of squares) with eight f32
//! lanes combined in f64, so cancellation only costs what the f32 centring itself costs.
//! The backward computes `dx` row by row and the `gamma`/`beta` gradients as f64
//! partial column sums per block of rows (in a reused per-thread buffer), added in block
//! order (deterministic for any thread count).

use core::cell::Cell;

use cim_spec::backend::Norm;
use cim_spec::error::HostError;
use rayon::prelude::*;

use crate::Cpu;
use crate::elementwise::reduce_block_rows;
use crate::par::{Home, Lease, multiversion, rows_per_task};

thread_local! {
    /// Per-block partial `[dgamma | dbeta]` rows of the backward.
    static PARTIALS: Home<f64> = const { Cell::new(Vec::new()) };
}

/// Eight f32 lanes summed in f64.
#[inline(always)]
fn lanes_total(acc: [f32; 8]) -> f64 {
    acc.iter().map(|&a| f64::from(a)).sum()
}

multiversion! {
    /// Normalises one row; returns (mean, rstd).
    fn forward_row(out: &mut [f32], x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> (f32, f32) {
        let n = x.len();
        let (xs, xt) = x.as_chunks::<8>();
        let mut acc = [0.0f32; 8];
        for c in xs {
            for j in 0..8 {
                acc[j] += c[j];
            }
        }
        let sum = lanes_total(acc) + xt.iter().map(|&v| f64::from(v)).sum::<f64>();
        let mean = (sum / n as f64) as f32;
        let mut acc = [0.0f32; 8];
        for c in xs {
            for j in 0..8 {
                let d = c[j] - mean;
                acc[j] += d * d;
            }
        }
        let tail: f64 = xt.iter().map(|&v| f64::from((v - mean) * (v - mean))).sum();
        let var = (lanes_total(acc) + tail) / n as f64;
        let rstd = (1.0 / (var + f64::from(eps)).sqrt()) as f32;
        for (((o, &v), &g), &b) in out.iter_mut().zip(x).zip(gamma).zip(beta) {
            *o = (v - mean) * rstd * g + b;
        }
        (mean, rstd)
    }
}

multiversion! {
    /// `dx += rstd (g - mean(g) - xhat mean(g xhat))` for one row (`g = dout gamma`), and
    /// the row's contributions to the gamma and beta gradients added into `pg`, `pb`.
    #[allow(clippy::too_many_arguments)]
    fn backward_row(
        dx: &mut [f32],
        pg: &mut [f64],
        pb: &mut [f64],
        dout: &[f32],
        x: &[f32],
        gamma: &[f32],
        mean: f32,
        rstd: f32,
    ) {
        let n = x.len();
        let (ds, dt) = dout.as_chunks::<8>();
        let (xs, xt) = x.as_chunks::<8>();
        let (gs, gt) = gamma.as_chunks::<8>();
        let (mut ag, mut agx) = ([0.0f32; 8], [0.0f32; 8]);
        for ((d, xv), gv) in ds.iter().zip(xs).zip(gs) {
            for j in 0..8 {
                let g = d[j] * gv[j];
                ag[j] += g;
                agx[j] += g * ((xv[j] - mean) * rstd);
            }
        }
        let (mut sum_g, mut sum_gx) = (lanes_total(ag), lanes_total(agx));
        for ((&d, &xv), &gv) in dt.iter().zip(xt).zip(gt) {
            let g = d * gv;
            sum_g += f64::from(g);
            sum_gx += f64::from(g * ((xv - mean) * rstd));
        }
        let mg = (sum_g / n as f64) as f32;
        let mgx = (sum_gx / n as f64) as f32;
        let rows = dx.iter_mut().zip(pg.iter_mut()).zip(pb.iter_mut());
        for (((d, p_g), p_b), ((&dy, &xv), &gv)) in rows.zip(dout.iter().zip(x).zip(gamma)) {
            let xhat = (xv - mean) * rstd;
            *d += rstd * (dy * gv - mg - xhat * mgx);
            *p_g += f64::from(dy * xhat);
            *p_b += f64::from(dy);
        }
    }
}

impl Norm for Cpu {
    fn layernorm_forward(
        &self,
        out: &mut [f32],
        mean: &mut [f32],
        rstd: &mut [f32],
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(), HostError> {
        assert!(cols > 0 && x.len() == rows * cols && out.len() == x.len());
        assert!(mean.len() == rows && rstd.len() == rows);
        assert!(gamma.len() == cols && beta.len() == cols);
        if rows == 0 {
            return Ok(());
        }
        let per = rows_per_task(cols, 1 << 14);
        self.run(|| {
            out.par_chunks_mut(per * cols)
                .zip(mean.par_chunks_mut(per))
                .zip(rstd.par_chunks_mut(per))
                .enumerate()
                .for_each(|(bi, ((o, m), r))| {
                    let x = &x[bi * per * cols..];
                    for (i, orow) in o.chunks_exact_mut(cols).enumerate() {
                        let (mu, rs) =
                            forward_row(orow, &x[i * cols..(i + 1) * cols], gamma, beta, eps);
                        m[i] = mu;
                        r[i] = rs;
                    }
                });
        });
        Ok(())
    }

    fn layernorm_backward(
        &self,
        dx: &mut [f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
        dout: &[f32],
        x: &[f32],
        gamma: &[f32],
        mean: &[f32],
        rstd: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<(), HostError> {
        let n = rows * cols;
        assert!(cols > 0 && dx.len() == n && dout.len() == n && x.len() == n);
        assert!(dgamma.len() == cols && dbeta.len() == cols && gamma.len() == cols);
        assert!(mean.len() == rows && rstd.len() == rows);
        if rows == 0 {
            return Ok(());
        }
        // Fixed blocks of rows: each block writes its dx rows and one f64 partial row of
        // [dgamma | dbeta]; the partials are added in block order afterwards.
        let per = reduce_block_rows(rows, cols);
        let blocks = rows.div_ceil(per);
        let mut partial = Lease::new(&PARTIALS, blocks * 2 * cols);
        partial.fill(0.0);
        self.run(|| {
            dx.par_chunks_mut(per * cols)
                .zip(partial.par_chunks_mut(2 * cols))
                .enumerate()
                .for_each(|(bi, (d, p))| {
                    let (pg, pb) = p.split_at_mut(cols);
                    for (i, drow) in d.chunks_exact_mut(cols).enumerate() {
                        let r = bi * per + i;
                        let span = r * cols..(r + 1) * cols;
                        backward_row(
                            drow,
                            pg,
                            pb,
                            &dout[span.clone()],
                            &x[span],
                            gamma,
                            mean[r],
                            rstd[r],
                        );
                    }
                });
        });
        let (total, rest) = partial.split_at_mut(2 * cols);
        for block in rest.chunks_exact(2 * cols) {
            total.iter_mut().zip(block).for_each(|(t, &v)| *t += v);
        }
        let (tg, tb) = total.split_at(cols);
        for (d, &s) in dgamma.iter_mut().zip(tg) {
            *d = (f64::from(*d) + s) as f32;
        }
        for (d, &s) in dbeta.iter_mut().zip(tb) {
            *d = (f64::from(*d) + s) as f32;
        }
        Ok(())
    }
}
