//! The pre-training loop over any backend: S6 learning-rate schedule and accumulation,
//! S7 momentum schedule and EMA, skipping of non-finite steps, metrics, checkpoints,
//! resumption and graceful interruption, in one process or as one rank of a data-parallel
//! run.
//!
//! Micro-batch `i` of epoch `e` is always the same data (the source derives it from the
//! seed, `e` and `i`), and every other piece of state is in the checkpoint, so stopping
//! and resuming changes nothing: on the CPU a resumed run equals an uninterrupted one
//! bit for bit (tested).
//!
//! Data-parallel: every rank builds the same model from the same seed and reads its own
//! shard of each micro-batch; the gradients are summed over the ranks (each rank's loss is
//! already divided by the world size, so the sum is the mean), bucket by bucket as the
//! backward of a group's last micro-batch finishes them (the collective may sum while the
//! backward goes on), before clipping, AdamW and EMA, so every rank takes the same step and holds the same bits. The ranks decide
//! together to stop (a signal on any of them), and skip the same steps since they see the
//! same summed gradients and loss. Only rank 0 writes to the run folder, after every rank
//! showed it holds the same model.
//!
//! Nothing is written to the run folder before every check of the start passed (the
//! folder's state and resume point, the recipe, the data, the model, the checkpoint), so
//! a refused start leaves the folder as it was.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use cim_model::{Batch, Cim};
use cim_spec::backend::Backend;
use cim_spec::config::ModelConfig;
use cim_spec::schedule::{self, AdamW, LrSchedule};
use serde_json::json;

use crate::checkpoint::{self, TrainState};
use crate::device::backend_err;
use crate::distributed::{
    self, BucketFeed, Collective, DEFAULT_BUCKET_BYTES, SingleProcess, StepVote, check_replicas,
};
use crate::recipe::Recipe;
use crate::runs;
use crate::synthetic::{self, HostBatch};
use crate::{output, plot};

/// Set by the SIGINT/SIGTERM handler: checkpoint at the next step boundary, then stop.
pub static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

/// What the trainer reads micro-batches from: it fills the model's input buffers with
/// micro-batch `index` of `epoch`. Every [`PairSource`] of host batches is one (its batches
/// are uploaded); [`crate::data::DataSource`] may instead have the backend render the
/// pairs on its device (S2 item 2).
pub trait Feed<B: Backend> {
    /// Micro-batches in one epoch.
    fn batches_per_epoch(&self) -> u64;
    /// Writes micro-batch `index` of `epoch` into `into`; the same arguments always give
    /// the same data.
    fn fill(&mut self, b: &B, epoch: u64, index: u64, into: &mut Batch<B>) -> Result<()>;
    /// Seconds the last calls spent waiting for data (reset on read).
    fn take_wait_seconds(&mut self) -> f64;
    /// Undecodable files passed over by the last calls (reset on read); only a source of
    /// files that may skip them has any.
    fn take_skipped_files(&mut self) -> u64 {
        0
    }
}

impl<B: Backend, S: PairSource + ?Sized> Feed<B> for S {
    fn batches_per_epoch(&self) -> u64 {
        PairSource::batches_per_epoch(self)
    }

    fn fill(&mut self, b: &B, epoch: u64, index: u64, into: &mut Batch<B>) -> Result<()> {
        let host = self.batch(epoch, index)?;
        into.upload(b, &host.context, &host.exemplars, &host.maps)
            .map_err(backend_err)
    }

    fn take_wait_seconds(&mut self) -> f64 {
        PairSource::take_wait_seconds(self)
    }
}

/// Where host micro-batches come from.
pub trait PairSource {
    /// Micro-batches in one epoch.
    fn batches_per_epoch(&self) -> u64;
    /// Micro-batch `index` of `epoch`; the same arguments always give the same data.
    fn batch(&mut self, epoch: u64, index: u64) -> Result<HostBatch>;
    /// Seconds the last calls spent waiting for data (reset on read).
    fn take_wait_seconds(&mut self) -> f64 {
        0.0
    }
}

/// Synthetic micro-batches (random pixels, real S2 maps): for tests and benchmarks.
pub struct SyntheticSource {
    /// The model the batches are shaped for.
    pub config: ModelConfig,
    /// Contexts per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per epoch.
    pub per_epoch: u64,
    /// Seed.
    pub seed: u64,
}

impl PairSource for SyntheticSource {
    fn batches_per_epoch(&self) -> u64 {
        self.per_epoch
    }
    fn batch(&mut self, epoch: u64, index: u64) -> Result<HostBatch> {
        let seed = cim_spec::rng::CimRng::derive(self.seed, &[epoch, index]).next_word();
        synthetic::batch(&self.config, self.batch_size, seed)
    }
}

/// How to start.
#[derive(Clone, Debug, PartialEq)]
pub enum Resume {
    /// A fresh run; refused if the run folder already holds checkpoints.
    No,
    /// Continue from the newest complete checkpoint of the run folder (fresh if none).
    Auto,
    /// Continue from this checkpoint folder.
    From(PathBuf),
}

/// Options of a run beyond its recipe.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Resumption.
    pub resume: Resume,
    /// Stop after this many optimizer steps in total (for quick runs and tests).
    pub max_steps: Option<u64>,
    /// Draw a progress bar when standard error is a terminal.
    pub progress: bool,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Optimizer steps taken in total.
    pub steps: u64,
    /// Loss of the last micro-batch.
    pub last_loss: f32,
    /// Steps skipped for non-finite values, in total.
    pub nonfinite_steps: u64,
    /// Undecodable files this process passed over (each logged to skipped.jsonl), in
    /// total.
    pub skipped_files: u64,
    /// The run's newest checkpoint (rank 0 only): the last one written, or the one the run
    /// resumed from when no step was left to take.
    pub checkpoint: Option<PathBuf>,
    /// Whether a signal stopped the run early.
    pub interrupted: bool,
    /// The model-state digest every rank agreed on at the last checkpoint
    /// ([`distributed::state_digest`]); `None` for a single process.
    pub replica_digest: Option<String>,
}

/// Keeps only the metric lines of steps up to `step` (a resumed run rewrites what came
/// after its checkpoint).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let keep: Vec<String> = BufReader::new(File::open(path)?)
        .lines()
        .map_while(Result::ok)
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .collect();
    let mut text = keep.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    // Atomic: a failed rewrite (a full disk) must not empty the run's history.
    output::write_bytes(path, text.as_bytes())
}

/// The loss curve of a run folder's metrics as `loss.png`.
pub fn plot_loss(run_dir: &Path) -> Result<PathBuf> {
    let metrics = run_dir.join("metrics.jsonl");
    let file = File::open(&metrics).with_context(|| format!("reading {}", metrics.display()))?;
    let pts: Vec<(f64, f64)> = BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .filter_map(|v| Some((v["step"].as_f64()?, v["loss"].as_f64()?)))
        .collect();
    let out = run_dir.join("loss.png");
    plot::line_chart(&out, "cim loss", "step", &pts)?;
    Ok(out)
}

/// Checkpoints `model` at `state`: every rank first shows it holds the same model, then
/// rank 0 writes the folder. Returns the folder (rank 0) and the digest the ranks agreed
/// on (several ranks).
fn save_checkpoint<B: Backend>(
    b: &B,
    comm: &mut dyn Collective<B>,
    model: &Cim<B>,
    state: &TrainState,
    run: &Path,
    keep_last: usize,
) -> Result<(Option<PathBuf>, Option<String>)> {
    let digest = check_replicas(b, comm, model, &format!("at step {}", state.step))?;
    let dir = match comm.rank() {
        0 => Some(checkpoint::save(b, model, state, run, keep_last)?),
        _ => None,
    };
    Ok((dir, digest))
}

/// Runs (or continues) pre-training in a single process.
pub fn pretrain<B: Backend>(
    b: &B,
    recipe: &Recipe,
    source: &mut dyn Feed<B>,
    opts: &TrainOptions,
) -> Result<Summary> {
    pretrain_distributed(b, recipe, source, opts, &mut SingleProcess)
}

/// Runs (or continues) pre-training as one rank of `comm`'s data-parallel run: `source`
/// yields this rank's shard of every micro-batch (`optim.batch_size` contexts each, so the
/// effective batch of S6 is that times `optim.accum_iter` times the world size). Every
/// rank must call it with the same recipe and options; only rank 0 writes to the run
/// folder, which every rank must see to resume.
pub fn pretrain_distributed<B: Backend>(
    b: &B,
    recipe: &Recipe,
    source: &mut dyn Feed<B>,
    opts: &TrainOptions,
    comm: &mut dyn Collective<B>,
) -> Result<Summary> {
    let config = recipe.model_config()?;
    let o = &recipe.optim;
    let run = &opts.run_dir;
    let (root, world) = (comm.rank() == 0, comm.world_size());
    // Every check comes before the first write to the run folder, so a refused start
    // leaves it as it was (module notes).
    let resume_from = runs::start_point(run, &opts.resume, recipe)?;
    let recipe_path = run.join("recipe.toml");
    if root && resume_from.is_some() && recipe_path.exists() {
        let saved = Recipe::read_resolved(&recipe_path)?;
        if saved.hash() != recipe.hash() {
            bail!(
                "the recipe differs from the one {} was started with ({}); resume with the same recipe and overrides",
                run.display(),
                recipe_path.display()
            );
        }
    }

    let per_epoch = source.batches_per_epoch();
    distributed::ensure_agreement(
        comm,
        "the micro-batches per epoch",
        &per_epoch.to_string(),
        "every rank must read the same images",
    )?;
    if per_epoch < o.accum_iter as u64 {
        bail!(
            "the data gives {per_epoch} micro-batches of {} per epoch, fewer than one optimizer step (accum_iter {}): add images or lower optim.batch_size",
            o.batch_size,
            o.accum_iter
        );
    }
    let seed = recipe.run.seed;
    let mut model =
        Cim::new(b, config, o.batch_size, seed).map_err(|e| anyhow!("building the model: {e}"))?;
    let mut state = TrainState {
        format: checkpoint::FORMAT,
        step: 0,
        epoch: 0,
        next_batch: 0,
        nonfinite_steps: 0,
        skipped_files: 0,
        seed,
        recipe_hash: recipe.hash(),
        backend: b.name().to_string(),
    };
    if let Some(dir) = &resume_from {
        state = checkpoint::load(b, &mut model, dir, true)
            .with_context(|| format!("resuming from {}", dir.display()))?;
        if state.recipe_hash != recipe.hash() {
            bail!(
                "{} was written by another recipe; resume with the recipe of its run",
                dir.display()
            );
        }
        if root {
            eprintln!(
                "resuming from {} (step {}, epoch {}, batch {})",
                dir.display(),
                state.step,
                state.epoch,
                state.next_batch
            );
        }
    }
    let eff_batch = o.batch_size * o.accum_iter * world;
    let peak = schedule::scaled_lr(o.blr, eff_batch);
    let lr_schedule = LrSchedule::new(peak, o.min_lr, o.warmup_epochs, o.epochs as f64)
        .map_err(|e| anyhow!("recipe {}: the learning-rate schedule: {e}", recipe.name))?;
    let total_micro = o.epochs as u64 * per_epoch;
    let steps_per_epoch = per_epoch / o.accum_iter as u64;
    let total_steps = opts
        .max_steps
        .unwrap_or(u64::MAX)
        .min(o.epochs as u64 * steps_per_epoch);
    let mut batch = Batch::new(b, &config, o.batch_size).map_err(backend_err)?;
    check_replicas(b, comm, &model, "at the start")?;
    fs::create_dir_all(run).with_context(|| format!("creating run folder {}", run.display()))?;
    let metrics_path = run.join("metrics.jsonl");
    let mut metrics = if root {
        output::write_bytes(&recipe_path, recipe.to_toml().as_bytes())?;
        truncate_metrics(&metrics_path, state.step)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .with_context(|| format!("opening {}", metrics_path.display()))?;
        Some(file)
    } else {
        None
    };

    let bar = (root && opts.progress && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(total_steps);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
                .expect("a valid template"),
        );
        bar.set_position(state.step);
        bar
    });

    let buckets = distributed::gradient_buckets(model.layout(), DEFAULT_BUCKET_BYTES);
    let mut nonfinite_run = 0u32;
    let mut last_loss = f32::NAN;
    // A checkpoint of this run folder we resumed from is already saved (at a step no
    // further training may reach), and is the run's newest until another is written; a
    // fork's lies elsewhere and is saved here.
    // (Every rank decides alike: saving is collective.)
    let resumed_here = resume_from
        .as_ref()
        .filter(|dir| runs::is_checkpoint_of(run, dir))
        .cloned();
    let mut last_saved = resumed_here.as_ref().map(|_| state.step);
    let mut last_ckpt = resumed_here.filter(|_| root);
    let mut replica_digest = None;
    let mut interrupted = false;
    let mut window = (Instant::now(), 0u64, 0.0f64);
    let accum = o.accum_iter as u64;
    'epochs: for epoch in state.epoch..o.epochs as u64 {
        let start = if epoch == state.epoch {
            state.next_batch
        } else {
            0
        };
        // Whole accumulation groups only; a trailing partial group of an epoch is dropped.
        let usable = steps_per_epoch * accum;
        let mut group_loss = 0.0f32;
        let mut lr = 0.0;
        for i in start..usable {
            if state.step >= total_steps {
                break 'epochs;
            }
            if i % accum == 0 {
                lr = lr_schedule.at(schedule::epoch_fraction(epoch, i, per_epoch));
                model.zero_grads(b).map_err(backend_err)?;
                group_loss = 0.0;
            }
            source.fill(b, epoch, i, &mut batch)?;
            window.2 += source.take_wait_seconds();
            state.skipped_files += source.take_skipped_files();
            // Dividing by the world size too makes the sum over the ranks the mean (S6).
            let divisor = o.accum_iter * world;
            let last_micro = (i + 1) % accum == 0;
            if last_micro {
                // The group's gradients are final bucket by bucket as this backward runs.
                let mut feed = BucketFeed::new(&mut *comm, &buckets);
                model
                    .forward_backward_reporting(b, &batch, divisor, &mut |grads, range| {
                        feed.report(b, grads, range)
                    })
                    .map_err(backend_err)?;
                let ([_, _, grads, _, _], _) = model.buffers_mut();
                feed.finish(b, grads)?;
            } else {
                model
                    .forward_backward(b, &batch, divisor)
                    .map_err(backend_err)?;
            }
            let mut loss = [0.0f32];
            b.download(b.view(model.loss(), 0..1), &mut loss)
                .map_err(backend_err)?;
            group_loss += loss[0];
            if !last_micro {
                continue;
            }
            let vote = StepVote {
                loss: group_loss,
                stop: STOP_REQUESTED.load(Ordering::SeqCst),
            }
            .agree(comm)?;
            group_loss = vote.loss;
            let norm = model.grad_norm(b).map_err(backend_err)?;
            let stepped = group_loss.is_finite() && norm.is_finite();
            if !stepped {
                state.nonfinite_steps += 1;
                nonfinite_run += 1;
                let culprit = model
                    .first_non_finite_grad(b)
                    .map_err(backend_err)?
                    .unwrap_or("the loss")
                    .to_string();
                if root {
                    eprintln!(
                        "step {}: non-finite loss or gradient (first: {culprit}); step skipped",
                        state.step + 1
                    );
                }
                if nonfinite_run >= recipe.run.max_nonfinite {
                    bail!(
                        "stopping at step {}: {nonfinite_run} steps in a row had non-finite values (first non-finite tensor: {culprit}); the last checkpoint is intact",
                        state.step + 1
                    );
                }
            } else {
                nonfinite_run = 0;
                if o.clip_grad > 0.0 {
                    model
                        .clip_grads(b, o.clip_grad as f32)
                        .map_err(backend_err)?;
                }
                let momentum =
                    schedule::ema_momentum(o.base_momentum, epoch * per_epoch + i, total_micro);
                let adamw = AdamW {
                    lr,
                    beta1: o.betas[0],
                    beta2: o.betas[1],
                    eps: o.eps,
                    weight_decay: o.weight_decay,
                };
                model
                    .optimizer_step(b, &adamw, momentum)
                    .map_err(backend_err)?;
                state.step = model.steps();
                last_loss = group_loss;
                window.1 += 1;
                if state.step.is_multiple_of(recipe.run.log_every) || state.step == total_steps {
                    let secs = window.0.elapsed().as_secs_f64().max(1e-9);
                    let img_s = (window.1 * eff_batch as u64) as f64 / secs;
                    let line = json!({
                        "step": state.step, "epoch": epoch, "loss": group_loss, "lr": lr,
                        "momentum": momentum, "grad_norm": norm, "img_per_s": img_s,
                        "data_wait": (window.2 / secs).min(1.0),
                        "nonfinite_steps": state.nonfinite_steps, "skipped_files": state.skipped_files,
                    });
                    if let Some(metrics) = &mut metrics {
                        writeln!(metrics, "{line}")?;
                        metrics.flush()?;
                    }
                    if let Some(bar) = &bar {
                        bar.set_message(format!(
                            "loss {group_loss:.4}  lr {lr:.2e}  {img_s:.1} img/s"
                        ));
                    }
                    window = (Instant::now(), 0, 0.0);
                }
                if let Some(bar) = &bar {
                    bar.set_position(state.step);
                }
            }
            state.epoch = epoch;
            state.next_batch = i + 1;
            if state.next_batch == usable {
                state.epoch = epoch + 1;
                state.next_batch = 0;
            }
            let stop = vote.stop;
            if stop || (stepped && state.step.is_multiple_of(recipe.run.checkpoint_every)) {
                (last_ckpt, replica_digest) =
                    save_checkpoint(b, comm, &model, &state, run, recipe.run.keep_last)?;
                last_saved = Some(state.step);
            }
            if stop {
                if root {
                    eprintln!("stop requested: checkpoint written at step {}", state.step);
                } else {
                    eprintln!(
                        "stop requested: rank 0 wrote a checkpoint at step {}",
                        state.step
                    );
                }
                interrupted = true;
                break 'epochs;
            }
        }
    }
    if !interrupted && last_saved != Some(state.step) {
        (last_ckpt, replica_digest) =
            save_checkpoint(b, comm, &model, &state, run, recipe.run.keep_last)?;
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    drop(metrics);
    if root {
        plot_loss(run)?;
    }
    Ok(Summary {
        steps: state.step,
        last_loss,
        nonfinite_steps: state.nonfinite_steps,
        skipped_files: state.skipped_files,
        checkpoint: last_ckpt,
        interrupted,
        replica_digest,
    })
}
