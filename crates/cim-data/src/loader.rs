//! The parallel loader: one epoch of batches in a (seed, epoch)-shuffled order, built by
//! worker threads, handed over in order through a bounded window of batches in flight.
//!
//! Workers claim single samples in epoch order, so all of them cooperate on the oldest
//! batches (a batch is ready soon after it starts, whatever its size) and at most `prefetch`
//! batches exist at once. The worker that completes a batch assembles it from its pairs in
//! slot order. Each sample is a pure function of (dataset, config, seed, epoch, index)
//! ([`sample`]), so the batches are identical whatever the worker count or thread timing. Bad files follow the [`SkipPolicy`]: fail with the file's error, or skip
//! it, replacing the sample deterministically (the next image in dataset order, with its
//! own generator) so batch shapes stay fixed; skips are counted, written as JSON lines in
//! batch order by the consuming thread, and end the epoch with an error past the budget.
//!
//! For data-parallel training each process reads one [`Shard`] of the epoch: the order is
//! cut into groups of `count` batches and shard `index` takes the `index`-th batch of every
//! group, so batch `b` of all shards together is exactly batch `b` of one loader with
//! `count` times the batch size.
//!
//! The loader comes in two modes over the same machinery ([`BatchLoader`], generic over
//! the [`LoaderBatch`] it builds): [`Loader`] renders whole pairs on the CPU ([`Batch`]);
//! [`ViewLoader`] stops at each sample's plan and 8-bit search view ([`ViewBatch`], S2 item
//! 2) for a device that renders the rest. A slot's generator is the same in both, so the
//! views and plans are exactly those the pairs of [`Loader`] are rendered from.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cim_spec::rng::CimRng;
use serde::Serialize;

use crate::dataset::Dataset;
use crate::error::DataError;
use crate::pair::{Pair, PairConfig, PairPlan, PlannedView, make_pair, plan_view};
use crate::rgb::RgbImage;

/// The generator stream of the epoch's shuffle: `derive(seed, &[SHUFFLE_STREAM, epoch])`,
/// a path no sample's `[epoch, index]` reaches while epochs stay below `u64::MAX`.
const SHUFFLE_STREAM: u64 = u64::MAX;

/// Generates the pair of image `index` for `epoch`: decode, then [`make_pair`] with
/// `CimRng::derive(seed, &[epoch, index])`.
pub fn sample(
    dataset: &Dataset,
    cfg: &PairConfig,
    seed: u64,
    epoch: u64,
    index: usize,
) -> Result<Pair, DataError> {
    let mut rng = CimRng::derive(seed, &[epoch, index as u64]);
    generate::<Batch>(dataset, cfg, index, &mut rng)
}

/// Decodes image `index` and generates its `T` sample with `rng`.
fn generate<T: LoaderBatch>(
    dataset: &Dataset,
    cfg: &PairConfig,
    index: usize,
    rng: &mut CimRng,
) -> Result<T::Sample, DataError> {
    T::generate(&dataset.load(index)?, cfg, rng)
}

/// The order images are visited in `epoch`: a Fisher-Yates shuffle of 0..len drawn from
/// `derive(seed, &[u64::MAX, epoch])` (`below(i + 1)` for i = len-1 down to 1), or the
/// identity without `shuffle`.
pub fn epoch_order(len: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        let mut rng = CimRng::derive(seed, &[SHUFFLE_STREAM, epoch]);
        for i in (1..len).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
    }
    order
}

/// The part of every epoch one of `count` data-parallel processes reads (see the module
/// documentation); [`Shard::WHOLE`] is the whole epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This process's part, below `count`.
    pub index: usize,
    /// Processes sharing the epoch.
    pub count: usize,
}

impl Shard {
    /// The whole epoch, for a single process.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// The epoch positions of this shard, in order: of every whole group of `count`
    /// batches of `batch_size` in `order`, the `index`-th batch.
    fn select(&self, order: &[usize], batch_size: usize) -> Vec<usize> {
        order
            .chunks_exact(batch_size * self.count)
            .flat_map(|group| &group[self.index * batch_size..(self.index + 1) * batch_size])
            .copied()
            .collect()
    }
}

/// What to do with a file that cannot be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipPolicy {
    /// Stop: the loader yields the file's error.
    Fail,
    /// Replace the sample, count the skip, and stop once more than `budget` files were
    /// skipped in the epoch. Each skip is appended to `log` as a JSON line.
    Skip {
        /// Skips allowed in one epoch.
        budget: usize,
        /// A JSON-lines file to append skips to.
        log: Option<PathBuf>,
    },
}

/// How the loader runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderOptions {
    /// Samples per batch.
    pub batch_size: usize,
    /// Worker threads (0 counts as 1).
    pub workers: usize,
    /// Batches that may exist ahead of the consumer, finished or in progress (at least 1).
    /// Workers share the samples of these batches, so 2 already keeps every worker busy;
    /// more absorbs slow files. Memory grows with it: a [`Batch`] holds
    /// B (3 m^2 + 3 K n^2 + K m^2) floats, 1.2 MB per sample for the ImageNet recipe; a
    /// [`ViewBatch`] holds B 3 S^2 bytes, 0.15 MB per sample.
    pub prefetch: usize,
    /// The run's seed.
    pub seed: u64,
    /// The epoch (drives the shuffle and every sample's generator).
    pub epoch: u64,
    /// Shuffle the order (else dataset order).
    pub shuffle: bool,
    /// Leave out the last batch when it would be short.
    pub drop_last: bool,
    /// What to do with bad files.
    pub skip: SkipPolicy,
    /// First batch to produce, for a run resumed mid-epoch: batches before it are neither
    /// built nor yielded, and those after it equal an uninterrupted epoch's.
    pub start_batch: usize,
    /// The part of the epoch to read (data-parallel training); a shard of more than one
    /// process needs `drop_last`, so that every process gets the same number of batches.
    pub shard: Shard,
}

impl LoaderOptions {
    /// Batches an epoch of `images` yields (in this shard).
    pub fn batches(&self, images: usize) -> usize {
        match self.batch_size * self.shard.count {
            0 => 0,
            group if self.drop_last => images / group,
            group => images.div_ceil(group),
        }
    }
}

impl Default for LoaderOptions {
    fn default() -> Self {
        LoaderOptions {
            batch_size: 64,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            prefetch: 4,
            seed: 0,
            epoch: 0,
            shuffle: true,
            drop_last: true,
            skip: SkipPolicy::Fail,
            start_batch: 0,
            shard: Shard::WHOLE,
        }
    }
}

/// A file skipped under [`SkipPolicy::Skip`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkipRecord {
    /// The bad file.
    pub path: PathBuf,
    /// Why it failed.
    pub error: String,
    /// The epoch.
    pub epoch: u64,
    /// Its dataset index.
    pub index: usize,
    /// The dataset index of the image used in its place.
    pub replacement: usize,
}

/// A batch in the layout the model takes (S1, NCHW, row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Contexts, `[B, 3, m, m]`, normalised.
    pub context: Vec<f32>,
    /// Exemplars, `[B, K, 3, n, n]`, normalised.
    pub exemplars: Vec<f32>,
    /// Ground-truth maps, `[B, K, m, m]`, 0.0 or 1.0.
    pub maps: Vec<f32>,
    /// The dataset index of each sample's slot (a skipped file keeps its slot's index; its
    /// replacement is in `skipped`).
    pub indices: Vec<usize>,
    /// The label of the image each sample was made from.
    pub labels: Vec<Option<usize>>,
    /// Files skipped while building this batch.
    pub skipped: Vec<SkipRecord>,
}

impl Batch {
    /// Samples in the batch.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether the batch holds no samples.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// A batch for a device that renders pairs itself (S2 item 2): each sample's 8-bit search
/// view and plan, in the layout cim-cuda's pair renderer takes.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewBatch {
    /// Search views back to back, `[B, S, S, 3]`: interleaved RGB8, row-major, each already
    /// flipped as its plan's search box says ([`crate::search_view`]).
    pub views: Vec<u8>,
    /// Each sample's plan.
    pub plans: Vec<PairPlan>,
    /// As [`Batch::indices`].
    pub indices: Vec<usize>,
    /// As [`Batch::labels`].
    pub labels: Vec<Option<usize>>,
    /// As [`Batch::skipped`].
    pub skipped: Vec<SkipRecord>,
}

impl ViewBatch {
    /// Samples in the batch.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether the batch holds no samples.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// The bookkeeping of a batch's slots, in slot order, that every [`LoaderBatch`] carries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Slots {
    /// The dataset index of each slot.
    pub indices: Vec<usize>,
    /// The label of the image each slot's sample was made from.
    pub labels: Vec<Option<usize>>,
    /// Files skipped while filling the slots.
    pub skipped: Vec<SkipRecord>,
}

/// What a [`BatchLoader`] builds: the sample each slot generates and how a batch lays them
/// out.
pub trait LoaderBatch: Sized + Send + 'static {
    /// One slot's sample.
    type Sample: Send + 'static;
    /// The sample of a decoded image, drawn from `rng` (S2).
    fn generate(
        img: &RgbImage,
        cfg: &PairConfig,
        rng: &mut CimRng,
    ) -> Result<Self::Sample, DataError>;
    /// The batch of `samples` (in slot order) and their slots' bookkeeping.
    fn assemble(samples: Vec<Self::Sample>, slots: Slots) -> Self;
    /// Files skipped while building the batch.
    fn skipped(&self) -> &[SkipRecord];
}

impl LoaderBatch for Batch {
    type Sample = Pair;

    fn generate(img: &RgbImage, cfg: &PairConfig, rng: &mut CimRng) -> Result<Pair, DataError> {
        make_pair(img, cfg, rng)
    }

    fn assemble(pairs: Vec<Pair>, slots: Slots) -> Batch {
        let Slots {
            indices,
            labels,
            skipped,
        } = slots;
        Batch {
            context: pairs
                .iter()
                .flat_map(|p| p.context.iter().copied())
                .collect(),
            exemplars: pairs
                .iter()
                .flat_map(|p| p.exemplars.iter().copied())
                .collect(),
            maps: pairs.iter().flat_map(|p| p.maps.iter().copied()).collect(),
            indices,
            labels,
            skipped,
        }
    }

    fn skipped(&self) -> &[SkipRecord] {
        &self.skipped
    }
}

impl LoaderBatch for ViewBatch {
    type Sample = PlannedView;

    fn generate(
        img: &RgbImage,
        cfg: &PairConfig,
        rng: &mut CimRng,
    ) -> Result<PlannedView, DataError> {
        plan_view(img, cfg, rng)
    }

    fn assemble(samples: Vec<PlannedView>, slots: Slots) -> ViewBatch {
        let Slots {
            indices,
            labels,
            skipped,
        } = slots;
        ViewBatch {
            views: samples
                .iter()
                .flat_map(|s| s.search_view.as_raw().iter().copied())
                .collect(),
            plans: samples.into_iter().map(|s| s.plan).collect(),
            indices,
            labels,
            skipped,
        }
    }

    fn skipped(&self) -> &[SkipRecord] {
        &self.skipped
    }
}

struct Job {
    dataset: Arc<Dataset>,
    cfg: PairConfig,
    order: Vec<usize>,
    opts: LoaderOptions,
}

impl Job {
    fn batch_range(&self, b: usize) -> std::ops::Range<usize> {
        let start = b * self.opts.batch_size;
        start..(start + self.opts.batch_size).min(self.order.len())
    }

    /// One slot: the sample of `index`, or under the skip policy the first image after it
    /// that decodes, generated from `derive(seed, &[epoch, index, attempt])`.
    fn slot<T: LoaderBatch>(
        &self,
        index: usize,
        skipped: &mut Vec<SkipRecord>,
    ) -> Result<T::Sample, DataError> {
        let (seed, epoch) = (self.opts.seed, self.opts.epoch);
        let first_record = skipped.len();
        let mut rng = CimRng::derive(seed, &[epoch, index as u64]);
        let first = generate::<T>(&self.dataset, &self.cfg, index, &mut rng);
        let budget = match (&self.opts.skip, first) {
            (_, Ok(sample)) => return Ok(sample),
            (SkipPolicy::Fail, Err(e)) => return Err(e),
            (SkipPolicy::Skip { budget, .. }, Err(e)) => {
                skipped.push(self.record(index, index, &e));
                *budget
            }
        };
        let len = self.dataset.len();
        // More attempts than the budget would exceed it anyway.
        for attempt in 1..=budget.min(len.saturating_sub(1)) {
            let j = (index + attempt) % len;
            let mut rng = CimRng::derive(seed, &[epoch, index as u64, attempt as u64]);
            match generate::<T>(&self.dataset, &self.cfg, j, &mut rng) {
                Ok(sample) => {
                    for r in &mut skipped[first_record..] {
                        r.replacement = j;
                    }
                    return Ok(sample);
                }
                Err(e) => skipped.push(self.record(j, j, &e)),
            }
        }
        let last = skipped.last().cloned();
        Err(DataError::SkipBudget {
            skipped: skipped.len(),
            budget,
            last_path: last.as_ref().map(|r| r.path.clone()).unwrap_or_default(),
            last_error: last.map(|r| r.error).unwrap_or_default(),
        })
    }

    fn record(&self, index: usize, replacement: usize, e: &DataError) -> SkipRecord {
        SkipRecord {
            path: self
                .dataset
                .path(index)
                .map(PathBuf::from)
                .unwrap_or_default(),
            error: e.to_string(),
            epoch: self.opts.epoch,
            index,
            replacement,
        }
    }

    /// Assembles batch `b` from its slots' samples, in slot order.
    fn assemble<T: LoaderBatch>(
        &self,
        b: usize,
        slots: Vec<SlotResult<T>>,
    ) -> Result<T, DataError> {
        let range = self.batch_range(b);
        let mut samples = Vec::with_capacity(range.len());
        let mut book = Slots {
            indices: Vec::with_capacity(range.len()),
            labels: Vec::with_capacity(range.len()),
            skipped: Vec::new(),
        };
        for (&index, slot) in self.order[range].iter().zip(slots) {
            let (sample, skipped) = slot?;
            let source = skipped.last().map_or(index, |r| r.replacement);
            samples.push(sample);
            book.indices.push(index);
            book.labels.push(self.dataset.label(source));
            book.skipped.extend(skipped);
        }
        Ok(T::assemble(samples, book))
    }
}

/// One slot's outcome: its sample and the files skipped on the way, or the error.
type SlotResult<T> = Result<(<T as LoaderBatch>::Sample, Vec<SkipRecord>), DataError>;

/// A batch whose slots are being generated.
struct Partial<T: LoaderBatch> {
    slots: Vec<Option<SlotResult<T>>>,
    filled: usize,
}

struct State<T: LoaderBatch> {
    /// Next epoch position to claim.
    next_claim: usize,
    /// Batches handed to the consumer (counted from batch 0, so it starts at start_batch).
    delivered: usize,
    partial: BTreeMap<usize, Partial<T>>,
    ready: BTreeMap<usize, Result<T, DataError>>,
    stop: bool,
}

struct Shared<T: LoaderBatch> {
    job: Job,
    /// Batches in the epoch.
    end: usize,
    /// Positions in the epoch's batches (the last batch may be short).
    end_position: usize,
    window: usize,
    state: Mutex<State<T>>,
    work: Condvar,
    done: Condvar,
}

impl<T: LoaderBatch> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while the lock is held (values are only moved), so a poisoned
        // lock still holds consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn worker<T: LoaderBatch>(shared: Arc<Shared<T>>) {
    let bsz = shared.job.opts.batch_size;
    loop {
        let position = {
            let mut st = shared.lock();
            loop {
                if st.stop || st.next_claim >= shared.end_position {
                    return;
                }
                if st.next_claim / bsz < st.delivered + shared.window {
                    break;
                }
                st = shared.work.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.next_claim += 1;
            st.next_claim - 1
        };
        let index = shared.job.order[position];
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut skipped = Vec::new();
            shared
                .job
                .slot::<T>(index, &mut skipped)
                .map(|sample| (sample, skipped))
        }))
        .unwrap_or_else(|_| {
            Err(DataError::Config(format!(
                "a loader worker panicked generating image {index}"
            )))
        });
        let (b, offset) = (position / bsz, position % bsz);
        let complete = {
            let mut st = shared.lock();
            let len = shared.job.batch_range(b).len();
            let partial = st.partial.entry(b).or_insert_with(|| Partial {
                slots: (0..len).map(|_| None).collect(),
                filled: 0,
            });
            partial.slots[offset] = Some(result);
            partial.filled += 1;
            if partial.filled == len {
                st.partial.remove(&b)
            } else {
                None
            }
        };
        if let Some(done) = complete {
            // Assembly copies the whole batch, so it happens outside the lock.
            let slots = done.slots.into_iter().flatten().collect();
            let batch = shared.job.assemble(b, slots);
            shared.lock().ready.insert(b, batch);
            shared.done.notify_all();
        }
    }
}

/// One epoch of batches: an iterator of `Result<T, DataError>` that ends after the last
/// batch or after the first error.
pub struct BatchLoader<T: LoaderBatch> {
    shared: Arc<Shared<T>>,
    handles: Vec<JoinHandle<()>>,
    next: usize,
    finished: bool,
    budget: Option<usize>,
    skipped: usize,
    log: Option<(PathBuf, BufWriter<File>)>,
    started: Option<Instant>,
    waited: Duration,
}

/// The loader of whole pairs rendered on the CPU.
pub type Loader = BatchLoader<Batch>;

/// The loader of search views and plans, for a device that renders the pairs.
pub type ViewLoader = BatchLoader<ViewBatch>;

impl<T: LoaderBatch> BatchLoader<T> {
    /// Starts the workers for one epoch. Errors: a bad pair configuration, a zero batch
    /// size, a shard outside its count or of several processes without `drop_last`, no full
    /// batch with `drop_last`, `start_batch` past the end, an unopenable log.
    pub fn new(
        dataset: Arc<Dataset>,
        cfg: PairConfig,
        opts: LoaderOptions,
    ) -> Result<Self, DataError> {
        cfg.validate()?;
        let n = dataset.len();
        if opts.batch_size == 0 {
            return Err(DataError::Config("batch_size must be positive".into()));
        }
        let shard = opts.shard;
        if shard.count == 0 || shard.index >= shard.count {
            return Err(DataError::Config(format!(
                "shard {} of {} does not exist",
                shard.index, shard.count
            )));
        }
        if shard.count > 1 && !opts.drop_last {
            return Err(DataError::Config(format!(
                "a shard of {} processes needs drop_last, so that all of them get the same batches",
                shard.count
            )));
        }
        let batches = opts.batches(n);
        if batches == 0 {
            return Err(DataError::Config(format!(
                "{n} images make no full batch of {} for each of {} process(es)",
                opts.batch_size, shard.count
            )));
        }
        if opts.start_batch > batches {
            return Err(DataError::Config(format!(
                "start_batch {} is past the epoch's {batches} batches",
                opts.start_batch
            )));
        }
        let (budget, log) = match &opts.skip {
            SkipPolicy::Fail => (None, None),
            SkipPolicy::Skip { budget, log } => {
                let log = match log {
                    Some(path) => {
                        let f = OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(path)
                            .map_err(|e| DataError::write(path, e))?;
                        Some((path.clone(), BufWriter::new(f)))
                    }
                    None => None,
                };
                (Some(*budget), log)
            }
        };
        let workers = opts.workers.max(1);
        let window = opts.prefetch.max(1);
        let mut order = epoch_order(n, opts.seed, opts.epoch, opts.shuffle);
        if shard != Shard::WHOLE {
            order = shard.select(&order, opts.batch_size);
        }
        let end_position = if opts.drop_last {
            batches * opts.batch_size
        } else {
            n
        };
        let (start, batch_size) = (opts.start_batch, opts.batch_size);
        let shared = Arc::new(Shared {
            job: Job {
                dataset,
                cfg,
                order,
                opts,
            },
            end: batches,
            end_position,
            window,
            state: Mutex::new(State {
                next_claim: start * batch_size,
                delivered: start,
                partial: BTreeMap::new(),
                ready: BTreeMap::new(),
                stop: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
        });
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let s = Arc::clone(&shared);
            let h = std::thread::Builder::new()
                .name(format!("cim-data-{i}"))
                .spawn(move || worker::<T>(s))
                .map_err(|e| DataError::Config(format!("cannot start a loader thread: {e}")))?;
            handles.push(h);
        }
        Ok(BatchLoader {
            shared,
            handles,
            next: start,
            finished: false,
            budget,
            skipped: 0,
            log,
            started: None,
            waited: Duration::ZERO,
        })
    }

    /// Batches in the whole epoch (those before `start_batch` included).
    pub fn batches(&self) -> usize {
        self.shared.end
    }

    /// Files skipped so far in this epoch.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Time the consumer spent blocked in `next` waiting for a batch.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The share of wall time since the first `next` call that the consumer spent waiting
    /// for data: near 0 when the loader keeps up, near 1 when training is data-bound.
    pub fn wait_share(&self) -> f64 {
        match self.started {
            Some(t) => {
                let total = t.elapsed().as_secs_f64();
                if total > 0.0 {
                    (self.waited.as_secs_f64() / total).min(1.0)
                } else {
                    0.0
                }
            }
            None => 0.0,
        }
    }

    fn stop(&mut self) {
        self.finished = true;
        self.shared.lock().stop = true;
        self.shared.work.notify_all();
    }

    /// Counts and logs a batch's skips; an error once past the budget.
    fn account(&mut self, batch: &T) -> Result<(), DataError> {
        let Some(budget) = self.budget else {
            return Ok(());
        };
        if let Some((path, log)) = &mut self.log {
            for r in batch.skipped() {
                let line =
                    serde_json::to_string(r).map_err(|e| DataError::Config(e.to_string()))?;
                writeln!(log, "{line}").map_err(|e| DataError::write(path, e))?;
            }
            log.flush().map_err(|e| DataError::write(path, e))?;
        }
        self.skipped += batch.skipped().len();
        if self.skipped > budget {
            let last = batch.skipped().last();
            return Err(DataError::SkipBudget {
                skipped: self.skipped,
                budget,
                last_path: last.map(|r| r.path.clone()).unwrap_or_default(),
                last_error: last.map(|r| r.error.clone()).unwrap_or_default(),
            });
        }
        Ok(())
    }
}

impl<T: LoaderBatch> Iterator for BatchLoader<T> {
    type Item = Result<T, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished || self.next >= self.shared.end {
            return None;
        }
        let entered = Instant::now();
        self.started.get_or_insert(entered);
        let result = {
            let mut st = self.shared.lock();
            loop {
                if let Some(r) = st.ready.remove(&self.next) {
                    st.delivered = self.next + 1;
                    break r;
                }
                st = self.shared.done.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        };
        self.waited += entered.elapsed();
        self.shared.work.notify_all();
        self.next += 1;
        let result = result.and_then(|batch| self.account(&batch).map(|()| batch));
        if result.is_err() {
            self.stop();
        }
        Some(result)
    }
}

impl<T: LoaderBatch> Drop for BatchLoader<T> {
    fn drop(&mut self) {
        self.stop();
        for h in self.handles.drain(..) {
            // A worker's panic was already turned into an error batch.
            let _ = h.join();
        }
    }
}
