// Kernels of the token ops (Tokens trait, S3/S4/S10): im2col of the patch embedding, the
// class token's prepend and its gradient, the mean pool of the patch tokens, and the
// align-corners bilinear resampling of the predicted maps with its transpose.
//
// Copies give one block per output row (a token, a patch), so the row's decomposition is
// computed once and its threads touch consecutive addresses; the upsampling gives one
// block per run of output rows. Sums run in f64 in a fixed order, one thread per output:
// the upsampling's transpose is a gather in which each input pixel adds the output pixels
// that tap it, never a scatter with atomics.

// out[b, t, (c p + ky) p + kx] = img[b, c, gy p + ky, gx p + kx], t = gy (W/p) + gx: one
// block per patch row of `out` (rows = B (H/p)(W/p), each C p p long).
struct PatchifyArgs {
    float* out;
    const float* img;
    long long rows;
    long long grid_w;
    long long grid_len;
    long long height;
    long long width;
    int channels;
    int patch;
};

CIM_KERNEL(patchify, PatchifyArgs) {
    int area = a.patch * a.patch;
    int row_len = a.channels * area;
    for (long long r = blockIdx.x; r < a.rows; r += gridDim.x) {
        long long b = r / a.grid_len, t = r % a.grid_len;
        long long y0 = (t / a.grid_w) * a.patch, x0 = (t % a.grid_w) * a.patch;
        const float* image = a.img + b * a.channels * a.height * a.width;
        float* dst = a.out + r * row_len;
        for (int j = threadIdx.x; j < row_len; j += blockDim.x) {
            int c = j / area, ky = (j % area) / a.patch, kx = j % a.patch;
            dst[j] = image[(c * a.height + y0 + ky) * a.width + x0 + kx];
        }
    }
}

// out[b, 0, :] = cls, out[b, 1 + t, :] = patches[b, t, :]: one block per token row of `out`
// (rows = B (1 + T)).
struct PrependClsForwardArgs {
    float* out;
    const float* patches;
    const float* cls;
    long long rows;
    long long tokens;
    long long dim;
};

CIM_KERNEL(prepend_cls_forward, PrependClsForwardArgs) {
    for (long long r = blockIdx.x; r < a.rows; r += gridDim.x) {
        long long b = r / (a.tokens + 1), t = r % (a.tokens + 1);
        const float* src = t == 0 ? a.cls : a.patches + (b * a.tokens + t - 1) * a.dim;
        float* dst = a.out + r * a.dim;
        for (long long d = threadIdx.x; d < a.dim; d += blockDim.x) dst[d] = src[d];
    }
}

// dcls[d] += sum over b, in order, of dout[b, 0, d] (f64, one rounding into dcls).
struct ClsGradArgs {
    float* dcls;
    const float* dout;
    long long batch;
    long long tokens;
    long long dim;
};

CIM_KERNEL(cls_grad, ClsGradArgs) {
    long long seq = (a.tokens + 1) * a.dim;
    for (long long d = global_index(); d < a.dim; d += grid_stride()) {
        double sum = 0.0;
        for (long long b = 0; b < a.batch; b++) sum += a.dout[b * seq + d];
        a.dcls[d] = (float)((double)a.dcls[d] + sum);
    }
}

// dpatches[b, t, :] = dout[b, 1 + t, :]: one block per token row of `dpatches` (rows = B T).
struct PatchGradArgs {
    float* dpatches;
    const float* dout;
    long long rows;
    long long tokens;
    long long dim;
};

CIM_KERNEL(patch_grad, PatchGradArgs) {
    for (long long r = blockIdx.x; r < a.rows; r += gridDim.x) {
        long long b = r / a.tokens, t = r % a.tokens;
        const float* src = a.dout + (b * (a.tokens + 1) + 1 + t) * a.dim;
        float* dst = a.dpatches + r * a.dim;
        for (long long d = threadIdx.x; d < a.dim; d += blockDim.x) dst[d] = src[d];
    }
}

// out[b, d] = (sum over t = 1..T, in order, of x[b, t, d]) / T in f64: one thread per
// output, neighbouring threads on neighbouring channels.
struct MeanPoolForwardArgs {
    float* out;
    const float* x;
    long long tokens;
    long long dim;
    long long n;
};

CIM_KERNEL(mean_pool_forward, MeanPoolForwardArgs) {
    for (long long i = global_index(); i < a.n; i += grid_stride()) {
        long long b = i / a.dim, d = i % a.dim;
        const float* col = a.x + b * (a.tokens + 1) * a.dim + d;
        double sum = 0.0;
        for (long long t = 1; t <= a.tokens; t++) sum += col[t * a.dim];
        a.out[i] = (float)(sum / (double)a.tokens);
    }
}

// dx[b, 0, :] = 0, dx[b, t, :] = dout[b, :] / T: one block per token row of `dx`
// (rows = B (1 + T)).
struct MeanPoolBackwardArgs {
    float* dx;
    const float* dout;
    long long rows;
    long long tokens;
    long long dim;
};

CIM_KERNEL(mean_pool_backward, MeanPoolBackwardArgs) {
    float count = (float)a.tokens;
    for (long long r = blockIdx.x; r < a.rows; r += gridDim.x) {
        long long b = r / (a.tokens + 1), t = r % (a.tokens + 1);
        const float* g = a.dout + b * a.dim;
        float* dst = a.dx + r * a.dim;
        for (long long d = threadIdx.x; d < a.dim; d += blockDim.x)
            dst[d] = t == 0 ? 0.0f : g[d] / count;
    }
}

// The align_corners = true source taps of consecutive output indices of one axis resampled
// from `in_len` to `out_len`: index i reads s = i (in_len - 1) / (out_len - 1) (0 when
// out_len is 1) as (1 - f) x[lo] + f x[hi], lo = floor(s), hi = min(lo + 1, in_len - 1),
// f = s - lo. `lo` and the remainder `rem` of the integer quotient are exact, so f is
// rem / den to an ulp of f64, and stepping to i + 1 needs no division.
struct AxisTaps {
    int lo;
    int rem;
    int den;
    int step_lo;
    int step_rem;
    int last;
    double inv_den;
};

__device__ __forceinline__ AxisTaps axis_taps(int i, int in_len, int out_len) {
    AxisTaps t;
    t.den = out_len > 1 ? out_len - 1 : 1;
    long long num = out_len > 1 ? (long long)i * (in_len - 1) : 0;
    t.lo = (int)(num / t.den);
    t.rem = (int)(num - (long long)t.lo * t.den);
    t.step_lo = (in_len - 1) / t.den;
    t.step_rem = (in_len - 1) - t.step_lo * t.den;
    t.last = in_len - 1;
    t.inv_den = 1.0 / (double)t.den;
    return t;
}

__device__ __forceinline__ void next_tap(AxisTaps& t) {
    t.lo += t.step_lo;
    t.rem += t.step_rem;
    if (t.rem >= t.den) {
        t.rem -= t.den;
        t.lo += 1;
    }
}

__device__ __forceinline__ int tap_hi(const AxisTaps& t) { return t.lo < t.last ? t.lo + 1 : t.last; }

__device__ __forceinline__ double tap_fraction(const AxisTaps& t) { return (double)t.rem * t.inv_den; }

// What the current output index passes back to source index y from its gradient g:
// (1 - f) g through lo plus f g through hi, as separate terms (both when lo == hi). Only
// called for outputs that tap y, so a zero weight still multiplies g and a NaN or an
// infinity there reaches y as NaN, exactly as in the scatter form.
__device__ __forceinline__ double tap_gather(const AxisTaps& t, int y, double g) {
    double f = tap_fraction(t);
    double sum = 0.0;
    if (t.lo == y) sum += (1.0 - f) * g;
    if (tap_hi(t) == y) sum += f * g;
    return sum;
}

// The output indices whose taps include source index y: exactly those with lo in
// {y - 1, y} (lo = y - 1 always has hi = y), a contiguous range as lo grows with i. Sets
// first > last when there is none (a down-sampling that skips y).
__device__ __forceinline__ void tapping_outputs(int y, int in_len, int out_len, int* first, int* last) {
    if (in_len == 1) {
        *first = 0;
        *last = out_len - 1;
    } else if (out_len == 1) {
        *first = 0;
        *last = y <= 1 ? 0 : -1;
    } else {
        // lo_i >= y - 1 <=> i (in - 1) >= (y - 1)(out - 1); lo_i <= y <=> i (in - 1) < (y + 1)(out - 1).
        long long den = in_len - 1, span = out_len - 1;
        *first = y == 0 ? 0 : (int)(((y - 1) * span + den - 1) / den);
        long long end = ((y + 1) * span - 1) / den;
        *last = (int)(end < span ? end : span);
    }
}

// Forward: one block per run of up to `chunk` output rows of one plane (units = N
// ceil(H / chunk)); each thread keeps its column's taps and steps the row taps, so no
// division is left per output. All four taps are read, so a NaN also reaches the outputs
// where its weight is 0 (as the reference and PyTorch).
struct UpsampleForwardArgs {
    float* out;
    const float* x;
    long long units;
    int chunk;
    int in_h;
    int in_w;
    int out_h;
    int out_w;
};

CIM_KERNEL(upsample_forward, UpsampleForwardArgs) {
    long long chunks = ((long long)a.out_h + a.chunk - 1) / a.chunk;
    for (long long u = blockIdx.x; u < a.units; u += gridDim.x) {
        long long plane = u / chunks;
        int i0 = (int)(u % chunks) * a.chunk;
        int i1 = i0 + a.chunk < a.out_h ? i0 + a.chunk : a.out_h;
        const float* src = a.x + plane * a.in_h * a.in_w;
        float* dst = a.out + plane * a.out_h * a.out_w;
        for (int j = threadIdx.x; j < a.out_w; j += blockDim.x) {
            AxisTaps tx = axis_taps(j, a.in_w, a.out_w);
            float wx = (float)tap_fraction(tx);
            int x0 = tx.lo, x1 = tap_hi(tx);
            AxisTaps ty = axis_taps(i0, a.in_h, a.out_h);
            for (int i = i0; i < i1; i++, next_tap(ty)) {
                float wy = (float)tap_fraction(ty);
                const float* top = src + (long long)ty.lo * a.in_w;
                const float* bottom = src + (long long)tap_hi(ty) * a.in_w;
                float t = (1.0f - wx) * top[x0] + wx * top[x1];
                float b = (1.0f - wx) * bottom[x0] + wx * bottom[x1];
                dst[(long long)i * a.out_w + j] = (1.0f - wy) * t + wy * b;
            }
        }
    }
}

// Backward as a gather: dx[n, y, x] = sum over the output rows i that tap y (in order) of
// wy_i * (sum over the output columns j that tap x (in order) of wx_j dout[n, i, j]), in
// f64; one thread per input pixel (n = N h w).
struct UpsampleBackwardArgs {
    float* dx;
    const float* dout;
    long long n;
    int in_h;
    int in_w;
    int out_h;
    int out_w;
};

CIM_KERNEL(upsample_backward, UpsampleBackwardArgs) {
    long long in_plane = (long long)a.in_h * a.in_w;
    for (long long idx = global_index(); idx < a.n; idx += grid_stride()) {
        long long plane = idx / in_plane, yx = idx % in_plane;
        int y = (int)(yx / a.in_w), x = (int)(yx % a.in_w);
        int i0, i1, j0, j1;
        tapping_outputs(y, a.in_h, a.out_h, &i0, &i1);
        tapping_outputs(x, a.in_w, a.out_w, &j0, &j1);
        const float* g = a.dout + plane * a.out_h * a.out_w;
        double acc = 0.0;
        AxisTaps ty = axis_taps(i0, a.in_h, a.out_h);
        const AxisTaps first_tx = axis_taps(j0, a.in_w, a.out_w);
        for (int i = i0; i <= i1; i++, next_tap(ty)) {
            const float* row = g + (long long)i * a.out_w;
            double line = 0.0;
            AxisTaps tx = first_tx;
            for (int j = j0; j <= j1; j++, next_tap(tx)) line += tap_gather(tx, x, (double)row[j]);
            acc += tap_gather(ty, y, line);
        }
        a.dx[idx] = (float)acc;
    }
}
