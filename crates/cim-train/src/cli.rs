//! The command line shared by the `cim-cpu` and `cim-cuda` binaries (clap). Each binary
//! builds its backend and calls [`run`]; every subcommand is generic over it.

use std::path::PathBuf;

use anyhow::{Result, bail};
use cim_model::EncoderChoice;
use cim_spec::backend::Backend;
use cim_spec::config::ModelConfig;
use cim_spec::schedule::AdamW;
use clap::{Parser, Subcommand, ValueEnum};

use crate::dump::{self, DumpOptions};
use crate::export;
use crate::runs;
use crate::trainer::STOP_REQUESTED;
use std::sync::atomic::Ordering;

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
        /// Seed of the initialisation and the synthetic batch.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Contexts in the micro-batch.
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
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// List the tensors (name, dtype, shape) of a safetensors file or of every file of a
    /// checkpoint folder, and its state.
    Inspect {
        /// A .safetensors file, a checkpoint folder or a run folder.
        path: PathBuf,
    },
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

/// Parses the process arguments and runs the subcommand on `backend`. SIGINT and
/// SIGTERM ask a running pre-training to checkpoint at the next step boundary and stop;
/// a second signal exits at once.
pub fn main<B: Backend>(backend: B) -> Result<()> {
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
    run(&backend, Cli::parse())
}

/// Runs a parsed command line on `backend`.
pub fn run<B: Backend>(backend: &B, cli: Cli) -> Result<()> {
    match cli.command {
        Command::StepDump {
            model,
            seed,
            batch,
            lr,
            momentum,
            out,
        } => {
            let Some(config) = ModelConfig::preset(&model) else {
                bail!(
                    "unknown model {model:?}: expected micro, vit-tiny, vit-small, vit-base, vit-large or vit-huge"
                );
            };
            if batch == 0 {
                bail!("--batch must be at least 1");
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
        Command::Export {
            checkpoint,
            encoder,
            out,
        } => {
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
                let state = std::fs::read_to_string(loc.checkpoint.join("state.json"))?;
                println!("{}\n{state}", loc.checkpoint.display());
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
