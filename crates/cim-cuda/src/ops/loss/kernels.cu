// Kernels of the S5 map losses (MapLossOps): cim_spec::loss's per-pixel formulas evaluated
// in f64, one block per map.
//
// f64 per pixel: a logit difference of two f32 values is exact there, and the sigmoid and
// softplus forms keep their relative accuracy where logits saturate, so the results are
// those of the f64 reference rounded once to f32 (by estimate, on an H100 the f64 exp
// and log1p cost about what reading the logits costs). The forward's sum is a fixed tree: each block
// adds its maps' means in order, then one block adds the per-block partials in order; the
// number of blocks depends on the number of maps only, so the bits never change.

// MapLoss kinds, numbered as in loss/mod.rs.
#define MAP_LOSS_SOFTMAX_CE 0
#define MAP_LOSS_BCE 1
#define MAP_LOSS_BALANCED_BCE 2
#define MAP_LOSS_MSE 3
#define MAP_LOSS_FOCAL 4

// sigmoid(x) and sigmoid(-x) as cim_spec::loss::sigmoid forms them, from e = exp(-|x|):
// 1 / (1 + e) for the argument that is >= 0, e / (1 + e) for the other. NaN gives NaN.
__device__ __forceinline__ void sigmoids(double x, double e, double* pos, double* neg) {
    double r = 1.0 / (1.0 + e);
    double s = e * r;
    *pos = x >= 0.0 ? r : s;
    *neg = x >= 0.0 ? s : r;
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)), with e = exp(-|x|) (a NaN x reaches it through e).
__device__ __forceinline__ double softplus(double x, double e) { return fmax(x, 0.0) + log1p(e); }

struct PixelLoss {
    double loss;
    double d0;
    double d1;
};

// Loss of one pixel and its derivatives by the pixel's logits (channel 0; channel 1 for the
// softmax cross-entropy, 0 otherwise): z0, z1 the logits, `weight` the class weight of the
// BCE kinds (1 for the plain BCE). Inlined, so a kernel that uses only the loss or only the
// derivatives computes only that.
__device__ __forceinline__ PixelLoss pixel_loss(int kind, double z0, double z1, bool inside,
                                                double weight, double alpha, double gamma) {
    PixelLoss r;
    r.d1 = 0.0;
    if (kind == MAP_LOSS_SOFTMAX_CE) {
        // m = wrong-class logit minus right-class logit: loss softplus(m); the wrong class
        // gets +p, the right one -p, p = sigmoid(m) (cim_spec::loss::softmax_ce_pixel).
        double m = inside ? z0 - z1 : z1 - z0;
        double e = exp(-fabs(m));
        double p, q;
        sigmoids(m, e, &p, &q);
        r.loss = softplus(m, e);
        r.d0 = inside ? p : -p;
        r.d1 = inside ? -p : p;
    } else if (kind == MAP_LOSS_MSE) {
        double e = exp(-fabs(z0));
        double s, one_minus_s;
        sigmoids(z0, e, &s, &one_minus_s);
        double d = inside ? -one_minus_s : s;
        r.loss = d * d;
        r.d0 = 2.0 * d * s * one_minus_s;
    } else if (kind == MAP_LOSS_FOCAL) {
        // t = +-z: loss w (1 - p_t)^gamma softplus(-t), d/dt = w (1 - p_t)^gamma
        // (gamma p_t ln p_t - (1 - p_t)), dz = +-dt (cim_spec::loss::focal_pixel).
        double t = inside ? z0 : -z0;
        double w = inside ? alpha : 1.0 - alpha;
        double e = exp(-fabs(t));
        double pt, one_minus_pt;
        sigmoids(t, e, &pt, &one_minus_pt);
        double ln_pt = -softplus(-t, e);
        double focal_weight = w * pow(one_minus_pt, gamma);
        r.loss = -focal_weight * ln_pt;
        double dt = focal_weight * (gamma * pt * ln_pt - one_minus_pt);
        r.d0 = inside ? dt : -dt;
    } else {
        // BCE: m = -z inside, z outside: loss w softplus(m), derivative -+w sigmoid(m).
        double m = inside ? -z0 : z0;
        double e = exp(-fabs(m));
        double s, unused;
        sigmoids(m, e, &s, &unused);
        r.loss = weight * softplus(m, e);
        r.d0 = inside ? -weight * s : weight * s;
    }
    return r;
}

__device__ __forceinline__ bool is_inside(float target) { return target > 0.5f; }

// Forward, first pass: block b adds, over maps n = b, b + G, ... (G = gridDim.x), the map
// mean (1/P) sum_p l[n, p], and writes that partial sum. A map's pixels are summed per
// class in f64 (fixed tree: the threads' strided sums, then block_sum_f64); the balanced
// BCE weights the class sums by the map's class shares, which the same pass counts.
struct MapLossPartialsArgs {
    double* partials;
    const float* logits;
    const float* target;
    long long maps;
    long long pixels;
    int kind;
    double alpha;
    double gamma;
};

CIM_KERNEL(map_loss_partials, MapLossPartialsArgs) {
    long long channels = a.kind == MAP_LOSS_SOFTMAX_CE ? 2 : 1;
    double pixels = (double)a.pixels;
    double total = 0.0;
    for (long long n = blockIdx.x; n < a.maps; n += gridDim.x) {
        const float* z = a.logits + n * channels * a.pixels;
        const float* t = a.target + n * a.pixels;
        double inside_sum = 0.0, outside_sum = 0.0, positives = 0.0;
        for (long long p = threadIdx.x; p < a.pixels; p += blockDim.x) {
            bool inside = is_inside(t[p]);
            double z1 = channels == 2 ? (double)z[a.pixels + p] : 0.0;
            double l = pixel_loss(a.kind, (double)z[p], z1, inside, 1.0, a.alpha, a.gamma).loss;
            if (inside) {
                inside_sum += l;
                positives += 1.0;
            } else {
                outside_sum += l;
            }
        }
        inside_sum = block_sum_f64(inside_sum);
        outside_sum = block_sum_f64(outside_sum);
        double map_sum;
        if (a.kind == MAP_LOSS_BALANCED_BCE) {
            // Inside pixels weigh the negative share, outside ones the positive share
            // (cim_spec::loss::balanced_weights); a zero weight still passes a NaN on.
            positives = block_sum_f64(positives);
            map_sum = ((pixels - positives) / pixels) * inside_sum + (positives / pixels) * outside_sum;
        } else {
            map_sum = inside_sum + outside_sum;
        }
        total += map_sum / pixels;
    }
    if (threadIdx.x == 0) a.partials[blockIdx.x] = total;
}

// Forward, second pass (one block): loss[0] = scale * (sum of the first pass's partials,
// in a fixed tree).
struct MapLossTotalArgs {
    float* loss;
    const double* partial_sums;
    long long partials;
    double scale;
};

CIM_KERNEL(map_loss_total, MapLossTotalArgs) {
    double sum = 0.0;
    for (long long i = threadIdx.x; i < a.partials; i += blockDim.x) sum += a.partial_sums[i];
    sum = block_sum_f64(sum);
    if (threadIdx.x == 0) a.loss[0] = (float)(a.scale * sum);
}

// Backward: dlogits[n, c, p] = factor * dl[n, p] / dlogits[n, c, p], factor = scale / P;
// one block per map (grid-stride over maps), which first counts the map's inside pixels
// when the balanced BCE needs its class weights.
struct MapLossBackwardArgs {
    float* dlogits;
    const float* logits;
    const float* target;
    long long maps;
    long long pixels;
    int kind;
    double alpha;
    double gamma;
    double factor;
};

CIM_KERNEL(map_loss_backward, MapLossBackwardArgs) {
    long long channels = a.kind == MAP_LOSS_SOFTMAX_CE ? 2 : 1;
    double pixels = (double)a.pixels;
    for (long long n = blockIdx.x; n < a.maps; n += gridDim.x) {
        const float* z = a.logits + n * channels * a.pixels;
        const float* t = a.target + n * a.pixels;
        float* dz = a.dlogits + n * channels * a.pixels;
        double weight_in = 1.0, weight_out = 1.0;
        if (a.kind == MAP_LOSS_BALANCED_BCE) {
            double positives = 0.0;
            for (long long p = threadIdx.x; p < a.pixels; p += blockDim.x)
                positives += is_inside(t[p]) ? 1.0 : 0.0;
            positives = block_sum_f64(positives);
            weight_in = (pixels - positives) / pixels;
            weight_out = positives / pixels;
        }
        for (long long p = threadIdx.x; p < a.pixels; p += blockDim.x) {
            bool inside = is_inside(t[p]);
            double z1 = channels == 2 ? (double)z[a.pixels + p] : 0.0;
            PixelLoss r = pixel_loss(a.kind, (double)z[p], z1, inside, inside ? weight_in : weight_out,
                                     a.alpha, a.gamma);
            dz[p] = (float)(a.factor * r.d0);
            if (channels == 2) dz[a.pixels + p] = (float)(a.factor * r.d1);
        }
    }
}
