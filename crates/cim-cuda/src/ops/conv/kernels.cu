// Kernels of the decoder's Figure 4 options (Conv trait, S4): the depthwise
// cross-correlation of token maps ("conv" correlation) and the transposed convolution of the
// deconvolution predictor, both directions.
//
// Every output element has one owner that sums its terms in a fixed order (backward passes
// are gathers, never atomic scatters), so the bits do not change from run to run.
// - Correlation: channels are contiguous in a token, so lanes take consecutive channels and
//   every load is coalesced; each thread slides along a strip of XCORR_STRIP outputs of one
//   row, keeping the map values of the strip in registers so each tap costs one load of the
//   map and one of the kernel. The kernel gradient sums a whole map per (tap, channel) in
//   f64, XCORR_TAPS taps per thread.
// - Transposed convolution: a warp owns a strip of outputs (forward: output columns of one
//   stride phase; input gradient: input columns) and its lanes take channels. The weight
//   `[C_in, C_out k k]` is read per lane along a row, so 32 consecutive rows are first copied
//   to shared memory with an odd row stride (conflict-free column reads). The weight
//   gradient is a fixed split of the N H W pixels into slices, each summed in f64 by one
//   warp, whose partial sums are then added in slice order.

#define XCORR_STRIP 4
#define XCORR_TAPS 4
// mod.rs's DECONV_STRIP and TAP_GROUP repeat these two to size the grids.
#define DECONV_STRIP 8
#define DECONV_TAP_GROUP 8
#define DECONV_OUT_GROUP 2

// Zeros the class-token row (token 0) of each of `maps` token maps of `map_len` elements.
static __device__ void zero_class_rows(float* maps_base, long long maps, long long map_len,
                                       int channels) {
    for (long long i = global_index(); i < maps * channels; i += grid_stride())
        maps_base[(i / channels) * map_len + i % channels] = 0.0f;
}

// Element `col` of a map row whose columns are `channels` apart, or 0 outside [0, width).
static __device__ __forceinline__ float row_value(const float* row, int col, int width,
                                                  int channels) {
    return (col >= 0 && col < width) ? __ldg(row + (long long)col * channels) : 0.0f;
}

// out = scale * sum over taps of src * t (see correlate); src is x (forward) or dout (input
// gradient).
struct CorrelateArgs {
    float* out;
    const float* src;
    const float* t;
    int batch;
    int channels;
    int height;
    int width;
    int kernel_h;
    int kernel_w;
    int pad_h;
    int pad_w;
    float scale;
};

// out[n, (i, j), c] = scale * sum_{u, v} src[n, (i + D u - D ph, j + D v - D pw), c] t[n, (u, v), c]
// over the in-map source pixels, u then v ascending. D = 1 is the forward; D = -1 is the
// input gradient (dout read at (y - u + ph, x - v + pw)). Token 0 of `out` gets zeros.
template <int D>
static __device__ __forceinline__ void correlate(const CorrelateArgs& a) {
    const int C = a.channels, H = a.height, W = a.width, kh = a.kernel_h, kw = a.kernel_w;
    const int strips = (W + XCORR_STRIP - 1) / XCORR_STRIP;
    const long long map_len = (long long)(1 + H * W) * C;
    const long long kernel_len = (long long)(1 + kh * kw) * C;
    const long long items = (long long)a.batch * H * strips * C;
    const int row_shift = -D * a.pad_h, col_shift = -D * a.pad_w;
    for (long long item = global_index(); item < items; item += grid_stride()) {
        const int c = (int)(item % C);
        long long rest = item / C;
        const int j0 = (int)(rest % strips) * XCORR_STRIP;
        rest /= strips;
        const int i = (int)(rest % H);
        const long long n = rest / H;
        const float* src = a.src + n * map_len + C + c;
        const float* t = a.t + n * kernel_len + C + c;
        float acc[XCORR_STRIP];
        for (int q = 0; q < XCORR_STRIP; q++) acc[q] = 0.0f;
        for (int u = 0; u < kh; u++) {
            const int y = i + D * u + row_shift;
            if (y < 0 || y >= H) continue;
            const float* row = src + (long long)y * W * C;
            // win[q] holds the source of output j0 + q at the current tap v.
            float win[XCORR_STRIP];
            for (int q = 0; q < XCORR_STRIP; q++) win[q] = row_value(row, j0 + q + col_shift, W, C);
            for (int v = 0; v < kw; v++) {
                const float tap = __ldg(t + (long long)(u * kw + v) * C);
                for (int q = 0; q < XCORR_STRIP; q++) {
                    const int col = j0 + q + D * v + col_shift;
                    if (col >= 0 && col < W) acc[q] += win[q] * tap;
                }
                if (D > 0) {
                    for (int q = 0; q + 1 < XCORR_STRIP; q++) win[q] = win[q + 1];
                    win[XCORR_STRIP - 1] =
                        row_value(row, j0 + XCORR_STRIP + v + col_shift, W, C);
                } else {
                    for (int q = XCORR_STRIP - 1; q > 0; q--) win[q] = win[q - 1];
                    win[0] = row_value(row, j0 - v - 1 + col_shift, W, C);
                }
            }
        }
        float* out = a.out + n * map_len + C + c;
        for (int q = 0; q < XCORR_STRIP; q++)
            if (j0 + q < W) out[(long long)(i * W + j0 + q) * C] = a.scale * acc[q];
    }
    zero_class_rows(a.out, a.batch, map_len, C);
}

CIM_KERNEL(xcorr_forward, CorrelateArgs) { correlate<1>(a); }

CIM_KERNEL(xcorr_input_grad, CorrelateArgs) { correlate<-1>(a); }

// dt[n, (u, v), c] = scale * sum_{i, j} dout[n, (i, j), c] x[n, (i + u - ph, j + v - pw), c]
// over the in-map inputs, i then j ascending, in f64; token 0 of dt gets zeros.
struct CorrelateKernelGradArgs {
    float* dt;
    const float* dout;
    const float* x;
    int batch;
    int channels;
    int height;
    int width;
    int kernel_h;
    int kernel_w;
    int pad_h;
    int pad_w;
    float scale;
};

CIM_KERNEL(xcorr_kernel_grad, CorrelateKernelGradArgs) {
    const int C = a.channels, H = a.height, W = a.width, kh = a.kernel_h, kw = a.kernel_w;
    const int strips = (kw + XCORR_TAPS - 1) / XCORR_TAPS;
    const long long map_len = (long long)(1 + H * W) * C;
    const long long kernel_len = (long long)(1 + kh * kw) * C;
    const long long items = (long long)a.batch * kh * strips * C;
    for (long long item = global_index(); item < items; item += grid_stride()) {
        const int c = (int)(item % C);
        long long rest = item / C;
        const int v0 = (int)(rest % strips) * XCORR_TAPS;
        rest /= strips;
        const int u = (int)(rest % kh);
        const long long n = rest / kh;
        const float* g = a.dout + n * map_len + C + c;
        const float* x = a.x + n * map_len + C + c;
        const int col_shift = v0 - a.pad_w;
        double acc[XCORR_TAPS];
        for (int q = 0; q < XCORR_TAPS; q++) acc[q] = 0.0;
        for (int i = 0; i < H; i++) {
            const int y = i + u - a.pad_h;
            if (y < 0 || y >= H) continue;
            const float* grow = g + (long long)i * W * C;
            const float* xrow = x + (long long)y * W * C;
            // win[q] holds the input that tap v0 + q multiplies into output column j.
            double win[XCORR_TAPS];
            for (int q = 0; q < XCORR_TAPS; q++) win[q] = row_value(xrow, q + col_shift, W, C);
            for (int j = 0; j < W; j++) {
                const double gv = __ldg(grow + (long long)j * C);
                for (int q = 0; q < XCORR_TAPS; q++) {
                    const int col = j + q + col_shift;
                    if (col >= 0 && col < W) acc[q] += gv * win[q];
                }
                for (int q = 0; q + 1 < XCORR_TAPS; q++) win[q] = win[q + 1];
                win[XCORR_TAPS - 1] = row_value(xrow, j + XCORR_TAPS + col_shift, W, C);
            }
        }
        float* dt = a.dt + n * kernel_len + C + c;
        for (int q = 0; q < XCORR_TAPS; q++)
            if (v0 + q < kw)
                dt[(long long)(u * kw + v0 + q) * C] = (float)((double)a.scale * acc[q]);
    }
    zero_class_rows(a.dt, a.batch, kernel_len, C);
}

// Rows c0 .. c0 + 32 of the weight viewed as [C_in, cols], returned as a base whose row r
// starts at `base + r * *row_stride`: copied to shared memory `smem` with the odd row stride
// `staged_stride` (32 lanes reading one column hit 32 banks), or, when `staged_stride` is 0
// (rows too long to stage), the weight itself. Every thread of the block must call it.
static __device__ const float* weight_rows(float* smem, const float* weight, int staged_stride,
                                           int c0, int in_channels, int cols,
                                           int* row_stride) {
    const float* rows = weight + (long long)c0 * cols;
    if (staged_stride == 0) {
        *row_stride = cols;
        return rows;
    }
    __syncthreads();  // every warp is done with the previous rows
    const int count = (in_channels - c0 < 32 ? in_channels - c0 : 32) * cols;
    for (int f = threadIdx.x; f < count; f += blockDim.x) {
        const int r = f / cols;
        smem[r * staged_stride + f - r * cols] = __ldg(rows + f);
    }
    __syncthreads();
    *row_stride = staged_stride;
    return smem;
}

// out[n, o, oy, ox] = bias[o] + sum x[n, 1 + iy W + ix, c] weight[c, o, ky, kx] over
// oy = iy s - p + ky, ox = ix s - p + kx. A warp owns DECONV_STRIP outputs of row oy in
// one column phase px (ox = px + s m), which share their taps ky = (oy + p) mod s + s t and
// kx = (px + p) mod s + s t'; each lane sums its channels c0 + lane over (chunk, ky, kx),
// then a warp tree adds the lanes.
struct DeconvForwardArgs {
    float* out;
    const float* x;
    const float* weight;
    const float* bias;
    int batch;
    int in_channels;
    int out_channels;
    int height;
    int width;
    int kernel;
    int stride;
    int padding;
    int out_height;
    int out_width;
    int staged_stride;
};

CIM_KERNEL(deconv_forward, DeconvForwardArgs) {
    CIM_DYNAMIC_SMEM(float, smem);
    const int Cin = a.in_channels, Co = a.out_channels, H = a.height, W = a.width;
    const int k = a.kernel, s = a.stride, p = a.padding, OH = a.out_height, OW = a.out_width;
    const int cols = Co * k * k;
    const int lane = threadIdx.x % 32, warps = blockDim.x / 32;
    const int strips = ((OW + s - 1) / s + DECONV_STRIP - 1) / DECONV_STRIP;
    const long long items = (long long)a.batch * OH * s * strips;
    const long long map_len = (1 + (long long)H * W) * Cin;
    // Uniform over the block: the barriers in weight_rows see every thread.
    for (long long first = (long long)blockIdx.x * warps; first < items;
         first += (long long)gridDim.x * warps) {
        const long long item = first + threadIdx.x / 32;
        const bool active = item < items;
        const int m0 = (int)(item % strips) * DECONV_STRIP;
        long long rest = item / strips;
        const int px = (int)(rest % s);
        rest /= s;
        const int oy = (int)(rest % OH);
        const long long n = rest / OH;
        const float* xmap = a.x + n * map_len + Cin;
        const int ky0 = (oy + p) % s, kx0 = (px + p) % s;
        for (int o0 = 0; o0 < Co; o0 += DECONV_OUT_GROUP) {
            float acc[DECONV_STRIP][DECONV_OUT_GROUP];
            for (int q = 0; q < DECONV_STRIP; q++)
                for (int g = 0; g < DECONV_OUT_GROUP; g++) acc[q][g] = 0.0f;
            for (int c0 = 0; c0 < Cin; c0 += 32) {
                int row_stride;
                const float* rows =
                    weight_rows(smem, a.weight, a.staged_stride, c0, Cin, cols, &row_stride);
                const int c = c0 + lane;
                if (!active || c >= Cin) continue;
                const float* wrow = rows + lane * row_stride;
                for (int ky = ky0; ky < k; ky += s) {
                    const int iy = (oy + p - ky) / s;  // exact: ky = oy + p (mod s)
                    if (iy < 0 || iy >= H) continue;
                    const float* xrow = xmap + (long long)iy * W * Cin + c;
                    for (int kx = kx0; kx < k; kx += s) {
                        const int ix0 = (px + p - kx) / s + m0;  // exact, as iy
                        float w[DECONV_OUT_GROUP];
                        for (int g = 0; g < DECONV_OUT_GROUP; g++)
                            w[g] = o0 + g < Co ? wrow[((o0 + g) * k + ky) * k + kx] : 0.0f;
                        for (int q = 0; q < DECONV_STRIP; q++) {
                            const int ix = ix0 + q;
                            if (ix < 0 || ix >= W || px + s * (m0 + q) >= OW) continue;
                            const float xv = __ldg(xrow + (long long)ix * Cin);
                            for (int g = 0; g < DECONV_OUT_GROUP; g++) acc[q][g] += xv * w[g];
                        }
                    }
                }
            }
            if (!active) continue;
            for (int g = 0; g < DECONV_OUT_GROUP && o0 + g < Co; g++) {
                const int o = o0 + g;
                float* plane = a.out + ((n * Co + o) * OH + oy) * (long long)OW;
                for (int q = 0; q < DECONV_STRIP; q++) {
                    const int ox = px + s * (m0 + q);
                    if (ox >= OW) break;
                    const float sum = warp_sum(acc[q][g]);
                    if (lane == 0) plane[ox] = __ldg(a.bias + o) + sum;
                }
            }
        }
    }
}

// dx[n, 1 + iy W + ix, c] = sum_{o, ky, kx} dout[n, o, iy s - p + ky, ix s - p + kx]
// weight[c, o, ky, kx] over the in-range outputs, (o, ky, kx) ascending; token 0 gets
// zeros. A warp owns DECONV_STRIP input columns of row iy; each lane one channel at a time.
struct DeconvInputGradArgs {
    float* dx;
    const float* dout;
    const float* weight;
    int batch;
    int in_channels;
    int out_channels;
    int height;
    int width;
    int kernel;
    int stride;
    int padding;
    int out_height;
    int out_width;
    int staged_stride;
};

CIM_KERNEL(deconv_input_grad, DeconvInputGradArgs) {
    CIM_DYNAMIC_SMEM(float, smem);
    const int Cin = a.in_channels, Co = a.out_channels, H = a.height, W = a.width;
    const int k = a.kernel, s = a.stride, p = a.padding, OH = a.out_height, OW = a.out_width;
    const int cols = Co * k * k;
    const int lane = threadIdx.x % 32, warps = blockDim.x / 32;
    const int strips = (W + DECONV_STRIP - 1) / DECONV_STRIP;
    const long long items = (long long)a.batch * H * strips;
    const long long map_len = (1 + (long long)H * W) * Cin;
    const long long plane = (long long)OH * OW;
    for (long long first = (long long)blockIdx.x * warps; first < items;
         first += (long long)gridDim.x * warps) {
        const long long item = first + threadIdx.x / 32;
        const bool active = item < items;
        const int ix0 = (int)(item % strips) * DECONV_STRIP;
        long long rest = item / strips;
        const int iy = (int)(rest % H);
        const long long n = rest / H;
        const float* gmap = a.dout + n * Co * plane;
        for (int c0 = 0; c0 < Cin; c0 += 32) {
            int row_stride;
            const float* rows =
                weight_rows(smem, a.weight, a.staged_stride, c0, Cin, cols, &row_stride);
            const int c = c0 + lane;
            if (!active || c >= Cin) continue;
            const float* wrow = rows + lane * row_stride;
            float acc[DECONV_STRIP];
            for (int q = 0; q < DECONV_STRIP; q++) acc[q] = 0.0f;
            for (int o = 0; o < Co; o++) {
                for (int ky = 0; ky < k; ky++) {
                    const int oy = iy * s - p + ky;
                    if (oy < 0 || oy >= OH) continue;
                    const float* grow = gmap + o * plane + (long long)oy * OW;
                    for (int kx = 0; kx < k; kx++) {
                        const float w = wrow[(o * k + ky) * k + kx];
                        for (int q = 0; q < DECONV_STRIP; q++) {
                            const int ix = ix0 + q, ox = (ix0 + q) * s - p + kx;
                            if (ix < W && ox >= 0 && ox < OW) acc[q] += __ldg(grow + ox) * w;
                        }
                    }
                }
            }
            float* dx = a.dx + n * map_len + Cin + (long long)iy * W * Cin + c;
            for (int q = 0; q < DECONV_STRIP; q++)
                if (ix0 + q < W) dx[(long long)(ix0 + q) * Cin] = acc[q];
        }
    }
    zero_class_rows(a.dx, a.batch, map_len, Cin);
}

// Bit-exact storage of an f64 partial sum in two f32 slots `half` elements apart.
union DoubleBits {
    double value;
    int halves[2];
};

static __device__ __forceinline__ void store_f64(float* at, long long half, double value) {
    DoubleBits bits;
    bits.value = value;
    at[0] = __int_as_float(bits.halves[0]);
    at[half] = __int_as_float(bits.halves[1]);
}

static __device__ __forceinline__ double load_f64(const float* at, long long half) {
    DoubleBits bits;
    bits.halves[0] = __float_as_int(at[0]);
    bits.halves[1] = __float_as_int(at[half]);
    return bits.value;
}

// Weight gradient, first pass: the N H W input pixels, in order, are cut into `slices`
// equal runs; for weight column j = (o, ky, kx) and channel c, slice r's sum over its
// pixels of x[n, 1 + iy W + ix, c] dout[n, o, iy s - p + ky, ix s - p + kx] (in-range
// outputs, pixels ascending, f64) goes to `partial` [slices, cols, 2, C_in] as its two f32
// halves; with one slice it is added to dweight[c, j] directly. A warp owns 32 channels,
// DECONV_TAP_GROUP columns and one slice.
struct DeconvWeightGradArgs {
    float* dweight;
    float* partial;
    const float* dout;
    const float* x;
    int batch;
    int in_channels;
    int out_channels;
    int height;
    int width;
    int kernel;
    int stride;
    int padding;
    int out_height;
    int out_width;
    int slices;
};

CIM_KERNEL(deconv_weight_grad, DeconvWeightGradArgs) {
    const int Cin = a.in_channels, Co = a.out_channels, W = a.width;
    const int k = a.kernel, s = a.stride, p = a.padding, OH = a.out_height, OW = a.out_width;
    const int cols = Co * k * k;
    const int lane = threadIdx.x % 32;
    const int chunks = (Cin + 31) / 32, groups = (cols + DECONV_TAP_GROUP - 1) / DECONV_TAP_GROUP;
    const long long items = (long long)chunks * groups * a.slices;
    const long long pixels = (long long)a.height * W, rows = a.batch * pixels;
    const long long map_len = (1 + pixels) * Cin;
    const long long plane = (long long)OH * OW;
    for (long long item = global_index() / 32; item < items; item += grid_stride() / 32) {
        const int c = (int)(item % chunks) * 32 + lane;
        long long rest = item / chunks;
        const int j0 = (int)(rest % groups) * DECONV_TAP_GROUP;
        const int slice = (int)(rest / groups);
        if (c >= Cin) continue;
        // Column j0 + g (if below cols) reads dout at offset tap[g] from (n, 0, iy s, ix s),
        // when the output row iy s + dy[g] and column ix s + dx[g] are in range.
        long long tap[DECONV_TAP_GROUP];
        int dy[DECONV_TAP_GROUP], dx[DECONV_TAP_GROUP];
        for (int g = 0; g < DECONV_TAP_GROUP; g++) {
            const int j = j0 + g < cols ? j0 + g : cols - 1;
            const int o = j / (k * k), ky = j / k % k, kx = j % k;
            dy[g] = ky - p;
            dx[g] = kx - p;
            tap[g] = o * plane + (long long)dy[g] * OW + dx[g];
        }
        double acc[DECONV_TAP_GROUP];
        for (int g = 0; g < DECONV_TAP_GROUP; g++) acc[g] = 0.0;
        const long long begin = rows * slice / a.slices, end = rows * (slice + 1) / a.slices;
        long long n = begin / pixels;
        int iy = (int)(begin % pixels / W), ix = (int)(begin % W);
        for (long long r = begin; r < end; r++) {
            const double xv = (double)__ldg(a.x + n * map_len + Cin + (r - n * pixels) * Cin + c);
            const float* g0 = a.dout + n * Co * plane + (long long)iy * s * OW + ix * s;
            for (int g = 0; g < DECONV_TAP_GROUP; g++) {
                const int oy = iy * s + dy[g], ox = ix * s + dx[g];
                if (j0 + g < cols && oy >= 0 && oy < OH && ox >= 0 && ox < OW)
                    acc[g] += xv * (double)__ldg(g0 + tap[g]);
            }
            if (++ix == W) {
                ix = 0;
                if (++iy == a.height) {
                    iy = 0;
                    n++;
                }
            }
        }
        for (int g = 0; g < DECONV_TAP_GROUP && j0 + g < cols; g++) {
            const int j = j0 + g;
            if (a.slices == 1) {
                float* w = a.dweight + (long long)c * cols + j;
                *w = (float)((double)*w + acc[g]);
            } else {
                store_f64(a.partial + (((long long)slice * cols + j) * 2) * Cin + c, Cin, acc[g]);
            }
        }
    }
}

// Weight gradient, second pass: dweight[c, j] += the slices' partial sums, added in slice
// order in f64.
struct DeconvWeightSumArgs {
    float* dweight;
    const float* partial;
    int in_channels;
    int cols;
    int slices;
};

CIM_KERNEL(deconv_weight_sum, DeconvWeightSumArgs) {
    const int Cin = a.in_channels;
    const long long n = (long long)a.cols * Cin;
    for (long long i = global_index(); i < n; i += grid_stride()) {
        const int c = (int)(i % Cin);
        const long long j = i / Cin;
        double total = 0.0;
        for (int r = 0; r < a.slices; r++)
            total += load_f64(a.partial + (((long long)r * a.cols + j) * 2) * Cin + c, Cin);
        float* w = a.dweight + (long long)c * a.cols + j;
        *w = (float)((double)*w + total);
    }
}
