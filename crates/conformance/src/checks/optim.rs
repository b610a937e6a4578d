//! Checks of the optimizer-side ops: AdamW (parameters and both moments start from a
//! mid-training state), EMA, the sum of squares behind the global norm, and clipping by
//! that norm (on both sides of the threshold).

use cim_spec::backend::{AdamWArgs, Backend, Role};
use cim_spec::ops;
use cim_spec::tolerance::Op;

use crate::cases::{AdamWCase, ClipCase, EmaCase, VectorCase};
use crate::harness::{FEW, Gen, Program, Setup, Slot, make_non_negative, to_f32, whole, whole_mut};
use crate::mismatch::Mismatch;

/// Runs one optimizer op: AdamW over `[param, m, v, grad]`, EMA over `[target, online]`,
/// the sum of squares over `[out, x]`, clipping over `[x, norm_sq]`.
pub(crate) enum RunOptim {
    AdamW(AdamWArgs),
    Ema(f64),
    SumSquares,
    Clip(f32),
}

impl Program for RunOptim {
    fn run<B: Backend>(&self, be: &B, bufs: &mut [B::Buffer]) -> Result<(), B::Error> {
        if let (RunOptim::AdamW(args), [param, m, v, grad]) = (self, &mut *bufs) {
            let (param, m, v) = (whole_mut(be, param), whole_mut(be, m), whole_mut(be, v));
            return ops::adamw_update(be, param, m, v, whole(be, grad), args);
        }
        let [out, input] = bufs else {
            unreachable!("2 slots")
        };
        let (out, input) = (whole_mut(be, out), whole(be, input));
        match *self {
            RunOptim::Ema(momentum) => ops::ema_update(be, out, input, momentum),
            RunOptim::SumSquares => ops::sum_squares(be, out, input),
            RunOptim::Clip(max_norm) => ops::clip_by_norm(be, out, input, max_norm),
            RunOptim::AdamW(_) => unreachable!("4 slots"),
        }
    }
}

/// A mid-training state: every parameter at least half of `param_scale` in magnitude, and
/// moments of a plausible history (`v >= m^2`, so `|m| / sqrt(v) <= 1` as in Adam). With
/// the strategies' steps (`lr` at most 3% of `param_scale`) the update stays well below
/// the parameter, so the normwise comparison, relative to the largest parameter, is not
/// spoilt by a cancellation between a parameter and its own update.
pub(crate) fn adamw_setup(case: &AdamWCase) -> (Setup, RunOptim) {
    let mut data = Gen::new(case.seed);
    let (n, g) = (case.len, f64::from(case.grad_scale));
    let p = f64::from(case.param_scale);
    let param = data.with(n, |r, _| {
        let magnitude = p * r.uniform(0.5, 1.5);
        if r.bernoulli(0.5) {
            magnitude
        } else {
            -magnitude
        }
    });
    let mut m = data.normal(n, 0.3 * g);
    let v = data.with(n, |r, i| (g * r.normal()).powi(2) + f64::from(m[i]).powi(2));
    let mut grad = data.normal(n, g);
    if n < FEW && n > 0 {
        // `b1 m + (1 - b1) g` without cancellation in element 0.
        make_non_negative(&mut m, [0]);
        make_non_negative(&mut grad, [0]);
    }
    let slots = vec![
        Slot::updated("param", Role::Param, param),
        Slot::updated("m", Role::State, m),
        Slot::updated("v", Role::State, v),
        Slot::input("grad", Role::Gradient, grad),
    ];
    let args = AdamWArgs {
        lr: case.lr,
        weight_decay: case.weight_decay,
        beta1: case.beta1,
        beta2: case.beta2,
        eps: 1e-8,
        step: case.step,
    };
    (Setup::new(Op::AdamW, case, slots), RunOptim::AdamW(args))
}

/// [`cim_spec::backend::Optim::adamw_update`]: `param`, `m` and `v` are all compared.
pub fn adamw_case<B: Backend>(backend: &B, case: &AdamWCase) -> Result<(), Mismatch> {
    let (setup, program) = adamw_setup(case);
    setup.compare(backend, &program)
}

/// [`cim_spec::backend::Optim::ema_update`].
pub fn ema_case<B: Backend>(backend: &B, case: &EmaCase) -> Result<(), Mismatch> {
    let mut data = Gen::new(case.seed);
    let s = f64::from(case.scale);
    let slots = vec![
        Slot::updated("target", Role::Param, data.normal(case.len, s)),
        Slot::input("online", Role::Param, data.normal(case.len, s)),
    ];
    Setup::new(Op::Ema, case, slots).compare(backend, &RunOptim::Ema(case.momentum))
}

pub(crate) fn sum_squares_setup(case: &VectorCase) -> (Setup, RunOptim) {
    let x = Gen::new(case.seed).normal(case.len, f64::from(case.scale));
    let slots = vec![
        Slot::written("out", Role::State, 1),
        Slot::input("x", Role::Gradient, x),
    ];
    (
        Setup::new(Op::SumSquares, case, slots),
        RunOptim::SumSquares,
    )
}

/// [`cim_spec::backend::Optim::sum_squares`]: `out` starts as NaN.
pub fn sum_squares_case<B: Backend>(backend: &B, case: &VectorCase) -> Result<(), Mismatch> {
    let (setup, program) = sum_squares_setup(case);
    setup.compare(backend, &program)
}

/// [`cim_spec::backend::Optim::clip_by_norm`], given the reference's sum of squares of
/// `x` (rounded to f32) and `max_norm = max_norm_ratio * norm`.
pub fn clip_by_norm_case<B: Backend>(backend: &B, case: &ClipCase) -> Result<(), Mismatch> {
    let squares_case = VectorCase {
        seed: case.seed,
        len: case.len,
        scale: case.scale,
    };
    let (squares, run_squares) = sum_squares_setup(&squares_case);
    let norm_sq = to_f32(&squares.reference_run(&run_squares)?[0]);
    let max_norm = case.max_norm_ratio * norm_sq[0].sqrt();
    let slots = vec![
        Slot::updated("x", Role::Gradient, squares.slots[1].init.clone()),
        Slot::input("norm_sq", Role::State, norm_sq),
    ];
    Setup::new(Op::ClipByNorm, case, slots).compare(backend, &RunOptim::Clip(max_norm))
}
