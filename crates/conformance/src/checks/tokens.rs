//! Checks of the token ops: patchify (exact permutation), class-token prepend, mean
//! pooling, and the decoder's align-corners bilinear upsampling, both directions.

use cim_spec::backend::{Backend, PatchArgs, Role};
use cim_spec::ops;
use cim_spec::tolerance::Op;

use crate::cases::{MeanPoolCase, PatchifyCase, PrependClsCase, UpsampleCase};
use crate::harness::{FEW, Gen, Program, Setup, Slot, make_non_negative, whole, whole_mut};
use crate::mismatch::Mismatch;

/// Runs one token op; every op here has an output slot then an input slot, except the
/// class-token ops (forward `[out, patches, cls]`, backward `[dcls, dout]` or
/// `[dcls, dout, dpatches]`).
pub(crate) enum RunTokens {
    Patchify(PatchArgs),
    PrependForward {
        batch: usize,
        tokens: usize,
        dim: usize,
    },
    PrependBackward {
        batch: usize,
        tokens: usize,
        dim: usize,
    },
    MeanPoolForward {
        batch: usize,
        tokens: usize,
        dim: usize,
    },
    MeanPoolBackward {
        batch: usize,
        tokens: usize,
        dim: usize,
    },
    UpsampleForward([usize; 5]),
    UpsampleBackward([usize; 5]),
}

impl Program for RunTokens {
    fn run<B: Backend>(&self, be: &B, bufs: &mut [B::Buffer]) -> Result<(), B::Error> {
        match *self {
            RunTokens::PrependForward { batch, tokens, dim } => {
                let [out, patches, cls] = bufs else {
                    unreachable!("3 slots")
                };
                let (out, patches, cls) = (whole_mut(be, out), whole(be, patches), whole(be, cls));
                return ops::prepend_cls_forward(be, out, patches, cls, batch, tokens, dim);
            }
            RunTokens::PrependBackward { batch, tokens, dim } => {
                let (dcls, dout, dpatches) = match bufs {
                    [dcls, dout] => (dcls, dout, None),
                    [dcls, dout, dpatches] => (dcls, dout, Some(whole_mut(be, dpatches))),
                    _ => unreachable!("2 or 3 slots"),
                };
                let (dcls, dout) = (whole_mut(be, dcls), whole(be, dout));
                return ops::prepend_cls_backward(be, dpatches, dcls, dout, batch, tokens, dim);
            }
            _ => {}
        }
        let [out, input] = bufs else {
            unreachable!("2 slots")
        };
        let (out, input) = (whole_mut(be, out), whole(be, input));
        match *self {
            RunTokens::Patchify(args) => ops::patchify(be, out, input, &args),
            RunTokens::MeanPoolForward { batch, tokens, dim } => {
                ops::mean_pool_forward(be, out, input, batch, tokens, dim)
            }
            RunTokens::MeanPoolBackward { batch, tokens, dim } => {
                ops::mean_pool_backward(be, out, input, batch, tokens, dim)
            }
            RunTokens::UpsampleForward([n, ih, iw, oh, ow]) => {
                ops::upsample_bilinear_forward(be, out, input, n, ih, iw, oh, ow)
            }
            RunTokens::UpsampleBackward([n, ih, iw, oh, ow]) => {
                ops::upsample_bilinear_backward(be, out, input, n, ih, iw, oh, ow)
            }
            RunTokens::PrependForward { .. } | RunTokens::PrependBackward { .. } => {
                unreachable!("handled above")
            }
        }
    }
}

/// [`cim_spec::backend::Tokens::patchify`]: `out` starts as NaN; exact.
pub fn patchify_case<B: Backend>(backend: &B, case: &PatchifyCase) -> Result<(), Mismatch> {
    let a = case.args;
    let pixels = a.batch * a.channels * a.height * a.width;
    let slots = vec![
        Slot::written("out", Role::Activation, pixels),
        Slot::input(
            "img",
            Role::Activation,
            Gen::new(case.seed).normal(pixels, 1.0),
        ),
    ];
    Setup::new(Op::Patchify, case, slots).compare(backend, &RunTokens::Patchify(a))
}

/// [`cim_spec::backend::Tokens::prepend_cls_forward`]: `out` starts as NaN; exact.
pub fn prepend_cls_forward_case<B: Backend>(
    backend: &B,
    case: &PrependClsCase,
) -> Result<(), Mismatch> {
    let (batch, tokens, dim) = (case.batch, case.tokens, case.dim);
    let mut data = Gen::new(case.seed);
    let s = f64::from(case.scale);
    let slots = vec![
        Slot::written("out", Role::Activation, batch * (tokens + 1) * dim),
        Slot::input(
            "patches",
            Role::Activation,
            data.normal(batch * tokens * dim, s),
        ),
        Slot::input("cls", Role::Param, data.normal(dim, s)),
    ];
    let program = RunTokens::PrependForward { batch, tokens, dim };
    Setup::new(Op::PrependClsForward, case, slots).compare(backend, &program)
}

pub(crate) fn prepend_cls_backward_setup(case: &PrependClsCase) -> (Setup, RunTokens) {
    let (batch, tokens, dim) = (case.batch, case.tokens, case.dim);
    let mut data = Gen::new(case.seed);
    let s = f64::from(case.scale);
    let mut dcls = data.normal(dim, s);
    let mut dout = data.normal(batch * (tokens + 1) * dim, s);
    if dim < FEW {
        make_non_negative(&mut dcls, [0]);
        make_non_negative(&mut dout, (0..batch).map(|b| b * (tokens + 1) * dim));
    }
    let mut slots = vec![
        Slot::updated("dcls", Role::Gradient, dcls),
        Slot::input("dout", Role::Activation, dout),
    ];
    if case.with_dpatches {
        slots.push(Slot::written(
            "dpatches",
            Role::Activation,
            batch * tokens * dim,
        ));
    }
    let program = RunTokens::PrependBackward { batch, tokens, dim };
    (Setup::new(Op::PrependClsBackward, case, slots), program)
}

/// [`cim_spec::backend::Tokens::prepend_cls_backward`]: `dcls` starts nonzero (`+=`),
/// `dpatches` (when asked for) as NaN.
pub fn prepend_cls_backward_case<B: Backend>(
    backend: &B,
    case: &PrependClsCase,
) -> Result<(), Mismatch> {
    let (setup, program) = prepend_cls_backward_setup(case);
    setup.compare(backend, &program)
}

pub(crate) fn mean_pool_forward_setup(case: &MeanPoolCase) -> (Setup, RunTokens) {
    let (batch, tokens, dim) = (case.batch, case.tokens, case.dim);
    let mut x = Gen::new(case.seed).normal(batch * (tokens + 1) * dim, f64::from(case.scale));
    if batch * dim < FEW && batch > 0 {
        make_non_negative(&mut x, (1..=tokens).map(|t| t * dim));
    }
    let slots = vec![
        Slot::written("out", Role::Activation, batch * dim),
        Slot::input("x", Role::Activation, x),
    ];
    let program = RunTokens::MeanPoolForward { batch, tokens, dim };
    (Setup::new(Op::MeanPoolForward, case, slots), program)
}

/// [`cim_spec::backend::Tokens::mean_pool_forward`]: `out` starts as NaN.
pub fn mean_pool_forward_case<B: Backend>(
    backend: &B,
    case: &MeanPoolCase,
) -> Result<(), Mismatch> {
    let (setup, program) = mean_pool_forward_setup(case);
    setup.compare(backend, &program)
}

/// [`cim_spec::backend::Tokens::mean_pool_backward`]: `dx` starts as NaN (the class row
/// must be written with zeros).
pub fn mean_pool_backward_case<B: Backend>(
    backend: &B,
    case: &MeanPoolCase,
) -> Result<(), Mismatch> {
    let (batch, tokens, dim) = (case.batch, case.tokens, case.dim);
    let dout = Gen::new(case.seed).normal(batch * dim, f64::from(case.scale));
    let slots = vec![
        Slot::written("dx", Role::Activation, batch * (tokens + 1) * dim),
        Slot::input("dout", Role::Activation, dout),
    ];
    let program = RunTokens::MeanPoolBackward { batch, tokens, dim };
    Setup::new(Op::MeanPoolBackward, case, slots).compare(backend, &program)
}

fn upsample_sizes(case: &UpsampleCase) -> ([usize; 5], usize, usize) {
    let sizes = [case.planes, case.in_h, case.in_w, case.out_h, case.out_w];
    let small = case.planes * case.in_h * case.in_w;
    (sizes, small, case.planes * case.out_h * case.out_w)
}

/// [`cim_spec::backend::Tokens::upsample_bilinear_forward`]: `out` starts as NaN.
pub fn upsample_forward_case<B: Backend>(backend: &B, case: &UpsampleCase) -> Result<(), Mismatch> {
    let (sizes, small, big) = upsample_sizes(case);
    let slots = vec![
        Slot::written("out", Role::Activation, big),
        Slot::input(
            "x",
            Role::Activation,
            Gen::new(case.seed).normal(small, f64::from(case.scale)),
        ),
    ];
    Setup::new(Op::UpsampleForward, case, slots)
        .compare(backend, &RunTokens::UpsampleForward(sizes))
}

pub(crate) fn upsample_backward_setup(case: &UpsampleCase) -> (Setup, RunTokens) {
    let (sizes, small, big) = upsample_sizes(case);
    let mut dout = Gen::new(case.seed).normal(big, f64::from(case.scale));
    if small < FEW && small > 0 {
        make_non_negative(&mut dout, 0..case.out_h * case.out_w);
    }
    let slots = vec![
        Slot::written("dx", Role::Activation, small),
        Slot::input("dout", Role::Activation, dout),
    ];
    (
        Setup::new(Op::UpsampleBackward, case, slots),
        RunTokens::UpsampleBackward(sizes),
    )
}

/// [`cim_spec::backend::Tokens::upsample_bilinear_backward`]: `dx` starts as NaN.
pub fn upsample_backward_case<B: Backend>(
    backend: &B,
    case: &UpsampleCase,
) -> Result<(), Mismatch> {
    let (setup, program) = upsample_backward_setup(case);
    setup.compare(backend, &program)
}
