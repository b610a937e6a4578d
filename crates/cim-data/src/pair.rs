//! Exemplar-context pair generation, S2 exactly: the search view cut and resampled from the
//! decoded image, the context resampled from the search view, K rotated exemplars rendered
//! from the search view through cim-spec's geometry, their ground-truth maps, the
//! exemplar-only photometric transforms and the S1 normalisation into f32 NCHW.
//!
//! A pair is split into a [`PairPlan`] (every random draw, made from the image size alone)
//! and its rendering, so the draws can be inspected, replayed, or rendered elsewhere:
//! [`plan_view`] stops at the plan and the 8-bit search view (S2 item 2: only the search
//! view needs to leave the decoder), which is what a device renderer takes.
//!
//! RNG draw order for one sample (the contract; the golden tests of cim-spec pin the first
//! two steps): (1) `sample_search_view` (up to 10 tries of area and aspect, the offsets, the
//! flip); (2) `sample_exemplar` for exemplars 0..K in turn; (3) one 64-bit word per
//! exemplar, 0..K, seeding that exemplar's own photometric generator, which then draws as
//! [`PhotometricDraw::draw`] documents. The per-sample generator is
//! `CimRng::derive(seed, &[epoch, index])` (see [`crate::sample`]).

use cim_spec::geometry::{
    ExemplarParams, ExemplarRect, SearchViewBox, ground_truth_map_f32, sample_exemplar,
    sample_search_view,
};
use cim_spec::rng::CimRng;

use crate::error::DataError;
use crate::photometric::{Photometric, PhotometricDraw};
use crate::resample::{CropBox, Kernel, render_exemplar, resize, resize_crop};
use crate::rgb::RgbImage;

/// Per-channel mean of S1's normalisation (RGB, after scaling to [0, 1]).
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// Per-channel standard deviation of S1's normalisation.
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How pairs are generated (S2; defaults are the paper's ImageNet recipe, S9).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairConfig {
    /// S: side of the search view (canvas), 224.
    pub input_size: usize,
    /// m: side of the context and of the ground-truth maps, 160.
    pub context_size: usize,
    /// n: side of each exemplar, 64.
    pub exemplar_size: usize,
    /// K: exemplars per context, 6.
    pub exemplars: usize,
    /// Smallest area fraction of the search view's box, 0.5.
    pub context_min_scale: f64,
    /// Aspect-ratio (w / h) range of the search view's box, (3/4, 4/3).
    pub context_ratio: (f64, f64),
    /// Exemplar rectangle distribution (scale, ratio, rotation).
    pub exemplar: ExemplarParams,
    /// Which exemplar transforms are on.
    pub photometric: Photometric,
    /// Kernel of the exemplar renderer (the search view and context are always bicubic,
    /// as PIL's resize in the release).
    pub kernel: Kernel,
}

impl Default for PairConfig {
    fn default() -> Self {
        PairConfig {
            input_size: 224,
            context_size: 160,
            exemplar_size: 64,
            exemplars: 6,
            context_min_scale: 0.5,
            context_ratio: (3.0 / 4.0, 4.0 / 3.0),
            exemplar: ExemplarParams::default(),
            photometric: Photometric::default(),
            kernel: Kernel::Bicubic,
        }
    }
}

/// Largest side accepted for the canvas, context and exemplars: far beyond any recipe,
/// small enough that buffer sizes cannot overflow.
const MAX_SIDE: usize = 8192;

impl PairConfig {
    /// Checks sizes and ranges before any sample is drawn.
    pub fn validate(&self) -> Result<(), DataError> {
        for (name, v) in [
            ("input_size", self.input_size),
            ("context_size", self.context_size),
            ("exemplar_size", self.exemplar_size),
        ] {
            if v == 0 || v > MAX_SIDE {
                return Err(DataError::Config(format!(
                    "{name} = {v} is not in 1..={MAX_SIDE}"
                )));
            }
        }
        if self.exemplars > 1024 {
            return Err(DataError::Config(format!(
                "exemplars = {} is over 1024",
                self.exemplars
            )));
        }
        // Geometry validates its own ranges; draw once on a throwaway generator to ask it.
        let mut probe = CimRng::new(0);
        sample_search_view(&mut probe, 1, 1, self.context_min_scale, self.context_ratio)
            .map_err(|e| DataError::Config(format!("search view: {e}")))?;
        sample_exemplar(&mut probe, self.input_size as f64, &self.exemplar)
            .map_err(|e| DataError::Config(format!("exemplar: {e}")))?;
        Ok(())
    }
}

/// Every random decision of one pair.
#[derive(Clone, Debug, PartialEq)]
pub struct PairPlan {
    /// The search view's box in the source image and its flip.
    pub search: SearchViewBox,
    /// The exemplar rectangles on the S x S canvas.
    pub rects: Vec<ExemplarRect>,
    /// Each exemplar's photometric transforms (after the switches).
    pub photometric: Vec<PhotometricDraw>,
}

/// Draws a pair's plan for a `width` x `height` source image (draw order in the module
/// notes).
pub fn plan_pair(
    width: u32,
    height: u32,
    cfg: &PairConfig,
    rng: &mut CimRng,
) -> Result<PairPlan, DataError> {
    let search = sample_search_view(rng, width, height, cfg.context_min_scale, cfg.context_ratio)
        .map_err(|e| DataError::Config(format!("search view: {e}")))?;
    let canvas = cfg.input_size as f64;
    let rects = (0..cfg.exemplars)
        .map(|_| sample_exemplar(rng, canvas, &cfg.exemplar))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DataError::Config(format!("exemplar: {e}")))?;
    let photometric = (0..cfg.exemplars)
        .map(|_| {
            let mut own = CimRng::new(rng.next_word());
            PhotometricDraw::draw(&mut own, &cfg.photometric)
        })
        .collect();
    Ok(PairPlan {
        search,
        rects,
        photometric,
    })
}

/// One exemplar-context pair, normalised (S1) and laid out as the model takes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    /// The draws it was made from.
    pub plan: PairPlan,
    /// The S x S search view (8-bit, flipped if the plan says so): the canvas of the rects.
    pub search_view: RgbImage,
    /// The context, `[3, m, m]`, normalised.
    pub context: Vec<f32>,
    /// The exemplars, `[K, 3, n, n]`, normalised, photometric transforms applied.
    pub exemplars: Vec<f32>,
    /// The ground-truth maps, `[K, m, m]`, 1.0 inside the exemplar's footprint, else 0.0.
    pub maps: Vec<f32>,
}

/// A pair's plan and its search view: all the CPU computes when a device renders the rest
/// (S2 item 2), and the first half of [`make_pair`].
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedView {
    /// The draws of the pair.
    pub plan: PairPlan,
    /// The S x S search view (8-bit, flipped if the plan says so): the canvas of the rects.
    pub search_view: RgbImage,
}

/// Draws a pair's plan for a decoded image and cuts its search view (S2 items 1-2; draw
/// order in the module notes): what [`make_pair`] renders the rest of the pair from.
pub fn plan_view(
    img: &RgbImage,
    cfg: &PairConfig,
    rng: &mut CimRng,
) -> Result<PlannedView, DataError> {
    cfg.validate()?;
    let plan = plan_pair(img.width(), img.height(), cfg, rng)?;
    let search_view = search_view(img, &plan.search, cfg.input_size)?;
    Ok(PlannedView { plan, search_view })
}

/// Generates a pair from a decoded image (S2 items 2-7): [`plan_view`], then render.
pub fn make_pair(img: &RgbImage, cfg: &PairConfig, rng: &mut CimRng) -> Result<Pair, DataError> {
    render_planned(plan_view(img, cfg, rng)?, cfg)
}

/// The search view of S2 item 2: the box cut from `img`, resampled to `input_size` squared
/// (antialiased bicubic, as PIL) and mirrored when the box says so. Everything else of a
/// pair is rendered from it, by [`render_pair`] or, after an 8-bit upload, on a GPU.
pub fn search_view(
    img: &RgbImage,
    search: &SearchViewBox,
    input_size: usize,
) -> Result<RgbImage, DataError> {
    let crop = CropBox {
        x0: search.x0,
        y0: search.y0,
        w: search.w,
        h: search.h,
    };
    let side = u32::try_from(input_size)
        .map_err(|_| DataError::Config(format!("input_size = {input_size} is too large")))?;
    let mut view = resize_crop(img, crop, side, side, Kernel::Bicubic).ok_or_else(|| {
        DataError::Config(format!(
            "search box {crop:?} does not fit the {} x {} image (or input_size is 0)",
            img.width(),
            img.height()
        ))
    })?;
    if search.flip {
        view.flip_horizontal();
    }
    Ok(view)
}

/// Renders a planned pair from its source image.
pub fn render_pair(img: &RgbImage, plan: PairPlan, cfg: &PairConfig) -> Result<Pair, DataError> {
    cfg.validate()?;
    if plan.rects.len() != cfg.exemplars || plan.photometric.len() != cfg.exemplars {
        return Err(DataError::Config(format!(
            "plan has {} rects and {} photometric draws for {} exemplars",
            plan.rects.len(),
            plan.photometric.len(),
            cfg.exemplars
        )));
    }
    let search_view = search_view(img, &plan.search, cfg.input_size)?;
    render_planned(PlannedView { plan, search_view }, cfg)
}

/// Renders the context, exemplars and maps of a pair from its search view (S2 items 3-7);
/// the caller has validated `cfg` and the plan's lengths.
fn render_planned(view: PlannedView, cfg: &PairConfig) -> Result<Pair, DataError> {
    let PlannedView { plan, search_view } = view;
    let (s, m, n) = (cfg.input_size, cfg.context_size, cfg.exemplar_size);
    let context_rgb = if m == s {
        search_view.clone()
    } else {
        resize(&search_view, m as u32, m as u32, Kernel::Bicubic)
            .ok_or_else(|| DataError::Config("context resize".into()))?
    };
    let mut context = vec![0.0f32; 3 * m * m];
    normalize_u8(context_rgb.as_raw(), &mut context);

    let mut exemplars = vec![0.0f32; cfg.exemplars * 3 * n * n];
    let mut maps = vec![0.0f32; cfg.exemplars * m * m];
    let mut scratch = Vec::new();
    for (k, (rect, draw)) in plan.rects.iter().zip(&plan.photometric).enumerate() {
        let ex = &mut exemplars[k * 3 * n * n..(k + 1) * 3 * n * n];
        render_exemplar(&search_view, rect, n, cfg.kernel, ex);
        draw.apply(ex, n, &mut scratch);
        normalize_f32(ex);
        ground_truth_map_f32(rect, s as f64, m, &mut maps[k * m * m..(k + 1) * m * m])
            .map_err(|e| DataError::Config(format!("ground-truth map: {e}")))?;
    }
    Ok(Pair {
        plan,
        search_view,
        context,
        exemplars,
        maps,
    })
}

/// Interleaved 8-bit RGB to normalised planar f32 (S1), through a 256-entry table per
/// channel.
fn normalize_u8(rgb: &[u8], out: &mut [f32]) {
    let plane = rgb.len() / 3;
    let mut table = [[0.0f32; 256]; 3];
    for (c, t) in table.iter_mut().enumerate() {
        for (v, e) in t.iter_mut().enumerate() {
            *e = (v as f32 / 255.0 - MEAN[c]) / STD[c];
        }
    }
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        r[i] = table[0][usize::from(px[0])];
        g[i] = table[1][usize::from(px[1])];
        b[i] = table[2][usize::from(px[2])];
    }
}

/// Planar f32 in [0, 255] to normalised planar f32 (S1), in place.
fn normalize_f32(planar: &mut [f32]) {
    let plane = planar.len() / 3;
    for (c, p) in planar.chunks_exact_mut(plane).enumerate() {
        let (scale, shift) = (1.0 / (255.0 * STD[c]), MEAN[c] / STD[c]);
        for v in p.iter_mut() {
            *v = *v * scale - shift;
        }
    }
}

/// Undoes S1's normalisation of one value of channel `c`, back to [0, 255] (for pictures).
pub fn denormalize(v: f32, c: usize) -> f32 {
    ((v * STD[c] + MEAN[c]) * 255.0).clamp(0.0, 255.0)
}
