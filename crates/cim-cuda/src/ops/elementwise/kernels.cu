// Element-wise and broadcast kernels (Elementwise trait, S3/S4): residual adds, scaling,
// bias broadcast and its reduction, the exemplar repeat, exact GELU. Element-wise kernels
// are grid-stride loops; reductions give one block per output and a fixed f64 tree.

struct FillArgs {
    float* x;
    float value;
    long long n;
};

CIM_KERNEL(fill, FillArgs) {
    for (long long i = global_index(); i < a.n; i += grid_stride()) a.x[i] = a.value;
}

struct AddAssignArgs {
    float* x;
    const float* y;
    long long n;
};

CIM_KERNEL(add_assign, AddAssignArgs) {
    for (long long i = global_index(); i < a.n; i += grid_stride()) a.x[i] += a.y[i];
}

struct ScaleArgs {
    float* x;
    float alpha;
    long long n;
};

CIM_KERNEL(scale, ScaleArgs) {
    for (long long i = global_index(); i < a.n; i += grid_stride()) a.x[i] *= a.alpha;
}

// out[o, l, i] += v[l] over out [outer, len, inner].
struct AddBroadcastArgs {
    float* out;
    const float* v;
    long long len;
    long long inner;
    long long n;
};

CIM_KERNEL(add_broadcast, AddBroadcastArgs) {
    for (long long i = global_index(); i < a.n; i += grid_stride())
        a.out[i] += a.v[(i / a.inner) % a.len];
}

// dv[l] += sum over (o, i) of dout[o, l, i]; block l sums its outer * inner terms.
struct SumBroadcastArgs {
    float* dv;
    const float* dout;
    long long outer;
    long long len;
    long long inner;
};

CIM_KERNEL(sum_broadcast, SumBroadcastArgs) {
    long long l = blockIdx.x;
    long long terms = a.outer * a.inner;
    double sum = 0.0;
    for (long long t = threadIdx.x; t < terms; t += blockDim.x) {
        long long o = t / a.inner, i = t % a.inner;
        sum += a.dout[(o * a.len + l) * a.inner + i];
    }
    sum = block_sum_f64(sum);
    if (threadIdx.x == 0) a.dv[l] += (float)sum;
}

// The bias case of sum_broadcast (inner == 1): dv[l] += sum over rows of dout[row, l].
// Block (32, 32): 32 adjacent columns, so each warp reads 128 contiguous bytes of a row;
// thread (c, s) sums rows s, s + 32, ... of its column in f64, in order, then the 32 slots
// of a column are added by a fixed tree.
struct SumColumnsArgs {
    float* dv;
    const float* dout;
    long long rows;
    long long cols;
};

CIM_KERNEL(sum_columns, SumColumnsArgs) {
    __shared__ double slots[32][33];
    long long col = (long long)blockIdx.x * 32 + threadIdx.x;
    double sum = 0.0;
    if (col < a.cols)
        for (long long r = threadIdx.y; r < a.rows; r += 32) sum += a.dout[r * a.cols + col];
    slots[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    for (unsigned half = 16; half > 0; half >>= 1) {
        if (threadIdx.y < half) slots[threadIdx.y][threadIdx.x] += slots[threadIdx.y + half][threadIdx.x];
        __syncthreads();
    }
    if (threadIdx.y == 0 && col < a.cols) a.dv[col] += (float)slots[0][threadIdx.x];
}

// out[b, k, l] = x[b, l].
struct RepeatForwardArgs {
    float* out;
    const float* x;
    long long copies;
    long long len;
    long long n;
};

CIM_KERNEL(repeat_forward, RepeatForwardArgs) {
    for (long long i = global_index(); i < a.n; i += grid_stride()) {
        long long l = i % a.len, b = i / (a.len * a.copies);
        a.out[i] = a.x[b * a.len + l];
    }
}

// dx[b, l] = sum over k of dout[b, k, l] (written), k in order.
struct RepeatBackwardArgs {
    float* dx;
    const float* dout;
    long long copies;
    long long len;
    long long n;
};

CIM_KERNEL(repeat_backward, RepeatBackwardArgs) {
    for (long long i = global_index(); i < a.n; i += grid_stride()) {
        long long l = i % a.len, b = i / a.len;
        float sum = 0.0f;
        for (long long k = 0; k < a.copies; k++) sum += a.dout[(b * a.copies + k) * a.len + l];
        a.dx[i] = sum;
    }
}

// Exact GELU, x * Phi(x), with Phi through erfc so the left tail keeps its precision.
struct GeluArgs {
    float* out;
    const float* x;
    long long n;
};

CIM_KERNEL(gelu_forward, GeluArgs) {
    for (long long i = global_index(); i < a.n; i += grid_stride()) {
        float x = a.x[i];
        a.out[i] = 0.5f * x * erfcf(-x * 0.70710678118654752f);
    }
}

// d *= GELU'(x) = Phi(x) + x * phi(x).
CIM_KERNEL(gelu_backward, GeluArgs) {
    for (long long i = global_index(); i < a.n; i += grid_stride()) {
        float x = a.x[i];
        float cdf = 0.5f * erfcf(-x * 0.70710678118654752f);
        float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
        a.out[i] *= cdf + x * pdf;
    }
}
