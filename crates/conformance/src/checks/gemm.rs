//! The GEMM checks: batched, strided, transposed products with beta 0 (C starts as NaN and
//! must be written, gaps between C matrices left alone) or beta 1 (C starts nonzero and
//! must be accumulated); and the linear layer's two composite ops (`y = x W^T + bias`
//! written; `dW += dy^T x`, `dbias += sum_rows dy` accumulated), under the GEMM row of the
//! tolerance table since a backend may fuse the bias into the product.

use cim_spec::backend::{Backend, GemmArgs, LinearArgs, Role};
use cim_spec::ops;
use cim_spec::tolerance::Op;

use crate::cases::{GemmCase, LinearCase, span};
use crate::harness::{FEW, Gen, Program, Setup, Slot, make_non_negative, whole, whole_mut};
use crate::mismatch::Mismatch;

/// Runs `ops::gemm` over slots `[c, a, b]`.
pub(crate) struct RunGemm(pub GemmArgs);

impl Program for RunGemm {
    fn run<B: Backend>(&self, backend: &B, bufs: &mut [B::Buffer]) -> Result<(), B::Error> {
        let [c, a, b] = bufs else {
            unreachable!("gemm has three slots")
        };
        ops::gemm(
            backend,
            whole_mut(backend, c),
            whole(backend, a),
            whole(backend, b),
            &self.0,
        )
    }
}

/// Entries `scale * N(0, 1)`; C (when accumulated) of the order of the product. When C
/// has fewer than 16 elements per matrix, the terms of `C[0, 0]` of the first product are
/// made non-negative (signs of B flipped to match A, and the old `C[0, 0]` given the sign
/// of alpha): a dot product that happens to cancel would otherwise leave max|C| far below
/// the size of its terms, and the normwise rule would then ask an f32 accumulation (which
/// the contract allows) for more than `sqrt(k) u` of the output's scale.
pub(crate) fn gemm_setup(case: &GemmCase) -> (Setup, RunGemm) {
    let args = case.args();
    let (m, n, k) = (args.m, args.n, args.k);
    let scale = f64::from(case.scale);
    let mut data = Gen::new(case.seed);
    let a = data.normal(span(args.batch, args.stride_a, m * k), scale);
    let mut b = data.normal(span(args.batch, args.stride_b, k * n), scale);
    let c_len = span(args.batch, args.stride_c, m * n);
    let small = args.batch > 0 && m * n > 0 && m * n < 16;
    if small {
        for p in 0..k {
            let ai = if args.trans_a { p * m } else { p };
            let bi = if args.trans_b { p } else { p * n };
            if a[ai] * b[bi] < 0.0 {
                b[bi] = -b[bi];
            }
        }
    }
    let c = if args.beta == 0.0 {
        Slot::written("c", Role::Activation, c_len)
    } else {
        // Of the order of the product, so dropping it is far outside the tolerance.
        let mut c0 = data.normal(c_len, scale * scale);
        if small {
            c0[0] = c0[0].abs().copysign(args.alpha);
        }
        Slot::updated("c", Role::Activation, c0)
    };
    let slots = vec![
        c,
        Slot::input("a", Role::Activation, a),
        Slot::input("b", Role::Param, b),
    ];
    (Setup::new(Op::Gemm, case, slots), RunGemm(args))
}

/// [`cim_spec::backend::Gemm::gemm`] against the reference.
pub fn gemm_case<B: Backend>(backend: &B, case: &GemmCase) -> Result<(), Mismatch> {
    let (setup, program) = gemm_setup(case);
    setup.compare(backend, &program)
}

/// Runs `ops::linear_forward` over slots `[y, x, weight, bias]` or
/// `ops::linear_backward_params` over slots `[dweight, dbias, dy, x]`.
pub(crate) enum RunLinear {
    Forward(LinearArgs),
    BackwardParams(LinearArgs),
}

impl Program for RunLinear {
    fn run<B: Backend>(&self, backend: &B, bufs: &mut [B::Buffer]) -> Result<(), B::Error> {
        match self {
            RunLinear::Forward(args) => {
                let [y, x, w, bias] = bufs else {
                    unreachable!("linear_forward has four slots")
                };
                ops::linear_forward(
                    backend,
                    whole_mut(backend, y),
                    whole(backend, x),
                    whole(backend, w),
                    whole(backend, bias),
                    args,
                )
            }
            RunLinear::BackwardParams(args) => {
                let [dw, dbias, dy, x] = bufs else {
                    unreachable!("linear_backward_params has four slots")
                };
                ops::linear_backward_params(
                    backend,
                    whole_mut(backend, dw),
                    whole_mut(backend, dbias),
                    whole(backend, dy),
                    whole(backend, x),
                    args,
                )
            }
        }
    }
}

/// `y` starts as NaN; x, W `scale * N(0, 1)`, the bias of the order of the product. With
/// fewer than [`FEW`] outputs, the terms of `y[0, 0]` share a sign (see `harness`).
pub(crate) fn linear_forward_setup(case: &LinearCase) -> (Setup, RunLinear) {
    let args = case.args();
    let (rows, inp, out) = (args.rows, args.inp, args.out);
    let scale = f64::from(case.scale);
    let mut data = Gen::new(case.seed);
    let mut x = data.normal(rows * inp, scale);
    let mut w = data.normal(out * inp, scale);
    let mut bias = data.normal(out, scale * scale);
    if rows * out < FEW && rows > 0 {
        make_non_negative(&mut x, 0..inp);
        make_non_negative(&mut w, 0..inp);
        make_non_negative(&mut bias, [0]);
    }
    let slots = vec![
        Slot::written("y", Role::Activation, rows * out),
        Slot::input("x", Role::Activation, x),
        Slot::input("weight", Role::Param, w),
        Slot::input("bias", Role::Param, bias),
    ];
    (Setup::new(Op::Gemm, case, slots), RunLinear::Forward(args))
}

/// dW and dbias start nonzero (of the order of what is added) and must be accumulated;
/// dy, x `scale * N(0, 1)`. With fewer than [`FEW`] output features (so dbias, and maybe dW,
/// is small), the terms of the first element of each share a sign.
pub(crate) fn linear_backward_params_setup(case: &LinearCase) -> (Setup, RunLinear) {
    let args = case.args();
    let (rows, inp, out) = (args.rows, args.inp, args.out);
    let scale = f64::from(case.scale);
    let mut data = Gen::new(case.seed);
    let mut dy = data.normal(rows * out, scale);
    let mut x = data.normal(rows * inp, scale);
    let mut dw = data.normal(out * inp, scale * scale);
    let mut dbias = data.normal(out, scale);
    if out < FEW {
        make_non_negative(&mut dy, (0..rows).map(|r| r * out));
        make_non_negative(&mut x, (0..rows).map(|r| r * inp).filter(|_| inp > 0));
        make_non_negative(&mut dw, (0..1).filter(|_| inp > 0));
        make_non_negative(&mut dbias, [0]);
    }
    let slots = vec![
        Slot::updated("dweight", Role::Gradient, dw),
        Slot::updated("dbias", Role::Gradient, dbias),
        Slot::input("dy", Role::Activation, dy),
        Slot::input("x", Role::Activation, x),
    ];
    (
        Setup::new(Op::Gemm, case, slots),
        RunLinear::BackwardParams(args),
    )
}

/// [`cim_spec::backend::Backend::linear_forward`] against the reference.
pub fn linear_forward_case<B: Backend>(backend: &B, case: &LinearCase) -> Result<(), Mismatch> {
    let (setup, program) = linear_forward_setup(case);
    setup.compare(backend, &program)
}

/// [`cim_spec::backend::Backend::linear_backward_params`] against the reference.
pub fn linear_backward_params_case<B: Backend>(
    backend: &B,
    case: &LinearCase,
) -> Result<(), Mismatch> {
    let (setup, program) = linear_backward_params_setup(case);
    setup.compare(backend, &program)
}
