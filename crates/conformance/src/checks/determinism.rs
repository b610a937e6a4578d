//! The determinism rerun: several ops, at sizes large enough to take a backend's
//! parallel and blocked paths, run twice on identical inputs must give identical bits
//! (the contract's "no atomics whose order varies"). Reductions are favoured, since an
//! order that varies between runs shows there first.

use cim_spec::backend::{AttentionArgs, Backend, ConvTransposeArgs, XcorrArgs};
use cim_spec::loss::MapLoss;

use crate::cases::{
    AdamWCase, AttentionCase, BroadcastCase, ConvTransposeCase, GemmCase, LayerNormCase, Layout,
    MapLossCase, MeanPoolCase, PrependClsCase, RepeatCase, UpsampleCase, VectorCase, XcorrCase,
};
use crate::checks::{attention, conv, elementwise, gemm, loss, norm, optim, tokens};
use crate::mismatch::Mismatch;

/// Runs each op below twice on `backend` from identical buffers and fails on the first
/// output bit that differs: GEMM (batched, accumulating), LayerNorm both directions,
/// self- and cross-attention both directions, the broadcast and repeat reductions, the
/// class-token gradient, mean pooling, upsampling backward, the decoder options'
/// correlation and transposed convolution both directions, two map losses both
/// directions, the sum of squares and AdamW.
pub fn determinism<B: Backend>(backend: &B) -> Result<(), Mismatch> {
    let gemm_case = GemmCase {
        seed: 1,
        batch: 2,
        m: 64,
        n: 96,
        k: 256,
        trans_a: false,
        trans_b: true,
        alpha: 1.0,
        beta: 1.0,
        a_layout: Layout::Packed,
        b_layout: Layout::Broadcast,
        c_gap: 0,
        scale: 1.0,
    };
    let (setup, program) = gemm::gemm_setup(&gemm_case);
    setup.same_bits(backend, &program)?;

    let ln = LayerNormCase {
        seed: 2,
        rows: 96,
        cols: 384,
        scale: 1.0,
        offset: 3.0,
        eps: 1e-6,
        grad_scale: 1.0,
    };
    let (setup, program) = norm::layernorm_forward_setup(&ln);
    setup.same_bits(backend, &program)?;
    let (setup, program) = norm::layernorm_backward_setup(&ln)?;
    setup.same_bits(backend, &program)?;

    let attention_case = |q_len, kv_len| AttentionCase {
        seed: 3,
        args: AttentionArgs {
            batch: 2,
            q_len,
            kv_len,
            heads: 4,
            head_dim: 16,
        },
        qk_scale: 1.0,
        v_scale: 1.0,
        grad_scale: 1.0,
    };
    let self_case = attention_case(65, 65);
    let (setup, program) = attention::self_forward_setup(&self_case);
    setup.same_bits(backend, &program)?;
    let (setup, program) = attention::self_backward_setup(&self_case)?;
    setup.same_bits(backend, &program)?;
    let cross_case = attention_case(50, 65);
    let (setup, program) = attention::cross_forward_setup(&cross_case);
    setup.same_bits(backend, &program)?;
    let (setup, program) = attention::cross_backward_setup(&cross_case)?;
    setup.same_bits(backend, &program)?;

    let broadcast = BroadcastCase {
        seed: 4,
        outer: 64,
        len: 96,
        inner: 33,
        scale: 1.0,
    };
    let (setup, program) = elementwise::sum_broadcast_setup(&broadcast);
    setup.same_bits(backend, &program)?;
    let repeat = RepeatCase {
        seed: 5,
        batch: 4,
        copies: 6,
        len: 2000,
        scale: 1.0,
    };
    let (setup, program) = elementwise::repeat_backward_setup(&repeat);
    setup.same_bits(backend, &program)?;

    let prepend = PrependClsCase {
        seed: 6,
        batch: 64,
        tokens: 50,
        dim: 96,
        with_dpatches: true,
        scale: 1.0,
    };
    let (setup, program) = tokens::prepend_cls_backward_setup(&prepend);
    setup.same_bits(backend, &program)?;
    let pool = MeanPoolCase {
        seed: 7,
        batch: 16,
        tokens: 196,
        dim: 192,
        scale: 1.0,
    };
    let (setup, program) = tokens::mean_pool_forward_setup(&pool);
    setup.same_bits(backend, &program)?;
    let upsample = UpsampleCase {
        seed: 8,
        planes: 6,
        in_h: 10,
        in_w: 10,
        out_h: 160,
        out_w: 160,
        scale: 1.0,
    };
    let (setup, program) = tokens::upsample_backward_setup(&upsample);
    setup.same_bits(backend, &program)?;

    // The decoder options at about the paper's per-map sizes (10 x 10 context grid, 4 x 4
    // exemplar grid, the predictor's kernel 4 / stride 2 / padding 1), over enough maps
    // to be split into tasks.
    let xcorr = XcorrCase {
        seed: 12,
        args: XcorrArgs {
            batch: 12,
            channels: 64,
            height: 10,
            width: 10,
            kernel_h: 4,
            kernel_w: 4,
            scale: 0.25,
        },
        x_scale: 1.0,
        t_scale: 1.0,
        grad_scale: 1.0,
    };
    let (setup, program) = conv::xcorr_forward_setup(&xcorr);
    setup.same_bits(backend, &program)?;
    let (setup, program) = conv::xcorr_backward_setup(&xcorr);
    setup.same_bits(backend, &program)?;
    let deconv = ConvTransposeCase {
        seed: 13,
        args: ConvTransposeArgs {
            batch: 40,
            in_channels: 64,
            out_channels: 2,
            height: 10,
            width: 10,
            kernel: 4,
            stride: 2,
            padding: 1,
        },
        x_scale: 1.0,
        w_scale: 1.0,
        grad_scale: 1.0,
    };
    let (setup, program) = conv::deconv_forward_setup(&deconv);
    setup.same_bits(backend, &program)?;
    let (setup, program) = conv::deconv_backward_setup(&deconv);
    setup.same_bits(backend, &program)?;

    for kind in [
        MapLoss::SoftmaxCrossEntropy,
        MapLoss::BalancedBinaryCrossEntropy,
    ] {
        let case = MapLossCase {
            seed: 9,
            kind,
            maps: 12,
            pixels: 1600,
            scale: 1.0 / 6.0,
            logit_scale: 2.0,
            density: 0.3,
            edge_maps: false,
            soft_targets: false,
        };
        for forward in [true, false] {
            let (setup, program) = loss::map_loss_setup(&case, forward);
            setup.same_bits(backend, &program)?;
        }
    }

    let squares = VectorCase {
        seed: 10,
        len: 100_003,
        scale: 1.0,
    };
    let (setup, program) = optim::sum_squares_setup(&squares);
    setup.same_bits(backend, &program)?;
    let adamw = AdamWCase {
        seed: 11,
        len: 10_000,
        lr: 1e-3,
        weight_decay: 0.05,
        beta1: 0.9,
        beta2: 0.95,
        step: 3,
        param_scale: 0.02,
        grad_scale: 1e-2,
    };
    let (setup, program) = optim::adamw_setup(&adamw);
    setup.same_bits(backend, &program)
}
