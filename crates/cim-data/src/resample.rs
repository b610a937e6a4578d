//! Resampling: Pillow's antialiased `resize` for the search view and the context (S2 items
//! 2-3), reproduced to the bit, and the antialiased affine renderer of the exemplars (S2
//! item 5).
//!
//! The resize follows Pillow's `Resample.c`: per output pixel a 1-D window centred at
//! `in0 + (x + 0.5) * scale`, filter support widened by `max(1, scale)`, weights normalised
//! then quantised to 22-bit fixed point, a horizontal pass into an 8-bit intermediate and
//! a vertical pass from it, each rounding and clamping to 0..255. torchvision's
//! `resized_crop` on a PIL image crops first and resizes the crop, so windows are clamped
//! to the crop, not to the whole image; [`resize_crop`] does the same.
//!
//! The exemplar renderer evaluates, for each exemplar pixel, the separable filter in the
//! rectangle's own frame: a canvas pixel at offset (du, dv) along the rectangle's axes u, v
//! from the sample point weighs K(du / fx) K(dv / fy) with fx, fy the shrink factors of
//! [`cim_spec::geometry::shrink_factors`] floored at 1, exactly PIL's rule turned with the
//! rectangle, normalised by the sum of the weights that fall on the canvas.

use cim_spec::geometry::{ExemplarRect, exemplar_to_canvas, shrink_factors};

use crate::rgb::RgbImage;

/// The interpolation kernel of a resampling (Pillow's definitions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kernel {
    /// Triangle filter, support 1.
    Bilinear,
    /// Keys cubic with a = -0.5, support 2 (Pillow's BICUBIC).
    #[default]
    Bicubic,
}

impl Kernel {
    /// Half-width of the filter at scale 1, in input pixels.
    pub fn support(self) -> f64 {
        match self {
            Kernel::Bilinear => 1.0,
            Kernel::Bicubic => 2.0,
        }
    }

    /// The filter's value at offset `x` (input pixels at scale 1).
    pub fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Kernel::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Kernel::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }

    /// [`Kernel::eval`] in f32 for the exemplar renderer's inner loop, written with both
    /// polynomial pieces computed and selected, so it compiles to branch-free selects: the
    /// tap offsets are effectively random, and mispredicted branches would dominate.
    #[inline(always)]
    fn eval_f32(self, x: f32) -> f32 {
        let x = x.abs();
        match self {
            Kernel::Bilinear => (1.0 - x).max(0.0),
            Kernel::Bicubic => {
                let near = (1.5 * x - 2.5) * x * x + 1.0;
                let far = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0;
                let v = if x < 1.0 { near } else { far };
                if x < 2.0 { v } else { 0.0 }
            }
        }
    }
}

/// Pillow's fixed-point precision for 8-bit images: 32 bits minus 8 for the sample minus 2
/// for the headroom of negative lobes. A pass's value is `(2^(P-1) + sum of byte * weight)
/// >> P`, clamped to 0..=255.
pub const RESIZE_PRECISION_BITS: u32 = 32 - 8 - 2;

/// One axis of a resize: for each output pixel the first input index, the tap count and
/// `ksize` fixed-point weights (the GPU renderer uploads them, so its resize is this one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResizeCoefficients {
    /// Weights stored per output pixel (only the first `count` of them are used).
    pub ksize: usize,
    /// Per output pixel: the first input index and the tap count.
    pub bounds: Vec<(usize, usize)>,
    /// `out_size * ksize` weights in [`RESIZE_PRECISION_BITS`] fixed point.
    pub weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the box [0, in_size]: the
/// taps of one axis of [`resize_crop`] from `in_size` to `out_size` pixels.
pub fn resize_coefficients(in_size: usize, out_size: usize, kernel: Kernel) -> ResizeCoefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = kernel.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut pre = vec![0.0f64; ksize];
    let ss = 1.0 / filterscale;
    for (xx, row) in weights.chunks_exact_mut(ksize).enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) cast truncates toward zero; negative values are clamped to 0 anyway.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let count = xmax.saturating_sub(xmin);
        let mut total = 0.0;
        for (x, p) in pre[..count].iter_mut().enumerate() {
            *p = kernel.eval((x as f64 + xmin as f64 - center + 0.5) * ss);
            total += *p;
        }
        for (x, w) in row[..count].iter_mut().enumerate() {
            let k = if total != 0.0 { pre[x] / total } else { pre[x] };
            let fixed = k * f64::from(1u32 << RESIZE_PRECISION_BITS);
            *w = if k < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((xmin, count));
    }
    ResizeCoefficients {
        ksize,
        bounds,
        weights,
    }
}

#[inline(always)]
fn clip8(acc: i32) -> u8 {
    (acc >> RESIZE_PRECISION_BITS).clamp(0, 255) as u8
}

/// A crop of an image: columns `x0..x0 + w`, rows `y0..y0 + h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    /// Left column.
    pub x0: u32,
    /// Top row.
    pub y0: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}

/// Crops `src` to `crop` and resizes the crop to `out_w` x `out_h` exactly as Pillow's
/// `img.crop(box).resize((out_w, out_h), kernel)` does (bit-identical for 8-bit RGB).
/// `None` when the crop is empty, leaves the image or an output side is zero.
pub fn resize_crop(
    src: &RgbImage,
    crop: CropBox,
    out_w: u32,
    out_h: u32,
    kernel: Kernel,
) -> Option<RgbImage> {
    #[cfg(target_arch = "x86_64")]
    if simd::avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked by `simd::avx2`).
        return unsafe { simd::resize_crop(src, crop, out_w, out_h, kernel) };
    }
    resize_crop_impl(src, crop, out_w, out_h, kernel)
}

/// The body of [`resize_crop`], inlined into each instruction-set variant.
#[inline(always)]
fn resize_crop_impl(
    src: &RgbImage,
    crop: CropBox,
    out_w: u32,
    out_h: u32,
    kernel: Kernel,
) -> Option<RgbImage> {
    let (x0, y0, w, h) = (
        crop.x0 as usize,
        crop.y0 as usize,
        crop.w as usize,
        crop.h as usize,
    );
    if w == 0
        || h == 0
        || out_w == 0
        || out_h == 0
        || x0 + w > src.width() as usize
        || y0 + h > src.height() as usize
    {
        return None;
    }
    let (ow, oh) = (out_w as usize, out_h as usize);
    let src_stride = src.width() as usize * 3;
    let data = src.as_raw();
    let crop_row = |r: usize| {
        let start = (y0 + r) * src_stride + x0 * 3;
        &data[start..start + w * 3]
    };

    let vert = (oh != h).then(|| resize_coefficients(h, oh, kernel));
    // Rows of the crop the vertical pass reads; the horizontal pass computes only those.
    let (row_first, row_last) = match &vert {
        Some(v) => {
            let first = v.bounds[0].0;
            let last = v.bounds[oh - 1].0 + v.bounds[oh - 1].1;
            (first, last)
        }
        None => (0, h),
    };
    let rows = row_last - row_first;

    // Horizontal pass into an 8-bit intermediate of `rows` x `ow`.
    let temp: Vec<u8> = if ow != w {
        let hc = resize_coefficients(w, ow, kernel);
        let mut temp = vec![0u8; rows * ow * 3];
        for (r, out_row) in temp.chunks_exact_mut(ow * 3).enumerate() {
            let row = crop_row(row_first + r);
            for (xx, out_px) in out_row.chunks_exact_mut(3).enumerate() {
                let (xmin, count) = hc.bounds[xx];
                let k = &hc.weights[xx * hc.ksize..xx * hc.ksize + count];
                let px = &row[xmin * 3..(xmin + count) * 3];
                let half = 1i32 << (RESIZE_PRECISION_BITS - 1);
                let (mut s0, mut s1, mut s2) = (half, half, half);
                for (p, &kw) in px.chunks_exact(3).zip(k) {
                    s0 += i32::from(p[0]) * kw;
                    s1 += i32::from(p[1]) * kw;
                    s2 += i32::from(p[2]) * kw;
                }
                out_px[0] = clip8(s0);
                out_px[1] = clip8(s1);
                out_px[2] = clip8(s2);
            }
        }
        temp
    } else {
        let mut temp = Vec::with_capacity(rows * w * 3);
        for r in row_first..row_last {
            temp.extend_from_slice(crop_row(r));
        }
        temp
    };

    let out = match vert {
        Some(vc) => {
            let stride = ow * 3;
            let mut out = vec![0u8; oh * stride];
            let mut acc = vec![0i32; stride];
            for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
                let (ymin, count) = vc.bounds[yy];
                let k = &vc.weights[yy * vc.ksize..yy * vc.ksize + count];
                acc.fill(1 << (RESIZE_PRECISION_BITS - 1));
                // Row-at-a-time accumulation: the inner loop runs over contiguous bytes,
                // which the compiler vectorises.
                for (y, &kw) in k.iter().enumerate() {
                    let start = (ymin - row_first + y) * stride;
                    for (a, &p) in acc.iter_mut().zip(&temp[start..start + stride]) {
                        *a += i32::from(p) * kw;
                    }
                }
                for (o, &a) in out_row.iter_mut().zip(&acc) {
                    *o = clip8(a);
                }
            }
            out
        }
        None => temp,
    };
    RgbImage::from_raw(out_w, out_h, out)
}

/// Resizes a whole image (Pillow's `img.resize((out_w, out_h), kernel)`).
pub fn resize(src: &RgbImage, out_w: u32, out_h: u32, kernel: Kernel) -> Option<RgbImage> {
    let crop = CropBox {
        x0: 0,
        y0: 0,
        w: src.width(),
        h: src.height(),
    };
    resize_crop(src, crop, out_w, out_h, kernel)
}

/// Renders the n x n exemplar of `rect` from the S x S `canvas` (S2 item 5) as planar f32
/// RGB in [0, 255], `out = [3][n][n]` (row = exemplar y). Output pixel (i, j) is the
/// normalised sum over canvas pixels q of K(du / fx) K(dv / fy) q, where (du, dv) is q's
/// centre minus the image of the output pixel's centre under `exemplar_to_canvas`, measured
/// along the rectangle's axes u, v in canvas pixels, and fx, fy are the shrink factors
/// floored at 1 (module notes); values are clamped to [0, 255] as an 8-bit resize would.
///
/// The sum is evaluated by scattering: each canvas pixel near the rectangle is visited once
/// and adds its weighted value to the few output pixels within the filter's reach, which
/// shares each pixel's kernel weights among those outputs instead of recomputing them per
/// output. The result is the same sum as gathering per output pixel.
///
/// # Panics
/// If `out.len() != 3 n^2` or `n == 0` (a caller's sizing error, not an input's).
pub fn render_exemplar(
    canvas: &RgbImage,
    rect: &ExemplarRect,
    n: usize,
    kernel: Kernel,
    out: &mut [f32],
) {
    assert!(
        n > 0 && out.len() == 3 * n * n,
        "render_exemplar: output length"
    );
    #[cfg(target_arch = "x86_64")]
    if simd::avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked by `simd::avx2`).
        return unsafe { simd::render_exemplar(canvas, rect, n, kernel, out) };
    }
    render_exemplar_impl(canvas, rect, n, kernel, out);
}

/// The body of [`render_exemplar`], inlined into each instruction-set variant.
#[inline(always)]
fn render_exemplar_impl(
    canvas: &RgbImage,
    rect: &ExemplarRect,
    n: usize,
    kernel: Kernel,
    out: &mut [f32],
) {
    let (cw, ch) = (canvas.width() as i64, canvas.height() as i64);
    let stride = canvas.width() as usize * 3;
    let data = canvas.as_raw();
    let ((ux, uy), (vx, vy)) = rect.axes();
    let (sx, sy) = shrink_factors(rect, n);
    // Exemplar coordinates (X, Y) of a canvas point p, pixel centres at i + 0.5:
    // X = (p - corner) . u / sx, Y = (p - corner) . v / sy (the inverse of
    // `exemplar_to_canvas`). A tap's weight along u is K((X - i - 0.5) gu) with
    // gu = sx / max(1, sx): K(du / fx) rewritten in exemplar units.
    let corner = exemplar_to_canvas(rect, n).apply(0.0, 0.0);
    let (gu, gv) = (sx / sx.max(1.0), sy / sy.max(1.0));
    let support = kernel.support();
    // Reach of the filter in exemplar pixels along each axis.
    let (reach_u, reach_v) = (support / gu, support / gv);
    let (dxdx, dxdy) = (ux / sx, uy / sx);
    let (dydx, dydy) = (vx / sy, vy / sy);
    let nf = n as f64;
    // Taps are clipped to the n output columns, which also bounds this for rectangles
    // thinner than a canvas pixel (where the reach in exemplar pixels is huge).
    let taps_u = ((2.0 * reach_u).ceil() as usize + 2).min(n + 2);
    // Per canvas pixel: its weights along u times its value [r, g, b, 1], laid out as the
    // accumulator row they are added to, so each output row's update is one contiguous
    // multiply-add the compiler vectorises.
    let mut weighted = vec![0.0f32; 4 * taps_u];
    // Accumulated [r, g, b, weight] per output pixel, row-major.
    let mut acc = vec![0.0f32; 4 * n * n];

    // Canvas pixels that reach an output pixel have X in (lo_x, hi_x) and Y in (lo_y, hi_y):
    // a rectangle with the exemplar's centre and axes, half-sides hu and hv in canvas
    // pixels. Its bounding box bounds the rows; each row's columns are then solved exactly.
    let hu = (nf / 2.0 - 0.5 + reach_u) * sx;
    let hv = (nf / 2.0 - 0.5 + reach_v) * sy;
    let ey = hu * uy.abs() + hv * vy.abs();
    let r0 = ((rect.cy - ey - 0.5).floor() as i64).max(0);
    let r1 = ((rect.cy + ey - 0.5).ceil() as i64).min(ch - 1);
    let (lo_x, hi_x) = (0.5 - reach_u, nf - 0.5 + reach_u);
    let (lo_y, hi_y) = (0.5 - reach_v, nf - 0.5 + reach_v);
    let (gu32, gv32) = (gu as f32, gv as f32);
    let (reach_u32, reach_v32) = (reach_u as f32, reach_v as f32);
    let last = n as i32 - 1;
    let unit_scale = gu == 1.0 && gv == 1.0;
    for qy in r0..=r1 {
        let py = qy as f64 + 0.5 - corner.1;
        // Along the row, X = ax + dxdx t and Y = ay + dydx t with t = qx + 0.5 - corner.x.
        let (ax, ay) = (dxdy * py, dydy * py);
        let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
        if !range(dxdx, ax, lo_x, hi_x, &mut lo, &mut hi)
            || !range(dydx, ay, lo_y, hi_y, &mut lo, &mut hi)
        {
            continue;
        }
        let q0 = ((lo + corner.0 - 0.5).ceil() as i64).max(0);
        let q1 = ((hi + corner.0 - 0.5).floor() as i64).min(cw - 1);
        if q0 > q1 {
            continue;
        }
        let row = &data[qy as usize * stride..(qy as usize + 1) * stride];
        for qx in q0..=q1 {
            let t = qx as f64 + 0.5 - corner.0;
            // Offsets from the first output pixel centre, in exemplar pixels.
            let x = (ax + dxdx * t - 0.5) as f32;
            let y = (ay + dydx * t - 0.5) as f32;
            let p = &row[qx as usize * 3..qx as usize * 3 + 3];
            let value = [f32::from(p[0]), f32::from(p[1]), f32::from(p[2]), 1.0];
            if unit_scale {
                // Shrinking (or 1:1) on both axes: the kernel's taps fall on consecutive
                // output pixels at offsets f + k, so closed-form weights of the fractional
                // part replace per-tap kernel calls.
                let (fx, fy) = (floor_i32(x), floor_i32(y));
                let (fu, fv) = (x - fx as f32, y - fy as f32);
                let done = match kernel {
                    Kernel::Bicubic => splat(
                        &mut acc,
                        n,
                        (fx - 1, fy - 1),
                        cubic_weights(fu),
                        cubic_weights(fv),
                        value,
                    ),
                    Kernel::Bilinear => {
                        splat(&mut acc, n, (fx, fy), [1.0 - fu, fu], [1.0 - fv, fv], value)
                    }
                };
                if done {
                    continue;
                }
            }
            let i_lo = ceil_i32(x - reach_u32).max(0);
            let i_hi = floor_i32(x + reach_u32).min(last);
            let j_lo = ceil_i32(y - reach_v32).max(0);
            let j_hi = floor_i32(y + reach_v32).min(last);
            if i_hi < i_lo || j_hi < j_lo {
                continue;
            }
            let ni = (i_hi - i_lo + 1) as usize;
            for (k, chunk) in weighted[..4 * ni].chunks_exact_mut(4).enumerate() {
                let w = kernel.eval_f32((x - (i_lo + k as i32) as f32) * gu32);
                for c in 0..4 {
                    chunk[c] = w * value[c];
                }
            }
            for j in j_lo..=j_hi {
                let wj = kernel.eval_f32((y - j as f32) * gv32);
                let base = 4 * (j as usize * n + i_lo as usize);
                for (a, &b) in acc[base..base + 4 * ni].iter_mut().zip(&weighted[..4 * ni]) {
                    *a += wj * b;
                }
            }
        }
    }
    let plane = n * n;
    for (o, a) in acc.chunks_exact(4).enumerate() {
        // Every output pixel's own centre lies on the canvas, so its weight is positive.
        let inv = if a[3] != 0.0 { 1.0 / a[3] } else { 0.0 };
        for c in 0..3 {
            out[c * plane + o] = (a[c] * inv).clamp(0.0, 255.0);
        }
    }
}

/// AVX2 variants of the hot loops: the same code compiled with wider vectors, chosen at run
/// time. Rust never contracts or reorders floating-point operations on its own, so both
/// variants compute bit-identical results (a test checks it); only the speed differs.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::*;

    /// Whether this CPU has AVX2 and FMA (detected once, then cached by std).
    pub(super) fn avx2() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn resize_crop(
        src: &RgbImage,
        crop: CropBox,
        out_w: u32,
        out_h: u32,
        kernel: Kernel,
    ) -> Option<RgbImage> {
        resize_crop_impl(src, crop, out_w, out_h, kernel)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn render_exemplar(
        canvas: &RgbImage,
        rect: &ExemplarRect,
        n: usize,
        kernel: Kernel,
        out: &mut [f32],
    ) {
        render_exemplar_impl(canvas, rect, n, kernel, out)
    }
}

/// Pillow's bicubic (a = -0.5) at offsets 1 + f, f, 1 - f, 2 - f: the weights of the four
/// output pixels around a point f past the second one's centre, f in [0, 1).
#[inline(always)]
fn cubic_weights(f: f32) -> [f32; 4] {
    let g = 1.0 - f;
    [
        -0.5 * f * g * g,
        (1.5 * f - 2.5) * f * f + 1.0,
        (1.5 * g - 2.5) * g * g + 1.0,
        -0.5 * g * f * f,
    ]
}

/// Adds `value` weighted by `wu[a] * wv[b]` to the T x T output pixels from `first`
/// (column, row); false, touching nothing, when they do not all lie in the n x n output.
#[inline(always)]
fn splat<const T: usize>(
    acc: &mut [f32],
    n: usize,
    first: (i32, i32),
    wu: [f32; T],
    wv: [f32; T],
    value: [f32; 4],
) -> bool {
    let (i0, j0) = first;
    let inside = |v: i32| v >= 0 && (v as usize) + T <= n;
    if !inside(i0) || !inside(j0) {
        return false;
    }
    let mut weighted = [[0.0f32; 4]; T];
    for (w, &u) in weighted.iter_mut().zip(&wu) {
        for c in 0..4 {
            w[c] = u * value[c];
        }
    }
    for (b, &v) in wv.iter().enumerate() {
        let base = 4 * ((j0 as usize + b) * n + i0 as usize);
        let line = &mut acc[base..base + 4 * T];
        for (a, w) in line.chunks_exact_mut(4).zip(&weighted) {
            for c in 0..4 {
                a[c] += v * w[c];
            }
        }
    }
    true
}

/// floor(v) as an integer without a libm call (baseline x86-64 has no rounding instruction).
#[inline(always)]
fn floor_i32(v: f32) -> i32 {
    let t = v as i32;
    t - i32::from(v < t as f32)
}

/// ceil(v) as an integer without a libm call.
#[inline(always)]
fn ceil_i32(v: f32) -> i32 {
    -floor_i32(-v)
}

/// Narrows [lo, hi] to the offsets t with lo_v < a t + b < hi_v; false when none remain.
fn range(a: f64, b: f64, lo_v: f64, hi_v: f64, lo: &mut f64, hi: &mut f64) -> bool {
    if a.abs() < 1e-12 {
        return lo_v < b && b < hi_v;
    }
    let (t1, t2) = ((lo_v - b) / a, (hi_v - b) / a);
    *lo = lo.max(t1.min(t2));
    *hi = hi.min(t1.max(t2));
    lo <= hi
}

#[cfg(test)]
mod tests {
    use super::*;
    use cim_spec::geometry::{ExemplarParams, sample_exemplar};
    use cim_spec::rng::CimRng;

    /// The definition of S2 item 5, gathered per output pixel over every canvas pixel in
    /// f64: the oracle for the scattering renderer.
    fn naive(canvas: &RgbImage, rect: &ExemplarRect, n: usize, kernel: Kernel) -> Vec<f64> {
        let map = exemplar_to_canvas(rect, n);
        let ((ux, uy), (vx, vy)) = rect.axes();
        let (sx, sy) = shrink_factors(rect, n);
        let (fx, fy) = (sx.max(1.0), sy.max(1.0));
        let mut out = vec![0.0; 3 * n * n];
        for j in 0..n {
            for i in 0..n {
                let (cx, cy) = map.apply(i as f64 + 0.5, j as f64 + 0.5);
                let mut acc = [0.0f64; 4];
                for qy in 0..canvas.height() {
                    for qx in 0..canvas.width() {
                        let (dx, dy) = (f64::from(qx) + 0.5 - cx, f64::from(qy) + 0.5 - cy);
                        let du = dx * ux + dy * uy;
                        let dv = dx * vx + dy * vy;
                        let w = kernel.eval(du / fx) * kernel.eval(dv / fy);
                        let p = canvas.pixel(qx, qy).unwrap();
                        for c in 0..3 {
                            acc[c] += w * f64::from(p[c]);
                        }
                        acc[3] += w;
                    }
                }
                for c in 0..3 {
                    out[c * n * n + j * n + i] = (acc[c] / acc[3]).clamp(0.0, 255.0);
                }
            }
        }
        out
    }

    fn noise(w: u32, h: u32, seed: u64) -> RgbImage {
        let mut rng = CimRng::new(seed);
        let data = (0..w * h * 3).map(|_| rng.below(256) as u8).collect();
        RgbImage::from_raw(w, h, data).unwrap()
    }

    #[test]
    fn scattering_renderer_equals_the_gathered_definition() {
        let s = 40;
        let canvas = noise(s, s, 1);
        let mut rng = CimRng::new(2);
        // Scales from strong shrink to enlargement (n = 12 over sides of ~4..38 pixels).
        let params = ExemplarParams {
            scale: (0.01, 0.6),
            ..ExemplarParams::default()
        };
        for kernel in [Kernel::Bilinear, Kernel::Bicubic] {
            for _ in 0..12 {
                let rect = sample_exemplar(&mut rng, f64::from(s), &params).unwrap();
                let n = 12;
                let mut out = vec![0.0f32; 3 * n * n];
                render_exemplar(&canvas, &rect, n, kernel, &mut out);
                let want = naive(&canvas, &rect, n, kernel);
                for (k, (a, b)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(*a) - b).abs() < 2e-3,
                        "{kernel:?} {rect:?} value {k}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn instruction_set_variants_agree_to_the_bit() {
        if !simd::avx2() {
            eprintln!("skipped: no AVX2 on this CPU");
            return;
        }
        let canvas = noise(96, 96, 4);
        let mut rng = CimRng::new(5);
        for kernel in [Kernel::Bilinear, Kernel::Bicubic] {
            for _ in 0..8 {
                let rect = sample_exemplar(&mut rng, 96.0, &ExemplarParams::default()).unwrap();
                let (mut a, mut b) = (vec![0.0f32; 3 * 24 * 24], vec![0.0f32; 3 * 24 * 24]);
                render_exemplar_impl(&canvas, &rect, 24, kernel, &mut a);
                // SAFETY: AVX2 and FMA were detected above.
                unsafe { simd::render_exemplar(&canvas, &rect, 24, kernel, &mut b) };
                assert_eq!(a, b);
            }
            let crop = CropBox {
                x0: 3,
                y0: 7,
                w: 80,
                h: 61,
            };
            let a = resize_crop_impl(&canvas, crop, 33, 70, kernel);
            // SAFETY: as above.
            let b = unsafe { simd::resize_crop(&canvas, crop, 33, 70, kernel) };
            assert_eq!(a, b);
        }
    }

    #[test]
    fn sub_pixel_rectangles_render_like_the_definition() {
        let canvas = noise(30, 30, 6);
        for (w, h, theta) in [(0.3, 12.0, 10.0), (25.0, 0.05, -30.0), (0.2, 0.2, 45.0)] {
            let rect = ExemplarRect {
                cx: 15.2,
                cy: 14.7,
                w,
                h,
                theta_deg: theta,
            };
            let n = 8;
            let mut out = vec![0.0f32; 3 * n * n];
            render_exemplar(&canvas, &rect, n, Kernel::Bicubic, &mut out);
            let want = naive(&canvas, &rect, n, Kernel::Bicubic);
            for (a, b) in out.iter().zip(&want) {
                assert!((f64::from(*a) - b).abs() < 2e-3, "{rect:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn kernels_match_pillow_definitions() {
        // Pillow's bicubic (a = -0.5) and triangle filters at a few points.
        let cases = [
            (0.0, 1.0),
            (0.5, 0.5625),
            (1.0, 0.0),
            (1.5, -0.0625),
            (2.0, 0.0),
        ];
        for (x, want) in cases {
            assert!((Kernel::Bicubic.eval(x) - want).abs() < 1e-12);
            assert!((Kernel::Bicubic.eval(-x) - want).abs() < 1e-12);
            assert!((f64::from(Kernel::Bicubic.eval_f32(x as f32)) - want).abs() < 1e-6);
        }
        assert_eq!(Kernel::Bilinear.eval(0.25), 0.75);
        assert_eq!(Kernel::Bilinear.eval_f32(-1.5), 0.0);
    }

    #[test]
    fn resize_refuses_bad_boxes() {
        let img = noise(10, 8, 3);
        let b = |x0, y0, w, h| CropBox { x0, y0, w, h };
        assert!(resize_crop(&img, b(0, 0, 0, 8), 4, 4, Kernel::Bicubic).is_none());
        assert!(resize_crop(&img, b(5, 0, 6, 8), 4, 4, Kernel::Bicubic).is_none());
        assert!(resize_crop(&img, b(0, 0, 10, 8), 0, 4, Kernel::Bicubic).is_none());
        // Same size: an identity copy of the crop.
        let same = resize_crop(&img, b(2, 1, 3, 4), 3, 4, Kernel::Bicubic).unwrap();
        assert_eq!(same.pixel(0, 0), img.pixel(2, 1));
        assert_eq!(same.pixel(2, 3), img.pixel(4, 4));
    }
}
