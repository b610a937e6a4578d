//! The conformance suite on the emulator with the linear layers' bias work fused into
//! their GEMMs (`BiasEpilogue::Fused`, issue 6) and f32 GEMMs: every op, whole training
//! steps included, with `linear_forward` and `linear_backward_params` taking the epilogue
//! path that cuBLASLt runs on the GPU. Beside it, the two linear properties with epilogues
//! in the other GEMM maths (TF32 and both bf16 modes), and the epilogues themselves in
//! cuBLASLt's column-major terms: `BIAS` adds one value per row of D, `BGRADB` writes the
//! sum of op(B) over the inner dimension, one value per column of D. And the fallback to
//! the separate path where cuBLASLt has no algorithm for an epilogue.

use cim_cuda::{
    BiasEpilogue, ColumnMajorGemm, Cuda, Device, Emulator, Epilogue, GemmConfig, GemmInput,
    GemmMath,
};
use std::sync::atomic::{AtomicUsize, Ordering};

use conformance::{
    RunConfig, linear_backward_params_case, linear_forward_case, run_property, strategies,
};

fn fused(math: GemmMath) -> Cuda<Emulator> {
    Cuda::emulated_with(GemmConfig {
        math,
        bias: BiasEpilogue::Fused,
    })
}

conformance::suite!(Cuda<Emulator>, fused(GemmMath::F32));

#[test]
fn linear_ops_with_epilogues_in_every_gemm_math() {
    let config = RunConfig::from_env();
    for math in [GemmMath::Tf32, GemmMath::Bf16, GemmMath::Bf16Fused] {
        let backend = fused(math);
        let forward = strategies::linear_cases();
        run_property(
            &backend,
            "linear_forward",
            &config,
            forward,
            linear_forward_case,
        )
        .unwrap_or_else(|m| panic!("{m}"));
        let backward = strategies::linear_cases();
        run_property(
            &backend,
            "linear_backward_params",
            &config,
            backward,
            linear_backward_params_case,
        )
        .unwrap_or_else(|m| panic!("{m}"));
    }
}

/// Uploads `values` to a fresh emulator allocation; returns it (kept alive) and its address.
fn upload(device: &Emulator, values: &[f32]) -> (<Emulator as Device>::Alloc, u64) {
    let alloc = device.alloc(values.len() * 4).unwrap();
    let ptr = Emulator::address(&alloc);
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
    // SAFETY: the allocation holds `values.len()` f32.
    unsafe { device.upload(ptr, &bytes).unwrap() };
    (alloc, ptr)
}

fn download(device: &Emulator, ptr: u64, len: usize) -> Vec<f32> {
    let mut bytes = vec![0u8; len * 4];
    // SAFETY: the caller passes an allocation of at least `len` f32.
    unsafe { device.download(ptr, &mut bytes).unwrap() };
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn epilogues_have_cublaslt_meaning_in_column_major_terms() {
    let backend = Cuda::emulated();
    let device = backend.device();
    // D [m, n] = A [m, k] op(B), B stored [n, k] (trans_b), all column-major; small
    // integers, so every sum is exact.
    let (m, n, k) = (3, 2, 4);
    let a: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32 - 2.0).collect();
    let b: Vec<f32> = (0..n * k).map(|i| (i % 3) as f32 + 1.0).collect();
    let a_at = |i: usize, p: usize| a[i + p * m];
    let opb_at = |p: usize, j: usize| b[j + p * n];
    let product = |i: usize, j: usize| (0..k).map(|p| a_at(i, p) * opb_at(p, j)).sum::<f32>();
    let bias = [10.0f32, 20.0, 30.0];
    let c0 = vec![0.5f32; m * n];
    let (_a, a_ptr) = upload(device, &a);
    let (_b, b_ptr) = upload(device, &b);
    let (_bias, bias_ptr) = upload(device, &bias);
    let (_c, c_ptr) = upload(device, &c0);
    let (_grad, grad_ptr) = upload(device, &[f32::NAN; 2]);
    let call = |beta: f32, epilogue: Epilogue| ColumnMajorGemm {
        input: GemmInput::F32,
        trans_a: false,
        trans_b: true,
        m,
        n,
        k,
        alpha: 1.0,
        a: a_ptr,
        lda: m,
        stride_a: m * k,
        b: b_ptr,
        ldb: n,
        stride_b: n * k,
        beta,
        c: c_ptr,
        ldc: m,
        stride_c: m * n,
        batch: 1,
        epilogue,
    };
    // A vector off 16 bytes is refused, as cuBLASLt may load it in 16-byte units.
    assert!(
        device
            .runs_epilogue(&call(0.0, Epilogue::Bias(bias_ptr)))
            .unwrap()
    );
    assert!(
        !device
            .runs_epilogue(&call(0.0, Epilogue::Bias(bias_ptr + 4)))
            .unwrap()
    );
    assert!(
        !device
            .runs_epilogue(&call(0.0, Epilogue::BiasGradientB(grad_ptr + 8)))
            .unwrap()
    );
    // SAFETY: every matrix and vector lies in the allocations above.
    unsafe { device.gemm(&call(0.0, Epilogue::Bias(bias_ptr))).unwrap() };
    let d = download(device, c_ptr, m * n);
    for j in 0..n {
        for i in 0..m {
            assert_eq!(d[i + j * m], product(i, j) + bias[i], "BIAS at ({i}, {j})");
        }
    }
    // SAFETY: as above.
    unsafe {
        device
            .gemm(&call(1.0, Epilogue::BiasGradientB(grad_ptr)))
            .unwrap()
    };
    let d2 = download(device, c_ptr, m * n);
    for j in 0..n {
        for i in 0..m {
            assert_eq!(
                d2[i + j * m],
                d[i + j * m] + product(i, j),
                "beta 1 at ({i}, {j})"
            );
        }
    }
    let grad = download(device, grad_ptr, n);
    for (j, g) in grad.iter().enumerate() {
        assert_eq!(
            *g,
            (0..k).map(|p| opb_at(p, j)).sum::<f32>(),
            "BGRADB at {j}"
        );
    }
}

/// Epilogue GEMMs the refusing emulator below turned down, and ones it ran.
static REFUSED: AtomicUsize = AtomicUsize::new(0);
static ACCEPTED: AtomicUsize = AtomicUsize::new(0);

/// No algorithm for any bias-gradient epilogue, nor for bias epilogues over an odd number
/// of rows (output features): both fallbacks and the fused forward run in one step.
fn refuses(g: &ColumnMajorGemm) -> bool {
    let refused = matches!(g.epilogue, Epilogue::BiasGradientB(_)) || g.m % 2 == 1;
    let counter = if refused { &REFUSED } else { &ACCEPTED };
    counter.fetch_add(1, Ordering::Relaxed);
    refused
}

/// Where cuBLASLt finds no algorithm for an epilogue, the linear ops take the separate
/// path instead of failing, and still agree with the reference: the linear properties
/// and whole training steps, in f32 and in bf16 (whose fallback is decided before the
/// operands are converted). The emulator fails any refused GEMM that is queued anyway.
#[test]
fn linear_ops_fall_back_where_cublaslt_has_no_algorithm() {
    let config = RunConfig::from_env();
    for math in [GemmMath::F32, GemmMath::Bf16] {
        let backend = Cuda::emulated_refusing(
            GemmConfig {
                math,
                bias: BiasEpilogue::Fused,
            },
            refuses,
        );
        run_property(
            &backend,
            "linear_forward",
            &config,
            strategies::linear_cases(),
            linear_forward_case,
        )
        .unwrap_or_else(|m| panic!("{m}"));
        run_property(
            &backend,
            "linear_backward_params",
            &config,
            strategies::linear_cases(),
            linear_backward_params_case,
        )
        .unwrap_or_else(|m| panic!("{m}"));
        conformance::training_steps(&backend).unwrap_or_else(|m| panic!("{math:?}: {m}"));
    }
    assert!(
        REFUSED.load(Ordering::Relaxed) > 0,
        "no epilogue was refused"
    );
    assert!(
        ACCEPTED.load(Ordering::Relaxed) > 0,
        "no epilogue ran fused beside the refused ones"
    );
}
