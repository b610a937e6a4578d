//! LayerNorm checks. Inputs have a per-row offset of up to `offset` standard deviations
//! (the table's assumption bounds it by ~100), so centring is exercised. The backward gets
//! the reference forward's `mean` and `rstd`, rounded to f32, so both sides see identical
//! inputs; its three gradients accumulate and start nonzero.

use cim_spec::backend::{Backend, Role};
use cim_spec::ops;
use cim_spec::tolerance::Op;

use crate::cases::LayerNormCase;
use crate::harness::{Gen, Program, Setup, Slot, to_f32, whole, whole_mut};
use crate::mismatch::Mismatch;

/// Runs LayerNorm forward over `[out, mean, rstd, x, gamma, beta]` or backward over
/// `[dx, dgamma, dbeta, dout, x, gamma, mean, rstd]`.
pub(crate) enum RunLayerNorm {
    Forward { rows: usize, cols: usize, eps: f32 },
    Backward { rows: usize, cols: usize },
}

impl Program for RunLayerNorm {
    fn run<B: Backend>(&self, be: &B, bufs: &mut [B::Buffer]) -> Result<(), B::Error> {
        match *self {
            RunLayerNorm::Forward { rows, cols, eps } => {
                let [out, mean, rstd, x, gamma, beta] = bufs else {
                    unreachable!("6 slots")
                };
                ops::layernorm_forward(
                    be,
                    whole_mut(be, out),
                    whole_mut(be, mean),
                    whole_mut(be, rstd),
                    whole(be, x),
                    whole(be, gamma),
                    whole(be, beta),
                    rows,
                    cols,
                    eps,
                )
            }
            RunLayerNorm::Backward { rows, cols } => {
                let [dx, dgamma, dbeta, dout, x, gamma, mean, rstd] = bufs else {
                    unreachable!("8 slots")
                };
                ops::layernorm_backward(
                    be,
                    whole_mut(be, dx),
                    whole_mut(be, dgamma),
                    whole_mut(be, dbeta),
                    whole(be, dout),
                    whole(be, x),
                    whole(be, gamma),
                    whole(be, mean),
                    whole(be, rstd),
                    rows,
                    cols,
                )
            }
        }
    }
}

/// x, gamma around 1, beta around 0. Each row of x is `scale * (offset_r + z)` with `z`
/// standardised to mean 0 and standard deviation 1, so the row's own mean-to-std ratio
/// (what the centring's error depends on) is `offset_r` whatever the number of columns:
/// row 0 gets `+-offset`, the others uniform in `[-offset, offset]`. (Row 0 keeps the
/// `mean` output's normwise comparison well conditioned: were every row centred at zero,
/// max|mean| would be rounding noise.)
pub(crate) fn inputs(case: &LayerNormCase, data: &mut Gen) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (rows, cols) = (case.rows, case.cols);
    let s = f64::from(case.scale);
    let offset = f64::from(case.offset);
    let mut offsets = data.uniform(rows, -offset, offset);
    if let Some(first) = offsets.first_mut() {
        *first = if *first < 0.0 {
            -case.offset
        } else {
            case.offset
        };
    }
    let mut z: Vec<f64> = data
        .normal(rows * cols, 1.0)
        .into_iter()
        .map(f64::from)
        .collect();
    for row in z.chunks_mut(cols) {
        let mean = row.iter().sum::<f64>() / cols as f64;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / cols as f64;
        let inv_std = if var > 0.0 { 1.0 / var.sqrt() } else { 0.0 };
        row.iter_mut().for_each(|v| *v = (*v - mean) * inv_std);
    }
    let x = z
        .iter()
        .enumerate()
        .map(|(i, v)| (s * (f64::from(offsets[i / cols]) + v)) as f32)
        .collect();
    let gamma = data.with(cols, |r, _| 1.0 + 0.5 * r.normal());
    let beta = data.normal(cols, 0.5);
    (x, gamma, beta)
}

pub(crate) fn layernorm_forward_setup(case: &LayerNormCase) -> (Setup, RunLayerNorm) {
    let (rows, cols) = (case.rows, case.cols);
    let (x, gamma, beta) = inputs(case, &mut Gen::new(case.seed));
    let slots = vec![
        Slot::written("out", Role::Activation, rows * cols),
        Slot::written("mean", Role::Activation, rows),
        Slot::written("rstd", Role::Activation, rows),
        Slot::input("x", Role::Activation, x),
        Slot::input("gamma", Role::Param, gamma),
        Slot::input("beta", Role::Param, beta),
    ];
    let program = RunLayerNorm::Forward {
        rows,
        cols,
        eps: case.eps,
    };
    (Setup::new(Op::LayerNormForward, case, slots), program)
}

pub(crate) fn layernorm_backward_setup(
    case: &LayerNormCase,
) -> Result<(Setup, RunLayerNorm), Mismatch> {
    let (rows, cols) = (case.rows, case.cols);
    let (forward, run_forward) = layernorm_forward_setup(case);
    let saved = forward.reference_run(&run_forward)?;
    let mut data = Gen::new(case.seed);
    let (x, gamma, _) = inputs(case, &mut data);
    let g = f64::from(case.grad_scale);
    // dx is about rstd * dout; start it at that size so overwriting it shows.
    let dx0 = g / f64::from(case.scale);
    let slots = vec![
        Slot::updated("dx", Role::Activation, data.normal(rows * cols, dx0)),
        Slot::updated("dgamma", Role::Gradient, data.normal(cols, g)),
        Slot::updated("dbeta", Role::Gradient, data.normal(cols, g)),
        Slot::input("dout", Role::Activation, data.normal(rows * cols, g)),
        Slot::input("x", Role::Activation, x),
        Slot::input("gamma", Role::Param, gamma),
        Slot::input("mean", Role::Activation, to_f32(&saved[1])),
        Slot::input("rstd", Role::Activation, to_f32(&saved[2])),
    ];
    let program = RunLayerNorm::Backward { rows, cols };
    Ok((Setup::new(Op::LayerNormBackward, case, slots), program))
}

/// [`cim_spec::backend::Norm::layernorm_forward`]: `out`, `mean` and `rstd` start as NaN.
pub fn layernorm_forward_case<B: Backend>(
    backend: &B,
    case: &LayerNormCase,
) -> Result<(), Mismatch> {
    let (setup, program) = layernorm_forward_setup(case);
    setup.compare(backend, &program)
}

/// [`cim_spec::backend::Norm::layernorm_backward`]: `dx`, `dgamma`, `dbeta` start nonzero.
pub fn layernorm_backward_case<B: Backend>(
    backend: &B,
    case: &LayerNormCase,
) -> Result<(), Mismatch> {
    let (setup, program) = layernorm_backward_setup(case)?;
    setup.compare(backend, &program)
}
