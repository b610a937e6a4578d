//! Recipes (S9): versioned TOML files with the paper's numbers, the resolved form a run
//! saves beside its checkpoints, and overrides from the command line.
//!
//! Overrides (`--set optim.epochs=10`) are parsed as TOML values and merged into the
//! document before it is checked, so a misspelt key or a wrong type is reported by the
//! same path as in a file: an error naming the key.

use std::path::Path;

use anyhow::{Context, Result, bail};
use cim_spec::config::{Correlation, ModelConfig, Predictor};
use cim_spec::geometry::ExemplarParams;
use cim_spec::loss::MapLoss;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The recipe format this build reads and writes.
pub const FORMAT: u32 = 1;

/// Recipes shipped in the repository (`recipes/`), usable by name.
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "vit-base-in1k",
        include_str!("../../../recipes/vit-base-in1k.toml"),
    ),
    (
        "vit-small-in1k",
        include_str!("../../../recipes/vit-small-in1k.toml"),
    ),
    (
        "vit-base-in200",
        include_str!("../../../recipes/vit-base-in200.toml"),
    ),
    ("demo", include_str!("../../../recipes/demo.toml")),
    ("micro", include_str!("../../../recipes/micro.toml")),
    (
        "fashion-mnist",
        include_str!("../../../recipes/fashion-mnist.toml"),
    ),
];

/// A complete recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Recipe format version (must be [`FORMAT`]).
    pub format: u32,
    /// A name for reports.
    pub name: String,
    /// The network.
    pub model: ModelSection,
    /// Data and pair generation (S2).
    pub data: DataSection,
    /// Optimisation (S6, S7).
    pub optim: OptimSection,
    /// Run control.
    pub run: RunSection,
}

/// `[model]`: a preset and optional overrides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// micro, vit-tiny, vit-small, vit-base, vit-large, vit-huge.
    pub preset: String,
    /// Encoder width (overrides the preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
    /// Encoder heads (overrides the preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<usize>,
    /// Patch side (overrides the preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<usize>,
    /// Encoder blocks (overrides the preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<usize>,
    /// Decoder width (overrides the preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_width: Option<usize>,
    /// Decoder heads (overrides the preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_heads: Option<usize>,
    /// Decoder blocks (overrides the preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_depth: Option<usize>,
    /// softmax_ce, bce, balanced_bce, mse, focal (S5).
    pub loss: String,
    /// Keep the patch embedding frozen (S3 `stop_grad_conv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_patch_embed: Option<bool>,
    /// Decoder correlation (S4, Figure 4): `attention` (default) or `conv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation: Option<String>,
    /// Decoder predictor (S4, Figure 4): `conv1x1` (default) or `deconv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predictor: Option<String>,
    /// Multiplier of the predictor weight's S8 init std (default 1, as S8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predictor_init_scale: Option<f64>,
}

/// `[data]`: the dataset and the S2 pair geometry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Folder (ImageFolder, flat or nested), file list, or packed shards.
    pub path: String,
    /// Search-view side S.
    pub input_size: usize,
    /// Context side m.
    pub context_size: usize,
    /// Exemplar side n.
    pub exemplar_size: usize,
    /// Exemplars per context K.
    pub exemplars: usize,
    /// Smallest area fraction of the search view's crop.
    pub context_min_scale: f64,
    /// Exemplar area fraction range.
    pub exemplar_scale: [f64; 2],
    /// Exemplar h/w range (log-uniform).
    pub exemplar_ratio: [f64; 2],
    /// Largest exemplar rotation in degrees.
    pub max_rotation: f64,
    /// Exemplar colour jitter (p 0.8).
    pub color_jitter: bool,
    /// Exemplar greyscale (p 0.2).
    pub grayscale: bool,
    /// Exemplar Gaussian blur (p 0.5).
    pub blur: bool,
    /// Exemplar solarise (p 0.2).
    pub solarize: bool,
    /// Exemplar horizontal flip (p 0.5).
    pub flip: bool,
    /// Decoding threads.
    pub workers: usize,
}

/// `[optim]`: S6 and S7.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    /// Epochs.
    pub epochs: usize,
    /// Linear-warmup epochs.
    pub warmup_epochs: f64,
    /// Contexts per micro-batch per device.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub accum_iter: usize,
    /// Base learning rate: lr = blr * B_eff / 256.
    pub blr: f64,
    /// Floor of the cosine schedule.
    pub min_lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// AdamW betas.
    pub betas: [f64; 2],
    /// AdamW epsilon.
    pub eps: f64,
    /// Global-norm clipping threshold; 0 turns clipping off (the release's default).
    pub clip_grad: f64,
    /// EMA base momentum m0.
    pub base_momentum: f64,
}

/// `[run]`: seeds, checkpoints, logging.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Seed of the initialisation and of the data.
    pub seed: u64,
    /// Optimizer steps between checkpoints (a checkpoint is also written at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    pub keep_last: usize,
    /// Non-finite steps in a row after which the run stops.
    pub max_nonfinite: u32,
    /// Optimizer steps between metric lines.
    pub log_every: u64,
}

/// Parses `text` into a TOML document, naming `origin` in errors.
fn parse_doc(text: &str, origin: &str) -> Result<toml::Table> {
    toml::from_str(text).with_context(|| format!("recipe {origin} is not valid TOML"))
}

/// Sets `key` (dotted path) to `value` (a TOML value; a bare word is taken as a string).
fn set_key(doc: &mut toml::Table, key: &str, value: &str) -> Result<()> {
    let parsed: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) => t.remove("v").expect("the key just parsed"),
        Err(_) => toml::Value::String(value.to_string()),
    };
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().filter(|s| !s.is_empty());
    let Some(last) = last else {
        bail!("override {key:?}: empty key")
    };
    let mut table = doc;
    for part in parts {
        table = match table.get_mut(part) {
            Some(toml::Value::Table(t)) => t,
            _ => bail!("override {key}={value}: the recipe has no section [{part}]"),
        };
    }
    if !table.contains_key(last) && !OPTIONAL_KEYS.contains(&key) {
        bail!("override {key}={value}: unknown recipe key {key:?}");
    }
    table.insert(last.to_string(), parsed);
    Ok(())
}

/// Keys that may be absent from a recipe and still be set.
const OPTIONAL_KEYS: &[&str] = &[
    "model.dim",
    "model.heads",
    "model.patch",
    "model.depth",
    "model.decoder_width",
    "model.decoder_heads",
    "model.decoder_depth",
    "model.frozen_patch_embed",
    "model.correlation",
    "model.predictor",
    "model.predictor_init_scale",
];

/// The most decoding threads a recipe may ask for.
const MAX_WORKERS: usize = 1024;

impl Recipe {
    /// Loads a built-in recipe by name or a TOML file by path, applies `overrides`
    /// (`key=value`), and checks the result.
    pub fn load(name_or_path: &str, overrides: &[String]) -> Result<Recipe> {
        let (text, origin) = match BUILT_IN.iter().find(|(n, _)| *n == name_or_path) {
            Some((_, text)) => (text.to_string(), format!("{name_or_path} (built in)")),
            None => {
                let path = Path::new(name_or_path);
                let names: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("recipe {name_or_path:?} is neither a built-in recipe ({}) nor a readable file", names.join(", "))
                })?;
                (text, path.display().to_string())
            }
        };
        let mut doc = parse_doc(&text, &origin)?;
        for o in overrides {
            let Some((k, v)) = o.split_once('=') else {
                bail!("override {o:?} must look like key=value (e.g. optim.epochs=10)");
            };
            set_key(&mut doc, k.trim(), v.trim())?;
        }
        let recipe: Recipe = toml::Value::Table(doc)
            .try_into()
            .with_context(|| format!("recipe {origin}"))?;
        recipe.validate()?;
        Ok(recipe)
    }

    /// Reads a resolved recipe saved by a run.
    pub fn read_resolved(path: &Path) -> Result<Recipe> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let recipe: Recipe =
            toml::from_str(&text).with_context(|| format!("recipe {}", path.display()))?;
        recipe.validate()?;
        Ok(recipe)
    }

    /// The resolved recipe as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a recipe always serialises")
    }

    /// SHA-256 of the resolved TOML, recorded in checkpoints.
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.to_toml().as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The S5 loss named by `model.loss`.
    pub fn loss(&self) -> Result<MapLoss> {
        Ok(match self.model.loss.as_str() {
            "softmax_ce" => MapLoss::SoftmaxCrossEntropy,
            "bce" => MapLoss::BinaryCrossEntropy,
            "balanced_bce" => MapLoss::BalancedBinaryCrossEntropy,
            "mse" => MapLoss::MeanSquaredError,
            "focal" => MapLoss::focal(),
            other => bail!(
                "model.loss = {other:?}: expected softmax_ce, bce, balanced_bce, mse or focal"
            ),
        })
    }

    /// The model configuration: the preset with the recipe's overrides and geometry.
    pub fn model_config(&self) -> Result<ModelConfig> {
        let m = &self.model;
        let Some(mut c) = ModelConfig::preset(&m.preset) else {
            bail!(
                "model.preset = {:?}: expected micro, vit-tiny, vit-small, vit-base, vit-large or vit-huge",
                m.preset
            );
        };
        if let Some(v) = m.dim {
            c.encoder.dim = v;
        }
        if let Some(v) = m.heads {
            c.encoder.heads = v;
        }
        if let Some(v) = m.patch {
            c.encoder.patch = v;
        }
        if let Some(v) = m.depth {
            c.encoder.depth = v;
        }
        if let Some(v) = m.decoder_width {
            c.decoder.width = v;
        }
        if let Some(v) = m.decoder_heads {
            c.decoder.heads = v;
        }
        if let Some(v) = m.decoder_depth {
            c.decoder.depth = v;
        }
        if let Some(v) = m.frozen_patch_embed {
            c.encoder.frozen_patch_embed = v;
        }
        if let Some(name) = &m.correlation {
            let Some(v) = Correlation::from_name(name) else {
                bail!("model.correlation = {name:?}: expected attention or conv");
            };
            c.decoder.correlation = v;
        }
        if let Some(name) = &m.predictor {
            let Some(v) = Predictor::from_name(name) else {
                bail!("model.predictor = {name:?}: expected conv1x1 or deconv");
            };
            c.decoder.predictor = v;
        }
        if let Some(v) = m.predictor_init_scale {
            if !(v.is_finite() && v > 0.0) {
                bail!("model.predictor_init_scale = {v}: expected a finite number above 0");
            }
            c.decoder.predictor_init_scale = v;
        }
        c.context_size = self.data.context_size;
        c.exemplar_size = self.data.exemplar_size;
        c.exemplars = self.data.exemplars;
        c.loss = self.loss()?;
        c.validate()
            .map_err(|e| anyhow::anyhow!("recipe {}: {e}", self.name))?;
        Ok(c)
    }

    /// The S2 exemplar sampling parameters.
    pub fn exemplar_params(&self) -> ExemplarParams {
        let d = &self.data;
        ExemplarParams {
            scale: (d.exemplar_scale[0], d.exemplar_scale[1]),
            ratio: (d.exemplar_ratio[0], d.exemplar_ratio[1]),
            max_rotation_deg: d.max_rotation,
        }
    }

    /// Checks what serde cannot: ranges and relations between keys.
    pub fn validate(&self) -> Result<()> {
        if self.format != FORMAT {
            bail!(
                "recipe format {} is unknown to this build (it reads format {FORMAT})",
                self.format
            );
        }
        let o = &self.optim;
        let d = &self.data;
        let checks: [(bool, &str); 18] = [
            (o.epochs >= 1, "optim.epochs must be at least 1"),
            (o.batch_size >= 1, "optim.batch_size must be at least 1"),
            (o.accum_iter >= 1, "optim.accum_iter must be at least 1"),
            (
                o.warmup_epochs >= 0.0 && o.warmup_epochs.is_finite(),
                "optim.warmup_epochs must be a number, not negative",
            ),
            (
                o.blr > 0.0 && o.blr.is_finite(),
                "optim.blr must be a positive number",
            ),
            (
                o.min_lr >= 0.0 && o.min_lr.is_finite(),
                "optim.min_lr must be a number, not negative",
            ),
            (
                o.weight_decay >= 0.0 && o.weight_decay.is_finite(),
                "optim.weight_decay must be a number, not negative",
            ),
            (
                o.eps > 0.0 && o.eps.is_finite(),
                "optim.eps must be a positive number",
            ),
            (
                (0.0..1.0).contains(&o.betas[0]) && (0.0..1.0).contains(&o.betas[1]),
                "optim.betas must lie in [0, 1)",
            ),
            (
                (0.0..=1.0).contains(&o.base_momentum),
                "optim.base_momentum must lie in [0, 1]",
            ),
            (
                o.clip_grad >= 0.0,
                "optim.clip_grad must not be negative (0 turns clipping off)",
            ),
            (
                d.context_min_scale > 0.0 && d.context_min_scale <= 1.0,
                "data.context_min_scale must lie in (0, 1]",
            ),
            (
                d.input_size >= d.context_size,
                "data.input_size must be at least data.context_size",
            ),
            (d.workers >= 1, "data.workers must be at least 1"),
            // Each worker is a thread with its own decode buffers; beyond any machine's
            // core count they only cost memory (100000 exhausted the process).
            (
                d.workers <= MAX_WORKERS,
                "data.workers must be at most 1024",
            ),
            (
                self.run.max_nonfinite >= 1,
                "run.max_nonfinite must be at least 1",
            ),
            (self.run.keep_last >= 1, "run.keep_last must be at least 1"),
            (
                self.run.log_every >= 1 && self.run.checkpoint_every >= 1,
                "run.log_every and run.checkpoint_every must be at least 1",
            ),
        ];
        for (ok, msg) in checks {
            if !ok {
                bail!("recipe {}: {msg}", self.name);
            }
        }
        self.model_config()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_recipes_load_and_carry_the_paper_numbers() {
        for (name, _) in BUILT_IN {
            Recipe::load(name, &[]).unwrap();
        }
        let r = Recipe::load("vit-base-in1k", &[]).unwrap();
        assert_eq!(
            (
                r.optim.epochs,
                r.optim.warmup_epochs,
                r.optim.batch_size,
                r.optim.accum_iter
            ),
            (300, 40.0, 256, 2)
        );
        assert_eq!(
            (r.optim.blr, r.optim.weight_decay, r.optim.base_momentum),
            (1.5e-4, 0.05, 0.99)
        );
        assert_eq!(r.optim.betas, [0.9, 0.95]);
        let c = r.model_config().unwrap();
        assert_eq!(
            (c.context_size, c.exemplar_size, c.exemplars, c.encoder.dim),
            (160, 64, 6, 768)
        );
    }

    #[test]
    fn overrides_apply_and_errors_name_the_key() {
        let r = Recipe::load(
            "micro",
            &[
                "optim.epochs=7".into(),
                "model.depth=1".into(),
                "data.path=/x y".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            (r.optim.epochs, r.model.depth, r.data.path.as_str()),
            (7, Some(1), "/x y")
        );
        let e = Recipe::load("micro", &["optim.epoch=7".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown recipe key \"optim.epoch\""), "{e}");
        let e = format!(
            "{:#}",
            Recipe::load("micro", &["optim.epochs=\"many\"".into()]).unwrap_err()
        );
        assert!(e.contains("epochs"), "{e}");
        let e = Recipe::load("micro", &["optim.batch_size=0".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("optim.batch_size"), "{e}");
        let e = Recipe::load("micro", &["nonsense".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("key=value"), "{e}");
        let e = Recipe::load("no-such-recipe", &[]).unwrap_err().to_string();
        assert!(e.contains("neither a built-in recipe"), "{e}");
    }

    #[test]
    fn out_of_range_values_are_refused_naming_the_key() {
        for (set, key) in [
            ("optim.weight_decay=nan", "optim.weight_decay"),
            ("optim.weight_decay=-100", "optim.weight_decay"),
            ("optim.min_lr=nan", "optim.min_lr"),
            ("optim.min_lr=-1e-6", "optim.min_lr"),
            ("optim.eps=-1", "optim.eps"),
            ("optim.eps=0", "optim.eps"),
            ("optim.warmup_epochs=inf", "optim.warmup_epochs"),
            ("run.max_nonfinite=0", "run.max_nonfinite"),
            ("data.workers=1025", "data.workers"),
        ] {
            let e = Recipe::load("micro", &[set.into()])
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{set}: {e}");
        }
        Recipe::load("micro", &["data.workers=1024".into()]).unwrap();
    }

    #[test]
    fn decoder_options_are_optional_keys() {
        let r = Recipe::load("micro", &[]).unwrap();
        let c = r.model_config().unwrap();
        assert_eq!(
            (c.decoder.correlation, c.decoder.predictor),
            (Correlation::Attention, Predictor::Conv1x1)
        );
        assert_eq!(c.decoder.predictor_init_scale, 1.0);
        // Absent keys stay out of the resolved recipe, so existing hashes do not move.
        assert!(!r.to_toml().contains("correlation"));
        let r = Recipe::load(
            "micro",
            &[
                "model.correlation=conv".into(),
                "model.predictor=deconv".into(),
                "model.predictor_init_scale=0.02".into(),
            ],
        )
        .unwrap();
        let c = r.model_config().unwrap();
        assert_eq!(
            (c.decoder.correlation, c.decoder.predictor),
            (Correlation::Conv, Predictor::Deconv)
        );
        assert_eq!(c.decoder.predictor_init_scale, 0.02);
        assert!(r.to_toml().contains("correlation = \"conv\""));
        for bad in [
            "model.correlation=xcorr",
            "model.predictor=conv",
            "model.predictor_init_scale=0.0",
            "model.predictor_init_scale=-1.0",
        ] {
            let e = Recipe::load("micro", &[bad.into()])
                .unwrap_err()
                .to_string();
            let key = bad.split('=').next().unwrap();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn unknown_keys_in_a_file_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.toml");
        let text = BUILT_IN[4].1.replace("blr = ", "blr_typo = 1.0\nblr = ");
        std::fs::write(&p, text).unwrap();
        let e = format!("{:#}", Recipe::load(p.to_str().unwrap(), &[]).unwrap_err());
        assert!(e.contains("blr_typo"), "{e}");
    }

    #[test]
    fn resolved_recipe_round_trips_with_a_stable_hash() {
        let r = Recipe::load("demo", &["optim.epochs=3".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("recipe.toml");
        std::fs::write(&p, r.to_toml()).unwrap();
        let back = Recipe::read_resolved(&p).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.hash(), r.hash());
        assert_ne!(Recipe::load("demo", &[]).unwrap().hash(), r.hash());
    }
}
