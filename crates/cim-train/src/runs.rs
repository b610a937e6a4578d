//! Finding and opening what a run left: its resolved recipe and checkpoints, given
//! either a checkpoint folder or a run folder (which means its newest checkpoint); and
//! deciding, before a run writes anything, where it starts and whether its folder is safe
//! to write to.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use cim_model::Cim;
use cim_spec::backend::Backend;

use crate::checkpoint::{self, TrainState};
use crate::output;
use crate::recipe::Recipe;
use crate::trainer::Resume;

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
        // Resolved first, so that a link to a checkpoint (`latest -> RUN/checkpoints/...`)
        // or a bare `step-N` leads to its own run's recipe.
        let path = &path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
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

/// Where a run in `run` starts, decided before anything is written: `None` for a fresh
/// start, else the checkpoint to continue. Refuses a start that would overwrite or mix
/// with what `run` already holds: a fresh start (also `--resume auto` without a complete
/// checkpoint) needs `run` absent or empty; resuming from a checkpoint of `run` needs no
/// newer complete checkpoint beside it (their metrics would be cut and `keep_last` would
/// prune the new checkpoints before the abandoned ones); resuming from another folder's
/// checkpoint (a fork) needs `run` absent or empty. One exception, for jobs that a
/// scheduler requeues with `--resume auto`: a folder holding only what a start of this
/// same `recipe` leaves before its first complete checkpoint (its recipe.toml, metrics,
/// skip logs, an unfinished checkpoint) starts over.
pub fn start_point(run: &Path, resume: &Resume, recipe: &Recipe) -> Result<Option<PathBuf>> {
    let complete = checkpoint::list(run)?;
    match resume {
        Resume::No => {
            if let Some(last) = complete.last() {
                bail!(
                    "run folder {} already holds checkpoints (newest {}): pass --resume auto to continue it, or choose another --out",
                    run.display(),
                    last.display()
                );
            }
            require_empty(run, "a new run")?;
            Ok(None)
        }
        Resume::Auto => match complete.last() {
            Some(last) => Ok(Some(last.clone())),
            None if left_by_a_start_of(run, recipe)? => {
                eprintln!(
                    "{} holds only what an earlier start of this recipe left before its first checkpoint: starting over",
                    run.display()
                );
                Ok(None)
            }
            None => {
                require_empty(run, "a new run")?;
                Ok(None)
            }
        },
        Resume::From(from) => {
            let step = checkpoint::read_state(from)
                .with_context(|| format!("resuming from {}", from.display()))?
                .step;
            let inside = is_checkpoint_of(run, from);
            let in_the_way: Vec<String> = complete
                .iter()
                .filter(|c| !inside || step_of(c).is_none_or(|s| s > step))
                .map(|c| c.display().to_string())
                .collect();
            if !in_the_way.is_empty() {
                let why = if inside {
                    format!("newer than the resume point (step {step})")
                } else {
                    format!("and {} is not one of them", from.display())
                };
                bail!(
                    "run folder {} holds checkpoint(s) {} {why}: resuming there would mix two histories (metrics cut, the new checkpoints pruned first); resume into a fresh --out, or delete those checkpoints",
                    run.display(),
                    in_the_way.join(", ")
                );
            }
            if !inside {
                require_empty(run, "a run forked from another run's checkpoint")?;
            }
            Ok(Some(from.clone()))
        }
    }
}

/// The step in a checkpoint folder's name (`step-00000042`).
fn step_of(checkpoint: &Path) -> Option<u64> {
    checkpoint
        .file_name()?
        .to_str()?
        .strip_prefix("step-")?
        .parse()
        .ok()
}

/// Whether `checkpoint` sits in `run`'s checkpoints folder (however either is spelled).
pub fn is_checkpoint_of(run: &Path, checkpoint: &Path) -> bool {
    let ours = run.join("checkpoints").canonicalize();
    let parent = checkpoint
        .canonicalize()
        .map(|c| c.parent().map(Path::to_path_buf));
    matches!((ours, parent), (Ok(a), Ok(Some(b))) if a == b)
}

/// Whether `run` holds nothing but what a start of `recipe` writes before its first
/// complete checkpoint: recipe.toml (this recipe's, by hash), metrics.jsonl, loss.png,
/// the skip logs, and a checkpoints folder holding only unfinished `.tmp-step-*` ones.
fn left_by_a_start_of(run: &Path, recipe: &Recipe) -> Result<bool> {
    let Some(run_files) = output::folder_contents(run, "--out")? else {
        return Ok(false);
    };
    let ours = |n: &str| {
        matches!(
            n,
            "recipe.toml" | "metrics.jsonl" | "loss.png" | "checkpoints"
        ) || (n.starts_with("skipped") && n.ends_with(".jsonl"))
    };
    if !run_files.iter().all(|n| ours(n)) || !run_files.iter().any(|n| n == "recipe.toml") {
        return Ok(false);
    }
    let unfinished_only = output::folder_contents(&run.join("checkpoints"), "--out")
        .map(|names| names.unwrap_or_default())
        .is_ok_and(|names| names.iter().all(|n| n.starts_with(".tmp-step-")));
    if !unfinished_only {
        return Ok(false);
    }
    let saved = Recipe::read_resolved(&run.join("recipe.toml"))?;
    Ok(saved.hash() == recipe.hash())
}

/// Refuses a new run in a folder that holds anything: its files (a user's, or what an
/// earlier run left before its first complete checkpoint) would be overwritten or mixed in.
fn require_empty(run: &Path, start: &str) -> Result<()> {
    match output::folder_contents(run, "--out")? {
        Some(names) if !names.is_empty() => bail!(
            "run folder {} is not empty (it holds {}) and has no complete checkpoint to resume: {start} needs an absent or empty --out, so that nothing there is overwritten; choose another --out, or delete the folder",
            run.display(),
            output::some_of(&names)
        ),
        _ => Ok(()),
    }
}
