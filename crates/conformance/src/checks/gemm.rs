//! The GEMM check: batched, strided, transposed products with beta 0 (C starts as NaN and
//! must be written, gaps between C matrices left alone) or beta 1 (C starts nonzero and
//! must be accumulated).

use cim_spec::backend::{Backend, GemmArgs, Role};
use cim_spec::ops;
use cim_spec::tolerance::Op;

use crate::cases::{GemmCase, span};
use crate::harness::{Gen, Program, Setup, Slot, whole, whole_mut};
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
