// Kernels of the on-device pair renderer (issue 6; S2 items 3, 5, 6, 7 and S1's
// normalisation): from B uploaded 8-bit S x S search views and the plans drawn on the host,
// the contexts, the K exemplars of each pair with their photometric transforms, and the
// ground-truth maps, in the model's layouts. Each computes what cim-data's CPU renderer
// computes, to the degree the tests check (tests/render.rs):
// - the context is Pillow's fixed-point resize with the host's coefficient table, integer
//   arithmetic throughout, so it equals the CPU's to the bit;
// - a map cell is the same f64 point-in-rectangle test with every product and sum rounded
//   on its own (no fused multiply-add), so it equals the CPU's to the bit too;
// - an exemplar pixel is gathered (the CPU scatters) with the same antialiased filter in
//   f32, then the transforms run in shared memory in S2's order: equal up to f32 rounding.

// One exemplar, filled in by the host from its plan (ops/render/mod.rs). Doubles first, so
// the struct has no padding.
struct ExemplarRecord {
    double map_xx; // exemplar point (x, y) -> canvas x = map_xx x + map_xy y + map_x0
    double map_xy;
    double map_x0;
    double map_yx; // canvas y = map_yx x + map_yy y + map_y0
    double map_yy;
    double map_y0;
    double u_x; // the rectangle's unit width axis u (the exemplar's x axis)
    double u_y;
    double v_x; // its unit height axis v (the exemplar's y axis)
    double v_y;
    double centre_x; // the rectangle's centre on the canvas
    double centre_y;
    double half_w; // its half sides along u and v
    double half_h;
    double blur_sigma; // in exemplar pixels, used when blur_radius > 0
    float filter_u; // the filter's widening along u and v: max(1, shrink factor)
    float filter_v;
    float brightness; // jitter factors, used when jitter is 1
    float contrast;
    float saturation;
    float hue; // in turns
    int jitter; // 1: the four jitter operations, in jitter_order
    int jitter_order; // the k-th operation applied is (jitter_order >> 2k) & 3 (JITTER_*)
    int grayscale; // 1: greyscale
    int blur_radius; // taps each side of the Gaussian, 0: no blur
    int solarize; // 1: solarise
    int flip; // 1: mirror left-right
};

// Jitter operation codes of `jitter_order` (the host writes the same numbering).
#define JITTER_BRIGHTNESS 0
#define JITTER_CONTRAST 1
#define JITTER_SATURATION 2
#define JITTER_HUE 3

// S2 item 7: solarise inverts values of at least 128.
#define SOLARIZE_THRESHOLD 128.0f

__device__ __forceinline__ float clamp255(float v) { return fminf(fmaxf(v, 0.0f), 255.0f); }

// One 8-bit value of Pillow's fixed-point arithmetic: the sum shifted down, clamped.
__device__ __forceinline__ int clip8(int acc, int precision) {
    return min(max(acc >> precision, 0), 255);
}

// out[b, c, y, x] = the bicubic resize of view b from S x S to m x m, then normalised, one
// thread per output pixel. `taps` holds per output index (both axes have the same sizes)
// the first input index, the tap count and `ksize` weights. As Pillow: a horizontal pass
// into 8-bit values, then a vertical pass over them; each intermediate value is recomputed
// by the outputs that read it, which costs less than a pass through memory.
struct RenderContextArgs {
    float* context; // [B, 3, m, m]
    const unsigned char* views; // [B, S, S, 3]
    const int* taps; // [m, 2 + ksize]
    long long total; // B m m
    int canvas; // S
    int size; // m
    int ksize;
    int precision; // bits of the fixed-point weights
    float mean_r;
    float mean_g;
    float mean_b;
    float std_r;
    float std_g;
    float std_b;
};

CIM_KERNEL(render_context, RenderContextArgs) {
    const float mean[3] = {a.mean_r, a.mean_g, a.mean_b};
    const float stdev[3] = {a.std_r, a.std_g, a.std_b};
    const int half = 1 << (a.precision - 1);
    const int stride = 2 + a.ksize;
    const long long plane = (long long)a.size * a.size;
    for (long long idx = global_index(); idx < a.total; idx += grid_stride()) {
        long long b = idx / plane;
        int yx = (int)(idx % plane), y = yx / a.size, x = yx % a.size;
        const unsigned char* view = a.views + b * a.canvas * a.canvas * 3;
        const int* ty = a.taps + y * stride;
        const int* tx = a.taps + x * stride;
        int acc[3] = {half, half, half};
        for (int t = 0; t < ty[1]; t++) {
            const unsigned char* row = view + ((long long)(ty[0] + t) * a.canvas + tx[0]) * 3;
            int line[3] = {half, half, half};
            for (int s = 0; s < tx[1]; s++)
                for (int c = 0; c < 3; c++) line[c] += (int)row[3 * s + c] * tx[2 + s];
            for (int c = 0; c < 3; c++) acc[c] += clip8(line[c], a.precision) * ty[2 + t];
        }
        for (int c = 0; c < 3; c++) {
            float v = (float)clip8(acc[c], a.precision);
            a.context[(b * 3 + c) * plane + yx] = (v / 255.0f - mean[c]) / stdev[c];
        }
    }
}

// maps[e, i, j] = 1 when the centre of context pixel (i, j), scaled to the canvas, lies in
// exemplar e's closed rectangle, else 0: one thread per cell. The operations are those of
// cim-spec's rasteriser in the same order, products and sums rounded one by one.
struct RenderMapsArgs {
    float* maps; // [B K, m, m]
    const ExemplarRecord* records; // [B K]
    double canvas; // S
    long long total; // B K m m
    int size; // m
};

CIM_KERNEL(render_maps, RenderMapsArgs) {
    const long long plane = (long long)a.size * a.size;
    for (long long idx = global_index(); idx < a.total; idx += grid_stride()) {
        const ExemplarRecord* r = a.records + idx / plane;
        int cell = (int)(idx % plane), i = cell / a.size, j = cell % a.size;
        double py = ((double)i + 0.5) * a.canvas / (double)a.size;
        double px = ((double)j + 0.5) * a.canvas / (double)a.size;
        double dx = px - r->centre_x, dy = py - r->centre_y;
        double along_u = __dadd_rn(__dmul_rn(r->u_x, dx), __dmul_rn(r->u_y, dy));
        double along_v = __dadd_rn(__dmul_rn(r->v_x, dx), __dmul_rn(r->v_y, dy));
        a.maps[idx] = fabs(along_u) <= r->half_w && fabs(along_v) <= r->half_h ? 1.0f : 0.0f;
    }
}

// Pillow's filters (cim-data's Kernel::eval_f32): bicubic with a = -0.5, support 2, or the
// triangle, support 1.
__device__ __forceinline__ float filter(int bicubic, float x) {
    x = fabsf(x);
    if (!bicubic) return fmaxf(1.0f - x, 0.0f);
    float inner = (1.5f * x - 2.5f) * x * x + 1.0f;
    float outer = ((-0.5f * x + 2.5f) * x - 4.0f) * x + 2.0f;
    float v = x < 1.0f ? inner : outer;
    return x < 2.0f ? v : 0.0f;
}

// Narrows [lo, hi] to the offsets t with |a t + b| <= reach (`inv_a` = 1 / a); false when
// none remain. The window's edges carry zero weight, so rounding here moves no weight in or
// out.
__device__ __forceinline__ bool narrow(float a, float inv_a, float b, float reach, float* lo,
                                       float* hi) {
    if (fabsf(a) < 1e-6f) return fabsf(b) <= reach;
    float t1 = (-reach - b) * inv_a, t2 = (reach - b) * inv_a;
    *lo = fmaxf(*lo, fminf(t1, t2));
    *hi = fminf(*hi, fmaxf(t1, t2));
    return *lo <= *hi;
}

// Exemplar pixel (i, j) of record r sampled from `view` (S2 item 5, cim-data's
// render_exemplar): the sum over canvas pixels q of K(du / fu) K(dv / fv) q over the sum of
// those weights, (du, dv) being q's centre minus the pixel's sample point along u and v,
// clamped to [0, 255]. The sample point is computed in f64; offsets from it are small, so
// f32 keeps them to about 1e-6 canvas pixels.
__device__ void gather_pixel(const unsigned char* view, int canvas, const ExemplarRecord* r,
                             int i, int j, int bicubic, float rgb[3]) {
    double ex = (double)i + 0.5, ey = (double)j + 0.5;
    double px = r->map_xx * ex + r->map_xy * ey + r->map_x0;
    double py = r->map_yx * ex + r->map_yy * ey + r->map_y0;
    float ux = (float)r->u_x, uy = (float)r->u_y, vx = (float)r->v_x, vy = (float)r->v_y;
    float support = bicubic ? 2.0f : 1.0f;
    float reach_u = support * r->filter_u, reach_v = support * r->filter_v;
    float inv_u = 1.0f / r->filter_u, inv_v = 1.0f / r->filter_v;
    float inv_ux = 1.0f / ux, inv_vx = 1.0f / vx;
    // Canvas rows whose centres can lie in the window (its bounding box).
    double extent_y = (double)(reach_u * fabsf(uy) + reach_v * fabsf(vy));
    int q0 = max(0, (int)ceil(py - 0.5 - extent_y));
    int q1 = min(canvas - 1, (int)floor(py - 0.5 + extent_y));
    float acc[3] = {0.0f, 0.0f, 0.0f}, total = 0.0f;
    for (int qy = q0; qy <= q1; qy++) {
        double dy = (double)qy + 0.5 - py;
        float lo = -3.0e38f, hi = 3.0e38f;
        if (!narrow(ux, inv_ux, (float)dy * uy, reach_u, &lo, &hi) ||
            !narrow(vx, inv_vx, (float)dy * vy, reach_v, &lo, &hi))
            continue;
        int x0 = max(0, (int)ceil(px - 0.5 + (double)lo));
        int x1 = min(canvas - 1, (int)floor(px - 0.5 + (double)hi));
        if (x0 > x1) continue;
        double dx0 = (double)x0 + 0.5 - px;
        // Offsets of the row's first pixel; each next pixel adds (ux, vx).
        float du0 = (float)(dx0 * r->u_x + dy * r->u_y);
        float dv0 = (float)(dx0 * r->v_x + dy * r->v_y);
        const unsigned char* p = view + ((long long)qy * canvas + x0) * 3;
        for (int k = 0; k <= x1 - x0; k++, p += 3) {
            float du = fmaf((float)k, ux, du0), dv = fmaf((float)k, vx, dv0);
            float w = filter(bicubic, du * inv_u) * filter(bicubic, dv * inv_v);
            acc[0] += w * (float)p[0];
            acc[1] += w * (float)p[1];
            acc[2] += w * (float)p[2];
            total += w;
        }
    }
    // The pixel's own centre lies on the canvas, so its weight is positive.
    float inv = total != 0.0f ? 1.0f / total : 0.0f;
    for (int c = 0; c < 3; c++) rgb[c] = clamp255(acc[c] * inv);
}

__device__ __forceinline__ float luma(float r, float g, float b) {
    return 0.299f * r + 0.587f * g + 0.114f * b;
}

// Shifts the hue by `shift` turns: RGB -> HSV, H += shift (mod 1), HSV -> RGB.
__device__ void shift_hue(float* r, float* g, float* b, float shift) {
    float rf = *r / 255.0f, gf = *g / 255.0f, bf = *b / 255.0f;
    float top = fmaxf(fmaxf(rf, gf), bf), bottom = fminf(fminf(rf, gf), bf);
    float chroma = top - bottom;
    // Grey: the hue is undefined and a shift changes nothing.
    if (chroma <= 0.0f) return;
    float s = chroma / top;
    float h6 = top == rf   ? (gf - bf) / chroma
               : top == gf ? (bf - rf) / chroma + 2.0f
                           : (rf - gf) / chroma + 4.0f;
    float h = fmodf(h6 / 6.0f + shift, 1.0f);
    if (h < 0.0f) h += 1.0f;
    if (h >= 1.0f) h = 0.0f;
    float sector = floorf(h * 6.0f), f = h * 6.0f - sector;
    float p = top * (1.0f - s), q = top * (1.0f - s * f), t = top * (1.0f - s * (1.0f - f));
    float rr, gg, bb;
    switch ((int)sector) {
        case 0: rr = top, gg = t, bb = p; break;
        case 1: rr = q, gg = top, bb = p; break;
        case 2: rr = p, gg = top, bb = t; break;
        case 3: rr = p, gg = q, bb = top; break;
        case 4: rr = t, gg = p, bb = top; break;
        default: rr = top, gg = p, bb = q; break;
    }
    *r = clamp255(rr * 255.0f);
    *g = clamp255(gg * 255.0f);
    *b = clamp255(bb * 255.0f);
}

// The mean grey of the n x n image in `tile` (planar RGB), summed in f64. Every thread of
// the block must call it.
__device__ float mean_grey(const float* tile, int plane) {
    double sum = 0.0;
    for (int p = threadIdx.x; p < plane; p += blockDim.x)
        sum += (double)luma(tile[p], tile[plane + p], tile[2 * plane + p]);
    return (float)(block_sum_f64(sum) / (double)plane);
}

// One jitter operation on the block's image. Each thread rewrites only its own pixels, the
// ones it rendered, so no barrier is needed between pointwise steps.
__device__ void jitter_step(float* tile, int plane, int op, const ExemplarRecord* r) {
    float mean = op == JITTER_CONTRAST ? mean_grey(tile, plane) : 0.0f;
    for (int p = threadIdx.x; p < plane; p += blockDim.x) {
        float* px[3] = {tile + p, tile + plane + p, tile + 2 * plane + p};
        if (op == JITTER_BRIGHTNESS) {
            for (int c = 0; c < 3; c++) *px[c] = clamp255(*px[c] * r->brightness);
        } else if (op == JITTER_CONTRAST) {
            for (int c = 0; c < 3; c++) *px[c] = clamp255(mean + r->contrast * (*px[c] - mean));
        } else if (op == JITTER_SATURATION) {
            float grey = luma(*px[0], *px[1], *px[2]);
            for (int c = 0; c < 3; c++)
                *px[c] = clamp255(grey + r->saturation * (*px[c] - grey));
        } else {
            shift_hue(px[0], px[1], px[2], r->hue);
        }
    }
}

// Separable Gaussian blur of each plane in place (cim-data's gaussian_blur): weights
// exp(-d^2 / (2 sigma^2)) for d = -radius..radius normalised to sum 1, clamp-to-edge
// borders, rows then columns with the same summation order, clamped at the end.
__device__ void blur(float* tile, float* scratch, float* weights, int n, int radius,
                     double sigma) {
    int plane = n * n, taps = 2 * radius + 1;
    if (threadIdx.x == 0) {
        float total = 0.0f;
        for (int k = 0; k < taps; k++) {
            double d = (double)(k - radius);
            weights[k] = (float)exp(-d * d / (2.0 * sigma * sigma));
            total += weights[k];
        }
        for (int k = 0; k < taps; k++) weights[k] /= total;
    }
    for (int c = 0; c < 3; c++) {
        float* img = tile + c * plane;
        // The image (and the weights) are complete, and the previous plane's column pass
        // has finished reading `scratch`.
        __syncthreads();
        for (int p = threadIdx.x; p < plane; p += blockDim.x) {
            const float* row = img + (p / n) * n;
            int x = p % n - radius;
            float s = 0.0f;
            for (int k = 0; k < taps; k++) s += row[min(max(x + k, 0), n - 1)] * weights[k];
            scratch[p] = s;
        }
        __syncthreads();
        for (int p = threadIdx.x; p < plane; p += blockDim.x) {
            const float* column = scratch + p % n;
            int y = p / n - radius;
            float s = 0.0f;
            for (int k = 0; k < taps; k++) s += column[min(max(y + k, 0), n - 1) * n] * weights[k];
            img[p] = clamp255(s);
        }
    }
}

// One block per exemplar (a grid-stride loop over B K): render the n x n image into shared
// memory, apply the record's transforms in S2's order (jitter, greyscale, blur, solarise,
// flip), normalise and write [3, n, n]. Dynamic shared memory: the image (3 n^2 floats),
// the blur's scratch plane (n^2) and the blur weights (2 radius + 1 of the batch's widest).
// blockDim.x is a multiple of 32 (the contrast's block sum).
struct RenderExemplarsArgs {
    float* exemplars; // [B K, 3, n, n]
    const unsigned char* views; // [B, S, S, 3]
    const ExemplarRecord* records; // [B K]
    long long count; // B K
    int per_view; // K
    int canvas; // S
    int size; // n
    int bicubic; // 1: bicubic filter, 0: bilinear
    float mean_r;
    float mean_g;
    float mean_b;
    float std_r;
    float std_g;
    float std_b;
};

CIM_KERNEL(render_exemplars, RenderExemplarsArgs) {
    CIM_DYNAMIC_SMEM(float, tile);
    const int n = a.size, plane = n * n;
    float* scratch = tile + 3 * plane;
    float* weights = tile + 4 * plane;
    const float mean[3] = {a.mean_r, a.mean_g, a.mean_b};
    const float stdev[3] = {a.std_r, a.std_g, a.std_b};
    for (long long e = blockIdx.x; e < a.count; e += gridDim.x) {
        const ExemplarRecord* r = a.records + e;
        const unsigned char* view = a.views + (e / a.per_view) * a.canvas * a.canvas * 3;
        for (int p = threadIdx.x; p < plane; p += blockDim.x) {
            float rgb[3];
            gather_pixel(view, a.canvas, r, p % n, p / n, a.bicubic, rgb);
            for (int c = 0; c < 3; c++) tile[c * plane + p] = rgb[c];
        }
        if (r->jitter)
            for (int k = 0; k < 4; k++)
                jitter_step(tile, plane, (r->jitter_order >> (2 * k)) & 3, r);
        if (r->grayscale)
            for (int p = threadIdx.x; p < plane; p += blockDim.x) {
                float grey = luma(tile[p], tile[plane + p], tile[2 * plane + p]);
                tile[p] = tile[plane + p] = tile[2 * plane + p] = grey;
            }
        // After the blur each thread again reads back only pixels it wrote itself.
        if (r->blur_radius > 0) blur(tile, scratch, weights, n, r->blur_radius, r->blur_sigma);
        float* out = a.exemplars + e * 3 * plane;
        for (int p = threadIdx.x; p < plane; p += blockDim.x) {
            int y = p / n, x = p % n;
            int col = r->flip ? n - 1 - x : x;
            for (int c = 0; c < 3; c++) {
                float v = tile[c * plane + p];
                if (r->solarize && v >= SOLARIZE_THRESHOLD) v = 255.0f - v;
                float scale = 1.0f / (255.0f * stdev[c]), shift = mean[c] / stdev[c];
                out[c * plane + y * n + col] = v * scale - shift;
            }
        }
        // The next exemplar overwrites the image, the scratch plane and the weights.
        __syncthreads();
    }
}
