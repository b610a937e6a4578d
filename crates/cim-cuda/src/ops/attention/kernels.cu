// Kernels of multi-head attention (S3 self-attention, S4 cross-attention): the forward with
// its softmax, and the backward in two passes, one over query rows (dS and dq) and one over
// keys (dk and dv, sums over the query rows in order: no atomics, the same bits every run).
//
// A block works on one (sequence, head) and a tile of rows; each warp owns four rows and
// keeps them side by side (`Rows4`: channel c or key j of the four rows in one 16-byte
// word), so one broadcast shared-memory load serves four FMAs. The other operand of each
// product (K, V, or q and dout in the key pass) is staged through shared memory `chunk`
// tokens at a time, rows `head_dim | 1` floats apart so the lanes of a warp reading one
// channel of 32 consecutive tokens hit 32 different banks. Self- and cross-attention
// differ only in where q, k and v live (base addresses and token strides from the host).

// Channel c (or key j) of a warp's four rows.
struct __align__(16) Rows4 {
    float v[4];
};

__device__ __forceinline__ void zero_rows4(Rows4* a, int hd, int lane) {
    for (int c = lane; c < hd; c += 32) {
        Rows4 z;
        for (int r = 0; r < 4; r++) z.v[r] = 0.0f;
        a[c] = z;
    }
}

// a[c] = channel c of rows row0 .. row0 + 3 of src (tokens `stride` apart), 0 past `rows`.
__device__ __forceinline__ void load_rows4(Rows4* a, const float* src, long long stride, int row0,
                                           int rows, int hd, int lane) {
    for (int c = lane; c < hd; c += 32) {
        Rows4 x;
        for (int r = 0; r < 4; r++)
            x.v[r] = row0 + r < rows ? src[(long long)(row0 + r) * stride + c] : 0.0f;
        a[c] = x;
    }
}

// Channel c of row row0 + r of dst (tokens `stride` apart) = scale * a[c].v[r], for the
// rows before `rows`.
__device__ __forceinline__ void store_rows4(float* dst, long long stride, const Rows4* a,
                                            float scale, int row0, int rows, int hd, int lane) {
    for (int c = lane; c < hd; c += 32) {
        Rows4 x = a[c];
        for (int r = 0; r < 4; r++)
            if (row0 + r < rows) dst[(long long)(row0 + r) * stride + c] = scale * x.v[r];
    }
}

// Copies n tokens of hd channels (`stride` apart in global memory) into shared memory,
// `ks` apart. Every thread of the block takes part.
__device__ __forceinline__ void stage_tokens(float* dst, int ks, const float* src, long long stride,
                                             int n, int hd) {
    for (int idx = threadIdx.x; idx < n * hd; idx += blockDim.x) {
        int t = idx / hd, c = idx - t * hd;
        dst[t * ks + c] = src[t * stride + c];
    }
}

// out[t] = scale * (a . m_t) for the staged tokens t < n (m_t = m[t * ks ..], hd channels),
// one token per lane at a time: four dot products per token.
__device__ __forceinline__ void dot_rows4(Rows4* out, const Rows4* a, const float* m, int ks, int n,
                                          int hd, float scale, int lane) {
    for (int t = lane; t < n; t += 32) {
        const float* mt = m + t * ks;
        float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int c = 0; c < hd; c++) {
            Rows4 x = a[c];
            float y = mt[c];
            for (int r = 0; r < 4; r++) s[r] += x.v[r] * y;
        }
        Rows4 o;
        for (int r = 0; r < 4; r++) o.v[r] = scale * s[r];
        out[t] = o;
    }
}

// acc[c] += sum over staged tokens t < n, in order, of w[t * w_stride] * m[t * ks + c],
// one channel per lane at a time.
__device__ __forceinline__ void accumulate_rows4(Rows4* acc, const Rows4* w, int w_stride,
                                                 const float* m, int ks, int n, int hd, int lane) {
    for (int c = lane; c < hd; c += 32) {
        Rows4 s = acc[c];
        for (int t = 0; t < n; t++) {
            Rows4 x = w[t * w_stride];
            float y = m[t * ks + c];
            for (int r = 0; r < 4; r++) s.v[r] += x.v[r] * y;
        }
        acc[c] = s;
    }
}

// Softmax over the nk keys of four score rows, in place; rows row0 + r < nq are also
// written to probs (rows nk apart). The row maximum propagates NaN, so a NaN score makes
// its whole row NaN (as does +inf: exp(inf - inf)).
__device__ __forceinline__ void softmax_rows4(Rows4* s, float* probs, int row0, int nq, int nk,
                                              int lane) {
    float m[4], sum[4];
    for (int r = 0; r < 4; r++) m[r] = cim_neg_inf(), sum[r] = 0.0f;
    for (int j = lane; j < nk; j += 32) {
        Rows4 x = s[j];
        for (int r = 0; r < 4; r++) m[r] = nan_max(m[r], x.v[r]);
    }
    for (int r = 0; r < 4; r++) m[r] = warp_max(m[r]);
    for (int j = lane; j < nk; j += 32) {
        Rows4 x = s[j];
        for (int r = 0; r < 4; r++) {
            x.v[r] = expf(x.v[r] - m[r]);
            sum[r] += x.v[r];
        }
        s[j] = x;
    }
    for (int r = 0; r < 4; r++) sum[r] = warp_sum(sum[r]);
    for (int j = lane; j < nk; j += 32) {
        Rows4 x = s[j];
        for (int r = 0; r < 4; r++) {
            x.v[r] /= sum[r];
            if (row0 + r < nq) probs[(long long)(row0 + r) * nk + j] = x.v[r];
        }
        s[j] = x;
    }
}

// dS = P (dP - rowsum(dP P)) for four rows, in place (dP in `s` on entry, P read from
// probs); rows row0 + r < nq are also written to dscores. In f64: dP - rowsum cancels when
// a row's dP are alike, and a row is only nk values long.
__device__ __forceinline__ void softmax_backward_rows4(Rows4* s, float* dscores, const float* probs,
                                                       int row0, int nq, int nk, int lane) {
    double dot[4] = {0.0, 0.0, 0.0, 0.0};
    for (int j = lane; j < nk; j += 32) {
        Rows4 dp = s[j];
        for (int r = 0; r < 4; r++)
            if (row0 + r < nq) dot[r] += (double)probs[(long long)(row0 + r) * nk + j] * dp.v[r];
    }
    for (int r = 0; r < 4; r++) dot[r] = warp_sum_f64(dot[r]);
    for (int j = lane; j < nk; j += 32) {
        Rows4 x = s[j];
        for (int r = 0; r < 4; r++) {
            bool row = row0 + r < nq;
            long long at = (long long)(row0 + r) * nk + j;
            double p = row ? probs[at] : 0.0;
            x.v[r] = (float)(p * ((double)x.v[r] - dot[r]));
            if (row) dscores[at] = x.v[r];
        }
        s[j] = x;
    }
}

// One pass over a tile of query rows of one (sequence, head), blockIdx.x = b * heads + h:
//   S = score_scale * x first^T, T = f(S) written to `row_out`, y = y_scale * T second.
// Forward (attention_forward): x = q, first = K, second = V, f = softmax, row_out = probs,
// y = out. Backward (attention_backward_rows): x = dout, first = V, second = K, f = the
// softmax backward on the forward's `probs`, row_out = dS (scratch), y = dq with
// y_scale = scale. Dynamic shared memory: per warp kv_len + head_dim Rows4 (the scores,
// the rows of x then of y), then chunk * (head_dim | 1) floats of staged tokens.
struct AttentionRowsArgs {
    float* y;
    float* row_out;
    const float* probs;
    const float* x;
    const float* first;
    const float* second;
    long long x_stride;
    long long y_stride;
    long long kv_stride;
    int heads;
    int q_len;
    int kv_len;
    int head_dim;
    int chunk;
    float score_scale;
    float y_scale;
};

template <bool kBackward>
__device__ __forceinline__ void rows_pass(const AttentionRowsArgs& a) {
    CIM_DYNAMIC_SMEM(float, smem);
    const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int hd = a.head_dim, nq = a.q_len, nk = a.kv_len, ks = hd | 1;
    Rows4* scores = reinterpret_cast<Rows4*>(smem) + warp * nk;
    Rows4* rows = reinterpret_cast<Rows4*>(smem) + warps * nk + warp * hd;
    float* stage = smem + 4 * warps * (nk + hd);

    const long long bh = blockIdx.x, b = bh / a.heads, h = bh % a.heads;
    const float* x = a.x + b * nq * a.x_stride + h * hd;
    const float* first = a.first + b * nk * a.kv_stride + h * hd;
    const float* second = a.second + b * nk * a.kv_stride + h * hd;
    float* y = a.y + b * nq * a.y_stride + h * hd;
    float* row_out = a.row_out + bh * nq * nk;

    const int tile_rows = 4 * warps, tiles = (nq + tile_rows - 1) / tile_rows;
    for (int tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
        const int row0 = tile * tile_rows + 4 * warp;
        load_rows4(rows, x, a.x_stride, row0, nq, hd, lane);
        for (int j0 = 0; j0 < nk; j0 += a.chunk) {
            const int n = nk - j0 < a.chunk ? nk - j0 : a.chunk;
            __syncthreads();  // the stage's previous readers are done
            stage_tokens(stage, ks, first + j0 * a.kv_stride, a.kv_stride, n, hd);
            __syncthreads();
            dot_rows4(scores + j0, rows, stage, ks, n, hd, a.score_scale, lane);
        }
        __syncwarp();  // every lane's scores are in, every lane is done with `rows`
        if (kBackward)
            softmax_backward_rows4(scores, row_out, a.probs + bh * nq * nk, row0, nq, nk, lane);
        else
            softmax_rows4(scores, row_out, row0, nq, nk, lane);
        zero_rows4(rows, hd, lane);
        __syncwarp();
        for (int j0 = 0; j0 < nk; j0 += a.chunk) {
            const int n = nk - j0 < a.chunk ? nk - j0 : a.chunk;
            __syncthreads();
            stage_tokens(stage, ks, second + j0 * a.kv_stride, a.kv_stride, n, hd);
            __syncthreads();
            accumulate_rows4(rows, scores + j0, 1, stage, ks, n, hd, lane);
        }
        store_rows4(y, a.y_stride, rows, a.y_scale, row0, nq, hd, lane);
    }
}

CIM_KERNEL(attention_forward, AttentionRowsArgs) { rows_pass<false>(a); }

CIM_KERNEL(attention_backward_rows, AttentionRowsArgs) { rows_pass<true>(a); }

// dk = scale dS^T q and dv = P^T dout for a tile of keys of one (sequence, head),
// blockIdx.x = b * heads + h; each warp owns four keys and sums over the query rows in
// order, chunk rows at a time. Dynamic shared memory: per warp 2 * head_dim Rows4 (the dk
// and dv sums), then per staged row 4 * warps floats of dS and of P (the tile's keys) and
// 2 * (head_dim | 1) floats of q and dout.
struct AttentionKeysArgs {
    float* dk;
    float* dv;
    const float* dscores;
    const float* probs;
    const float* q;
    const float* dout;
    long long q_stride;
    long long dout_stride;
    long long dkv_stride;
    int heads;
    int q_len;
    int kv_len;
    int head_dim;
    int chunk;
    float scale;
};

CIM_KERNEL(attention_backward_keys, AttentionKeysArgs) {
    CIM_DYNAMIC_SMEM(float, smem);
    const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int hd = a.head_dim, nq = a.q_len, nk = a.kv_len, ks = hd | 1;
    const int tile_keys = 4 * warps;
    Rows4* dk_sum = reinterpret_cast<Rows4*>(smem) + warp * hd;
    Rows4* dv_sum = reinterpret_cast<Rows4*>(smem) + (warps + warp) * hd;
    float* ds_stage = smem + 8 * warps * hd;
    float* p_stage = ds_stage + a.chunk * tile_keys;
    float* q_stage = p_stage + a.chunk * tile_keys;
    float* dout_stage = q_stage + a.chunk * ks;

    const long long bh = blockIdx.x, b = bh / a.heads, h = bh % a.heads;
    const float* q = a.q + b * nq * a.q_stride + h * hd;
    const float* dout = a.dout + b * nq * a.dout_stride + h * hd;
    const float* dscores = a.dscores + bh * nq * nk;
    const float* probs = a.probs + bh * nq * nk;
    float* dk = a.dk + b * nk * a.dkv_stride + h * hd;
    float* dv = a.dv + b * nk * a.dkv_stride + h * hd;

    const int tiles = (nk + tile_keys - 1) / tile_keys;
    for (int tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
        const int key_base = tile * tile_keys, key0 = key_base + 4 * warp;
        zero_rows4(dk_sum, hd, lane);
        zero_rows4(dv_sum, hd, lane);
        for (int i0 = 0; i0 < nq; i0 += a.chunk) {
            const int n = nq - i0 < a.chunk ? nq - i0 : a.chunk;
            __syncthreads();  // the stages' previous readers are done
            stage_tokens(q_stage, ks, q + i0 * a.q_stride, a.q_stride, n, hd);
            stage_tokens(dout_stage, ks, dout + i0 * a.dout_stride, a.dout_stride, n, hd);
            // Row i of the tile's dS and P columns; keys past kv_len weigh 0.
            for (int idx = threadIdx.x; idx < n * tile_keys; idx += blockDim.x) {
                int i = idx / tile_keys, key = key_base + idx - i * tile_keys;
                long long at = (long long)(i0 + i) * nk + key;
                ds_stage[idx] = key < nk ? dscores[at] : 0.0f;
                p_stage[idx] = key < nk ? probs[at] : 0.0f;
            }
            __syncthreads();
            accumulate_rows4(dk_sum, reinterpret_cast<const Rows4*>(ds_stage) + warp, warps, q_stage,
                             ks, n, hd, lane);
            accumulate_rows4(dv_sum, reinterpret_cast<const Rows4*>(p_stage) + warp, warps,
                             dout_stage, ks, n, hd, lane);
        }
        store_rows4(dk, a.dkv_stride, dk_sum, a.scale, key0, nk, hd, lane);
        store_rows4(dv, a.dkv_stride, dv_sum, 1.0f, key0, nk, hd, lane);
    }
}
