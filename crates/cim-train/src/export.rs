//! Encoder export (S12) for timm: the online or the target encoder of a checkpoint as
//! safetensors under timm's `VisionTransformer` names (`cls_token`, `pos_embed`,
//! `patch_embed.proj.*`, `blocks.{i}.*`, `norm.*`) with a `config.json` naming the timm
//! architecture and the encoder chosen, plus `check.safetensors`: a fixed input and the
//! features our forward pass gives for it, so the loaded model can be verified
//! (`benches/pytorch/export_check.py` does it with timm). The output folder must be new
//! (or empty) and appears only once all three files are written.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use cim_model::{Cim, EncoderChoice, FeatureExtractor};
use cim_spec::backend::Backend;
use cim_spec::rng::CimRng;
use serde_json::json;

use crate::device::backend_err;
use crate::dump::model_tensors;
use crate::output;
use crate::tensors::TensorSet;

/// Images in the verification input of `check.safetensors`.
const CHECK_IMAGES: usize = 2;

/// The timm architecture name of an encoder, if timm has a preset of that shape.
fn timm_arch(dim: usize, depth: usize, heads: usize, patch: usize) -> Option<&'static str> {
    Some(match (dim, depth, heads, patch) {
        (192, 12, 3, 16) => "vit_tiny_patch16_224",
        (384, 12, 6, 16) => "vit_small_patch16_224",
        (768, 12, 12, 16) => "vit_base_patch16_224",
        (1024, 24, 16, 16) => "vit_large_patch16_224",
        (1280, 32, 16, 14) => "vit_huge_patch14_224",
        _ => return None,
    })
}

/// Writes the export of `which` encoder of `model` (whose weights came from `source`,
/// recorded in config.json) into the new folder `out` (see [`output::prepare_dir`]).
pub fn export<B: Backend>(
    b: &B,
    model: &Cim<B>,
    which: EncoderChoice,
    source: &str,
    out: &Path,
) -> Result<()> {
    output::write_dir(out, "--out", |tmp| {
        write_export(b, model, which, source, tmp)
    })
}

fn write_export<B: Backend>(
    b: &B,
    model: &Cim<B>,
    which: EncoderChoice,
    source: &str,
    out: &Path,
) -> Result<()> {
    let all = model_tensors(b, model)?;
    let c = model.config();
    let e = &c.encoder;
    let mut set = TensorSet::new();
    for t in &model.layout().tensors {
        let Some(target_name) = cim_model::layout::ParamLayout::target_name(&t.name) else {
            continue;
        };
        let from = match which {
            EncoderChoice::Online => t.name.as_str(),
            EncoderChoice::Target => target_name.as_str(),
        };
        let (shape, data) = all
            .get(from)
            .expect("model_tensors holds every encoder tensor");
        set.push(t.name.clone(), shape, data.to_vec())?;
    }
    for name in ["cls_token", "pos_embed"] {
        let (shape, data) = all
            .get(name)
            .expect("model_tensors holds the class token and position embedding");
        set.push(name, shape, data.to_vec())?;
    }
    let encoder_name = match which {
        EncoderChoice::Online => "online",
        EncoderChoice::Target => "target",
    };
    let meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("cim_encoder".to_string(), encoder_name.to_string()),
    ]);
    set.write(&out.join("model.safetensors"), Some(meta))?;

    // The verification pair: a fixed input at the embedding's native size and our features.
    let size = e.pos_embed_size;
    let mut extractor =
        FeatureExtractor::new(b, c, CHECK_IMAGES, size).map_err(|e| anyhow!("{e}"))?;
    let mut rng = CimRng::new(2023);
    let images: Vec<f32> = (0..CHECK_IMAGES * 3 * size * size)
        .map(|_| rng.normal() as f32)
        .collect();
    let mut buf = b
        .alloc(images.len(), cim_spec::backend::Role::Activation)
        .map_err(backend_err)?;
    let n = images.len();
    b.upload(b.view_mut(&mut buf, 0..n), &images)
        .map_err(backend_err)?;
    extractor
        .forward(b, model, which, b.view(&buf, 0..n))
        .map_err(backend_err)?;
    let mut feats = vec![0.0f32; CHECK_IMAGES * e.dim];
    b.download(b.view(extractor.features(), 0..feats.len()), &mut feats)
        .map_err(backend_err)?;
    let mut check = TensorSet::new();
    check.push("images", &[CHECK_IMAGES, 3, size, size], images)?;
    check.push("features", &[CHECK_IMAGES, e.dim], feats)?;
    check.write(&out.join("check.safetensors"), None)?;

    let config = json!({
        "architecture": timm_arch(e.dim, e.depth, e.heads, e.patch),
        "timm_kwargs": {
            "img_size": size, "patch_size": e.patch, "embed_dim": e.dim, "depth": e.depth,
            "num_heads": e.heads, "mlp_ratio": e.mlp_ratio as f64, "qkv_bias": true,
            "class_token": true, "global_pool": "avg", "fc_norm": false, "num_classes": 0,
        },
        "encoder": encoder_name,
        "source": source,
        "step": model.steps(),
        "features": "mean of the final LayerNorm's patch tokens (check.safetensors)",
        "normalisation": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    });
    fs::write(
        out.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    Ok(())
}

/// Names, shapes and dtypes of a safetensors file, one line each, sorted by name.
pub fn inspect_file(path: &Path) -> Result<Vec<String>> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let mut rows: Vec<(String, String)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let n: usize = t.shape().iter().product();
            (
                name.clone(),
                format!("{name}  {:?}  {:?}  {n}", t.dtype(), t.shape()),
            )
        })
        .collect();
    rows.sort();
    Ok(rows.into_iter().map(|(_, r)| r).collect())
}
