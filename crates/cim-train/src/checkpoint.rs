//! Checkpoints (S12): a folder per checkpoint, `RUN/checkpoints/step-00000042/`, holding
//! `model.safetensors` (online and target networks and the fixed position embeddings
//! under the release's names), `optimizer.safetensors` (AdamW moments `exp_avg.<name>`,
//! `exp_avg_sq.<name>`) and `state.json` (step, data position, seed, recipe hash, format).
//!
//! A checkpoint is written under a temporary name and renamed into place, only after
//! every value was checked finite; older ones beyond `keep_last` are removed afterwards,
//! so an interruption at any point leaves the previous checkpoints intact. The data
//! pipeline derives every sample from (seed, epoch, index), so the position is the only
//! data state: a resumed CPU run equals an uninterrupted one bit for bit.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use cim_model::Cim;
use cim_model::layout::ParamLayout;
use cim_spec::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::device::{backend_err, download};
use crate::dump::{FIXED_TENSORS, model_tensors};
use crate::tensors::TensorSet;

/// Checkpoint format this build writes and reads.
pub const FORMAT: u32 = 1;

/// Where a run stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// Checkpoint format.
    pub format: u32,
    /// Optimizer steps taken (AdamW's t).
    pub step: u64,
    /// Epoch to continue in.
    pub epoch: u64,
    /// Micro-batch index within that epoch to continue from.
    pub next_batch: u64,
    /// Steps skipped for non-finite values so far (named `skipped` in state.json, as
    /// format 1 was first written).
    #[serde(rename = "skipped")]
    pub nonfinite_steps: u64,
    /// Undecodable files passed over so far (absent from checkpoints written before it
    /// was counted).
    #[serde(default)]
    pub skipped_files: u64,
    /// Seed of the run.
    pub seed: u64,
    /// SHA-256 of the resolved recipe.
    pub recipe_hash: String,
    /// Backend that wrote it.
    pub backend: String,
}

/// The folder of the checkpoint at `step` inside `run`.
pub fn step_dir(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:08}"))
}

/// Complete checkpoints of `run` (those with a state.json), oldest first.
pub fn list(run: &Path) -> Result<Vec<PathBuf>> {
    let dir = run.join("checkpoints");
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-"))
                && p.join("state.json").is_file()
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Writes a checkpoint of `model` and `state` into `run`, keeping the last `keep_last`.
pub fn save<B: Backend>(
    b: &B,
    model: &Cim<B>,
    state: &TrainState,
    run: &Path,
    keep_last: usize,
) -> Result<PathBuf> {
    let weights = model_tensors(b, model)?;
    let layout = model.layout();
    let [_, _, _, m1, m2] = model.buffers();
    let mut optim = TensorSet::new();
    for t in layout.tensors.iter().filter(|t| t.trainable) {
        optim.push(
            format!("exp_avg.{}", t.name),
            &t.shape,
            download(b, m1, t.range.clone())?,
        )?;
        optim.push(
            format!("exp_avg_sq.{}", t.name),
            &t.shape,
            download(b, m2, t.range.clone())?,
        )?;
    }
    for set in [&weights, &optim] {
        for name in set.names() {
            let (_, data) = set.get(name).expect("listed name");
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                bail!(
                    "refusing to write a checkpoint at step {}: tensor {name} holds a non-finite value at element {i}",
                    state.step
                );
            }
        }
    }
    let final_dir = step_dir(run, state.step);
    let parent = final_dir.parent().expect("step_dir has a parent");
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = parent.join(format!(".tmp-step-{:08}", state.step));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("removing stale {}", tmp.display()))?;
    }
    fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    weights.write(&tmp.join("model.safetensors"), None)?;
    optim.write(&tmp.join("optimizer.safetensors"), None)?;
    fs::write(tmp.join("state.json"), serde_json::to_string_pretty(state)?)?;
    // A folder of the same step (not reached in a normal run: a resumed run does not save
    // its resume point again) is moved aside, not deleted, until the new one is in place.
    let replaced = parent.join(format!(".old-step-{:08}", state.step));
    if final_dir.exists() {
        if replaced.exists() {
            fs::remove_dir_all(&replaced)
                .with_context(|| format!("removing stale {}", replaced.display()))?;
        }
        fs::rename(&final_dir, &replaced)
            .with_context(|| format!("moving {} aside", final_dir.display()))?;
    }
    fs::rename(&tmp, &final_dir)
        .with_context(|| format!("renaming {} into place", tmp.display()))?;
    if replaced.exists() {
        fs::remove_dir_all(&replaced)
            .with_context(|| format!("removing the replaced {}", replaced.display()))?;
    }
    // The one just written is kept whatever sorts after it; the oldest others go.
    let others: Vec<PathBuf> = list(run)?.into_iter().filter(|p| *p != final_dir).collect();
    let excess = (others.len() + 1).saturating_sub(keep_last.max(1));
    for old in &others[..excess] {
        fs::remove_dir_all(old)
            .with_context(|| format!("removing old checkpoint {}", old.display()))?;
    }
    Ok(final_dir)
}

/// Reads a tensor of a checkpoint file, checking its shape.
fn tensor<'a>(set: &'a TensorSet, file: &Path, name: &str, shape: &[usize]) -> Result<&'a [f32]> {
    let (s, data) = set
        .get(name)
        .ok_or_else(|| anyhow!("{}: tensor {name} is missing", file.display()))?;
    if s != shape {
        bail!(
            "{}: tensor {name} has shape {s:?}, the model needs {shape:?}",
            file.display()
        );
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        bail!(
            "{}: tensor {name} holds a non-finite value at element {i}",
            file.display()
        );
    }
    Ok(data)
}

/// Reads `state.json` of a checkpoint folder.
pub fn read_state(dir: &Path) -> Result<TrainState> {
    let p = dir.join("state.json");
    if !p.exists() {
        bail!(
            "{} is not a checkpoint folder (it has no state.json): pass a checkpoint folder, RUN/checkpoints/step-N, or `--resume auto` for the newest of a run",
            dir.display()
        );
    }
    let text = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let state: TrainState = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a checkpoint state", p.display()))?;
    if state.format != FORMAT {
        bail!(
            "{}: checkpoint format {} is unknown to this build (it reads format {FORMAT})",
            p.display(),
            state.format
        );
    }
    Ok(state)
}

/// Loads the weights of a checkpoint folder (online, target; optimizer moments too when
/// `with_optimizer`) into `model`, checking every name and shape, and returns its state.
pub fn load<B: Backend>(
    b: &B,
    model: &mut Cim<B>,
    dir: &Path,
    with_optimizer: bool,
) -> Result<TrainState> {
    let state = read_state(dir)?;
    let wpath = dir.join("model.safetensors");
    let weights = TensorSet::read(&wpath)?;
    let layout = model.layout().clone();
    let ema_start = layout.ema.start;
    let optim = if with_optimizer {
        let p = dir.join("optimizer.safetensors");
        Some((TensorSet::read(&p)?, p))
    } else {
        None
    };
    let (bufs, steps) = model.buffers_mut();
    let [params, target, _, m1, m2] = bufs;
    for t in &layout.tensors {
        let data = tensor(&weights, &wpath, &t.name, &t.shape)?;
        b.upload(b.view_mut(params, t.range.clone()), data)
            .map_err(backend_err)?;
        if let Some(tname) = ParamLayout::target_name(&t.name) {
            let data = tensor(&weights, &wpath, &tname, &t.shape)?;
            let r = t.range.start - ema_start..t.range.end - ema_start;
            b.upload(b.view_mut(target, r), data).map_err(backend_err)?;
        }
        if let (Some((set, p)), true) = (&optim, t.trainable) {
            let d1 = tensor(set, p, &format!("exp_avg.{}", t.name), &t.shape)?;
            b.upload(b.view_mut(m1, t.range.clone()), d1)
                .map_err(backend_err)?;
            let d2 = tensor(set, p, &format!("exp_avg_sq.{}", t.name), &t.shape)?;
            b.upload(b.view_mut(m2, t.range.clone()), d2)
                .map_err(backend_err)?;
        }
    }
    let mut expected: Vec<String> = FIXED_TENSORS.iter().map(|n| n.to_string()).collect();
    for t in &layout.tensors {
        expected.push(t.name.clone());
        expected.extend(ParamLayout::target_name(&t.name));
    }
    refuse_unexpected(&weights, &wpath, &expected)?;
    if let Some((set, p)) = &optim {
        let moments: Vec<String> = (layout.tensors.iter().filter(|t| t.trainable))
            .flat_map(|t| {
                [
                    format!("exp_avg.{}", t.name),
                    format!("exp_avg_sq.{}", t.name),
                ]
            })
            .collect();
        refuse_unexpected(set, p, &moments)?;
    }
    *steps = state.step;
    Ok(state)
}

/// Refuses a checkpoint file holding tensors the model has no place for (as PyTorch's
/// strict `load_state_dict`): they mean another model or a damaged file, and loading the
/// rest silently would hide it.
fn refuse_unexpected(set: &TensorSet, file: &Path, expected: &[String]) -> Result<()> {
    let unexpected: Vec<&str> = set
        .names()
        .filter(|n| !expected.iter().any(|e| e == n))
        .collect();
    if !unexpected.is_empty() {
        bail!(
            "{}: unexpected tensor(s) {} that this model has no place for (another model, or a damaged file)",
            file.display(),
            unexpected.join(", ")
        );
    }
    Ok(())
}
