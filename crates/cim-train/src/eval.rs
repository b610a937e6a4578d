//! Evaluation on frozen features (S10): k-NN (cosine similarity, k = 20, votes weighted
//! by exp(similarity / 0.07)) and a linear probe (softmax regression on standardised
//! features), over features extracted with any backend; and the labelled sets they run
//! on: Fashion-MNIST's IDX files (DATA.md) or images already decoded by the caller.

use std::fs;
use std::path::Path;

use crate::device::backend_err;
use anyhow::{Context, Result, anyhow, bail};
use cim_model::{Cim, EncoderChoice, FeatureExtractor};
use cim_spec::backend::{Backend, Role};
use cim_spec::rng::CimRng;
use rayon::prelude::*;

/// Per-channel normalisation of S1.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// Per-channel normalisation of S1.
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Labelled grey or RGB images of one size, 8-bit.
#[derive(Debug, Clone)]
pub struct Labelled {
    /// `[n, channels, h, w]` values 0..=255.
    pub pixels: Vec<u8>,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// One label per image.
    pub labels: Vec<usize>,
}

impl Labelled {
    /// Images held.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// The first `n` images (all when fewer).
    pub fn take(mut self, n: usize) -> Self {
        let n = n.min(self.len());
        self.pixels
            .truncate(n * self.channels * self.height * self.width);
        self.labels.truncate(n);
        self
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads an IDX image file (magic 0x00000803) and its label file (0x00000801).
pub fn read_idx(images: &Path, labels: &Path) -> Result<Labelled> {
    let ib = fs::read(images).with_context(|| format!("reading {}", images.display()))?;
    let lb = fs::read(labels).with_context(|| format!("reading {}", labels.display()))?;
    if ib.len() < 16 || be_u32(&ib, 0) != 0x803 {
        bail!(
            "{} is not an IDX image file (uncompressed, magic 0x00000803)",
            images.display()
        );
    }
    if lb.len() < 8 || be_u32(&lb, 0) != 0x801 {
        bail!(
            "{} is not an IDX label file (uncompressed, magic 0x00000801)",
            labels.display()
        );
    }
    let (n, h, w) = (
        be_u32(&ib, 4) as usize,
        be_u32(&ib, 8) as usize,
        be_u32(&ib, 12) as usize,
    );
    if ib.len() != 16 + n * h * w {
        bail!(
            "{}: header says {n} images of {h}x{w} but the file holds {} bytes",
            images.display(),
            ib.len()
        );
    }
    let nl = be_u32(&lb, 4) as usize;
    if nl != n || lb.len() != 8 + n {
        bail!(
            "{}: {nl} labels in a file of {} bytes for {n} images",
            labels.display(),
            lb.len()
        );
    }
    Ok(Labelled {
        pixels: ib[16..].to_vec(),
        channels: 1,
        height: h,
        width: w,
        labels: lb[8..].iter().map(|&l| l as usize).collect(),
    })
}

/// Fashion-MNIST from a folder holding the four IDX files: (train, test).
pub fn fashion_mnist(dir: &Path) -> Result<(Labelled, Labelled)> {
    let f = |s: &str| dir.join(s);
    Ok((
        read_idx(&f("train-images-idx3-ubyte"), &f("train-labels-idx1-ubyte"))?,
        read_idx(&f("t10k-images-idx3-ubyte"), &f("t10k-labels-idx1-ubyte"))?,
    ))
}

/// A labelled ImageFolder (`root/<class>/<image>`) decoded into `size` x `size` RGB
/// images: the central square of each image, resized bicubically (as Pillow).
pub fn image_folder(root: &Path, size: usize) -> Result<Labelled> {
    decode_folder(&open_image_folder(root)?, size)
}

/// Opens `root` as a labelled ImageFolder, without decoding.
fn open_image_folder(root: &Path) -> Result<cim_data::Dataset> {
    let ds =
        cim_data::Dataset::open(root).with_context(|| format!("opening {}", root.display()))?;
    if ds.classes().is_empty() {
        bail!(
            "{} is not an ImageFolder (root/<class>/<image>): no class folders",
            root.display()
        );
    }
    Ok(ds)
}

/// Every image of an opened ImageFolder, as [`image_folder`] decodes it.
fn decode_folder(ds: &cim_data::Dataset, size: usize) -> Result<Labelled> {
    let n = ds.len();
    let per = 3 * size * size;
    let mut pixels = vec![0u8; n * per];
    let mut labels = vec![0usize; n];
    pixels
        .par_chunks_mut(per)
        .zip(labels.par_iter_mut())
        .enumerate()
        .try_for_each(|(i, (dst, label))| -> Result<()> {
            let img = ds.load(i).map_err(|e| anyhow!("{e}"))?;
            let (w, h) = (img.width(), img.height());
            let side = w.min(h);
            let crop = cim_data::CropBox {
                x0: (w - side) / 2,
                y0: (h - side) / 2,
                w: side,
                h: side,
            };
            let out = cim_data::resize_crop(
                &img,
                crop,
                size as u32,
                size as u32,
                cim_data::Kernel::Bicubic,
            )
            .ok_or_else(|| {
                anyhow!(
                    "{}: cannot resize to {size}x{size}",
                    ds.path(i)
                        .map_or(String::new(), |p| p.display().to_string())
                )
            })?;
            let raw = out.as_raw();
            for (p, px) in raw.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    dst[c * size * size + p] = px[c];
                }
            }
            *label = ds.label(i).expect("an ImageFolder labels every image");
            Ok(())
        })?;
    Ok(Labelled {
        pixels,
        channels: 3,
        height: size,
        width: size,
        labels,
    })
}

/// The labelled (train, test) sets of `dir`: Fashion-MNIST's four IDX files, or two
/// ImageFolders `train/` and `val/` (decoded at `size`).
pub fn labelled_sets(dir: &Path, size: usize) -> Result<(Labelled, Labelled)> {
    if dir.join("train-images-idx3-ubyte").is_file() {
        return fashion_mnist(dir);
    }
    if dir.join("train").is_dir() && dir.join("val").is_dir() {
        let (train, val) = (
            open_image_folder(&dir.join("train"))?,
            open_image_folder(&dir.join("val"))?,
        );
        // Labels are indices into each split's sorted class list, so the splits must name
        // the same classes, or a val class would be scored as whichever train class
        // happens to share its index.
        if train.classes() != val.classes() {
            let only = |a: &cim_data::Dataset, b: &cim_data::Dataset| -> String {
                let names: Vec<&str> = a
                    .classes()
                    .iter()
                    .filter(|c| !b.classes().contains(c))
                    .map(String::as_str)
                    .collect();
                if names.is_empty() {
                    "-".to_string()
                } else {
                    names.join(", ")
                }
            };
            bail!(
                "{}: train/ and val/ hold different class folders (only in train/: {}; only in val/: {}); both need the same classes",
                dir.display(),
                only(&train, &val),
                only(&val, &train)
            );
        }
        return Ok((decode_folder(&train, size)?, decode_folder(&val, size)?));
    }
    bail!(
        "{} holds neither Fashion-MNIST's IDX files (train-images-idx3-ubyte, ...) nor ImageFolders train/ and val/",
        dir.display()
    )
}

/// The largest image side `eval` feeds `config`'s encoder: twice the side its position
/// embedding was made for. The embedding is resized to the patch grid, and beyond that the
/// features say little about the pre-trained encoder, while the attention buffers grow
/// with the fourth power of the side (at 2048 the micro model asked for 2 TB).
pub fn max_image_size(config: &cim_spec::config::ModelConfig) -> usize {
    2 * config.encoder.pos_embed_size
}

/// Image `i` as normalised RGB `[3, size, size]`, bilinearly resampled (grey is copied
/// to the three channels, as `convert('RGB')` does).
fn normalised(set: &Labelled, i: usize, size: usize, out: &mut [f32]) {
    let (c, h, w) = (set.channels, set.height, set.width);
    let img = &set.pixels[i * c * h * w..(i + 1) * c * h * w];
    for ch in 0..3 {
        let src = &img[(ch.min(c - 1)) * h * w..][..h * w];
        for y in 0..size {
            let sy = ((y as f32 + 0.5) * h as f32 / size as f32 - 0.5).clamp(0.0, (h - 1) as f32);
            let (y0, fy) = (sy.floor() as usize, sy - sy.floor());
            let y1 = (y0 + 1).min(h - 1);
            for x in 0..size {
                let sx =
                    ((x as f32 + 0.5) * w as f32 / size as f32 - 0.5).clamp(0.0, (w - 1) as f32);
                let (x0, fx) = (sx.floor() as usize, sx - sx.floor());
                let x1 = (x0 + 1).min(w - 1);
                let p = |yy: usize, xx: usize| src[yy * w + xx] as f32;
                let v = (p(y0, x0) * (1.0 - fx) + p(y0, x1) * fx) * (1.0 - fy)
                    + (p(y1, x0) * (1.0 - fx) + p(y1, x1) * fx) * fy;
                out[ch * size * size + y * size + x] = (v / 255.0 - MEAN[ch]) / STD[ch];
            }
        }
    }
}

/// Features `[n, D]` of every image of `set` at `size` x `size` from `model`'s `which`
/// encoder, `batch` images per pass.
pub fn extract<B: Backend>(
    b: &B,
    model: &Cim<B>,
    which: EncoderChoice,
    set: &Labelled,
    size: usize,
    batch: usize,
) -> Result<Vec<f32>> {
    let dim = model.config().encoder.dim;
    let mut fx =
        FeatureExtractor::new(b, model.config(), batch, size).map_err(|e| anyhow!("{e}"))?;
    let per = 3 * size * size;
    let mut host = vec![0.0f32; batch * per];
    let mut dev = b
        .alloc(batch * per, Role::Activation)
        .map_err(backend_err)?;
    let mut feats = vec![0.0f32; set.len() * dim];
    let mut out = vec![0.0f32; batch * dim];
    for start in (0..set.len()).step_by(batch) {
        let n = batch.min(set.len() - start);
        host.par_chunks_mut(per).enumerate().for_each(|(j, dst)| {
            if j < n {
                normalised(set, start + j, size, dst);
            } else {
                dst.fill(0.0);
            }
        });
        b.upload(b.view_mut(&mut dev, 0..batch * per), &host)
            .map_err(backend_err)?;
        fx.forward(b, model, which, b.view(&dev, 0..batch * per))
            .map_err(backend_err)?;
        b.download(b.view(fx.features(), 0..batch * dim), &mut out)
            .map_err(backend_err)?;
        feats[start * dim..(start + n) * dim].copy_from_slice(&out[..n * dim]);
    }
    Ok(feats)
}

fn l2_normalise(feats: &mut [f32], dim: usize) {
    feats.par_chunks_mut(dim).for_each(|r| {
        let n = r.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        r.iter_mut().for_each(|v| *v /= n);
    });
}

/// k-NN top-1 accuracy (S10): cosine similarity, the `k` nearest training features vote
/// for their class with weight exp(similarity / `temperature`).
pub fn knn_top1(
    train: &[f32],
    train_labels: &[usize],
    test: &[f32],
    test_labels: &[usize],
    dim: usize,
    k: usize,
    temperature: f32,
) -> f64 {
    let (mut tr, mut te) = (train.to_vec(), test.to_vec());
    l2_normalise(&mut tr, dim);
    l2_normalise(&mut te, dim);
    let classes = train_labels.iter().max().map_or(0, |m| m + 1);
    let k = k.min(train_labels.len()).max(1);
    let correct: usize = te
        .par_chunks(dim)
        .zip(test_labels.par_iter())
        .map(|(q, &label)| {
            let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
            for (row, &l) in tr.chunks(dim).zip(train_labels) {
                let s: f32 = q.iter().zip(row).map(|(a, b)| a * b).sum();
                if best.len() < k || s > best[best.len() - 1].0 {
                    let at = best.partition_point(|&(v, _)| v >= s);
                    best.insert(at, (s, l));
                    best.truncate(k);
                }
            }
            let mut votes = vec![0.0f32; classes.max(label + 1)];
            for (s, l) in best {
                votes[l] += (s / temperature).exp();
            }
            let pred = votes
                .iter()
                .enumerate()
                .fold((0, f32::MIN), |m, (i, &v)| if v > m.1 { (i, v) } else { m })
                .0;
            usize::from(pred == label)
        })
        .sum();
    correct as f64 / test_labels.len().max(1) as f64
}

/// Linear-probe top-1: softmax regression on features standardised with the training
/// set's statistics, trained by full-batch gradient descent with momentum for `epochs`
/// passes (deterministic).
pub fn linear_probe_top1(
    train: &[f32],
    train_labels: &[usize],
    test: &[f32],
    test_labels: &[usize],
    dim: usize,
    epochs: usize,
) -> f64 {
    let n = train_labels.len();
    let classes = train_labels
        .iter()
        .chain(test_labels)
        .max()
        .map_or(1, |m| m + 1);
    let mut mean = vec![0.0f64; dim];
    let mut var = vec![0.0f64; dim];
    for r in train.chunks(dim) {
        r.iter()
            .enumerate()
            .for_each(|(j, &v)| mean[j] += v as f64 / n as f64);
    }
    for r in train.chunks(dim) {
        r.iter()
            .enumerate()
            .for_each(|(j, &v)| var[j] += (v as f64 - mean[j]).powi(2) / n as f64);
    }
    let std: Vec<f32> = var.iter().map(|v| (v.sqrt() as f32).max(1e-6)).collect();
    let standardise = |x: &[f32]| -> Vec<f32> {
        x.chunks(dim)
            .flat_map(|r| {
                r.iter()
                    .enumerate()
                    .map(|(j, &v)| (v - mean[j] as f32) / std[j])
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let (xtr, xte) = (standardise(train), standardise(test));
    let mut w = vec![0.0f32; classes * (dim + 1)];
    let mut vel = vec![0.0f32; w.len()];
    let (lr, mom, wd) = (0.5f32, 0.9f32, 1e-4f32);
    let logits = |w: &[f32], x: &[f32]| -> Vec<f32> {
        (0..classes)
            .map(|c| {
                let row = &w[c * (dim + 1)..(c + 1) * (dim + 1)];
                row[dim] + row[..dim].iter().zip(x).map(|(a, b)| a * b).sum::<f32>()
            })
            .collect()
    };
    for _ in 0..epochs {
        let grad = xtr
            .par_chunks(dim)
            .zip(train_labels.par_iter())
            .fold(
                || vec![0.0f32; classes * (dim + 1)],
                |mut g, (x, &y)| {
                    let z = logits(&w, x);
                    let m = z.iter().cloned().fold(f32::MIN, f32::max);
                    let e: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
                    let s: f32 = e.iter().sum();
                    for c in 0..classes {
                        let d = e[c] / s - f32::from(u8::from(c == y));
                        let row = &mut g[c * (dim + 1)..(c + 1) * (dim + 1)];
                        row[..dim]
                            .iter_mut()
                            .zip(x)
                            .for_each(|(gi, xi)| *gi += d * xi);
                        row[dim] += d;
                    }
                    g
                },
            )
            .reduce(
                || vec![0.0f32; classes * (dim + 1)],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        for i in 0..w.len() {
            let g = grad[i] / n as f32 + wd * w[i];
            vel[i] = mom * vel[i] + g;
            w[i] -= lr * vel[i];
        }
    }
    let correct = xte
        .chunks(dim)
        .zip(test_labels)
        .filter(|(x, y)| {
            let z = logits(&w, x);
            z.iter()
                .enumerate()
                .fold((0, f32::MIN), |m, (i, &v)| if v > m.1 { (i, v) } else { m })
                .0
                == **y
        })
        .count();
    correct as f64 / test_labels.len().max(1) as f64
}

/// A balanced random subset of `per_class` images per class, in a seeded order.
pub fn balanced_subset(set: Labelled, per_class: usize, seed: u64) -> Labelled {
    let mut rng = CimRng::new(seed);
    let mut order: Vec<usize> = (0..set.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let classes = set.labels.iter().max().map_or(0, |m| m + 1);
    let mut counts = vec![0usize; classes];
    let per = set.channels * set.height * set.width;
    let mut out = Labelled {
        pixels: Vec::new(),
        channels: set.channels,
        height: set.height,
        width: set.width,
        labels: Vec::new(),
    };
    for i in order {
        let l = set.labels[i];
        if counts[l] < per_class {
            counts[l] += 1;
            out.pixels
                .extend_from_slice(&set.pixels[i * per..(i + 1) * per]);
            out.labels.push(l);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two well-separated clusters: both classifiers are perfect; shuffled labels are
    /// near chance.
    #[test]
    fn classifiers_separate_clusters_and_not_noise() {
        let mut rng = CimRng::new(4);
        let dim = 8;
        let mut make = |n: usize| {
            let mut x = Vec::new();
            let mut y = Vec::new();
            for i in 0..n {
                let c = i % 2;
                for j in 0..dim {
                    let centre = if j == c { 3.0 } else { 0.0 };
                    x.push(centre + rng.normal() as f32 * 0.5);
                }
                y.push(c);
            }
            (x, y)
        };
        let (xtr, ytr) = make(200);
        let (xte, yte) = make(100);
        assert_eq!(knn_top1(&xtr, &ytr, &xte, &yte, dim, 20, 0.07), 1.0);
        assert_eq!(linear_probe_top1(&xtr, &ytr, &xte, &yte, dim, 100), 1.0);
        let mut shuffle = CimRng::new(9);
        let noise: Vec<usize> = (0..200).map(|_| shuffle.below(2) as usize).collect();
        let acc = knn_top1(&xtr, &noise, &xte, &yte, dim, 20, 0.07);
        assert!((0.3..0.7).contains(&acc), "{acc}");
    }

    #[test]
    fn idx_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("images");
        fs::write(&p, b"garbage garbage garbage").unwrap();
        let e = read_idx(&p, &p).unwrap_err().to_string();
        assert!(e.contains("is not an IDX image file"), "{e}");
    }
}
