// Optimizer-side kernels (Optim trait, S6/S7): the AdamW step and the EMA target update,
// element-wise and bit-for-bit the f32 arithmetic of cim-spec's scalar definitions; the sum
// of squares behind the global gradient norm, a two-launch f64 reduction in a fixed
// order; and clipping by that norm, read from device memory.


// cim_spec::schedule::AdamWStep::apply per element, with its scalars rounded to f32 on
// the host. `lerp_from_grad` picks PyTorch's lerp branch: m + w (g - m) when false,
// g + (w - 1) (g - m) when true, `lerp_weight` being w or w - 1 accordingly.
struct AdamWStepArgs {
    float* param;
    float* m;
    float* v;
    const float* grad;
    float decay_factor;
    float lerp_weight;
    int lerp_from_grad;
    float beta2;
    float one_minus_beta2;
    float bias_correction2_sqrt;
    float eps;
    float neg_step_size;
    long long n;
};

CIM_KERNEL(adamw_update, AdamWStepArgs) {
    for (long long i = global_index(); i < a.n; i += grid_stride()) {
        float g = a.grad[i], m = a.m[i], v = a.v[i];
        // Rounded on its own, as the reference does: not fused with the final addition.
        float theta = __fmul_rn(a.param[i], a.decay_factor);
        float m_new = fmaf(a.lerp_weight, g - m, a.lerp_from_grad ? g : m);
        float v_new = fmaf(a.one_minus_beta2 * g, g, v * a.beta2);
        float denom = sqrtf(v_new) / a.bias_correction2_sqrt + a.eps;
        a.param[i] = theta + (a.neg_step_size * m_new) / denom;
        a.m[i] = m_new;
        a.v[i] = v_new;
    }
}

// target = target keep + online take, both factors f32 roundings of the f64 momentum
// (cim_spec::schedule::ema_scalar); the two products are rounded before the sum.
struct EmaArgs {
    float* target;
    const float* online;
    float keep;
    float take;
    long long n;
};

CIM_KERNEL(ema_update, EmaArgs) {
    for (long long i = global_index(); i < a.n; i += grid_stride())
        a.target[i] = __fmul_rn(a.target[i], a.keep) + __fmul_rn(a.online[i], a.take);
}

// First launch: block b writes partials[b], its threads' grid-stride sums (four
// loads in flight per step, added in index order) combined by a fixed tree. An f32 square
// is exact in f64, so only the additions round.
struct SumSquaresPartialArgs {
    double* partials;
    const float* x;
    long long n;
};

CIM_KERNEL(sum_squares_partial, SumSquaresPartialArgs) {
    long long i = global_index(), stride = grid_stride();
    double sum = 0.0;
    for (; i + 3 * stride < a.n; i += 4 * stride) {
        double v0 = a.x[i], v1 = a.x[i + stride], v2 = a.x[i + 2 * stride], v3 = a.x[i + 3 * stride];
        sum += v0 * v0;
        sum += v1 * v1;
        sum += v2 * v2;
        sum += v3 * v3;
    }
    for (; i < a.n; i += stride) {
        double v = a.x[i];
        sum += v * v;
    }
    sum = block_sum_f64(sum);
    if (threadIdx.x == 0) a.partials[blockIdx.x] = sum;
}

// Second launch, one block: out[0] = the sum of the first `blocks` partials.
struct SumSquaresFinalArgs {
    float* out;
    const double* partials;
    int blocks;
};

CIM_KERNEL(sum_squares_final, SumSquaresFinalArgs) {
    double sum = 0.0;
    for (int b = threadIdx.x; b < a.blocks; b += blockDim.x) sum += a.partials[b];
    sum = block_sum_f64(sum);
    if (threadIdx.x == 0) a.out[0] = (float)sum;
}

// x *= min(1, max_norm / (sqrt(norm_sq[0]) + 1e-6)), the factor in f64 as the CPU backend
// takes it; a NaN factor (a non-finite norm) is kept, so every element becomes NaN.
struct ClipArgs {
    float* x;
    const float* norm_sq;
    float max_norm;
    long long n;
};

CIM_KERNEL(clip_by_norm, ClipArgs) {
    double coef = (double)a.max_norm / (sqrt((double)a.norm_sq[0]) + 1e-6);
    float factor = (float)(coef > 1.0 ? 1.0 : coef);
    for (long long i = global_index(); i < a.n; i += grid_stride()) a.x[i] *= factor;
}
