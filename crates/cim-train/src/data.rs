//! Real data for the trainer: cim-data's parallel loader behind the [`Feed`] interface,
//! and the recipe's `[data]` section as cim-data's pair configuration.
//!
//! The loader produces an epoch in order from any starting batch, and every sample is a
//! function of (seed, epoch, index), so asking for micro-batch `i` of epoch `e` gives the
//! same data whether the epoch was read from its start or resumed at `i`. A rank of a
//! data-parallel run reads its [`Shard`] of every micro-batch.
//!
//! Where the pairs are rendered (issue 6, S2 item 2): a backend that renders them on its
//! device hands the CLI a [`MakeRenderer`]; the source then reads cim-data's view loader,
//! so the CPU only decodes images and cuts 8-bit search views, and the backend's
//! [`DeviceRenderer`] writes contexts, exemplars and maps straight into the model's input
//! buffers. Otherwise whole pairs are rendered on the host and uploaded. Both read the same
//! plans and views, so they train on the same pairs up to the renderers' rounding.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use cim_data::{
    Batch as PairBatch, BatchLoader, Dataset, Kernel, LoaderBatch, LoaderOptions, PairConfig,
    Photometric, Shard, SkipPolicy, ViewBatch,
};
use cim_model::Batch;
use cim_spec::backend::Backend;

use crate::device::backend_err;
use crate::recipe::Recipe;
use crate::trainer::Feed;

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

/// Renders pairs on a backend's device (S2 items 3-7) from the search views and plans of
/// a [`ViewBatch`], into the model's input buffers in S1's layouts.
pub trait DeviceRenderer<B: Backend> {
    /// Renders `views` into `into` (which holds exactly `views.len()` contexts).
    fn render(&mut self, b: &B, views: &ViewBatch, into: &mut Batch<B>) -> Result<()>;
}

/// How a backend makes its [`DeviceRenderer`] for a pair configuration: the capability a
/// binary hands the CLI when its backend renders pairs itself.
pub type MakeRenderer<B> =
    for<'b> fn(&'b B, &PairConfig) -> Result<Box<dyn DeviceRenderer<B> + 'b>>;

/// An epoch's loader kept between calls, so that asking for the batch after the last one
/// continues it, and any other batch starts a loader there.
struct Cursor<T: LoaderBatch> {
    current: Option<(u64, u64, BatchLoader<T>)>,
}

impl<T: LoaderBatch> Cursor<T> {
    /// Batch `index` of `epoch`; adds the time spent waiting for it to `waited`.
    fn batch(
        &mut self,
        dataset: &Arc<Dataset>,
        cfg: PairConfig,
        options: &LoaderOptions,
        (epoch, index): (u64, u64),
        waited: &mut Duration,
    ) -> Result<T> {
        let reusable = matches!(&self.current, Some((e, next, _)) if *e == epoch && *next == index);
        if !reusable {
            let opts = LoaderOptions {
                epoch,
                start_batch: index as usize,
                ..options.clone()
            };
            let loader =
                BatchLoader::new(Arc::clone(dataset), cfg, opts).map_err(|e| anyhow!("{e}"))?;
            self.current = Some((epoch, index, loader));
        }
        let (_, next, loader) = self.current.as_mut().expect("set above");
        let before = loader.waited();
        let batch = loader
            .next()
            .ok_or_else(|| anyhow!("the loader ended before batch {index} of epoch {epoch}"))?
            .map_err(|e| anyhow!("{e}"))?;
        *waited += loader.waited().saturating_sub(before);
        *next += 1;
        Ok(batch)
    }
}

/// Where a [`DataSource`] renders its pairs.
enum Render<'b, B: Backend> {
    /// On the host: whole pairs, uploaded.
    Host(Cursor<PairBatch>),
    /// On the backend's device, from uploaded search views and plans.
    Device(Cursor<ViewBatch>, Box<dyn DeviceRenderer<B> + 'b>),
}

/// Micro-batches from an image dataset through cim-data's loader, rendered on the host or
/// by the backend (module notes).
pub struct DataSource<'b, B: Backend> {
    dataset: Arc<Dataset>,
    cfg: PairConfig,
    options: LoaderOptions,
    render: Render<'b, B>,
    waited: Duration,
    skipped_files: u64,
}

impl<'b, B: Backend> DataSource<'b, B> {
    /// Opens the recipe's dataset (or `path` when given) with the recipe's geometry;
    /// `skip` decides what happens to undecodable files; `shard` is the part of every
    /// micro-batch this process reads ([`Shard::WHOLE`] for a single process); with
    /// `device` the backend renders the pairs from search views (made by `device.1` on
    /// `device.0`), else the host renders them.
    pub fn open(
        recipe: &Recipe,
        path: Option<&Path>,
        skip: SkipPolicy,
        shard: Shard,
        device: Option<(&'b B, MakeRenderer<B>)>,
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
            // recipe is about 1.2 MB per sample, 0.15 MB as search views): a few keep
            // every worker busy.
            prefetch: 4,
            seed: recipe.run.seed,
            epoch: 0,
            shuffle: true,
            drop_last: true,
            skip,
            start_batch: 0,
            shard,
        };
        let render = match device {
            None => Render::Host(Cursor { current: None }),
            Some((b, make)) => Render::Device(
                Cursor { current: None },
                make(b, &cfg).with_context(|| {
                    format!("the device pair renderer of recipe {}", recipe.name)
                })?,
            ),
        };
        Ok(DataSource {
            dataset: Arc::new(dataset),
            cfg,
            options,
            render,
            waited: Duration::ZERO,
            skipped_files: 0,
        })
    }

    /// Images in the dataset.
    pub fn images(&self) -> usize {
        self.dataset.len()
    }

    /// Whether the backend renders the pairs (else the host does).
    pub fn renders_on_device(&self) -> bool {
        matches!(self.render, Render::Device(..))
    }
}

impl<B: Backend> Feed<B> for DataSource<'_, B> {
    fn batches_per_epoch(&self) -> u64 {
        self.options.batches(self.dataset.len()) as u64
    }

    fn fill(&mut self, b: &B, epoch: u64, index: u64, into: &mut Batch<B>) -> Result<()> {
        let (dataset, cfg, options) = (&self.dataset, self.cfg, &self.options);
        let at = (epoch, index);
        match &mut self.render {
            Render::Host(cursor) => {
                let pairs = cursor.batch(dataset, cfg, options, at, &mut self.waited)?;
                self.skipped_files += pairs.skipped.len() as u64;
                into.upload(b, &pairs.context, &pairs.exemplars, &pairs.maps)
                    .map_err(backend_err)
            }
            Render::Device(cursor, renderer) => {
                let views = cursor.batch(dataset, cfg, options, at, &mut self.waited)?;
                self.skipped_files += views.skipped.len() as u64;
                renderer.render(b, &views, into)
            }
        }
    }

    fn take_wait_seconds(&mut self) -> f64 {
        std::mem::take(&mut self.waited).as_secs_f64()
    }

    fn take_skipped_files(&mut self) -> u64 {
        std::mem::take(&mut self.skipped_files)
    }
}
