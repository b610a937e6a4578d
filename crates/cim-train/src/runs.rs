//! Finding and opening what a run left: its resolved recipe and checkpoints, given
//! either a checkpoint folder or a run folder (which means its newest checkpoint).

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use cim_model::Cim;
use cim_spec::backend::Backend;

use crate::checkpoint::{self, TrainState};
use crate::recipe::Recipe;

/// A checkpoint resolved from a user's path.
pub struct Located {
    /// The run folder (holds recipe.toml).
    pub run: PathBuf,
    /// The checkpoint folder.
    pub checkpoint: PathBuf,
}

/// Resolves `path`: a checkpoint folder (has state.json) or a run folder (its newest).
pub fn locate(path: &Path) -> Result<Located> {
    if path.join("state.json").is_file() {
        let run = path.parent().and_then(Path::parent).ok_or_else(|| {
            anyhow!(
                "{}: a checkpoint folder must sit in RUN/checkpoints/",
                path.display()
            )
        })?;
        return Ok(Located {
            run: run.to_path_buf(),
            checkpoint: path.to_path_buf(),
        });
    }
    if !path.is_dir() {
        bail!(
            "{} is neither a run folder nor a checkpoint folder",
            path.display()
        );
    }
    let Some(newest) = checkpoint::list(path)?.pop() else {
        bail!(
            "{} holds no complete checkpoint (expected checkpoints/step-*/state.json)",
            path.display()
        );
    };
    Ok(Located {
        run: path.to_path_buf(),
        checkpoint: newest,
    })
}

/// Builds the model of a run (micro-batch `batch`) and loads a checkpoint into it.
pub fn open<B: Backend>(
    b: &B,
    path: &Path,
    batch: usize,
) -> Result<(Recipe, Cim<B>, TrainState, Located)> {
    let loc = locate(path)?;
    let recipe_path = loc.run.join("recipe.toml");
    if !recipe_path.is_file() {
        bail!(
            "{}: the run's recipe.toml (which says how to build the model) is looked for two folders above a checkpoint, RUN/checkpoints/step-N, and {} does not exist; pass a checkpoint inside its run folder, or the run folder",
            loc.checkpoint.display(),
            recipe_path.display()
        );
    }
    let recipe = Recipe::read_resolved(&recipe_path)?;
    let config = recipe.model_config()?;
    let mut model = Cim::new(b, config, batch, recipe.run.seed)
        .map_err(|e| anyhow!("building the model: {e}"))?;
    let state = checkpoint::load(b, &mut model, &loc.checkpoint, false)?;
    Ok((recipe, model, state, loc))
}
