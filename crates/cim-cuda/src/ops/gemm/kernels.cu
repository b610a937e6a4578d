// GEMM operands for bf16 mixed precision (GemmMath::Bf16, DESIGN.md "Precision"): f32
// values rounded to bf16 before cuBLAS multiplies them on tensor cores with f32
// accumulation. The rounding is written out in integer operations rather than taken from
// cuda_bf16.h, so the emulator runs the very code the GPU runs and both give the bits of
// IEEE round-to-nearest-even (the `half` crate's `bf16::from_f32`, which the tests compare
// against).

// `v` rounded to bf16, to nearest with ties to even: the exponent carries over on mantissa
// overflow (up to infinity), subnormals round like any other value. NaN stays NaN, quiet,
// with its sign and the top bits of its payload.
__device__ __forceinline__ unsigned short f32_to_bf16(float v) {
    unsigned bits = (unsigned)__float_as_int(v);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((bits >> 16) | 0x0040u);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (unsigned short)(bits >> 16);
}

// out[i] = bf16(x[i]) for i < n: one GEMM operand, into the backend's scratch.
struct ToBf16Args {
    unsigned short* out;
    const float* x;
    long long n;
};

CIM_KERNEL(to_bf16, ToBf16Args) {
    for (long long i = global_index(); i < a.n; i += grid_stride()) a.out[i] = f32_to_bf16(a.x[i]);
}
