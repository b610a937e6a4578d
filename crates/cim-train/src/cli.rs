//! The command line shared by the `cim-cpu` and `cim-cuda` binaries (clap). Each binary
//! builds its backend and calls [`run`]; every subcommand is generic over it.

use std::path::PathBuf;

use anyhow::{Result, bail};
use cim_spec::backend::Backend;
use cim_spec::config::ModelConfig;
use cim_spec::schedule::AdamW;
use clap::{Parser, Subcommand};

use crate::dump::{self, DumpOptions};

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
}

/// Parses the process arguments and runs the subcommand on `backend`.
pub fn main<B: Backend>(backend: B) -> Result<()> {
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
    }
}
