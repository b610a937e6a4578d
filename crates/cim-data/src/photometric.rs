//! The exemplar-only photometric transforms of S2 item 7, on planar f32 RGB in [0, 255]
//! (`[3][n][n]`). Values stay in floating point from the renderer to the normalisation, so
//! no 8-bit rounding is added between steps; each step clamps to [0, 255] as an 8-bit image
//! would. Definitions follow torchvision/PIL: factors from [max(0, 1 - s), 1 + s], contrast
//! blends with the mean of the greyscale image, saturation with each pixel's grey, hue
//! shifts H in HSV, greyscale is luma 0.299 R + 0.587 G + 0.114 B, solarise inverts every
//! value of at least 128, and blur is a true Gaussian (S2 allows it in place of PIL's box
//! passes) with clamp-to-edge borders.
//!
//! Every random number is drawn whether or not its transform is switched on, so switching
//! one transform off for an ablation (paper Table 1d) leaves the others' draws unchanged.

use cim_spec::rng::CimRng;

/// Which exemplar transforms are on (S2 item 7); all on by default (S9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Photometric {
    /// Colour jitter, p = 0.8 (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1).
    pub color_jitter: bool,
    /// Greyscale, p = 0.2.
    pub grayscale: bool,
    /// Gaussian blur, p = 0.5, sigma ~ U(0.1, 2.0).
    pub blur: bool,
    /// Solarise, p = 0.2, threshold 128.
    pub solarize: bool,
    /// Horizontal flip, p = 0.5 (the ground-truth map is unchanged).
    pub flip: bool,
}

impl Default for Photometric {
    fn default() -> Self {
        Photometric {
            color_jitter: true,
            grayscale: true,
            blur: true,
            solarize: true,
            flip: true,
        }
    }
}

impl Photometric {
    /// Every transform off.
    pub fn none() -> Self {
        Photometric {
            color_jitter: false,
            grayscale: false,
            blur: false,
            solarize: false,
            flip: false,
        }
    }
}

const JITTER_P: f64 = 0.8;
const BRIGHTNESS: f64 = 0.4;
const CONTRAST: f64 = 0.4;
const SATURATION: f64 = 0.2;
const HUE: f64 = 0.1;
const GRAYSCALE_P: f64 = 0.2;
const BLUR_P: f64 = 0.5;
const BLUR_SIGMA: (f64, f64) = (0.1, 2.0);
const SOLARIZE_P: f64 = 0.2;
const SOLARIZE_THRESHOLD: f32 = 128.0;
const FLIP_P: f64 = 0.5;

/// One colour-jitter operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JitterOp {
    /// Scale every value by the brightness factor.
    Brightness,
    /// Blend with the mean grey of the image.
    Contrast,
    /// Blend with each pixel's grey.
    Saturation,
    /// Shift the hue.
    Hue,
}

/// A drawn colour jitter: the order of its four operations and their factors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Jitter {
    /// The operations in the order applied (torchvision's `randperm(4)`).
    pub order: [JitterOp; 4],
    /// Brightness factor in [0.6, 1.4].
    pub brightness: f64,
    /// Contrast factor in [0.6, 1.4].
    pub contrast: f64,
    /// Saturation factor in [0.8, 1.2].
    pub saturation: f64,
    /// Hue shift in [-0.1, 0.1] turns.
    pub hue: f64,
}

/// The transforms one exemplar receives, after the switches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PhotometricDraw {
    /// The colour jitter, if applied.
    pub jitter: Option<Jitter>,
    /// Greyscale applied.
    pub grayscale: bool,
    /// The blur's sigma (exemplar pixels), if applied.
    pub blur_sigma: Option<f64>,
    /// Solarise applied.
    pub solarize: bool,
    /// Horizontal flip applied.
    pub flip: bool,
}

impl PhotometricDraw {
    /// Draws one exemplar's transforms. Draw order (part of the contract):
    /// `bernoulli(0.8)` for the jitter; its order by Fisher-Yates over
    /// [brightness, contrast, saturation, hue] (`below(4)`, `below(3)`, `below(2)`, swapping
    /// positions 3, 2, 1); `uniform(0.6, 1.4)` brightness, `uniform(0.6, 1.4)` contrast,
    /// `uniform(0.8, 1.2)` saturation, `uniform(-0.1, 0.1)` hue; `bernoulli(0.2)` greyscale;
    /// `bernoulli(0.5)` blur then `uniform(0.1, 2.0)` sigma; `bernoulli(0.2)` solarise;
    /// `bernoulli(0.5)` flip. All are drawn whatever `switches` says.
    pub fn draw(rng: &mut CimRng, switches: &Photometric) -> Self {
        let jitter_on = rng.bernoulli(JITTER_P);
        let mut order = [
            JitterOp::Brightness,
            JitterOp::Contrast,
            JitterOp::Saturation,
            JitterOp::Hue,
        ];
        for i in (1..order.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let jitter = Jitter {
            order,
            brightness: rng.uniform((1.0 - BRIGHTNESS).max(0.0), 1.0 + BRIGHTNESS),
            contrast: rng.uniform((1.0 - CONTRAST).max(0.0), 1.0 + CONTRAST),
            saturation: rng.uniform((1.0 - SATURATION).max(0.0), 1.0 + SATURATION),
            hue: rng.uniform(-HUE, HUE),
        };
        let grayscale = rng.bernoulli(GRAYSCALE_P);
        let blur = rng.bernoulli(BLUR_P);
        let sigma = rng.uniform(BLUR_SIGMA.0, BLUR_SIGMA.1);
        let solarize = rng.bernoulli(SOLARIZE_P);
        let flip = rng.bernoulli(FLIP_P);
        PhotometricDraw {
            jitter: (switches.color_jitter && jitter_on).then_some(jitter),
            grayscale: switches.grayscale && grayscale,
            blur_sigma: (switches.blur && blur).then_some(sigma),
            solarize: switches.solarize && solarize,
            flip: switches.flip && flip,
        }
    }

    /// No transform at all.
    pub fn identity() -> Self {
        PhotometricDraw {
            jitter: None,
            grayscale: false,
            blur_sigma: None,
            solarize: false,
            flip: false,
        }
    }

    /// Applies the transforms in S2's order (jitter, greyscale, blur, solarise, flip) to a
    /// planar `[3][n][n]` image in [0, 255]. `scratch` is reused between calls.
    pub fn apply(&self, img: &mut [f32], n: usize, scratch: &mut Vec<f32>) {
        debug_assert_eq!(img.len(), 3 * n * n);
        if let Some(j) = &self.jitter {
            for op in j.order {
                match op {
                    JitterOp::Brightness => brightness(img, j.brightness as f32),
                    JitterOp::Contrast => contrast(img, j.contrast as f32),
                    JitterOp::Saturation => saturation(img, j.saturation as f32),
                    JitterOp::Hue => hue(img, j.hue as f32),
                }
            }
        }
        if self.grayscale {
            grayscale(img);
        }
        if let Some(sigma) = self.blur_sigma {
            gaussian_blur(img, n, sigma, scratch);
        }
        if self.solarize {
            for v in img.iter_mut() {
                if *v >= SOLARIZE_THRESHOLD {
                    *v = 255.0 - *v;
                }
            }
        }
        if self.flip {
            for row in img.chunks_exact_mut(n) {
                row.reverse();
            }
        }
    }
}

fn planes(img: &mut [f32]) -> (&mut [f32], &mut [f32], &mut [f32]) {
    let p = img.len() / 3;
    let (r, rest) = img.split_at_mut(p);
    let (g, b) = rest.split_at_mut(p);
    (r, g, b)
}

#[inline(always)]
fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.299 * r + 0.587 * g + 0.114 * b
}

fn brightness(img: &mut [f32], f: f32) {
    for v in img.iter_mut() {
        *v = (*v * f).clamp(0.0, 255.0);
    }
}

fn contrast(img: &mut [f32], f: f32) {
    let (r, g, b) = planes(img);
    let sum: f64 = r
        .iter()
        .zip(g.iter())
        .zip(b.iter())
        .map(|((&r, &g), &b)| f64::from(luma(r, g, b)))
        .sum();
    let mean = (sum / r.len().max(1) as f64) as f32;
    for v in img.iter_mut() {
        *v = (mean + f * (*v - mean)).clamp(0.0, 255.0);
    }
}

fn saturation(img: &mut [f32], f: f32) {
    let (r, g, b) = planes(img);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let grey = luma(*r, *g, *b);
        *r = (grey + f * (*r - grey)).clamp(0.0, 255.0);
        *g = (grey + f * (*g - grey)).clamp(0.0, 255.0);
        *b = (grey + f * (*b - grey)).clamp(0.0, 255.0);
    }
}

fn grayscale(img: &mut [f32]) {
    let (r, g, b) = planes(img);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let grey = luma(*r, *g, *b);
        (*r, *g, *b) = (grey, grey, grey);
    }
}

/// Shifts the hue by `shift` turns: RGB -> HSV, H += shift (mod 1), HSV -> RGB.
fn hue(img: &mut [f32], shift: f32) {
    let (r, g, b) = planes(img);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let (rf, gf, bf) = (*r / 255.0, *g / 255.0, *b / 255.0);
        let max = rf.max(gf).max(bf);
        let min = rf.min(gf).min(bf);
        let chroma = max - min;
        if chroma <= 0.0 {
            // Grey: hue is undefined and a shift changes nothing.
            continue;
        }
        let s = chroma / max;
        let h6 = if max == rf {
            (gf - bf) / chroma
        } else if max == gf {
            (bf - rf) / chroma + 2.0
        } else {
            (rf - gf) / chroma + 4.0
        };
        let mut h = (h6 / 6.0 + shift).rem_euclid(1.0);
        if h >= 1.0 {
            h = 0.0;
        }
        let (rr, gg, bb) = hsv_to_rgb(h, s, max);
        *r = (rr * 255.0).clamp(0.0, 255.0);
        *g = (gg * 255.0).clamp(0.0, 255.0);
        *b = (bb * 255.0).clamp(0.0, 255.0);
    }
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = h * 6.0;
    let sector = h6.floor();
    let f = h6 - sector;
    let p = v * (1.0 - s);
    let q = v * (1.0 - s * f);
    let t = v * (1.0 - s * (1.0 - f));
    match sector as i32 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// Taps each side of the Gaussian blur of `sigma` (pixels): the kernel is truncated at
/// 3 sigma, with at least one tap each side.
pub fn blur_radius(sigma: f64) -> usize {
    ((3.0 * sigma).ceil() as usize).max(1)
}

/// Separable Gaussian blur with the kernel truncated at [`blur_radius`] and clamp-to-edge
/// borders, each plane of `img` (n x n) in place. Each line is first copied into a buffer
/// padded with its edge values, so the convolution itself runs without index clamping.
fn gaussian_blur(img: &mut [f32], n: usize, sigma: f64, scratch: &mut Vec<f32>) {
    let radius = blur_radius(sigma);
    let mut kernel: Vec<f32> = (0..=2 * radius)
        .map(|i| {
            let d = i as f64 - radius as f64;
            (-d * d / (2.0 * sigma * sigma)).exp() as f32
        })
        .collect();
    let total: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= total);
    let padded = n + 2 * radius;
    scratch.clear();
    scratch.resize(n * n + padded, 0.0);
    let (transposed, line) = scratch.split_at_mut(n * n);
    for plane in img.chunks_exact_mut(n * n) {
        // Two passes, each blurring rows and writing them transposed, so the second pass
        // blurs the columns and transposes them back.
        for pass in 0..2 {
            let (src, dst): (&[f32], &mut [f32]) = if pass == 0 {
                (&*plane, &mut *transposed)
            } else {
                (&*transposed, &mut *plane)
            };
            for y in 0..n {
                let row = &src[y * n..(y + 1) * n];
                line[..radius].fill(row[0]);
                line[radius..radius + n].copy_from_slice(row);
                line[radius + n..].fill(row[n - 1]);
                for x in 0..n {
                    let window = &line[x..x + 2 * radius + 1];
                    let s: f32 = window.iter().zip(&kernel).map(|(v, k)| v * k).sum();
                    dst[x * n + y] = s;
                }
            }
        }
        for v in plane.iter_mut() {
            *v = v.clamp(0.0, 255.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(n: usize, f: impl Fn(usize, usize, usize) -> f32) -> Vec<f32> {
        let mut v = vec![0.0; 3 * n * n];
        for c in 0..3 {
            for y in 0..n {
                for x in 0..n {
                    v[c * n * n + y * n + x] = f(c, y, x);
                }
            }
        }
        v
    }

    #[test]
    fn draws_do_not_depend_on_switches() {
        let mut a = CimRng::new(5);
        let mut b = CimRng::new(5);
        PhotometricDraw::draw(&mut a, &Photometric::default());
        let off = PhotometricDraw::draw(&mut b, &Photometric::none());
        assert_eq!(a, b, "same number of draws");
        assert_eq!(off, PhotometricDraw::identity());
        // Over many draws each transform fires at about its probability.
        let mut rng = CimRng::new(9);
        let (mut j, mut g, mut bl, mut s, mut f) = (0, 0, 0, 0, 0);
        let trials = 20_000;
        for _ in 0..trials {
            let d = PhotometricDraw::draw(&mut rng, &Photometric::default());
            j += usize::from(d.jitter.is_some());
            g += usize::from(d.grayscale);
            bl += usize::from(d.blur_sigma.is_some());
            s += usize::from(d.solarize);
            f += usize::from(d.flip);
            if let Some(jit) = d.jitter {
                assert!((0.6..=1.4).contains(&jit.brightness));
                assert!((0.8..=1.2).contains(&jit.saturation));
                assert!((-0.1..=0.1).contains(&jit.hue));
                let mut ops = jit.order.to_vec();
                ops.dedup();
                assert_eq!(ops.len(), 4);
            }
        }
        let rate = |k: usize| k as f64 / trials as f64;
        for (got, want) in [(j, 0.8), (g, 0.2), (bl, 0.5), (s, 0.2), (f, 0.5)] {
            assert!((rate(got) - want).abs() < 0.015, "{} vs {want}", rate(got));
        }
    }

    #[test]
    fn transforms_follow_their_definitions() {
        let n = 4;
        let base = image(n, |c, y, x| (c * 60 + y * 20 + x * 7) as f32);
        let mut scratch = Vec::new();

        let mut img = base.clone();
        grayscale(&mut img);
        let p = n * n;
        for i in 0..p {
            let want = luma(base[i], base[p + i], base[2 * p + i]);
            assert!((img[i] - want).abs() < 1e-4 && img[p + i] == img[i]);
        }

        let mut img = base.clone();
        let d = PhotometricDraw {
            solarize: true,
            flip: true,
            ..PhotometricDraw::identity()
        };
        d.apply(&mut img, n, &mut scratch);
        for c in 0..3 {
            for y in 0..n {
                for x in 0..n {
                    let v = base[c * p + y * n + (n - 1 - x)];
                    let want = if v >= 128.0 { 255.0 - v } else { v };
                    assert_eq!(img[c * p + y * n + x], want);
                }
            }
        }

        // A full hue turn is the identity; brightness 1 and contrast 1 are identities.
        let mut img = base.clone();
        hue(&mut img, 1.0);
        brightness(&mut img, 1.0);
        contrast(&mut img, 1.0);
        saturation(&mut img, 1.0);
        for (a, b) in img.iter().zip(&base) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
        // Pure red shifted by a third of a turn becomes pure green.
        let mut red = image(1, |c, _, _| if c == 0 { 200.0 } else { 0.0 });
        hue(&mut red, 1.0 / 3.0);
        assert!(red[0].abs() < 1e-3 && (red[1] - 200.0).abs() < 1e-3 && red[2].abs() < 1e-3);
        // Contrast 0 gives the mean grey everywhere.
        let mut img = base.clone();
        contrast(&mut img, 0.0);
        assert!(img.windows(2).all(|w| (w[0] - w[1]).abs() < 1e-4));

        // Blur keeps a constant image, keeps a linear ramp away from the borders (a
        // symmetric kernel), and spreads an impulse by sigma.
        let mut flat = vec![77.0; 3 * 16 * 16];
        gaussian_blur(&mut flat, 16, 1.7, &mut scratch);
        assert!(flat.iter().all(|v| (v - 77.0).abs() < 1e-3));
        let m = 24;
        let mut ramp = image(m, |_, y, x| (3 * x + 5 * y) as f32);
        gaussian_blur(&mut ramp, m, 1.2, &mut scratch);
        for y in 4..m - 4 {
            for x in 4..m - 4 {
                let want = (3 * x + 5 * y) as f32;
                assert!((ramp[y * m + x] - want).abs() < 1e-3, "{x},{y}");
            }
        }
        let mut dot = image(m, |_, y, x| if (x, y) == (12, 12) { 255.0 } else { 0.0 });
        gaussian_blur(&mut dot, m, 2.0, &mut scratch);
        let (mut mass, mut var) = (0.0f64, 0.0f64);
        for y in 0..m {
            for x in 0..m {
                let v = f64::from(dot[y * m + x]);
                mass += v;
                var += v * ((x as f64 - 12.0).powi(2));
            }
        }
        assert!((mass - 255.0).abs() < 0.1, "mass {mass}");
        assert!((var / mass - 4.0).abs() < 0.1, "variance {}", var / mass);
    }
}
