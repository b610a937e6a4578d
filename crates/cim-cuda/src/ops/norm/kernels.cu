// LayerNorm kernels (Norm trait, S3). The forward and the input gradient give one warp to
// each row: lanes read the row in coalesced 32-column strides, sum in f64 and combine with
// warp shuffles, and the row's later passes re-read it (from L1/L2). The gamma/beta
// gradients are column sums over all rows; with no scratch to hold per-block partials,
// one block owns a tile of columns and sums every row into them, each thread over a fixed
// set of rows in order, then a fixed tree over the threads: the same bits on every run.

// Columns per block of the gamma/beta gradient kernel: a warp reads 32-byte segments of
// four rows, and narrow tiles give enough blocks to spread 192-column rows over the GPU.
#define LN_TILE_COLS 8
// Threads per block of that kernel, at most (row slots x tile columns).
#define LN_MAX_PARAM_THREADS 1024

// out = (x - mean) rstd gamma + beta per row of `cols`; mean and rstd kept per row.
struct LayerNormForwardArgs {
    float* out;
    float* mean;
    float* rstd;
    const float* x;
    const float* gamma;
    const float* beta;
    long long rows;
    long long cols;
    float eps;
};

CIM_KERNEL(layernorm_forward, LayerNormForwardArgs) {
    long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= a.rows) return;  // the whole warp leaves together
    int lane = threadIdx.x % 32;
    const float* x = a.x + row * a.cols;
    double sum = 0.0;
    for (long long c = lane; c < a.cols; c += 32) sum += x[c];
    float mean = (float)(warp_sum_f64(sum) / (double)a.cols);
    // Second pass over the centred values: no cancellation between sum x^2 and mean^2.
    double squares = 0.0;
    for (long long c = lane; c < a.cols; c += 32) {
        double d = x[c] - mean;
        squares += d * d;
    }
    double var = warp_sum_f64(squares) / (double)a.cols;
    float rstd = (float)(1.0 / sqrt(var + (double)a.eps));
    float* out = a.out + row * a.cols;
    for (long long c = lane; c < a.cols; c += 32)
        out[c] = (x[c] - mean) * rstd * a.gamma[c] + a.beta[c];
    if (lane == 0) {
        a.mean[row] = mean;
        a.rstd[row] = rstd;
    }
}

// dx += rstd (g - mean_c(g) - xhat mean_c(g xhat)) with g = dout gamma, one warp per row.
struct LayerNormBackwardInputArgs {
    float* dx;
    const float* dout;
    const float* x;
    const float* gamma;
    const float* mean;
    const float* rstd;
    long long rows;
    long long cols;
};

CIM_KERNEL(layernorm_backward_input, LayerNormBackwardInputArgs) {
    long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= a.rows) return;  // the whole warp leaves together
    int lane = threadIdx.x % 32;
    long long start = row * a.cols;
    const float* dout = a.dout + start;
    const float* x = a.x + start;
    float mean = a.mean[row], rstd = a.rstd[row];
    double sum_g = 0.0, sum_g_xhat = 0.0;
    for (long long c = lane; c < a.cols; c += 32) {
        float g = dout[c] * a.gamma[c];
        float xhat = (x[c] - mean) * rstd;
        sum_g += g;
        sum_g_xhat += (double)(g * xhat);
    }
    float mean_g = (float)(warp_sum_f64(sum_g) / (double)a.cols);
    float mean_g_xhat = (float)(warp_sum_f64(sum_g_xhat) / (double)a.cols);
    float* dx = a.dx + start;
    for (long long c = lane; c < a.cols; c += 32) {
        float g = dout[c] * a.gamma[c];
        float xhat = (x[c] - mean) * rstd;
        dx[c] += rstd * (g - mean_g - xhat * mean_g_xhat);
    }
}

// dgamma += sum_rows dout xhat, dbeta += sum_rows dout. Block (LN_TILE_COLS, slots) with
// slots a power of two: thread (col, slot) sums rows slot, slot + slots, ... of its column
// in f64, in row order, then the slots are added by a fixed tree.
struct LayerNormBackwardParamsArgs {
    float* dgamma;
    float* dbeta;
    const float* dout;
    const float* x;
    const float* mean;
    const float* rstd;
    long long rows;
    long long cols;
};

// Loads of row `r` of the column: its output gradient, input, mean and rstd.
struct LnParamTerms {
    float dy, x, mean, rstd;
};

__device__ __forceinline__ LnParamTerms ln_param_terms(const LayerNormBackwardParamsArgs& a,
                                                       long long r, long long col) {
    return LnParamTerms{a.dout[r * a.cols + col], a.x[r * a.cols + col], a.mean[r], a.rstd[r]};
}

__device__ __forceinline__ void ln_param_add(double& sum_gamma, double& sum_beta,
                                             LnParamTerms t) {
    float xhat = (t.x - t.mean) * t.rstd;
    sum_gamma += (double)(t.dy * xhat);
    sum_beta += t.dy;
}

CIM_KERNEL(layernorm_backward_params, LayerNormBackwardParamsArgs) {
    __shared__ double partial_gamma[LN_MAX_PARAM_THREADS];
    __shared__ double partial_beta[LN_MAX_PARAM_THREADS];
    long long col = (long long)blockIdx.x * LN_TILE_COLS + threadIdx.x;
    int slot = threadIdx.y, slots = blockDim.y;
    int t = slot * LN_TILE_COLS + threadIdx.x;
    double sum_gamma = 0.0, sum_beta = 0.0;
    if (col < a.cols) {
        long long r = slot;
        // Four rows' loads in flight before their (in-order) additions.
        for (; r + 3 * slots < a.rows; r += 4 * slots) {
            LnParamTerms t0 = ln_param_terms(a, r, col);
            LnParamTerms t1 = ln_param_terms(a, r + slots, col);
            LnParamTerms t2 = ln_param_terms(a, r + 2 * slots, col);
            LnParamTerms t3 = ln_param_terms(a, r + 3 * slots, col);
            ln_param_add(sum_gamma, sum_beta, t0);
            ln_param_add(sum_gamma, sum_beta, t1);
            ln_param_add(sum_gamma, sum_beta, t2);
            ln_param_add(sum_gamma, sum_beta, t3);
        }
        for (; r < a.rows; r += slots) ln_param_add(sum_gamma, sum_beta, ln_param_terms(a, r, col));
    }
    partial_gamma[t] = sum_gamma;
    partial_beta[t] = sum_beta;
    for (int half = slots / 2; half > 0; half /= 2) {
        __syncthreads();
        if (slot < half) {
            partial_gamma[t] += partial_gamma[t + half * LN_TILE_COLS];
            partial_beta[t] += partial_beta[t + half * LN_TILE_COLS];
        }
    }
    if (slot == 0 && col < a.cols) {
        a.dgamma[col] = (float)((double)a.dgamma[col] + partial_gamma[t]);
        a.dbeta[col] = (float)((double)a.dbeta[col] + partial_beta[t]);
    }
}
