//! The conformance suite on the emulator in bf16 mixed precision (`GemmMath::Bf16`: every
//! GEMM rounds both operands to bf16 and accumulates in f32, everything else is f32),
//! under the tolerance table's bf16 column, whole training steps included. Beside it, the
//! rounding itself: bit for bit against the `half` crate (round to nearest, ties to even,
//! infinities, NaN, subnormals) on both operands, read back through products with 1, and
//! a batched, transposed, broadcast, offset GEMM against the exact product of the rounded
//! operands. Both bf16 modes pass the rounding tests: `Bf16` (the backend's conversion
//! kernel) and `Bf16Fused` (f32 operands rounded inside the GEMM, as cuBLAS's FAST_16BF),
//! so on the emulator the two give the same bits and the suite covers both.

mod buffers;

use cim_cuda::{Cuda, Emulator, GemmMath};
use cim_spec::backend::{GemmArgs, Memory};
use cim_spec::ops;
use half::bf16;

use buffers::{download, upload};

conformance::suite!(Cuda<Emulator>, Cuda::emulated_with(GemmMath::Bf16));

/// What bf16 rounding must give for `x`, as f32.
fn rounded(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

/// Inputs that exercise every case of the rounding: for each exponent (subnormals and
/// the largest finite included) and sign, low halves below, at and above the tie, with
/// the kept half even and odd; NaNs with payloads only in the dropped half; infinities and
/// zeros; then a spread of arbitrary bit patterns.
fn rounding_inputs() -> Vec<f32> {
    let mut bits = Vec::new();
    for sign in [0u32, 0x8000_0000] {
        for exponent in 0..=0xffu32 {
            for kept_odd in [0u32, 1] {
                for low in [0x0000u32, 0x0001, 0x7fff, 0x8000, 0x8001, 0xffff] {
                    let mantissa = (0x5a << 16 | kept_odd << 16 | low) & 0x7f_ffff;
                    bits.push(sign | exponent << 23 | mantissa);
                }
            }
        }
        bits.extend(
            [
                0x7f7f_ffff,
                0x7f7f_8000,
                0x7f7f_7fff,
                0x0000_8000,
                0x0001_8000,
            ]
            .map(|b| b | sign),
        );
        bits.extend([0x7f80_0001, 0x7fc0_0000, 0x7fff_ffff, 0x7f80_8000].map(|b| b | sign));
    }
    let mut state = 0x2545_f491u32;
    bits.extend((0..1 << 14).map(|_| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    }));
    bits.into_iter().map(f32::from_bits).collect()
}

fn assert_rounded(inputs: &[f32], got: &[f32], operand: &str) {
    for (&x, &g) in inputs.iter().zip(got) {
        let want = rounded(x);
        assert!(
            g == want || (g.is_nan() && want.is_nan()),
            "{operand}: {x:e} ({:#010x}) became {g:e} ({:#010x}), half gives {want:e} ({:#010x})",
            x.to_bits(),
            g.to_bits(),
            want.to_bits()
        );
    }
}

/// The two ways of multiplying in bf16.
const BF16_MODES: [GemmMath; 2] = [GemmMath::Bf16, GemmMath::Bf16Fused];

#[test]
fn gemm_operands_are_rounded_to_bf16_like_half() {
    for mode in BF16_MODES {
        operands_are_rounded_to_bf16_like_half(&Cuda::emulated_with(mode));
    }
}

fn operands_are_rounded_to_bf16_like_half(b: &Cuda<Emulator>) {
    let inputs = rounding_inputs();
    let len = inputs.len();
    let x = upload(b, &inputs);
    let one = upload(b, &[1.0]);
    let mut c = upload(b, &vec![f32::NAN; len]);
    // A [len, 1] times B [1, 1] = 1: C is A as the multiplier saw it (a product with 1 is
    // exact, and no sum can round it).
    ops::gemm(
        b,
        b.view_mut(&mut c, 0..len),
        b.view(&x, 0..len),
        b.view(&one, 0..1),
        &GemmArgs::single(len, 1, 1, false, false),
    )
    .unwrap();
    assert_rounded(&inputs, &download(b, &c), "A");
    // A [1, 1] = 1 times B [1, len]: the same for B.
    ops::gemm(
        b,
        b.view_mut(&mut c, 0..len),
        b.view(&one, 0..1),
        b.view(&x, 0..len),
        &GemmArgs::single(1, len, 1, false, false),
    )
    .unwrap();
    assert_rounded(&inputs, &download(b, &c), "B");
}

#[test]
fn batched_transposed_broadcast_gemm_multiplies_the_rounded_operands() {
    for mode in BF16_MODES {
        multiplies_the_rounded_operands(&Cuda::emulated_with(mode));
    }
}

fn multiplies_the_rounded_operands(b: &Cuda<Emulator>) {
    let (batch, m, n, k) = (3, 5, 4, 7);
    // Values with more mantissa than bf16 keeps, so rounding shows in every product.
    let values = |len: usize, seed: usize| -> Vec<f32> {
        (0..len)
            .map(|i| 1.0 + ((i * 37 + seed * 11) % 97) as f32 * 0.001_234_5)
            .map(|v| if v.to_bits() % 3 == 0 { -v } else { v })
            .collect()
    };
    // A stored [k, m] once (broadcast, trans_a), B stored [n, k] per batch (trans_b), both at
    // odd offsets into their buffers.
    let a_host = values(1 + k * m, 1);
    let b_host = values(2 + batch * n * k, 2);
    let c_host = values(batch * m * n, 3);
    let (a_dev, b_dev) = (upload(b, &a_host), upload(b, &b_host));
    let mut c_dev = upload(b, &c_host);
    let args = GemmArgs {
        batch,
        m,
        n,
        k,
        trans_a: true,
        trans_b: true,
        alpha: 0.5,
        beta: 1.0,
        stride_a: 0,
        stride_b: n * k,
        stride_c: m * n,
    };
    ops::gemm(
        b,
        b.view_mut(&mut c_dev, 0..batch * m * n),
        b.view(&a_dev, 1..1 + k * m),
        b.view(&b_dev, 2..2 + batch * n * k),
        &args,
    )
    .unwrap();
    let got = download(b, &c_dev);
    let mut worst_unrounded = 0.0f64;
    for l in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let (mut exact, mut unrounded, mut magnitude) = (0.0f64, 0.0f64, 0.0f64);
                for p in 0..k {
                    let (x, y) = (a_host[1 + p * m + i], b_host[2 + l * n * k + j * k + p]);
                    exact += f64::from(rounded(x)) * f64::from(rounded(y));
                    unrounded += f64::from(x) * f64::from(y);
                    magnitude += (f64::from(x) * f64::from(y)).abs();
                }
                let old = f64::from(c_host[l * m * n + i * n + j]);
                let (want, f32_want) = (0.5 * exact + old, 0.5 * unrounded + old);
                let g = f64::from(got[l * m * n + i * n + j]);
                // f32 accumulation of k exact products and the alpha/beta update.
                let bound = (k + 2) as f64 * f64::from(f32::EPSILON) * (magnitude + old.abs());
                assert!(
                    (g - want).abs() <= bound,
                    "C[{l}][{i}][{j}] = {g}, the rounded operands give {want} (bound {bound:e})"
                );
                worst_unrounded = worst_unrounded.max((g - f32_want).abs() / bound);
            }
        }
    }
    assert!(
        worst_unrounded > 10.0,
        "the result is as close to the unrounded product as to the rounded one: were the \
         operands rounded? ({worst_unrounded})"
    );
}
