//! Diagnostic: can the CIM network use its exemplars at all? Trains the demo recipe's
//! model on ONE fixed pair (one context, K exemplars, fixed maps) for N steps and prints
//! the loss and the maps' IoU. The K maps share the context and differ only by their
//! exemplar, so driving the loss far below the best exemplar-agnostic prediction needs
//! the exemplar pathway to work.
//! `cargo run --release -p cim-cpu --example overfit_pair -- IMAGE [STEPS=300] [LR=1e-3]`

use anyhow::{Context, Result, anyhow};
use cim_cpu::Cpu;
use cim_model::{Batch, Cim};
use cim_spec::backend::Memory;
use cim_spec::rng::CimRng;
use cim_spec::schedule::AdamW;
use cim_train::recipe::Recipe;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let image = args
        .first()
        .context("usage: overfit_pair IMAGE [STEPS] [LR]")?;
    let steps: usize = args.get(1).map_or(Ok(300), |s| s.parse())?;
    let lr: f64 = args.get(2).map_or(Ok(1e-3), |s| s.parse())?;
    let recipe = Recipe::load("demo", &[])?;
    let config = recipe.model_config()?;
    let cfg = cim_train::data::pair_config(&recipe);
    let img = cim_data::read_rgb8(std::path::Path::new(image)).map_err(|e| anyhow!("{e}"))?;
    let pair = cim_data::make_pair(&img, &cfg, &mut CimRng::new(5)).map_err(|e| anyhow!("{e}"))?;
    let b = Cpu::new();
    let mut model = Cim::new(&b, config, 1, 0).map_err(|e| anyhow!("{e}"))?;
    let mut batch = Batch::new(&b, &config, 1).map_err(|e| anyhow!("{e}"))?;
    batch
        .upload(&b, &pair.context, &pair.exemplars, &pair.maps)
        .map_err(|e| anyhow!("{e}"))?;
    let m2 = config.context_size * config.context_size;
    // The best exemplar-agnostic prediction: every map predicted as the mean map.
    let k = config.exemplars;
    let mean: Vec<f32> = (0..m2)
        .map(|p| (0..k).map(|e| pair.maps[e * m2 + p]).sum::<f32>() / k as f32)
        .collect();
    let prior: f32 = (0..k)
        .map(|e| {
            (0..m2)
                .map(|p| {
                    let (y, q) = (pair.maps[e * m2 + p], mean[p].clamp(1e-6, 1.0 - 1e-6));
                    -(y * q.ln() + (1.0 - y) * (1.0 - q).ln())
                })
                .sum::<f32>()
                / m2 as f32
        })
        .sum();
    println!("best exemplar-agnostic loss (mean map): {prior:.4}");
    let opt = AdamW {
        lr,
        weight_decay: 0.0,
        ..AdamW::default()
    };
    for step in 0..steps {
        model.zero_grads(&b).map_err(|e| anyhow!("{e}"))?;
        model
            .forward_backward(&b, &batch, 1)
            .map_err(|e| anyhow!("{e}"))?;
        let mut loss = [0.0f32];
        b.download(b.view(model.loss(), 0..1), &mut loss)
            .map_err(|e| anyhow!("{e}"))?;
        model
            .optimizer_step(&b, &opt, 0.99)
            .map_err(|e| anyhow!("{e}"))?;
        if step % 25 == 0 || step + 1 == steps {
            let mut logits = vec![0.0f32; k * 2 * m2];
            b.download(b.view(model.logits(), 0..logits.len()), &mut logits)
                .map_err(|e| anyhow!("{e}"))?;
            let mut iou = 0.0;
            for e in 0..k {
                let (mut i, mut u) = (0, 0);
                for p in 0..m2 {
                    let pred = logits[e * 2 * m2 + m2 + p] > logits[e * 2 * m2 + p];
                    let gt = pair.maps[e * m2 + p] > 0.5;
                    i += usize::from(pred && gt);
                    u += usize::from(pred || gt);
                }
                iou += if u == 0 { 1.0 } else { i as f64 / u as f64 } / k as f64;
            }
            println!("step {step:4}: loss {:.4}  mean IoU {iou:.3}", loss[0]);
        }
    }
    Ok(())
}
