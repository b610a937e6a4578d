//! The NaN rule of the contract: a NaN (or infinity) in an input reaches every output
//! element that depends on it. Each case poisons one input element, compares with the
//! reference (NaN where the reference has NaN, and only there), and then states the
//! dependent elements independently of the reference, so a reference that lost a NaN
//! would be caught too.

use cim_spec::backend::{AttentionArgs, Backend, ConvTransposeArgs, XcorrArgs};
use cim_spec::loss::MapLoss;

use crate::cases::{
    AttentionCase, ConvTransposeCase, GemmCase, LayerNormCase, Layout, MapLossCase, VectorCase,
    XcorrCase,
};
use crate::checks::{attention, conv, gemm, loss, norm, optim};
use crate::mismatch::Mismatch;

/// Runs the poisoned cases on `backend`: GEMM (a NaN in A fills its row of C, one in B its
/// column), LayerNorm forward (the row's outputs, mean and rstd) and backward (a NaN in
/// `dout` reaches its row of `dx` and its column of `dgamma` and `dbeta`), self-attention
/// (a NaN key poisons its head's outputs and probabilities in its sequence),
/// cross-attention (a NaN value poisons its channel of every query), the depthwise
/// correlation (a NaN map pixel poisons its channel of every output whose window covers
/// it), the transposed convolution (a NaN input pixel poisons every output plane's
/// pixels its kernel reaches), every map loss (the
/// loss, and the gradient of the poisoned pixel), and the sum of squares (NaN stays NaN,
/// an infinity makes it non-finite).
pub fn nan_propagation<B: Backend>(backend: &B) -> Result<(), Mismatch> {
    let name = backend.name();
    let nan = f32::NAN;

    // GEMM [5 x 3] x [3 x 4].
    let gemm_case = GemmCase {
        seed: 21,
        batch: 1,
        m: 5,
        n: 4,
        k: 3,
        trans_a: false,
        trans_b: false,
        alpha: 1.0,
        beta: 0.0,
        a_layout: Layout::Packed,
        b_layout: Layout::Packed,
        c_gap: 0,
        scale: 1.0,
    };
    let (mut setup, program) = gemm::gemm_setup(&gemm_case);
    setup.poison("a", 2 * 3 + 1, nan); // A[2, 1]
    let out = setup.compare_outputs(backend, &program)?;
    setup.expect_non_finite(name, &out, "c", 2 * 4..3 * 4)?;
    let (mut setup, program) = gemm::gemm_setup(&gemm_case);
    setup.poison("b", 2 * 4 + 1, nan); // B[2, 1]
    let out = setup.compare_outputs(backend, &program)?;
    setup.expect_non_finite(name, &out, "c", (0..5).map(|i| i * 4 + 1))?;

    // LayerNorm [4 x 7], NaN at row 1.
    let ln = LayerNormCase {
        seed: 22,
        rows: 4,
        cols: 7,
        scale: 1.0,
        offset: 1.0,
        eps: 1e-6,
        grad_scale: 1.0,
    };
    let (mut setup, program) = norm::layernorm_forward_setup(&ln);
    setup.poison("x", 7 + 3, nan);
    let out = setup.compare_outputs(backend, &program)?;
    setup.expect_non_finite(name, &out, "out", 7..14)?;
    setup.expect_non_finite(name, &out, "mean", [1])?;
    setup.expect_non_finite(name, &out, "rstd", [1])?;
    let (mut setup, program) = norm::layernorm_backward_setup(&ln)?;
    setup.poison("dout", 7 + 3, nan);
    let out = setup.compare_outputs(backend, &program)?;
    setup.expect_non_finite(name, &out, "dx", 7..14)?;
    setup.expect_non_finite(name, &out, "dgamma", [3])?;
    setup.expect_non_finite(name, &out, "dbeta", [3])?;

    // Self-attention B 2, N 5, H 2, head_dim 3 (D 6): NaN in the key of token 2, head 1,
    // sequence 1.
    let self_case = AttentionCase {
        seed: 23,
        args: AttentionArgs {
            batch: 2,
            q_len: 5,
            kv_len: 5,
            heads: 2,
            head_dim: 3,
        },
        qk_scale: 1.0,
        v_scale: 1.0,
        grad_scale: 1.0,
    };
    let (mut setup, program) = attention::self_forward_setup(&self_case);
    setup.poison("qkv", (5 + 2) * 18 + 6 + 3, nan);
    let out = setup.compare_outputs(backend, &program)?;
    let head_outputs = (0..5).flat_map(|i| (3..6).map(move |c| (5 + i) * 6 + c));
    setup.expect_non_finite(name, &out, "out", head_outputs)?;
    setup.expect_non_finite(name, &out, "probs", (2 + 1) * 25..(2 + 2) * 25)?;

    // Cross-attention B 1, Nq 4, Nk 6, H 2, head_dim 2 (D 4): NaN in channel 1 of the
    // value of key token 3.
    let cross_case = AttentionCase {
        seed: 24,
        args: AttentionArgs {
            batch: 1,
            q_len: 4,
            kv_len: 6,
            heads: 2,
            head_dim: 2,
        },
        ..self_case
    };
    let (mut setup, program) = attention::cross_forward_setup(&cross_case);
    setup.poison("kv", 3 * 8 + 4 + 1, nan);
    let out = setup.compare_outputs(backend, &program)?;
    setup.expect_non_finite(name, &out, "out", (0..4).map(|i| i * 4 + 1))?;

    // Depthwise correlation, one 3 x 3 map of 2 channels, a 3 x 3 kernel (one padding
    // row and column each side): every output's window covers the centre pixel, so a NaN
    // in its channel 1 reaches channel 1 of all nine outputs.
    let xcorr_case = XcorrCase {
        seed: 27,
        args: XcorrArgs {
            batch: 1,
            channels: 2,
            height: 3,
            width: 3,
            kernel_h: 3,
            kernel_w: 3,
            scale: 1.0,
        },
        x_scale: 1.0,
        t_scale: 1.0,
        grad_scale: 1.0,
    };
    let (mut setup, program) = conv::xcorr_forward_setup(&xcorr_case);
    setup.poison("x", (1 + 4) * 2 + 1, nan);
    let out = setup.compare_outputs(backend, &program)?;
    setup.expect_non_finite(name, &out, "out", (1..10).map(|p| p * 2 + 1))?;

    // Transposed convolution of a 2 x 2 map, kernel 4, stride 2, padding 1 (4 x 4 out):
    // input pixel (0, 0) reaches output rows and columns 0..3 of both output planes.
    let deconv_case = ConvTransposeCase {
        seed: 28,
        args: ConvTransposeArgs {
            batch: 1,
            in_channels: 3,
            out_channels: 2,
            height: 2,
            width: 2,
            kernel: 4,
            stride: 2,
            padding: 1,
        },
        x_scale: 1.0,
        w_scale: 1.0,
        grad_scale: 1.0,
    };
    let (mut setup, program) = conv::deconv_forward_setup(&deconv_case);
    setup.poison("x", 3 + 2, nan);
    let out = setup.compare_outputs(backend, &program)?;
    let reached =
        (0..2).flat_map(|o| (0..3).flat_map(move |y| (0..3).map(move |x| o * 16 + y * 4 + x)));
    setup.expect_non_finite(name, &out, "out", reached)?;

    // Every map loss: 2 maps of 9 pixels, NaN in channel 0 of pixel 4 of map 1.
    for kind in [
        MapLoss::SoftmaxCrossEntropy,
        MapLoss::BinaryCrossEntropy,
        MapLoss::BalancedBinaryCrossEntropy,
        MapLoss::MeanSquaredError,
        MapLoss::focal(),
    ] {
        let channels = kind.channels();
        let case = MapLossCase {
            seed: 25,
            kind,
            maps: 2,
            pixels: 9,
            scale: 0.5,
            logit_scale: 1.0,
            density: 0.5,
            edge_maps: false,
            soft_targets: false,
        };
        let poisoned = channels * 9 + 4;
        let (mut setup, program) = loss::map_loss_setup(&case, true);
        setup.poison("logits", poisoned, nan);
        let out = setup.compare_outputs(backend, &program)?;
        setup.expect_non_finite(name, &out, "loss", [0])?;
        let (mut setup, program) = loss::map_loss_setup(&case, false);
        setup.poison("logits", poisoned, nan);
        let out = setup.compare_outputs(backend, &program)?;
        let pixel = (0..channels).map(|c| (channels + c) * 9 + 4);
        setup.expect_non_finite(name, &out, "dlogits", pixel)?;
    }

    // Sum of squares: NaN gives NaN (compared with the reference); an infinity must give a
    // non-finite result, NaN or infinity (compensated sums turn inf into NaN).
    let squares = VectorCase {
        seed: 26,
        len: 100,
        scale: 1.0,
    };
    let (mut setup, program) = optim::sum_squares_setup(&squares);
    setup.poison("x", 37, nan);
    let out = setup.compare_outputs(backend, &program)?;
    setup.expect_non_finite(name, &out, "out", [0])?;
    let (mut setup, program) = optim::sum_squares_setup(&squares);
    setup.poison("x", 37, f32::INFINITY);
    let out = setup.backend_outputs(backend, &program)?;
    setup.expect_non_finite(name, &out, "out", [0])
}
