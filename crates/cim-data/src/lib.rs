//! The data side of CIM (issue 4): from image files to exemplar-context batches (S2).
//!
//! [`Dataset::open`] lists an ImageFolder, a folder, a file list or packed shards;
//! [`decode_rgb8`] turns JPEG, PNG and WebP bytes into RGB8 the way Pillow does;
//! [`make_pair`] / [`sample`] generate one exemplar-context pair exactly as S2 states, from
//! a generator derived from (seed, epoch, index); [`Loader`] builds batches on worker
//! threads, identical for any worker count, and [`ViewLoader`] the same batches as 8-bit
//! search views and plans for a device that renders the pairs itself; [`check_data`] reports every bad file before a
//! run; [`pack`] writes checksummed, memory-mapped shards; [`pair_sheet`] draws pairs so a
//! person can check the geometry.

mod check;
mod dataset;
mod decode;
mod error;
mod loader;
mod pair;
mod photometric;
mod resample;
mod rgb;
mod shards;
mod sheet;

pub use check::{ClassCount, Problem, Report, check_data};
pub use dataset::{Dataset, IMAGE_EXTENSIONS, Layout, has_image_extension};
pub use decode::{ImageFormat, MAX_PIXELS, decode_rgb8, read_rgb8};
pub use error::DataError;
pub use loader::{
    Batch, BatchLoader, Loader, LoaderBatch, LoaderOptions, Shard, SkipPolicy, SkipRecord, Slots,
    ViewBatch, ViewLoader, epoch_order, sample,
};
pub use pair::{
    MEAN, Pair, PairConfig, PairPlan, PlannedView, STD, denormalize, make_pair, plan_pair,
    plan_view, render_pair, search_view,
};
pub use photometric::{Jitter, JitterOp, Photometric, PhotometricDraw, blur_radius};
pub use resample::{
    CropBox, Kernel, RESIZE_PRECISION_BITS, ResizeCoefficients, render_exemplar, resize,
    resize_coefficients, resize_crop,
};
pub use rgb::RgbImage;
pub use shards::{Encoding, PackOptions, PackSummary, SHARD_INDEX, pack};
pub use sheet::pair_sheet;
