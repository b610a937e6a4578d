//! Attention checks, self and cross, both directions. q and k get a magnitude of their
//! own (`qk_scale`) so the scores stay in the range the table's error analysis assumes
//! while v and the gradients sweep the full range. The backward gets the reference
//! forward's probabilities (rounded to f32) as its `probs` input; its `scratch` starts as
//! NaN and is not compared (the contract only says it is overwritten).
//!
//! Conditioning (see `harness`): with near-uniform probabilities every output row is about
//! the same average of the values, so one cancelling average would shrink the whole
//! output; channel 0 of sequence 0 therefore has non-negative values and output gradients,
//! and, in cross-attention, values proportional to the keys.

use cim_spec::backend::{AttentionArgs, Backend, Role};
use cim_spec::ops;
use cim_spec::tolerance::Op;

use crate::cases::AttentionCase;
use crate::harness::{Gen, Program, Setup, Slot, make_non_negative, to_f32, whole, whole_mut};
use crate::mismatch::Mismatch;

/// Runs one attention op; slot orders are those of the contract's arguments:
/// self forward `[out, probs, qkv]`, self backward `[dqkv, scratch, dout, qkv, probs]`,
/// cross forward `[out, probs, q, kv]`, cross backward
/// `[dq, dkv, scratch, dout, q, kv, probs]`.
pub(crate) enum RunAttention {
    SelfForward(AttentionArgs),
    SelfBackward(AttentionArgs),
    CrossForward(AttentionArgs),
    CrossBackward(AttentionArgs),
}

impl Program for RunAttention {
    fn run<B: Backend>(&self, be: &B, bufs: &mut [B::Buffer]) -> Result<(), B::Error> {
        match self {
            RunAttention::SelfForward(args) => {
                let [out, probs, qkv] = bufs else {
                    unreachable!("3 slots")
                };
                let (out, probs) = (whole_mut(be, out), whole_mut(be, probs));
                ops::self_attention_forward(be, out, probs, whole(be, qkv), args)
            }
            RunAttention::SelfBackward(args) => {
                let [dqkv, scratch, dout, qkv, probs] = bufs else {
                    unreachable!("5 slots")
                };
                let (dqkv, scratch) = (whole_mut(be, dqkv), whole_mut(be, scratch));
                let (dout, qkv, probs) = (whole(be, dout), whole(be, qkv), whole(be, probs));
                ops::self_attention_backward(be, dqkv, scratch, dout, qkv, probs, args)
            }
            RunAttention::CrossForward(args) => {
                let [out, probs, q, kv] = bufs else {
                    unreachable!("4 slots")
                };
                let (out, probs) = (whole_mut(be, out), whole_mut(be, probs));
                ops::cross_attention_forward(be, out, probs, whole(be, q), whole(be, kv), args)
            }
            RunAttention::CrossBackward(args) => {
                let [dq, dkv, scratch, dout, q, kv, probs] = bufs else {
                    unreachable!("7 slots")
                };
                let (dq, dkv) = (whole_mut(be, dq), whole_mut(be, dkv));
                let scratch = whole_mut(be, scratch);
                let (dout, q, kv) = (whole(be, dout), whole(be, q), whole(be, kv));
                let probs = whole(be, probs);
                ops::cross_attention_backward(be, dq, dkv, scratch, dout, q, kv, probs, args)
            }
        }
    }
}

/// Element counts: (query tokens x D, key tokens x D, probabilities).
fn sizes(a: &AttentionArgs) -> (usize, usize, usize) {
    let dim = a.heads * a.head_dim;
    (
        a.batch * a.q_len * dim,
        a.batch * a.kv_len * dim,
        a.batch * a.heads * a.q_len * a.kv_len,
    )
}

/// A packed tensor of `groups` blocks of D channels per token, block `g` drawn with
/// magnitude `scales[g]` (qkv: q, k, v; kv: k, v; q alone: one block).
fn packed(data: &mut Gen, tokens_x_dim: usize, dim: usize, scales: &[f32]) -> Vec<f32> {
    let groups = scales.len();
    data.with(tokens_x_dim * groups, |r, i| {
        f64::from(scales[(i % (dim * groups)) / dim]) * r.normal()
    })
}

/// `dout` `[B, Nq, D]`, channel 0 of sequence 0 non-negative (so `dv[0, j, 0]` sums
/// without cancellation).
fn output_gradient(data: &mut Gen, case: &AttentionCase, len: usize) -> Vec<f32> {
    let mut dout = data.normal(len, f64::from(case.grad_scale));
    let dim = case.args.heads * case.args.head_dim;
    if case.args.batch > 0 {
        make_non_negative(&mut dout, (0..case.args.q_len).map(|i| i * dim));
    }
    dout
}

pub(crate) fn self_forward_setup(case: &AttentionCase) -> (Setup, RunAttention) {
    let a = case.args;
    let (tokens, _, p) = sizes(&a);
    let dim = a.heads * a.head_dim;
    let scales = [case.qk_scale, case.qk_scale, case.v_scale];
    let mut qkv = packed(&mut Gen::new(case.seed), tokens, dim, &scales);
    if a.batch > 0 {
        make_non_negative(&mut qkv, (0..a.kv_len).map(|j| j * 3 * dim + 2 * dim));
    }
    let slots = vec![
        Slot::written("out", Role::Activation, tokens),
        Slot::written("probs", Role::Activation, p),
        Slot::input("qkv", Role::Activation, qkv),
    ];
    (
        Setup::new(Op::SelfAttentionForward, case, slots),
        RunAttention::SelfForward(a),
    )
}

pub(crate) fn self_backward_setup(case: &AttentionCase) -> Result<(Setup, RunAttention), Mismatch> {
    let a = case.args;
    let (tokens, _, p) = sizes(&a);
    let (forward, run_forward) = self_forward_setup(case);
    let probs = to_f32(&forward.reference_run(&run_forward)?[1]);
    let qkv = forward.slots[2].init.clone();
    let mut data = Gen::new(case.seed);
    data.skip(1); // the stream qkv was drawn from
    let slots = vec![
        Slot::written("dqkv", Role::Activation, 3 * tokens),
        Slot::scratch("scratch", p),
        Slot::input(
            "dout",
            Role::Activation,
            output_gradient(&mut data, case, tokens),
        ),
        Slot::input("qkv", Role::Activation, qkv),
        Slot::input("probs", Role::Activation, probs),
    ];
    let setup = Setup::new(Op::SelfAttentionBackward, case, slots);
    Ok((setup, RunAttention::SelfBackward(a)))
}

pub(crate) fn cross_forward_setup(case: &AttentionCase) -> (Setup, RunAttention) {
    let a = case.args;
    let (q_n, kv_n, p) = sizes(&a);
    let dim = a.heads * a.head_dim;
    let mut data = Gen::new(case.seed);
    let q = packed(&mut data, q_n, dim, &[case.qk_scale]);
    let mut kv = packed(&mut data, kv_n, dim, &[case.qk_scale, case.v_scale]);
    if a.batch > 0 {
        // Also v = (v_scale / qk_scale) k on that channel, so dq = scale * dout * Cov_p(v, k)
        // (for one channel) does not cancel either.
        let ratio = case.v_scale / case.qk_scale;
        for j in 0..a.kv_len {
            let k = kv[j * 2 * dim].abs();
            kv[j * 2 * dim] = k;
            kv[j * 2 * dim + dim] = ratio * k;
        }
    }
    let slots = vec![
        Slot::written("out", Role::Activation, q_n),
        Slot::written("probs", Role::Activation, p),
        Slot::input("q", Role::Activation, q),
        Slot::input("kv", Role::Activation, kv),
    ];
    (
        Setup::new(Op::CrossAttentionForward, case, slots),
        RunAttention::CrossForward(a),
    )
}

pub(crate) fn cross_backward_setup(
    case: &AttentionCase,
) -> Result<(Setup, RunAttention), Mismatch> {
    let a = case.args;
    let (q_n, kv_n, p) = sizes(&a);
    let (forward, run_forward) = cross_forward_setup(case);
    let probs = to_f32(&forward.reference_run(&run_forward)?[1]);
    let q = forward.slots[2].init.clone();
    let kv = forward.slots[3].init.clone();
    let mut data = Gen::new(case.seed);
    data.skip(2); // the streams of q and kv
    let slots = vec![
        Slot::written("dq", Role::Activation, q_n),
        Slot::written("dkv", Role::Activation, 2 * kv_n),
        Slot::scratch("scratch", p),
        Slot::input(
            "dout",
            Role::Activation,
            output_gradient(&mut data, case, q_n),
        ),
        Slot::input("q", Role::Activation, q),
        Slot::input("kv", Role::Activation, kv),
        Slot::input("probs", Role::Activation, probs),
    ];
    let setup = Setup::new(Op::CrossAttentionBackward, case, slots);
    Ok((setup, RunAttention::CrossBackward(a)))
}

/// [`cim_spec::backend::Attention::self_attention_forward`]: `out` and `probs` start as
/// NaN; both are compared.
pub fn self_attention_forward_case<B: Backend>(
    backend: &B,
    case: &AttentionCase,
) -> Result<(), Mismatch> {
    let (setup, program) = self_forward_setup(case);
    setup.compare(backend, &program)
}

/// [`cim_spec::backend::Attention::self_attention_backward`]: `dqkv` starts as NaN.
pub fn self_attention_backward_case<B: Backend>(
    backend: &B,
    case: &AttentionCase,
) -> Result<(), Mismatch> {
    let (setup, program) = self_backward_setup(case)?;
    setup.compare(backend, &program)
}

/// [`cim_spec::backend::Attention::cross_attention_forward`]: `out` and `probs` start as
/// NaN; both are compared.
pub fn cross_attention_forward_case<B: Backend>(
    backend: &B,
    case: &AttentionCase,
) -> Result<(), Mismatch> {
    let (setup, program) = cross_forward_setup(case);
    setup.compare(backend, &program)
}

/// [`cim_spec::backend::Attention::cross_attention_backward`]: `dq` and `dkv` start as NaN.
pub fn cross_attention_backward_case<B: Backend>(
    backend: &B,
    case: &AttentionCase,
) -> Result<(), Mismatch> {
    let (setup, program) = cross_backward_setup(case)?;
    setup.compare(backend, &program)
}
