//! The paper's Figure 5 as a PNG, and the mean IoU of predicted correlation maps: for
//! contexts made from a folder of images (S2 with the run's geometry), each row shows the
//! context with every exemplar's true footprint outlined, then per exemplar the exemplar,
//! its ground-truth map and the predicted map (probability of "inside", S5 channel 1).

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use cim_data::{Dataset, sample};
use cim_model::{Batch, Cim};
use cim_spec::backend::Backend;
use image::{Rgb, RgbImage};

use crate::data::pair_config;
use crate::device::backend_err;
use crate::output;
use crate::plot;
use crate::recipe::Recipe;

/// Colours of the exemplars' outlines.
const COLOURS: [[u8; 3]; 6] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
];

/// Most contexts (rows) a figure shows. Each row is about 150 pixels tall after
/// magnification and needs its own pair in the forward batch: 32 rows keep the PNG under
/// ~5000 pixels and the batch small, and are plenty to judge the maps by eye.
pub const MAX_ROWS: usize = 32;

/// Predictions of a model on pairs made from a dataset.
pub struct Predictions {
    /// Contexts `[B, 3, m, m]` (normalised).
    pub context: Vec<f32>,
    /// Exemplars `[B, K, 3, n, n]` (normalised).
    pub exemplars: Vec<f32>,
    /// Ground truth `[B, K, m, m]`.
    pub maps: Vec<f32>,
    /// Probability of "inside" `[B, K, m, m]`.
    pub probs: Vec<f32>,
}

/// IoU of the thresholded prediction (prob > 0.5) with a ground-truth map (> 0.5); 1 when
/// both are empty.
pub fn iou(gt: &[f32], prob: &[f32]) -> f64 {
    let (mut inter, mut union) = (0usize, 0usize);
    for (&g, &q) in gt.iter().zip(prob) {
        let (a, b) = (g > 0.5, q > 0.5);
        inter += usize::from(a && b);
        union += usize::from(a || b);
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

impl Predictions {
    /// Mean over exemplars of IoU(prob > 0.5, ground truth).
    pub fn mean_iou(&self, pixels: usize) -> f64 {
        let n = self.maps.len() / pixels.max(1);
        let sum: f64 = self
            .maps
            .chunks(pixels)
            .zip(self.probs.chunks(pixels))
            .map(|(gt, p)| iou(gt, p))
            .sum();
        sum / n.max(1) as f64
    }

    /// Mean IoU of each exemplar's prediction with the ground truth of the OTHER exemplars
    /// of its context (`k` per context), or `None` when `k < 2`. A model that only learned
    /// where exemplars tend to lie, ignoring the exemplar, scores as well here as in
    /// [`Predictions::mean_iou`]; the difference is what the exemplar contributes.
    pub fn swapped_iou(&self, pixels: usize, k: usize) -> Option<f64> {
        if k < 2 {
            return None;
        }
        let (mut sum, mut n) = (0.0, 0usize);
        for (gts, probs) in self
            .maps
            .chunks(k * pixels)
            .zip(self.probs.chunks(k * pixels))
        {
            for (i, p) in probs.chunks(pixels).enumerate() {
                for (j, gt) in gts.chunks(pixels).enumerate() {
                    if i != j {
                        sum += iou(gt, p);
                        n += 1;
                    }
                }
            }
        }
        Some(sum / n.max(1) as f64)
    }

    /// `mean IoU X (swapped exemplars Y)`, the line `pretrain` and `visualize` print.
    pub fn iou_summary(&self, pixels: usize, k: usize) -> String {
        let matched = self.mean_iou(pixels);
        match self.swapped_iou(pixels, k) {
            Some(swapped) => format!(
                "mean IoU of predicted maps {matched:.4} (with other exemplars' maps {swapped:.4}, exemplar dependence {:+.4})",
                matched - swapped
            ),
            None => format!("mean IoU of predicted maps {matched:.4}"),
        }
    }
}

/// Runs `model` (built for micro-batches of `count`) on the pairs of `count` images of
/// `images` spread evenly over it, drawn with `seed` as epoch 0 of a run would. Up to
/// `bad_files` undecodable images are passed over (each replaced by the next image, as the
/// loader's skip policy does, and said on stderr), so a run that trained by skipping them
/// can draw its figure; past that, the image's error.
pub fn predict<B: Backend>(
    b: &B,
    recipe: &Recipe,
    model: &mut Cim<B>,
    images: &Path,
    seed: u64,
    bad_files: usize,
) -> Result<Predictions> {
    let count = model.batch_size();
    let dataset = Dataset::open(images).with_context(|| format!("opening {}", images.display()))?;
    if dataset.is_empty() {
        anyhow::bail!("{} holds no images", images.display());
    }
    let cfg = pair_config(recipe);
    let (mut context, mut exemplars, mut maps) = (Vec::new(), Vec::new(), Vec::new());
    let mut passed_over = 0;
    for i in 0..count {
        let mut index = i * dataset.len() / count;
        let pair = loop {
            match sample(&dataset, &cfg, seed, 0, index) {
                Ok(pair) => break pair,
                Err(e) if passed_over < bad_files.min(dataset.len() - 1) => {
                    eprintln!("figure: passing over an undecodable image: {e}");
                    passed_over += 1;
                    index = (index + 1) % dataset.len();
                }
                Err(e) => return Err(anyhow!("{e}")),
            }
        };
        context.extend_from_slice(&pair.context);
        exemplars.extend_from_slice(&pair.exemplars);
        maps.extend_from_slice(&pair.maps);
    }
    let config = *model.config();
    let mut batch = Batch::new(b, &config, count).map_err(backend_err)?;
    batch
        .upload(b, &context, &exemplars, &maps)
        .map_err(backend_err)?;
    model.forward(b, &batch).map_err(backend_err)?;
    let m2 = config.context_size * config.context_size;
    let channels = config.loss.channels();
    let mut logits = vec![0.0f32; maps.len() * channels];
    b.download(b.view(model.logits(), 0..logits.len()), &mut logits)
        .map_err(backend_err)?;
    let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
    let probs = logits
        .chunks(channels * m2)
        .flat_map(|map| {
            (0..m2).map(move |p| {
                if channels == 2 {
                    sigmoid(map[m2 + p] - map[p])
                } else {
                    sigmoid(map[p])
                }
            })
        })
        .collect();
    Ok(Predictions {
        context,
        exemplars,
        maps,
        probs,
    })
}

fn denorm(v: f32, c: usize) -> u8 {
    ((v * cim_data::STD[c] + cim_data::MEAN[c]) * 255.0)
        .round()
        .clamp(0.0, 255.0) as u8
}

/// Draws the Figure 5 grid of `p` into the PNG file `out` (replaced atomically),
/// magnified so a map is at least 128 pixels.
pub fn figure5(p: &Predictions, m: usize, n: usize, k: usize, out: &Path) -> Result<()> {
    let rows = p.maps.len() / (k * m * m);
    let zoom = 128usize.div_ceil(m).max(1) as u32;
    let (gap, label) = (4u32, 12u32);
    let cell = m as u32;
    let width = cell + k as u32 * 3 * (cell + gap) + gap;
    let row_h = cell + (gap + label).div_ceil(zoom);
    let height = rows as u32 * row_h + gap;
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let mut labels = Vec::new();
    for r in 0..rows {
        let y0 = gap + r as u32 * row_h;
        let ctx = &p.context[r * 3 * m * m..(r + 1) * 3 * m * m];
        for y in 0..m {
            for x in 0..m {
                let px = [0, 1, 2].map(|c| denorm(ctx[c * m * m + y * m + x], c));
                img.put_pixel(x as u32, y0 + y as u32, Rgb(px));
            }
        }
        labels.push((0, y0 + cell, "context".to_string(), [0, 0, 0]));
        for e in 0..k {
            let gt = &p.maps[(r * k + e) * m * m..][..m * m];
            let pr = &p.probs[(r * k + e) * m * m..][..m * m];
            let colour = COLOURS[e % COLOURS.len()];
            // Footprint outline on the context: inside pixels with an outside neighbour.
            let inside = |yy: usize, xx: usize| gt[yy * m + xx] > 0.5;
            for y in 0..m {
                for x in 0..m {
                    let border = x == 0 || y == 0 || x == m - 1 || y == m - 1;
                    let edge = inside(y, x)
                        && (border
                            || !inside(y - 1, x)
                            || !inside(y + 1, x)
                            || !inside(y, x - 1)
                            || !inside(y, x + 1));
                    if edge {
                        img.put_pixel(x as u32, y0 + y as u32, Rgb(colour));
                    }
                }
            }
            let x0 = cell + gap + e as u32 * 3 * (cell + gap);
            let ex = &p.exemplars[(r * k + e) * 3 * n * n..][..3 * n * n];
            for y in 0..m {
                for x in 0..m {
                    let (sy, sx) = (y * n / m, x * n / m);
                    let px = [0, 1, 2].map(|c| denorm(ex[c * n * n + sy * n + sx], c));
                    img.put_pixel(x0 + x as u32, y0 + y as u32, Rgb(px));
                    let g = if gt[y * m + x] > 0.5 { 255 } else { 0 };
                    img.put_pixel(x0 + cell + gap + x as u32, y0 + y as u32, Rgb([g, g, g]));
                    let q = (pr[y * m + x].clamp(0.0, 1.0) * 255.0) as u8;
                    img.put_pixel(
                        x0 + 2 * (cell + gap) + x as u32,
                        y0 + y as u32,
                        Rgb([q, q / 2, 255 - q]),
                    );
                }
            }
            for (col, name) in ["exemplar", "truth", "predicted"].iter().enumerate() {
                let x = x0 + col as u32 * (cell + gap);
                labels.push((x, y0 + cell, name.to_string(), colour));
                for y in y0..y0 + cell {
                    img.put_pixel(x - 1, y, Rgb(colour));
                }
            }
        }
    }
    let mut big = image::imageops::resize(
        &img,
        width * zoom,
        height * zoom,
        image::imageops::FilterType::Nearest,
    );
    for (x, y, text, colour) in labels {
        plot::text(
            &mut big,
            (x * zoom) as i64,
            (y * zoom + 2) as i64,
            &text,
            1,
            colour,
        );
    }
    output::write_file(out, |tmp| {
        Ok(big.save_with_format(tmp, image::ImageFormat::Png)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two contexts of K = 2 exemplars on 4-pixel maps: exemplar 0 covers pixels 0-1,
    /// exemplar 1 pixels 2-3.
    fn predictions(probs: Vec<f32>) -> Predictions {
        let maps = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0].repeat(2);
        Predictions {
            context: Vec::new(),
            exemplars: Vec::new(),
            maps,
            probs,
        }
    }

    #[test]
    fn exemplar_dependence_separates_a_prior_from_a_matcher() {
        // A perfect matcher: each map is its own exemplar's.
        let matcher = predictions([0.9, 0.9, 0.1, 0.1, 0.1, 0.1, 0.9, 0.9].repeat(2));
        assert_eq!(matcher.mean_iou(4), 1.0);
        assert_eq!(matcher.swapped_iou(4, 2), Some(0.0));
        // A prior: the same map (pixels 1-2) whatever the exemplar scores the same on both.
        let prior = predictions([0.1, 0.9, 0.9, 0.1].repeat(4));
        assert_eq!(prior.mean_iou(4), 1.0 / 3.0);
        assert_eq!(prior.swapped_iou(4, 2), Some(1.0 / 3.0));
        assert!(
            prior
                .iou_summary(4, 2)
                .contains("exemplar dependence +0.0000")
        );
        // One exemplar per context: nothing to swap with.
        assert_eq!(prior.swapped_iou(4, 1), None);
        assert!(!prior.iou_summary(4, 1).contains("dependence"));
    }
}
