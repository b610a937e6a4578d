//! Real data for the trainer: cim-data's parallel loader behind the [`PairSource`]
//! interface, and the recipe's `[data]` section as cim-data's pair configuration.
//!
//! The loader produces an epoch in order from any starting batch, and every sample is a
//! function of (seed, epoch, index), so asking for micro-batch `i` of epoch `e` gives the
//! same data whether the epoch was read from its start or resumed at `i`. A rank of a
//! data-parallel run reads its [`Shard`] of every micro-batch.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use cim_data::{
    Dataset, Kernel, Loader, LoaderOptions, PairConfig, Photometric, Shard, SkipPolicy,
};

use crate::recipe::Recipe;
use crate::synthetic::HostBatch;
use crate::trainer::PairSource;

/// The S2 pair configuration of a recipe.
pub fn pair_config(recipe: &Recipe) -> PairConfig {
    let d = &recipe.data;
    PairConfig {
        input_size: d.input_size,
        context_size: d.context_size,
        exemplar_size: d.exemplar_size,
        exemplars: d.exemplars,
        context_min_scale: d.context_min_scale,
        context_ratio: (3.0 / 4.0, 4.0 / 3.0),
        exemplar: recipe.exemplar_params(),
        photometric: Photometric {
            color_jitter: d.color_jitter,
            grayscale: d.grayscale,
            blur: d.blur,
            solarize: d.solarize,
            flip: d.flip,
        },
        kernel: Kernel::Bicubic,
    }
}

/// Micro-batches from an image dataset through cim-data's loader.
pub struct DataSource {
    dataset: Arc<Dataset>,
    cfg: PairConfig,
    options: LoaderOptions,
    current: Option<(u64, u64, Loader)>,
    waited: Duration,
}

impl DataSource {
    /// Opens the recipe's dataset (or `path` when given) with the recipe's geometry;
    /// `skip` decides what happens to undecodable files; `shard` is the part of every
    /// micro-batch this process reads ([`Shard::WHOLE`] for a single process).
    pub fn open(
        recipe: &Recipe,
        path: Option<&Path>,
        skip: SkipPolicy,
        shard: Shard,
    ) -> Result<Self> {
        let path = path
            .map(Path::to_path_buf)
            .unwrap_or_else(|| recipe.data.path.clone().into());
        let dataset = Dataset::open(&path)
            .with_context(|| format!("opening the data at {}", path.display()))?;
        if dataset.is_empty() {
            bail!("{} holds no images", path.display());
        }
        let cfg = pair_config(recipe);
        cfg.validate()
            .map_err(|e| anyhow!("recipe {}: {e}", recipe.name))?;
        let options = LoaderOptions {
            batch_size: recipe.optim.batch_size,
            workers: recipe.data.workers,
            // Whole batches alive at once across all workers (a batch of the ImageNet
            // recipe is about 1.2 MB per sample): a few keep every worker busy.
            prefetch: 4,
            seed: recipe.run.seed,
            epoch: 0,
            shuffle: true,
            drop_last: true,
            skip,
            start_batch: 0,
            shard,
        };
        Ok(DataSource {
            dataset: Arc::new(dataset),
            cfg,
            options,
            current: None,
            waited: Duration::ZERO,
        })
    }

    /// Images in the dataset.
    pub fn images(&self) -> usize {
        self.dataset.len()
    }
}

impl PairSource for DataSource {
    fn batches_per_epoch(&self) -> u64 {
        self.options.batches(self.dataset.len()) as u64
    }

    fn batch(&mut self, epoch: u64, index: u64) -> Result<HostBatch> {
        let reusable = matches!(&self.current, Some((e, next, _)) if *e == epoch && *next == index);
        if !reusable {
            let opts = LoaderOptions {
                epoch,
                start_batch: index as usize,
                ..self.options.clone()
            };
            let loader =
                Loader::new(self.dataset.clone(), self.cfg, opts).map_err(|e| anyhow!("{e}"))?;
            self.current = Some((epoch, index, loader));
        }
        let (_, next, loader) = self.current.as_mut().expect("set above");
        let before = loader.waited();
        let batch = loader
            .next()
            .ok_or_else(|| anyhow!("the loader ended before batch {index} of epoch {epoch}"))?
            .map_err(|e| anyhow!("{e}"))?;
        self.waited += loader.waited().saturating_sub(before);
        *next += 1;
        Ok(HostBatch {
            context: batch.context,
            exemplars: batch.exemplars,
            maps: batch.maps,
        })
    }

    fn take_wait_seconds(&mut self) -> f64 {
        std::mem::take(&mut self.waited).as_secs_f64()
    }
}
