//! The on-device data path (issue 6, S2): the CPU decodes each image, draws its plan
//! ([`cim_data::plan_pair`]) and cuts its 8-bit search view ([`cim_data::search_view`]); the
//! device renders every pixel from there (the context, the exemplars with their photometric
//! transforms, the ground-truth maps) straight into the model's input buffers. Per batch the
//! host uploads the views and one small record per exemplar: its affine map, axes and
//! filter widths (from cim-spec's geometry, in f64) and its transform draws.
//!
//! The kernels (`kernels.cu`) compute what cim-data's CPU renderer computes: contexts and
//! maps to the bit, exemplars up to f32 rounding (tests/render.rs).

use cim_data::{
    JitterOp, Kernel, MEAN, PairConfig, PairPlan, PhotometricDraw, RESIZE_PRECISION_BITS, STD,
    blur_radius, resize_coefficients,
};
use cim_spec::geometry::{ExemplarRect, exemplar_to_canvas, shrink_factors};

use super::kernels::render as k;
use super::{Scratch, record_bytes};
use crate::device::{Device, LaunchDims};
use crate::error::CudaError;
use crate::{Cuda, DeviceViewMut};

/// Threads of every render launch (a multiple of 32, as the exemplars' block sum needs).
const THREADS: u32 = 256;
/// Most blocks of the exemplar launch; its kernel loops over the exemplars beyond.
const MAX_BLOCKS: usize = 1 << 16;

/// Dynamic shared memory of one exemplar block: the image and the blur's scratch plane
/// (4 n^2 floats) and the weights of the batch's widest blur.
fn shared_bytes(n: usize, widest_blur: usize) -> usize {
    (4 * n * n + 2 * widest_blur + 1) * size_of::<f32>()
}

/// Where a batch of B pairs is rendered: the model's inputs, in S1's layouts.
pub struct PairOutputs<'a> {
    /// Contexts, `[B, 3, m, m]`, normalised.
    pub context: DeviceViewMut<'a>,
    /// Exemplars, `[B, K, 3, n, n]`, transforms applied, normalised.
    pub exemplars: DeviceViewMut<'a>,
    /// Ground-truth maps, `[B, K, m, m]`, 1.0 inside the exemplar's footprint, else 0.0.
    pub maps: DeviceViewMut<'a>,
}

/// Renders batches of exemplar-context pairs of one [`PairConfig`] on a backend's device
/// (module notes); made by [`Cuda::pair_renderer`]. Keeps its upload buffers between
/// batches.
pub struct PairRenderer<'a, D: Device> {
    cuda: &'a Cuda<D>,
    cfg: PairConfig,
    /// Pillow's coefficients of the context's resize (S to m, the same on both axes): per
    /// output index the first input index, the tap count and `ksize` weights.
    taps: D::Alloc,
    ksize: usize,
    views: Scratch<D>,
    records: Scratch<D>,
    host_records: Vec<k::ExemplarRecord>,
}

impl<D: Device> Cuda<D> {
    /// A renderer of `cfg`'s pairs on this backend's device. Errors name what cannot be
    /// rendered: an invalid config, or exemplars too large for one block's shared memory.
    pub fn pair_renderer(&self, cfg: &PairConfig) -> Result<PairRenderer<'_, D>, CudaError> {
        cfg.validate()
            .map_err(|e| CudaError::invalid(format!("pair renderer: {e}")))?;
        let n = cfg.exemplar_size;
        let max_shared = self.device.max_shared_bytes();
        if shared_bytes(n, 0) > max_shared {
            return Err(CudaError::invalid(format!(
                "pair renderer: exemplar_size = {n} needs {} bytes of shared memory per block, \
                 over the {max_shared} a block may use on this device",
                shared_bytes(n, 0)
            )));
        }
        let coeffs = resize_coefficients(cfg.input_size, cfg.context_size, Kernel::Bicubic);
        let mut table = Vec::with_capacity(cfg.context_size * (2 + coeffs.ksize));
        for (o, &(first, count)) in coeffs.bounds.iter().enumerate() {
            // Indices and counts are at most the validated sides (8192).
            table.extend([first as i32, count as i32]);
            table.extend_from_slice(&coeffs.weights[o * coeffs.ksize..(o + 1) * coeffs.ksize]);
        }
        let bytes: Vec<u8> = table.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let taps = self.device.alloc(bytes.len())?;
        // SAFETY: `taps` was just allocated with `bytes.len()` bytes.
        unsafe { self.device.upload(D::address(&taps), &bytes)? };
        Ok(PairRenderer {
            cuda: self,
            cfg: *cfg,
            taps,
            ksize: coeffs.ksize,
            views: Scratch::new(),
            records: Scratch::new(),
            host_records: Vec::new(),
        })
    }
}

impl<D: Device> PairRenderer<'_, D> {
    /// Renders B = `plans.len()` pairs into `out`. `views` holds their search views back to
    /// back, each S x S interleaved RGB8, row-major, already flipped as its plan's search
    /// box says ([`cim_data::search_view`]); of each plan only the exemplar rectangles and
    /// photometric draws are read. Asynchronous like every op: it returns once the work is
    /// queued, and `views` and `plans` may be reused at once.
    pub fn render(
        &mut self,
        views: &[u8],
        plans: &[PairPlan],
        out: PairOutputs<'_>,
    ) -> Result<(), CudaError> {
        let (s, m, n, per_view) = (
            self.cfg.input_size,
            self.cfg.context_size,
            self.cfg.exemplar_size,
            self.cfg.exemplars,
        );
        let batch = plans.len();
        let view_bytes = s * s * 3;
        if views.len() != batch * view_bytes {
            return Err(CudaError::invalid(format!(
                "pair renderer: {} bytes of search views for {batch} plans of {s} x {s} RGB \
                 views ({} bytes)",
                views.len(),
                batch * view_bytes
            )));
        }
        for (name, view, len) in [
            ("context", &out.context, batch * 3 * m * m),
            ("exemplars", &out.exemplars, batch * per_view * 3 * n * n),
            ("maps", &out.maps, batch * per_view * m * m),
        ] {
            if view.len() != len {
                return Err(CudaError::invalid(format!(
                    "pair renderer: the {name} output holds {} values, {len} needed for \
                     {batch} pairs",
                    view.len()
                )));
            }
        }
        if batch == 0 {
            return Ok(());
        }
        self.host_records.clear();
        let mut widest_blur = 0;
        for (b, plan) in plans.iter().enumerate() {
            if plan.rects.len() != per_view || plan.photometric.len() != per_view {
                return Err(CudaError::invalid(format!(
                    "pair renderer: plan {b} has {} rectangles and {} photometric draws for \
                     {per_view} exemplars",
                    plan.rects.len(),
                    plan.photometric.len()
                )));
            }
            for (e, (rect, draw)) in plan.rects.iter().zip(&plan.photometric).enumerate() {
                let record = exemplar_record(rect, draw, n).map_err(|why| {
                    CudaError::invalid(format!("pair renderer: plan {b}, exemplar {e}: {why}"))
                })?;
                widest_blur = widest_blur.max(record.blur_radius as usize);
                self.host_records.push(record);
            }
        }
        let shared = shared_bytes(n, widest_blur);
        let cuda = self.cuda;
        let max_shared = cuda.device.max_shared_bytes();
        if shared > max_shared {
            return Err(CudaError::invalid(format!(
                "pair renderer: a blur of radius {widest_blur} with exemplar_size = {n} needs \
                 {shared} bytes of shared memory per block, over the {max_shared} of this device"
            )));
        }
        let views_ptr = self.views.upload(&cuda.device, views)?;
        // Sides are at most 8192 (validated), K at most 1024.
        let (s32, m32, n32, k32) = (s as i32, m as i32, n as i32, per_view as i32);
        let context = k::RenderContextArgs {
            context: out.context.ptr(),
            views: views_ptr,
            taps: D::address(&self.taps),
            total: (batch * m * m) as i64,
            canvas: s32,
            size: m32,
            ksize: self.ksize as i32,
            precision: RESIZE_PRECISION_BITS as i32,
            mean_r: MEAN[0],
            mean_g: MEAN[1],
            mean_b: MEAN[2],
            std_r: STD[0],
            std_g: STD[1],
            std_b: STD[2],
        };
        let context_dims = LaunchDims::linear(batch * m * m, THREADS);
        cuda.launch(&k::RENDER_CONTEXT, context_dims, context)?;
        if per_view == 0 {
            return Ok(());
        }
        let records_ptr = self
            .records
            .upload(&cuda.device, record_bytes(&self.host_records))?;
        let maps = k::RenderMapsArgs {
            maps: out.maps.ptr(),
            records: records_ptr,
            canvas: s as f64,
            total: out.maps.len() as i64,
            size: m32,
        };
        cuda.launch(
            &k::RENDER_MAPS,
            LaunchDims::linear(out.maps.len(), THREADS),
            maps,
        )?;
        let count = self.host_records.len();
        let exemplars = k::RenderExemplarsArgs {
            exemplars: out.exemplars.ptr(),
            views: views_ptr,
            records: records_ptr,
            count: count as i64,
            per_view: k32,
            canvas: s32,
            size: n32,
            bicubic: i32::from(self.cfg.kernel == Kernel::Bicubic),
            mean_r: MEAN[0],
            mean_g: MEAN[1],
            mean_b: MEAN[2],
            std_r: STD[0],
            std_g: STD[1],
            std_b: STD[2],
        };
        let dims = LaunchDims::rows(count.min(MAX_BLOCKS), THREADS).with_shared(shared);
        cuda.launch(&k::RENDER_EXEMPLARS, dims, exemplars)
    }
}

/// The code of a jitter operation in a record's `jitter_order` (`JITTER_*` in kernels.cu).
fn jitter_code(op: JitterOp) -> i32 {
    match op {
        JitterOp::Brightness => 0,
        JitterOp::Contrast => 1,
        JitterOp::Saturation => 2,
        JitterOp::Hue => 3,
    }
}

/// The kernels' record of one exemplar of an n x n rendering, or why it cannot be rendered.
fn exemplar_record(
    rect: &ExemplarRect,
    draw: &PhotometricDraw,
    n: usize,
) -> Result<k::ExemplarRecord, String> {
    let sides = [rect.cx, rect.cy, rect.w, rect.h, rect.theta_deg];
    if !sides.iter().all(|v| v.is_finite()) || rect.w <= 0.0 || rect.h <= 0.0 {
        return Err(format!(
            "rectangle {rect:?} is not finite with positive sides"
        ));
    }
    let [[map_xx, map_xy, map_x0], [map_yx, map_yy, map_y0]] = exemplar_to_canvas(rect, n).a;
    let ((u_x, u_y), (v_x, v_y)) = rect.axes();
    let (sx, sy) = shrink_factors(rect, n);
    let mut record = k::ExemplarRecord {
        map_xx,
        map_xy,
        map_x0,
        map_yx,
        map_yy,
        map_y0,
        u_x,
        u_y,
        v_x,
        v_y,
        centre_x: rect.cx,
        centre_y: rect.cy,
        half_w: rect.w / 2.0,
        half_h: rect.h / 2.0,
        filter_u: sx.max(1.0) as f32,
        filter_v: sy.max(1.0) as f32,
        grayscale: draw.grayscale.into(),
        solarize: draw.solarize.into(),
        flip: draw.flip.into(),
        ..k::ExemplarRecord::default()
    };
    if let Some(j) = &draw.jitter {
        record.jitter = 1;
        record.jitter_order = (0..4).map(|k| jitter_code(j.order[k]) << (2 * k)).sum();
        record.brightness = j.brightness as f32;
        record.contrast = j.contrast as f32;
        record.saturation = j.saturation as f32;
        record.hue = j.hue as f32;
    }
    if let Some(sigma) = draw.blur_sigma {
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(format!("blur sigma {sigma} is not finite and positive"));
        }
        let radius = blur_radius(sigma);
        record.blur_radius = i32::try_from(radius)
            .ok()
            .filter(|&r| r < i32::MAX / 2)
            .ok_or_else(|| format!("blur sigma {sigma} is too large"))?;
        record.blur_sigma = sigma;
    }
    Ok(record)
}
