//! The command line shared by the `cim-cpu` and `cim-cuda` binaries (clap). Each binary
//! builds its backend and calls [`run`]; every subcommand is generic over it.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use cim_model::EncoderChoice;
use cim_spec::backend::Backend;
use cim_spec::config::{Correlation, ModelConfig, Predictor};
use cim_spec::schedule::AdamW;
use clap::{Parser, Subcommand, ValueEnum};

use crate::checkpoint;
use crate::data::{DataSource, MakeRenderer};
use crate::distributed::{Collective, SingleProcess, TcpCollective, World};
use crate::dump::{self, DumpOptions};
use crate::eval;
use crate::export;
use crate::output;
use crate::recipe::Recipe;
use crate::runs;
use crate::trainer::STOP_REQUESTED;
use crate::trainer::{self, Feed, Resume, TrainOptions};
use crate::visualize;
use cim_data::{Shard, SkipPolicy};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// CIM pre-training.
#[derive(Parser, Debug)]
#[command(
    version,
    about = "Correlational Image Modeling: self-supervised ViT pre-training"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one training step on synthetic inputs and write everything a PyTorch
    /// implementation needs to check it (params, inputs, outputs with gradients, params
    /// after AdamW and EMA, step.json) as safetensors files.
    StepDump {
        /// Model configuration: micro, vit-tiny, vit-small, vit-base, vit-large, vit-huge.
        #[arg(long, default_value = "micro")]
        model: String,
        /// Decoder correlation (S4, Figure 4): attention or conv.
        #[arg(long, default_value = "attention")]
        correlation: String,
        /// Decoder predictor (S4, Figure 4): conv1x1 or deconv.
        #[arg(long, default_value = "conv1x1")]
        predictor: String,
        /// Seed of the initialisation and the synthetic batch.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Contexts in the micro-batch (at most 64).
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Learning rate of the AdamW step.
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        /// EMA momentum of the target update.
        #[arg(long, default_value_t = 0.99)]
        momentum: f64,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Export an encoder for timm (`vit_*_patch16_224` key names, safetensors) with a
    /// config.json and a verification input with our features.
    Export {
        /// A checkpoint folder, or a run folder (its newest checkpoint).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Which encoder.
        #[arg(long, value_enum, default_value_t = Encoder::Target)]
        encoder: Encoder,
        /// Output folder: must not exist yet, or be empty.
        #[arg(long)]
        out: PathBuf,
    },
    /// Pre-train with CIM from a recipe (built-in name or TOML file) on a folder of images.
    Pretrain {
        /// Recipe: vit-base-in1k, vit-small-in1k, vit-base-in200, demo, micro, or a file.
        #[arg(long, default_value = "demo")]
        recipe: String,
        /// The images (ImageFolder, flat or nested folder, or file list); overrides data.path.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Run folder: resolved recipe, metrics.jsonl, checkpoints/, loss.png, figure5.png.
        #[arg(long)]
        out: PathBuf,
        /// Override a recipe key, e.g. --set optim.epochs=10 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Shortcut for --set optim.epochs=N.
        #[arg(long)]
        epochs: Option<usize>,
        /// Shortcut for --set optim.batch_size=N.
        #[arg(long)]
        batch_size: Option<usize>,
        /// `auto` continues the newest complete checkpoint of --out; or a checkpoint folder.
        #[arg(long)]
        resume: Option<String>,
        /// Stop after this many optimizer steps in total.
        #[arg(long)]
        max_steps: Option<u64>,
        /// Skip undecodable images (logged to RUN/skipped.jsonl) up to this many per
        /// epoch instead of stopping at the first.
        #[arg(long)]
        skip_bad_files: Option<usize>,
        /// No progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Check every op against the reference on this device before training (`auto`:
        /// on for cim-cuda, off for cim-cpu).
        #[arg(long, value_enum, default_value_t = Switch::Auto)]
        preflight: Switch,
        /// Data-parallel runs (WORLD_SIZE > 1): seconds to wait for the other ranks, at the
        /// start and at every exchange of gradients or decisions.
        #[arg(long, default_value_t = 600)]
        dist_timeout: u64,
        /// Where pairs are rendered (S2): `device` uploads 8-bit search views and renders
        /// contexts, exemplars and maps on the backend's device (cim-cuda); `host` renders
        /// whole pairs on the CPU; `auto` is `device` where the backend can.
        #[arg(long, value_enum, default_value_t = RenderAt::Auto)]
        render: RenderAt,
    },
    /// Draw the paper's Figure 5 (contexts, exemplars, true and predicted maps) from a
    /// checkpoint and a folder of images, and print the maps' mean IoU.
    Visualize {
        /// A checkpoint folder, or a run folder (its newest checkpoint).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Folder of images to make pairs from.
        #[arg(long)]
        images: PathBuf,
        /// Output PNG (replaced if it exists).
        #[arg(long)]
        out: PathBuf,
        /// Contexts to show (at most 32).
        #[arg(long, default_value_t = 4)]
        count: usize,
        /// Seed of the pairs.
        #[arg(long, default_value_t = 1234)]
        seed: u64,
    },
    /// k-NN (S10: cosine, k 20, temperature 0.07) and linear-probe top-1 on frozen
    /// features of a labelled set: a folder with Fashion-MNIST's four IDX files, or with
    /// two ImageFolders `train/` and `val/`.
    Eval {
        /// A checkpoint folder, or a run folder (its newest checkpoint).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Fashion-MNIST's IDX folder, or a folder with ImageFolders train/ and val/.
        #[arg(long)]
        data: PathBuf,
        /// Which encoder.
        #[arg(long, value_enum, default_value_t = Encoder::Target)]
        encoder: Encoder,
        /// Image side fed to the encoder, a multiple of the patch up to twice the encoder's
        /// native size (default: the recipe's context size).
        #[arg(long)]
        image_size: Option<usize>,
        /// Training images per class used (0: all).
        #[arg(long, default_value_t = 0)]
        train_per_class: usize,
        /// Test images per class used (0: all).
        #[arg(long, default_value_t = 0)]
        test_per_class: usize,
        /// Neighbours of the k-NN (at most the training images).
        #[arg(long, default_value_t = 20)]
        knn_k: usize,
        /// Passes of the linear probe (0 skips it).
        #[arg(long, default_value_t = 100)]
        probe_epochs: usize,
        /// Also evaluate the same encoder at its random initialisation, side by side.
        #[arg(long)]
        baseline: bool,
    },
    /// Every op of the contract and whole micro training steps on this backend against the
    /// f64 reference (the preflight `pretrain` runs on GPUs); exits non-zero on a mismatch.
    Selftest {
        /// Random cases per op.
        #[arg(long, default_value_t = crate::preflight::PREFLIGHT_CASES)]
        cases: u32,
        /// Also write the outcome of every check as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Time full CIM training steps (fwd+bwd, AdamW, EMA) on synthetic inputs: images/s,
    /// TFLOP/s and, with --peak-tflops, MFU.
    Bench {
        /// Model configuration: micro, vit-tiny, vit-small, vit-base, vit-large, vit-huge.
        #[arg(long, default_value = "vit-base")]
        model: String,
        /// Context images per step.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Untimed steps first.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Timed steps.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// The device's peak in TFLOP/s for MFU (H100 SXM dense bf16: 989).
        #[arg(long)]
        peak_tflops: Option<f64>,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Then profile one more step op by op (a synchronisation around every op, which
        /// inflates the total) and print where its time goes: per op and per GEMM shape,
        /// with TFLOP/s for GEMMs and attention.
        #[arg(long)]
        breakdown: bool,
    },
    /// Pack a dataset into shards for fast reading: every image decoded once, its shorter
    /// side brought down to --shorter-side, stored in large checksummed files that
    /// `pretrain --data PACK` memory-maps: as raw RGB (no decoding during training), or
    /// with --jpeg-quality as small JPEGs (a tenth of the size, cheap to decode).
    /// Undecodable images are left out and listed.
    Pack {
        /// ImageFolder (labels kept), flat or nested folder, or file list.
        data: PathBuf,
        /// A new or empty folder for the pack.
        #[arg(long)]
        out: PathBuf,
        /// Images whose shorter side is longer are resized to it (antialiased bicubic);
        /// smaller ones are kept as they are. At least the recipe's data.input_size.
        #[arg(long, default_value_t = 256)]
        shorter_side: u32,
        /// Size of each shard file in MiB.
        #[arg(long, default_value_t = 1024)]
        shard_mib: u64,
        /// Decoding threads [default: every core].
        #[arg(long)]
        threads: Option<usize>,
        /// Store records as JPEG at this quality (1-100; 90 or more keeps full-resolution
        /// colour) instead of raw RGB.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
        jpeg_quality: Option<u8>,
    },
    /// Decode every image of a dataset and report every problem before any training.
    CheckData {
        /// ImageFolder, flat or nested folder, or file list.
        path: PathBuf,
    },
    /// List the tensors (name, dtype, shape) of a safetensors file or of every file of a
    /// checkpoint folder, and its state.
    Inspect {
        /// A .safetensors file, a checkpoint folder or a run folder.
        path: PathBuf,
    },
}

/// A three-way switch whose `auto` the binary decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// The binary's default.
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

/// Where `pretrain` renders pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RenderAt {
    /// On the device where the backend renders pairs, else on the host.
    Auto,
    /// On the backend's device (an error for a backend that cannot).
    Device,
    /// On the host.
    Host,
}

/// Which encoder to export or evaluate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Encoder {
    /// The online network (trained by AdamW).
    Online,
    /// The target network (the EMA copy; the release fine-tunes this one).
    Target,
}

impl From<Encoder> for EncoderChoice {
    fn from(e: Encoder) -> Self {
        match e {
            Encoder::Online => EncoderChoice::Online,
            Encoder::Target => EncoderChoice::Target,
        }
    }
}

/// How `pretrain` meets the other ranks of a data-parallel run (WORLD_SIZE > 1): given the
/// backend, this process's world, the run's fingerprint (recipe and build; the function
/// adds what must match of the backend) and the timeout of every exchange.
pub type Connect<B> = fn(&B, &World, &str, Duration) -> Result<Box<dyn Collective<B>>>;

/// The CPU collective ([`TcpCollective`]): works with every backend, through the host.
pub fn tcp_connect<B: Backend>(
    backend: &B,
    world: &World,
    fingerprint: &str,
    timeout: Duration,
) -> Result<Box<dyn Collective<B>>> {
    let fingerprint = format!("{fingerprint}, backend {}", backend.name());
    Ok(Box::new(TcpCollective::connect(
        world,
        &fingerprint,
        timeout,
    )?))
}

/// What differs between the binaries besides the backend.
pub struct BinaryDefaults<B: Backend> {
    /// Whether `pretrain --preflight auto` runs the preflight (on for GPU backends, whose
    /// kernels and libraries vary with the card and driver).
    pub preflight: bool,
    /// How the backend renders pairs on its device, if it can (`pretrain --render`).
    pub renderer: Option<MakeRenderer<B>>,
    /// The collective of a data-parallel `pretrain` ([`tcp_connect`] unless the backend
    /// has its own, such as NCCL on GPUs).
    pub connect: Connect<B>,
}

impl<B: Backend> Default for BinaryDefaults<B> {
    fn default() -> Self {
        BinaryDefaults {
            preflight: false,
            renderer: None,
            connect: tcp_connect::<B>,
        }
    }
}

/// Parses the process arguments, builds the backend with `make_backend` (so `--help`
/// works on a machine without the device) and runs the subcommand. During `pretrain`,
/// SIGINT and SIGTERM ask the run to checkpoint at the next step boundary and stop, and a
/// second signal exits at once; every other subcommand keeps the default handling (the
/// signal stops it), since it has nothing to save.
pub fn main<B: Backend>(
    make_backend: impl FnOnce() -> Result<B>,
    defaults: BinaryDefaults<B>,
) -> Result<()> {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Pretrain { .. }) {
        checkpoint_on_interrupt();
    }
    let backend = make_backend()?;
    run_as(&backend, cli, defaults)
}

/// Turns the first SIGINT or SIGTERM into a request to checkpoint and stop; the second
/// exits at once.
fn checkpoint_on_interrupt() {
    let installed = ctrlc::set_handler(|| {
        if STOP_REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!("second interrupt: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("interrupt: finishing the current step, then writing a checkpoint");
    });
    if let Err(e) = installed {
        eprintln!("warning: no interrupt handler ({e}); Ctrl-C will stop without a checkpoint");
    }
}

/// Runs a parsed command line on `backend` with the defaults of no binary in particular.
pub fn run<B: Backend>(backend: &B, cli: Cli) -> Result<()> {
    run_as(backend, cli, BinaryDefaults::default())
}

/// Runs a parsed command line on `backend` as the binary with `defaults` would.
pub fn run_as<B: Backend>(backend: &B, cli: Cli, defaults: BinaryDefaults<B>) -> Result<()> {
    match cli.command {
        Command::StepDump {
            model,
            correlation,
            predictor,
            seed,
            batch,
            lr,
            momentum,
            out,
        } => {
            let Some(mut config) = ModelConfig::preset(&model) else {
                bail!(
                    "unknown model {model:?}: expected micro, vit-tiny, vit-small, vit-base, vit-large or vit-huge"
                );
            };
            let Some(correlation) = Correlation::from_name(&correlation) else {
                bail!("unknown --correlation {correlation:?}: expected attention or conv");
            };
            let Some(predictor) = Predictor::from_name(&predictor) else {
                bail!("unknown --predictor {predictor:?}: expected conv1x1 or deconv");
            };
            config.decoder.correlation = correlation;
            config.decoder.predictor = predictor;
            config
                .validate()
                .map_err(|e| anyhow::anyhow!("--model {model}: {e}"))?;
            if !(1..=dump::MAX_BATCH).contains(&batch) {
                bail!(
                    "--batch must lie in 1..={} (a parity check needs a few contexts), got {batch}",
                    dump::MAX_BATCH
                );
            }
            if !(lr.is_finite() && lr >= 0.0) {
                bail!("--lr must be a finite non-negative number, got {lr}");
            }
            if !(0.0..=1.0).contains(&momentum) {
                bail!("--momentum must lie in [0, 1], got {momentum}");
            }
            let opts = DumpOptions {
                model: config,
                model_name: model,
                batch,
                seed,
                adamw: AdamW {
                    lr,
                    ..AdamW::default()
                },
                momentum,
            };
            dump::step_dump(backend, &opts, &out)?;
            println!(
                "step dump of {} (batch {batch}, seed {seed}) written to {}",
                opts.model_name,
                out.display()
            );
            Ok(())
        }
        Command::Pretrain {
            recipe,
            data,
            out,
            mut overrides,
            epochs,
            batch_size,
            resume,
            max_steps,
            skip_bad_files,
            no_progress,
            preflight,
            dist_timeout,
            render,
        } => {
            let world = World::from_env()?;
            if dist_timeout == 0 {
                bail!("--dist-timeout must be at least 1 second");
            }
            let preflight = match preflight {
                Switch::Auto => defaults.preflight,
                Switch::On => true,
                Switch::Off => false,
            };
            if preflight {
                crate::preflight::preflight(backend, crate::preflight::PREFLIGHT_CASES)?;
            }
            if let Some(e) = epochs {
                overrides.push(format!("optim.epochs={e}"));
            }
            if let Some(bs) = batch_size {
                overrides.push(format!("optim.batch_size={bs}"));
            }
            if let Some(d) = &data {
                overrides.push(format!(
                    "data.path={}",
                    toml_string(&d.display().to_string())
                ));
            }
            let recipe = Recipe::load(&recipe, &overrides)?;
            refuse_out_in_data(&out, Path::new(&recipe.data.path))?;
            let resume = match resume.as_deref() {
                None => Resume::No,
                Some("auto") => Resume::Auto,
                Some(p) => Resume::From(PathBuf::from(p)),
            };
            // The end-of-run figure passes over as many bad files as training may skip.
            let bad_files = skip_bad_files.unwrap_or(0);
            let skip = match skip_bad_files {
                None => SkipPolicy::Fail,
                Some(budget) => SkipPolicy::Skip {
                    budget,
                    log: Some(out.join(match world.rank {
                        0 => "skipped.jsonl".to_string(),
                        r => format!("skipped-rank{r}.jsonl"),
                    })),
                },
            };
            let shard = Shard {
                index: world.rank,
                count: world.size,
            };
            let device = match (render, defaults.renderer) {
                (RenderAt::Host, _) | (RenderAt::Auto, None) => None,
                (RenderAt::Auto | RenderAt::Device, Some(make)) => Some((backend, make)),
                (RenderAt::Device, None) => bail!(
                    "--render device: the {} backend renders no pairs on its device; use --render host",
                    backend.name()
                ),
            };
            let mut source = DataSource::open(&recipe, None, skip, shard, device)?;
            if world.is_root() {
                eprintln!(
                    "pretraining {} on {} images of {} with {} ({} micro-batches of {} per epoch{}, pairs rendered on the {})",
                    recipe.name,
                    source.images(),
                    recipe.data.path,
                    backend.name(),
                    Feed::<B>::batches_per_epoch(&source),
                    recipe.optim.batch_size,
                    match world.size {
                        1 => String::new(),
                        n => format!(" on each of {n} ranks"),
                    },
                    if source.renders_on_device() {
                        "device"
                    } else {
                        "host"
                    }
                );
            }
            let mut comm: Box<dyn Collective<B>> = match world.size {
                1 => Box::new(SingleProcess),
                _ => {
                    let fingerprint = format!(
                        "recipe {}, cim-train {}",
                        recipe.hash(),
                        env!("CARGO_PKG_VERSION")
                    );
                    let timeout = Duration::from_secs(dist_timeout);
                    (defaults.connect)(backend, &world, &fingerprint, timeout)?
                }
            };
            let opts = TrainOptions {
                run_dir: out.clone(),
                resume,
                max_steps,
                progress: !no_progress,
            };
            let summary =
                trainer::pretrain_distributed(backend, &recipe, &mut source, &opts, comm.as_mut())?;
            let outcome = if summary.interrupted {
                "stopped"
            } else {
                "finished"
            };
            let agreement = summary.replica_digest.as_ref().map_or(String::new(), |d| {
                format!(
                    "; all {} ranks hold the same model (digest {d})",
                    world.size
                )
            });
            if !world.is_root() {
                println!(
                    "rank {} {outcome} after {} steps{agreement}; rank 0 wrote the run folder",
                    world.rank, summary.steps
                );
                return Ok(());
            }
            let figure = out.join("figure5.png");
            let count = source.images().min(4);
            let preds = end_of_run_figure(backend, &recipe, &out, count, bad_files, &figure)
                .with_context(|| {
                    format!(
                        "drawing {} after training (the run's checkpoints and metrics are written)",
                        figure.display()
                    )
                })?;
            let c = recipe.model_config()?;
            println!(
                "{outcome} after {} steps: last loss {}, nonfinite_steps {}, skipped_files {}; checkpoint {}; metrics {}; loss curve {}; figure {} ({}){agreement}",
                summary.steps,
                if summary.last_loss.is_finite() {
                    format!("{:.4}", summary.last_loss)
                } else {
                    "- (no step taken)".to_string()
                },
                summary.nonfinite_steps,
                summary.skipped_files,
                summary
                    .checkpoint
                    .as_ref()
                    .map_or("-".into(), |p| p.display().to_string()),
                out.join("metrics.jsonl").display(),
                out.join("loss.png").display(),
                figure.display(),
                preds.iou_summary(c.context_size * c.context_size, c.exemplars)
            );
            Ok(())
        }
        Command::Visualize {
            checkpoint,
            images,
            out,
            count,
            seed,
        } => {
            if !(1..=visualize::MAX_ROWS).contains(&count) {
                bail!(
                    "--count must lie in 1..={} (rows of the figure), got {count}",
                    visualize::MAX_ROWS
                );
            }
            output::prepare_file(&out, "--out", &["png"])?;
            let (recipe, mut model, state, loc) = runs::open(backend, &checkpoint, count)?;
            let preds = visualize::predict(backend, &recipe, &mut model, &images, seed, 0)?;
            let c = model.config();
            visualize::figure5(&preds, c.context_size, c.exemplar_size, c.exemplars, &out)?;
            println!(
                "{} (step {}): {} over {} exemplars; figure {}",
                loc.checkpoint.display(),
                state.step,
                preds.iou_summary(c.context_size * c.context_size, c.exemplars),
                count * c.exemplars,
                out.display()
            );
            Ok(())
        }
        Command::Eval {
            checkpoint,
            data,
            encoder,
            image_size,
            train_per_class,
            test_per_class,
            knn_k,
            probe_epochs,
            baseline,
        } => {
            let (recipe, model, state, loc) = runs::open(backend, &checkpoint, 1)?;
            let size = image_size.unwrap_or(recipe.data.context_size);
            let (patch, max) = (
                model.config().encoder.patch,
                eval::max_image_size(model.config()),
            );
            if !(patch..=max).contains(&size) || !size.is_multiple_of(patch) {
                bail!(
                    "--image-size must be a multiple of the patch {patch} in {patch}..={max} (twice the encoder's native {}), got {size}",
                    max / 2
                );
            }
            let (mut train, mut test) = eval::labelled_sets(&data, size)?;
            if train_per_class > 0 {
                train = eval::balanced_subset(train, train_per_class, 1);
            }
            if test_per_class > 0 {
                test = eval::balanced_subset(test, test_per_class, 2);
            }
            if !(1..=train.len()).contains(&knn_k) {
                bail!(
                    "--knn-k must lie in 1..={} (the training images), got {knn_k}",
                    train.len()
                );
            }
            let mut rows = vec![(
                format!("{} step {}", loc.checkpoint.display(), state.step),
                model,
            )];
            if baseline {
                let init = cim_model::Cim::new(backend, recipe.model_config()?, 1, recipe.run.seed)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                rows.push(("random initialisation (same seed)".to_string(), init));
            }
            println!(
                "{} train / {} test images at {size}x{size}, {encoder:?} encoder",
                train.len(),
                test.len()
            );
            for (name, model) in &rows {
                let dim = model.config().encoder.dim;
                let ftr = eval::extract(backend, model, encoder.into(), &train, size, 64)?;
                let fte = eval::extract(backend, model, encoder.into(), &test, size, 64)?;
                let knn = eval::knn_top1(&ftr, &train.labels, &fte, &test.labels, dim, knn_k, 0.07);
                let probe = (probe_epochs > 0).then(|| {
                    eval::linear_probe_top1(
                        &ftr,
                        &train.labels,
                        &fte,
                        &test.labels,
                        dim,
                        probe_epochs,
                    )
                });
                println!(
                    "{name}: k-NN top-1 {:.2}%{}",
                    100.0 * knn,
                    probe.map_or(String::new(), |p| format!(
                        ", linear probe top-1 {:.2}%",
                        100.0 * p
                    ))
                );
            }
            Ok(())
        }
        Command::Selftest { cases, json } => {
            if cases == 0 {
                bail!("--cases must be at least 1 (0 would test nothing)");
            }
            if let Some(path) = &json {
                output::prepare_file(path, "--json", &[])?;
            }
            let checks = crate::preflight::run_checks(backend, cases);
            if let Some(path) = json {
                let doc = serde_json::json!({"backend": backend.name(), "cases": cases, "checks": checks});
                output::write_bytes(&path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
            }
            crate::preflight::verdict("selftest", backend.name(), &checks)?;
            println!(
                "selftest: {} passed all {} checks",
                backend.name(),
                checks.len()
            );
            Ok(())
        }
        Command::Bench {
            model,
            batch,
            warmup,
            steps,
            peak_tflops,
            json,
            breakdown,
        } => {
            let Some(config) = ModelConfig::preset(&model) else {
                bail!(
                    "unknown --model {model:?}: micro, vit-tiny, vit-small, vit-base, vit-large or vit-huge"
                );
            };
            if let Some(path) = &json {
                output::prepare_file(path, "--json", &[])?;
            }
            let report = crate::bench::step_bench(
                backend,
                &model,
                config,
                batch,
                (warmup, steps),
                peak_tflops,
                breakdown,
            )?;
            // The table first, so the summary stays the last line (logs show their tail).
            if let Some(table) = report.breakdown_table() {
                println!("{table}");
            }
            println!(
                "{} {} batch {}: {:.1} ms/step (best {:.1}), {:.1} images/s, {:.1} TFLOP/s{}",
                report.backend,
                report.model,
                report.batch,
                report.ms_per_step,
                report.ms_best,
                report.images_per_s,
                report.tflops,
                report
                    .mfu
                    .map_or(String::new(), |m| format!(", MFU {:.1}%", 100.0 * m))
            );
            if let Some(path) = json {
                output::write_bytes(&path, serde_json::to_string_pretty(&report)?.as_bytes())?;
            }
            Ok(())
        }
        Command::Pack {
            data,
            out,
            shorter_side,
            shard_mib,
            threads,
            jpeg_quality,
        } => {
            if shorter_side == 0 || shard_mib == 0 || threads == Some(0) {
                bail!("--shorter-side, --shard-mib and --threads must be at least 1");
            }
            let shard_bytes = shard_mib
                .checked_mul(1 << 20)
                .ok_or_else(|| anyhow::anyhow!("--shard-mib {shard_mib} is too large"))?;
            output::prepare_dir(&out, "--out")?;
            let dataset = cim_data::Dataset::open(&data)?;
            let defaults = cim_data::PackOptions::default();
            let summary = cim_data::pack(
                &dataset,
                &out,
                &cim_data::PackOptions {
                    shorter_side,
                    shard_bytes,
                    threads: threads.unwrap_or(defaults.threads),
                    encoding: jpeg_quality.map_or(cim_data::Encoding::Raw, |quality| {
                        cim_data::Encoding::Jpeg { quality }
                    }),
                },
            )?;
            for problem in &summary.skipped {
                eprintln!("left out {}: {}", problem.path.display(), problem.reason);
            }
            println!(
                "packed {} images of {} into {} shard(s), {:.1} MiB, in {}{}",
                summary.records,
                data.display(),
                summary.shards,
                summary.bytes as f64 / (1 << 20) as f64,
                out.display(),
                match summary.skipped.len() {
                    0 => String::new(),
                    n => format!("; {n} undecodable image(s) left out (listed above)"),
                }
            );
            Ok(())
        }
        Command::CheckData { path } => {
            let report = cim_data::check_data(&path);
            println!("{report}");
            if !report.is_clean() {
                bail!(
                    "{} has {} problem(s); see the list above",
                    path.display(),
                    report.problems.len()
                );
            }
            Ok(())
        }
        Command::Export {
            checkpoint,
            encoder,
            out,
        } => {
            output::prepare_dir(&out, "--out")?;
            let (_, model, state, loc) = runs::open(backend, &checkpoint, 1)?;
            let source = loc.checkpoint.display().to_string();
            export::export(backend, &model, encoder.into(), &source, &out)?;
            println!(
                "exported the {encoder:?} encoder of {} (step {}) to {}",
                loc.checkpoint.display(),
                state.step,
                out.display()
            );
            Ok(())
        }
        Command::Inspect { path } => {
            let files: Vec<PathBuf> = if path.is_file() {
                vec![path]
            } else {
                let loc = runs::locate(&path)?;
                // The validation export and resume apply, so inspect never vouches for a
                // state they would refuse.
                let state = checkpoint::read_state(&loc.checkpoint)?;
                println!(
                    "{}\n{}",
                    loc.checkpoint.display(),
                    serde_json::to_string_pretty(&state)?
                );
                ["model.safetensors", "optimizer.safetensors"]
                    .iter()
                    .map(|f| loc.checkpoint.join(f))
                    .collect()
            };
            for f in files {
                let rows = export::inspect_file(&f)?;
                println!("{} ({} tensors)", f.display(), rows.len());
                for r in rows {
                    println!("  {r}");
                }
            }
            Ok(())
        }
    }
}

/// Draws Figure 5 of the run in `out` (its newest checkpoint, on `count` of its training
/// images, passing over up to `bad_files` undecodable ones) into `figure`.
fn end_of_run_figure<B: Backend>(
    backend: &B,
    recipe: &Recipe,
    out: &Path,
    count: usize,
    bad_files: usize,
    figure: &Path,
) -> Result<visualize::Predictions> {
    let (_, mut model, _, _) = runs::open(backend, out, count)?;
    let data = Path::new(&recipe.data.path);
    let preds = visualize::predict(backend, recipe, &mut model, data, 1234, bad_files)?;
    let c = model.config();
    visualize::figure5(&preds, c.context_size, c.exemplar_size, c.exemplars, figure)?;
    Ok(preds)
}

/// Refuses a run folder that is the data folder or lies inside it: the run's PNGs would
/// join the dataset (the end-of-run figure and any later run read it again).
fn refuse_out_in_data(out: &Path, data: &Path) -> Result<()> {
    let Ok(data) = data.canonicalize() else {
        return Ok(()); // opening the data names the problem
    };
    // `out` need not exist yet: resolve its nearest existing ancestor.
    let mut probe = out.to_path_buf();
    let mut rest = Vec::new();
    let resolved = loop {
        if let Ok(p) = probe.canonicalize() {
            break rest.iter().rev().fold(p, |p: PathBuf, part| p.join(part));
        }
        match (probe.file_name(), probe.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                probe = if parent.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    parent.to_path_buf()
                };
            }
            _ => return Ok(()),
        }
    };
    if data.is_dir() && resolved.starts_with(&data) {
        bail!(
            "--out {} lies in the data folder {}: the run's images (loss.png, figure5.png) would join the dataset; choose an --out outside it",
            out.display(),
            data.display()
        );
    }
    Ok(())
}

/// `s` as a TOML string literal (for recipe overrides built from paths).
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}
