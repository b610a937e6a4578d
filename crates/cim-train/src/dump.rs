//! The step dump (issue 3): one CIM training step written as safetensors files that any
//! PyTorch implementation of the same step can be checked against, and ours against it.
//!
//! `DIR/params.safetensors` (every model tensor, online, target and decoder, under the
//! S12 names, plus the fixed position embeddings), `DIR/inputs.safetensors` (`context`,
//! `exemplars`, `masks`), `DIR/outputs.safetensors` (`loss`, `logits`, `grad.<name>` for
//! every trainable tensor), and after one AdamW step and one EMA update
//! `DIR/params_after.safetensors` and `DIR/step.json` (hyperparameters and configuration).

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use cim_model::layout::ParamLayout;
use cim_model::{Batch, Cim};
use cim_spec::backend::Backend;
use cim_spec::config::ModelConfig;
use cim_spec::loss::MapLoss;
use cim_spec::pos_embed;
use cim_spec::schedule::AdamW;
use serde_json::json;

use crate::device::{backend_err, download};
use crate::synthetic;
use crate::tensors::TensorSet;

/// Most contexts a dump holds. A parity check needs a handful (the PyTorch script
/// replays the whole step in memory), and the dump keeps every input, activation
/// gradient and parameter of the step: 64 ViT-B contexts is already several GB, while an
/// unchecked batch would be killed for memory rather than refused.
pub const MAX_BATCH: usize = 64;

/// What to dump.
#[derive(Clone, Debug)]
pub struct DumpOptions {
    /// The model.
    pub model: ModelConfig,
    /// Name of the configuration (recorded in step.json).
    pub model_name: String,
    /// Contexts in the micro-batch.
    pub batch: usize,
    /// Seed of the initialisation and of the synthetic batch.
    pub seed: u64,
    /// AdamW hyperparameters of the step (S6).
    pub adamw: AdamW,
    /// EMA momentum of the step (S7).
    pub momentum: f64,
}

/// The fixed (sin-cos) position embeddings [`model_tensors`] adds to the parameters, for
/// the release's loaders; ours recompute them.
pub const FIXED_TENSORS: [&str; 2] = ["pos_embed", "decoder_pos_embed"];

/// Every model tensor of `model` under its S12 name: the online network, the class
/// token and the decoder, the target encoder, and the fixed position embeddings.
pub fn model_tensors<B: Backend>(b: &B, model: &Cim<B>) -> Result<TensorSet> {
    let [params, target, ..] = model.buffers();
    let layout = model.layout();
    let mut set = TensorSet::new();
    for t in &layout.tensors {
        set.push(
            t.name.clone(),
            &t.shape,
            download(b, params, t.range.clone())?,
        )?;
    }
    for t in &layout.tensors {
        if let Some(name) = ParamLayout::target_name(&t.name) {
            let r = t.range.start - layout.ema.start..t.range.end - layout.ema.start;
            set.push(name, &t.shape, download(b, target, r)?)?;
        }
    }
    let c = model.config();
    let (dim, g0) = (c.encoder.dim, c.encoder.pos_grid());
    let pos = pos_embed::sincos_2d(dim, g0).map_err(|e| anyhow!("{e}"))?;
    set.push(FIXED_TENSORS[0], &[1, 1 + g0 * g0, dim], pos)?;
    let (w, g) = (c.decoder.width, c.context_grid());
    let dpos = pos_embed::sincos_2d(w, g).map_err(|e| anyhow!("{e}"))?;
    set.push(FIXED_TENSORS[1], &[1, 1 + g * g, w], dpos)?;
    Ok(set)
}

fn loss_name(loss: MapLoss) -> &'static str {
    match loss {
        MapLoss::SoftmaxCrossEntropy => "softmax_ce",
        MapLoss::BinaryCrossEntropy => "bce",
        MapLoss::BalancedBinaryCrossEntropy => "balanced_bce",
        MapLoss::MeanSquaredError => "mse",
        MapLoss::Focal { .. } => "focal",
    }
}

/// Runs one step on `b` and writes the dump into `out` (created if missing).
pub fn step_dump<B: Backend>(b: &B, opts: &DumpOptions, out: &Path) -> Result<()> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let c = opts.model;
    let mut model =
        Cim::new(b, c, opts.batch, opts.seed).map_err(|e| anyhow!("building the model: {e}"))?;
    let host = synthetic::batch(&c, opts.batch, opts.seed)?;
    let mut batch = Batch::new(b, &c, opts.batch).map_err(backend_err)?;
    batch
        .upload(b, &host.context, &host.exemplars, &host.maps)
        .map_err(backend_err)?;

    model_tensors(b, &model)?.write(&out.join("params.safetensors"), None)?;
    let (bs, k, m, n) = (opts.batch, c.exemplars, c.context_size, c.exemplar_size);
    let mut inputs = TensorSet::new();
    inputs.push("context", &[bs, 3, m, m], host.context)?;
    inputs.push("exemplars", &[bs, k, 3, n, n], host.exemplars)?;
    inputs.push("masks", &[bs, k, m, m], host.maps)?;
    inputs.write(&out.join("inputs.safetensors"), None)?;

    model.zero_grads(b).map_err(backend_err)?;
    model.forward_backward(b, &batch, 1).map_err(backend_err)?;
    let mut outputs = TensorSet::new();
    outputs.push("loss", &[], download(b, model.loss(), 0..1)?)?;
    let channels = c.loss.channels();
    let logits = download(b, model.logits(), 0..bs * k * channels * m * m)?;
    outputs.push("logits", &[bs, k, channels, m, m], logits)?;
    let grads = model.buffers()[2];
    for t in model.layout().tensors.iter().filter(|t| t.trainable) {
        outputs.push(
            format!("grad.{}", t.name),
            &t.shape,
            download(b, grads, t.range.clone())?,
        )?;
    }
    outputs.write(&out.join("outputs.safetensors"), None)?;

    model
        .optimizer_step(b, &opts.adamw, opts.momentum)
        .map_err(backend_err)?;
    model_tensors(b, &model)?.write(&out.join("params_after.safetensors"), None)?;
    let e = &c.encoder;
    let d = &c.decoder;
    let step = json!({
        "format": 1,
        "backend": b.name(),
        "model": opts.model_name,
        "seed": opts.seed,
        "batch": opts.batch,
        "step": model.steps(),
        "lr": opts.adamw.lr,
        "weight_decay": opts.adamw.weight_decay,
        "betas": [opts.adamw.beta1, opts.adamw.beta2],
        "eps": opts.adamw.eps,
        "momentum": opts.momentum,
        "loss_scale": 1.0 / opts.batch as f64,
        "config": {
            "dim": e.dim, "depth": e.depth, "heads": e.heads, "patch": e.patch,
            "mlp_ratio": e.mlp_ratio, "pos_embed_size": e.pos_embed_size,
            "frozen_patch_embed": e.frozen_patch_embed,
            "decoder_width": d.width, "decoder_depth": d.depth, "decoder_heads": d.heads,
            "correlation": d.correlation.name(), "predictor": d.predictor.name(),
            "context_size": m, "exemplar_size": n, "exemplars": k,
            "loss": loss_name(c.loss),
        },
    });
    let text = serde_json::to_string_pretty(&step)?;
    crate::output::write_bytes(&out.join("step.json"), text.as_bytes())
}
