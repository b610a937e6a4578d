//! Diagnostic: do the predicted maps depend on the exemplar, or only on the context?
//!
//! `consistency`: with a freshly initialised demo model, decodes a batch of B pairs at once
//! and each pair alone; the logits must agree (exemplar k of context b meets context b).
//!
//! `eval CHECKPOINT IMAGES [COUNT=16] [SEED=1234]`: predicts maps for COUNT contexts and
//! prints
//! - matched IoU: mean over exemplars of IoU(pred_k > 0.5, gt_k) (what `visualize` prints);
//! - swapped IoU: IoU(pred_k, gt_k') for k' != k of the same context — an exemplar-agnostic
//!   model scores the same as matched;
//! - context-mean IoU: each map replaced by the mean of its context's K predicted maps;
//! - spread: mean over pixels of the variance of the probability across the K exemplars of
//!   a context, divided by the variance over all maps (0: maps ignore the exemplar).
//!
//! `cargo run --release -p cim-cpu --example exemplar_dependence -- eval RUN data/photos`

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use cim_cpu::Cpu;
use cim_model::{Batch, Cim};
use cim_spec::backend::Memory;
use cim_train::recipe::Recipe;
use cim_train::visualize::iou;

/// Centroid (row, column) of a non-negative map, in pixels; the centre when it is empty.
fn centroid(map: &[f32], side: usize) -> (f64, f64) {
    let (mut s, mut r, mut c) = (0.0f64, 0.0f64, 0.0f64);
    for (i, &v) in map.iter().enumerate() {
        let v = v as f64;
        s += v;
        r += v * (i / side) as f64;
        c += v * (i % side) as f64;
    }
    if s <= 0.0 {
        let h = (side as f64 - 1.0) / 2.0;
        (h, h)
    } else {
        (r / s, c / s)
    }
}

fn dist(a: (f64, f64), b: (f64, f64)) -> f64 {
    ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
}

/// Prints the dependence metrics of `probs` vs `maps`, both `[B, K, m2]`.
pub fn report(maps: &[f32], probs: &[f32], k: usize, m2: usize) {
    let contexts = maps.len() / (k * m2);
    let (mut matched, mut swapped, mut ctxmean) = (0.0, 0.0, 0.0);
    let (mut within, mut n_sw) = (0.0f64, 0usize);
    let side = (m2 as f64).sqrt().round() as usize;
    let (mut d_match, mut d_swap) = (0.0f64, 0.0f64);
    let all_mean = probs.iter().map(|&x| x as f64).sum::<f64>() / probs.len() as f64;
    let total = probs
        .iter()
        .map(|&x| (x as f64 - all_mean).powi(2))
        .sum::<f64>()
        / probs.len() as f64;
    for c in 0..contexts {
        let map = |e: usize| &maps[(c * k + e) * m2..(c * k + e + 1) * m2];
        let pr = |e: usize| &probs[(c * k + e) * m2..(c * k + e + 1) * m2];
        let mean: Vec<f32> = (0..m2)
            .map(|p| (0..k).map(|e| pr(e)[p]).sum::<f32>() / k as f32)
            .collect();
        for (p, &centre) in mean.iter().enumerate() {
            let v = (0..k)
                .map(|e| (pr(e)[p] - centre) as f64)
                .map(|d| d * d)
                .sum::<f64>()
                / k as f64;
            within += v;
        }
        for e in 0..k {
            matched += iou(map(e), pr(e));
            d_match += dist(centroid(pr(e), side), centroid(map(e), side));
            ctxmean += iou(map(e), &mean);
            for f in 0..k {
                if f != e {
                    swapped += iou(map(f), pr(e));
                    d_swap += dist(centroid(pr(e), side), centroid(map(f), side));
                    n_sw += 1;
                }
            }
        }
    }
    let n = (contexts * k) as f64;
    within /= (contexts * m2) as f64;
    println!(
        "centroid error matched {:.2} px vs swapped {:.2} px | matched IoU {:.4} | swapped IoU {:.4} | context-mean IoU {:.4} | spread {:.4} (within-context var {:.5}, total var {:.5}) | mean prob {:.3}",
        d_match / n,
        d_swap / n_sw.max(1) as f64,
        matched / n,
        swapped / n_sw.max(1) as f64,
        ctxmean / n,
        if total > 0.0 { within / total } else { 0.0 },
        within,
        total,
        all_mean
    );
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let b = Cpu::new();
    match args.first().map(String::as_str) {
        Some("consistency") => consistency(&b, args.get(1).map_or("data/photos", |s| s)),
        Some("eval") => {
            let ckpt = args
                .get(1)
                .context("eval CHECKPOINT IMAGES [COUNT] [SEED]")?;
            let images = args
                .get(2)
                .context("eval CHECKPOINT IMAGES [COUNT] [SEED]")?;
            let count: usize = args.get(3).map_or(Ok(16), |s| s.parse())?;
            let seed: u64 = args.get(4).map_or(Ok(1234), |s| s.parse())?;
            let (recipe, mut model, state, _) = cim_train::runs::open(&b, Path::new(ckpt), count)?;
            let p =
                cim_train::visualize::predict(&b, &recipe, &mut model, Path::new(images), seed, 0)?;
            let c = model.config();
            print!("step {}: ", state.step);
            report(
                &p.maps,
                &p.probs,
                c.exemplars,
                c.context_size * c.context_size,
            );
            Ok(())
        }
        _ => {
            bail!("usage: exemplar_dependence consistency | eval CHECKPOINT IMAGES [COUNT] [SEED]")
        }
    }
}

fn consistency(b: &Cpu, images: &str) -> Result<()> {
    let recipe = Recipe::load("demo", &[])?;
    let config = recipe.model_config()?;
    let cfg = cim_train::data::pair_config(&recipe);
    let ds = cim_data::Dataset::open(Path::new(images)).map_err(|e| anyhow!("{e}"))?;
    let bsz = 4;
    let pairs: Vec<_> = (0..bsz)
        .map(|i| cim_data::sample(&ds, &cfg, 7, 0, i).map_err(|e| anyhow!("{e}")))
        .collect::<Result<_>>()?;
    let cat = |f: &dyn Fn(&cim_data::Pair) -> &Vec<f32>| -> Vec<f32> {
        pairs.iter().flat_map(|p| f(p).iter().copied()).collect()
    };
    let (ctx, ex, maps) = (
        cat(&|p| &p.context),
        cat(&|p| &p.exemplars),
        cat(&|p| &p.maps),
    );
    let logits_of = |n: usize, ctx: &[f32], ex: &[f32], maps: &[f32]| -> Result<Vec<f32>> {
        let mut model = Cim::new(b, config, n, 0).map_err(|e| anyhow!("{e}"))?;
        let mut batch = Batch::new(b, &config, n).map_err(|e| anyhow!("{e}"))?;
        batch.upload(b, ctx, ex, maps).map_err(|e| anyhow!("{e}"))?;
        model.forward(b, &batch).map_err(|e| anyhow!("{e}"))?;
        let mut out = vec![0.0f32; maps.len() * config.loss.channels()];
        b.download(b.view(model.logits(), 0..out.len()), &mut out)
            .map_err(|e| anyhow!("{e}"))?;
        Ok(out)
    };
    let all = logits_of(bsz, &ctx, &ex, &maps)?;
    let per = all.len() / bsz;
    let mut worst = 0.0f32;
    for (i, p) in pairs.iter().enumerate() {
        let one = logits_of(1, &p.context, &p.exemplars, &p.maps)?;
        for (a, o) in all[i * per..(i + 1) * per].iter().zip(&one) {
            worst = worst.max((a - o).abs());
        }
    }
    // Sanity: the exemplars matter at init at all (swap exemplar sets of contexts 0 and 1).
    let mut ex2 = ex.clone();
    let exn = ex.len() / bsz;
    ex2[..exn].copy_from_slice(&ex[exn..2 * exn]);
    ex2[exn..2 * exn].copy_from_slice(&ex[..exn]);
    let swapped = logits_of(bsz, &ctx, &ex2, &maps)?;
    let diff = all[..per]
        .iter()
        .zip(&swapped[..per])
        .map(|(a, s)| (a - s).abs())
        .fold(0.0f32, f32::max);
    println!("batch-of-{bsz} vs one-at-a-time: max |logit diff| {worst:.3e}");
    println!("swapping exemplar sets changes context 0's logits by up to {diff:.3e}");
    Ok(())
}
