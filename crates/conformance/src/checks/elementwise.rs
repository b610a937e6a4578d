//! Checks of the element-wise and broadcast ops: residual add, scaling, bias and position
//! embedding broadcast and its reduction, the decoder's repeat, and exact GELU.

use cim_spec::backend::{Backend, Role};
use cim_spec::ops;
use cim_spec::tolerance::Op;

use crate::cases::{BroadcastCase, RepeatCase, ScaleCase, VectorCase};
use crate::harness::{FEW, Gen, Program, Setup, Slot, make_non_negative, whole, whole_mut};
use crate::mismatch::Mismatch;

/// Runs one element-wise op over its slots (outputs first, as in the contract).
#[derive(Clone, Copy)]
pub(crate) enum RunElementwise {
    /// `[x, y]`.
    AddAssign,
    /// `[x]`.
    Scale(f32),
    /// `[out, v]`.
    AddBroadcast(usize, usize, usize),
    /// `[dv, dout]`.
    SumBroadcast(usize, usize, usize),
    /// `[out, x]`.
    RepeatForward(usize, usize, usize),
    /// `[dx, dout]`.
    RepeatBackward(usize, usize, usize),
    /// `[out, x]`.
    GeluForward,
    /// `[d, x]`.
    GeluBackward,
}

impl Program for RunElementwise {
    fn run<B: Backend>(&self, be: &B, bufs: &mut [B::Buffer]) -> Result<(), B::Error> {
        if let (RunElementwise::Scale(alpha), [x]) = (*self, &mut *bufs) {
            return ops::scale(be, whole_mut(be, x), alpha);
        }
        let [out, input] = bufs else {
            unreachable!("two slots")
        };
        let (out, input) = (whole_mut(be, out), whole(be, input));
        match *self {
            RunElementwise::AddAssign => ops::add_assign(be, out, input),
            RunElementwise::AddBroadcast(o, l, i) => ops::add_broadcast(be, out, input, o, l, i),
            RunElementwise::SumBroadcast(o, l, i) => ops::sum_broadcast(be, out, input, o, l, i),
            RunElementwise::RepeatForward(b, k, l) => ops::repeat_forward(be, out, input, b, k, l),
            RunElementwise::RepeatBackward(b, k, l) => {
                ops::repeat_backward(be, out, input, b, k, l)
            }
            RunElementwise::GeluForward => ops::gelu_forward(be, out, input),
            RunElementwise::GeluBackward => ops::gelu_backward(be, out, input),
            RunElementwise::Scale(_) => unreachable!("one slot"),
        }
    }
}

/// [`cim_spec::backend::Elementwise::add_assign`]: `x` starts nonzero and is updated.
pub fn add_assign_case<B: Backend>(backend: &B, case: &VectorCase) -> Result<(), Mismatch> {
    let mut data = Gen::new(case.seed);
    let s = f64::from(case.scale);
    let slots = vec![
        Slot::updated("x", Role::Activation, data.normal(case.len, s)),
        Slot::input("y", Role::Activation, data.normal(case.len, s)),
    ];
    Setup::new(Op::AddAssign, case, slots).compare(backend, &RunElementwise::AddAssign)
}

/// [`cim_spec::backend::Elementwise::scale`].
pub fn scale_case<B: Backend>(backend: &B, case: &ScaleCase) -> Result<(), Mismatch> {
    let mut data = Gen::new(case.seed);
    let slots = vec![Slot::updated(
        "x",
        Role::Activation,
        data.normal(case.len, f64::from(case.scale)),
    )];
    Setup::new(Op::Scale, case, slots).compare(backend, &RunElementwise::Scale(case.alpha))
}

/// [`cim_spec::backend::Elementwise::add_broadcast`]: `out` starts nonzero (it is `+=`).
pub fn add_broadcast_case<B: Backend>(backend: &B, case: &BroadcastCase) -> Result<(), Mismatch> {
    let mut data = Gen::new(case.seed);
    let s = f64::from(case.scale);
    let (o, l, i) = (case.outer, case.len, case.inner);
    let slots = vec![
        Slot::updated("out", Role::Activation, data.normal(o * l * i, s)),
        Slot::input("v", Role::Param, data.normal(l, s)),
    ];
    let program = RunElementwise::AddBroadcast(o, l, i);
    Setup::new(Op::AddBroadcast, case, slots).compare(backend, &program)
}

pub(crate) fn sum_broadcast_setup(case: &BroadcastCase) -> (Setup, RunElementwise) {
    let mut data = Gen::new(case.seed);
    let s = f64::from(case.scale);
    let (o, l, i) = (case.outer, case.len, case.inner);
    let mut dv = data.normal(l, s);
    let mut dout = data.normal(o * l * i, s);
    if l < FEW && l > 0 {
        make_non_negative(&mut dv, [0]);
        make_non_negative(
            &mut dout,
            (0..o).flat_map(|oo| (0..i).map(move |ii| oo * l * i + ii)),
        );
    }
    let slots = vec![
        Slot::updated("dv", Role::Gradient, dv),
        Slot::input("dout", Role::Activation, dout),
    ];
    let program = RunElementwise::SumBroadcast(o, l, i);
    (Setup::new(Op::SumBroadcast, case, slots), program)
}

/// [`cim_spec::backend::Elementwise::sum_broadcast`]: `dv` starts nonzero (it is `+=`).
pub fn sum_broadcast_case<B: Backend>(backend: &B, case: &BroadcastCase) -> Result<(), Mismatch> {
    let (setup, program) = sum_broadcast_setup(case);
    setup.compare(backend, &program)
}

/// [`cim_spec::backend::Elementwise::repeat_forward`]: `out` starts as NaN.
pub fn repeat_forward_case<B: Backend>(backend: &B, case: &RepeatCase) -> Result<(), Mismatch> {
    let mut data = Gen::new(case.seed);
    let (b, k, l) = (case.batch, case.copies, case.len);
    let slots = vec![
        Slot::written("out", Role::Activation, b * k * l),
        Slot::input(
            "x",
            Role::Activation,
            data.normal(b * l, f64::from(case.scale)),
        ),
    ];
    let program = RunElementwise::RepeatForward(b, k, l);
    Setup::new(Op::RepeatForward, case, slots).compare(backend, &program)
}

pub(crate) fn repeat_backward_setup(case: &RepeatCase) -> (Setup, RunElementwise) {
    let mut data = Gen::new(case.seed);
    let (b, k, l) = (case.batch, case.copies, case.len);
    let mut dout = data.normal(b * k * l, f64::from(case.scale));
    if b * l < FEW && b * l > 0 {
        make_non_negative(&mut dout, (0..k).map(|kk| kk * l));
    }
    let slots = vec![
        Slot::written("dx", Role::Activation, b * l),
        Slot::input("dout", Role::Activation, dout),
    ];
    let program = RunElementwise::RepeatBackward(b, k, l);
    (Setup::new(Op::RepeatBackward, case, slots), program)
}

/// [`cim_spec::backend::Elementwise::repeat_backward`]: `dx` starts as NaN.
pub fn repeat_backward_case<B: Backend>(backend: &B, case: &RepeatCase) -> Result<(), Mismatch> {
    let (setup, program) = repeat_backward_setup(case);
    setup.compare(backend, &program)
}

/// GELU inputs `scale * N(0, 1)` with element 0 made non-negative. GELU is about `x`
/// for `x > 0` and about `x Phi(x)` (1e-16 `|x|` at x = -8, 1e-25 at -11) below, so a
/// vector entirely in the negative tail would make the normwise rule demand the relative
/// accuracy of numbers like 1e-25, beyond f32 arithmetic and beyond the reference's
/// `1 + erf` form; one non-negative element keeps max|out| at the inputs' scale.
pub(crate) fn gelu_inputs(data: &mut Gen, case: &VectorCase) -> Vec<f32> {
    let s = f64::from(case.scale);
    data.with(case.len, |r, i| {
        let x = s * r.normal();
        if i == 0 { x.abs() } else { x }
    })
}

/// [`cim_spec::backend::Elementwise::gelu_forward`]: `out` starts as NaN.
pub fn gelu_forward_case<B: Backend>(backend: &B, case: &VectorCase) -> Result<(), Mismatch> {
    let mut data = Gen::new(case.seed);
    let slots = vec![
        Slot::written("out", Role::Activation, case.len),
        Slot::input("x", Role::Activation, gelu_inputs(&mut data, case)),
    ];
    Setup::new(Op::GeluForward, case, slots).compare(backend, &RunElementwise::GeluForward)
}

/// [`cim_spec::backend::Elementwise::gelu_backward`]: in place on the output gradient.
pub fn gelu_backward_case<B: Backend>(backend: &B, case: &VectorCase) -> Result<(), Mismatch> {
    let mut data = Gen::new(case.seed);
    let x = gelu_inputs(&mut data, case);
    let slots = vec![
        Slot::updated("d", Role::Activation, data.normal(case.len, 1.0)),
        Slot::input("x", Role::Activation, x),
    ];
    Setup::new(Op::GeluBackward, case, slots).compare(backend, &RunElementwise::GeluBackward)
}
