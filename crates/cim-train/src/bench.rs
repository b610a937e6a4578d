//! `bench`: the full CIM training step (online encoder forward and backward on the K
//! exemplars, target encoder on the context, decoder forward and backward, gradient norm,
//! AdamW, EMA) timed on synthetic inputs after warm-up, as images per second and, given
//! the device's peak, model FLOPs utilisation (MFU).
//!
//! FLOPs are counted from the configuration (2 per multiply-add, matrix products and
//! attention only; element-wise work is not counted, as in the usual MFU convention): the
//! trainable parts count three times their forward (forward, input gradients, weight
//! gradients), the frozen patch embedding and the target encoder once. For ViT-B/16 at
//! the paper's shapes this gives the ~80 GFLOP per image of GPU.md (online 52.3, target
//! 17.7, decoder 10.3), which a test pins.
//!
//! With `--breakdown`, one more step runs after the timed ones with every op timed on its
//! own ([`crate::profile`]): the table says which ops the step's time goes to, next to
//! the unprofiled step time, since synchronising around every op inflates the sum.

use std::time::Instant;

use anyhow::{Result, anyhow};
use cim_model::{Batch, Cim};
use cim_spec::backend::Backend;
use cim_spec::config::{Correlation, EncoderConfig, ModelConfig};
use cim_spec::schedule::AdamW;
use serde::Serialize;

use crate::device::backend_err;
use crate::profile::{OpTime, Profiled};
use crate::synthetic;

/// Forward FLOPs of one encoder pass over `tokens` tokens (class token included), with
/// the patch embedding separate because it may be frozen.
fn encoder_forward(e: &EncoderConfig, tokens: usize) -> (f64, f64) {
    let (t, d) = (tokens as f64, e.dim as f64);
    let hidden = (e.mlp_ratio * e.dim) as f64;
    let per_block = 2.0 * t * d * (3.0 * d + d + 2.0 * hidden) + 2.0 * 2.0 * t * t * d;
    let patch_embed = 2.0 * (t - 1.0) * (3 * e.patch * e.patch) as f64 * d;
    (e.depth as f64 * per_block, patch_embed)
}

/// FLOPs of one training step per context image, by part.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct StepFlops {
    /// Online encoder on the K exemplars, forward and backward.
    pub online: f64,
    /// Target encoder on the context, forward.
    pub target: f64,
    /// Decoder (projections, correlation blocks, predictor), forward and backward.
    pub decoder: f64,
}

impl StepFlops {
    /// The step's FLOPs per context image, from the model configuration.
    pub fn of(c: &ModelConfig) -> Self {
        let e = &c.encoder;
        let k = c.exemplars as f64;
        let ex_tokens = c.exemplar_grid() * c.exemplar_grid() + 1;
        let ctx_tokens = c.context_grid() * c.context_grid() + 1;
        let (ex_blocks, ex_patch) = encoder_forward(e, ex_tokens);
        let patch_factor = if e.frozen_patch_embed { 1.0 } else { 3.0 };
        let online = k * (3.0 * ex_blocks + patch_factor * ex_patch);
        let (ctx_blocks, ctx_patch) = encoder_forward(e, ctx_tokens);
        let target = ctx_blocks + ctx_patch;

        let w = c.decoder.width as f64;
        let (tc, te, d) = (ctx_tokens as f64, ex_tokens as f64, e.dim as f64);
        let hidden = (e.mlp_ratio * c.decoder.width) as f64;
        // Context tokens projected once per context, exemplar tokens once per exemplar.
        let projections = 2.0 * tc * d * w + k * 2.0 * te * d * w;
        let per_block = match c.decoder.correlation {
            // q and output projections over the context stream, fused kv over the
            // exemplar tokens, scores and weighted sum, the MLP.
            Correlation::Attention => {
                2.0 * tc * w * 2.0 * w
                    + 2.0 * te * w * 2.0 * w
                    + 2.0 * 2.0 * tc * te * w
                    + 2.0 * tc * w * 2.0 * hidden
            }
            // Each context patch token correlates with every exemplar patch token of its
            // channel (depthwise, 'same' padding), then the MLP.
            Correlation::Conv => 2.0 * (tc - 1.0) * (te - 1.0) * w + 2.0 * tc * w * 2.0 * hidden,
        };
        let channels = c.loss.channels() as f64;
        let predictor = 2.0 * (tc - 1.0) * w * channels;
        let decoder = 3.0 * (projections + k * (c.decoder.depth as f64 * per_block + predictor));
        StepFlops {
            online,
            target,
            decoder,
        }
    }

    /// All parts together.
    pub fn total(&self) -> f64 {
        self.online + self.target + self.decoder
    }
}

/// What `bench` measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// The backend's name.
    pub backend: String,
    /// The model preset.
    pub model: String,
    /// Context images per step.
    pub batch: usize,
    /// Timed steps (after warm-up).
    pub steps: usize,
    /// Mean wall time of a step in milliseconds.
    pub ms_per_step: f64,
    /// Fastest step in milliseconds.
    pub ms_best: f64,
    /// Context images per second (each with its K exemplars).
    pub images_per_s: f64,
    /// Model FLOPs of one step per image.
    pub flops_per_image: StepFlops,
    /// Achieved TFLOP/s.
    pub tflops: f64,
    /// `tflops / peak`, when a peak was given.
    pub mfu: Option<f64>,
    /// One extra step op by op, when asked for; its fields sit at the top level of the
    /// JSON report.
    #[serde(flatten)]
    pub profile: Option<StepProfile>,
}

/// One extra training step with every op timed on its own.
#[derive(Clone, Debug, Serialize)]
pub struct StepProfile {
    /// Wall time of the profiled step in milliseconds.
    pub profiled_step_ms: f64,
    /// Its ops' times added up, in milliseconds. Each op is synchronised before and after,
    /// so on an asynchronous device this exceeds the unprofiled `ms_per_step` by about a
    /// launch latency per op.
    pub profiled_ops_ms: f64,
    /// Per op, most time first; `share` is of `profiled_ops_ms`.
    pub breakdown: Vec<OpTime>,
    /// The GEMMs per shape class, most time first.
    pub gemm_shapes: Vec<OpTime>,
}

/// GEMM shape classes printed (the JSON report has all).
const SHAPES_SHOWN: usize = 15;

impl BenchReport {
    /// The profiled step as text tables (per op, then the costliest GEMM shapes), when
    /// one was taken.
    pub fn breakdown_table(&self) -> Option<String> {
        let p = self.profile.as_ref()?;
        let shown = p.gemm_shapes.len().min(SHAPES_SHOWN);
        Some(format!(
            "one profiled step: its ops took {:.1} ms of its {:.1} ms; an unprofiled step \
             takes {:.1} ms\n(the profile synchronises before and after every op, which adds \
             a launch latency to each)\n{}\nGEMM shape classes (N/T: A, B stored as is or \
             transposed), {shown} of {}:\n{}",
            p.profiled_ops_ms,
            p.profiled_step_ms,
            self.ms_per_step,
            table(&p.breakdown),
            p.gemm_shapes.len(),
            table(&p.gemm_shapes[..shown])
        ))
    }
}

/// `rows` as aligned columns: op, calls, total ms, share, TFLOP/s.
fn table(rows: &[OpTime]) -> String {
    let width = rows.iter().map(|r| r.op.len()).max().unwrap_or(0).max(2);
    let line = |op: &str, calls: &str, ms: &str, share: &str, tflops: &str| {
        let cells = format!("{op:<width$}  {calls:>6}  {ms:>10}  {share:>6}  {tflops:>8}");
        cells.trim_end().to_string() + "\n"
    };
    let mut out = line("op", "calls", "total ms", "share", "TFLOP/s");
    for r in rows {
        out += &line(
            &r.op,
            &r.calls.to_string(),
            &format!("{:.3}", r.ms),
            &format!("{:.1}%", 100.0 * r.share),
            &r.tflops.map_or(String::new(), |t| format!("{t:.2}")),
        );
    }
    out
}

/// One training step as the trainer takes it (zero gradients, forward and backward,
/// gradient norm, AdamW and EMA), synchronised so that all its work is done on return.
pub(crate) fn train_step<B: Backend>(
    b: &B,
    model: &mut Cim<B>,
    inputs: &Batch<B>,
    adamw: &AdamW,
) -> Result<()> {
    model.zero_grads(b).map_err(backend_err)?;
    model.forward_backward(b, inputs, 1).map_err(backend_err)?;
    model.grad_norm(b).map_err(backend_err)?;
    model.optimizer_step(b, adamw, 0.996).map_err(backend_err)?;
    b.synchronize().map_err(backend_err)
}

/// Times `steps` full training steps of `config` at `batch` after `warmup` untimed ones;
/// with `breakdown`, then profiles one more step op by op. All steps run on the
/// [`Profiled`] wrapper, which passes ops straight through except in the profiled step.
pub fn step_bench<B: Backend>(
    b: &B,
    model_name: &str,
    config: ModelConfig,
    batch: usize,
    (warmup, steps): (usize, usize),
    peak_tflops: Option<f64>,
    breakdown: bool,
) -> Result<BenchReport> {
    if steps == 0 || batch == 0 {
        return Err(anyhow!(
            "bench needs at least one step and one image per step"
        ));
    }
    if let Some(p) = peak_tflops.filter(|p| !(p.is_finite() && *p > 0.0)) {
        return Err(anyhow!(
            "--peak-tflops must be a finite positive number of TFLOP/s, got {p}"
        ));
    }
    let b = &Profiled::new(b);
    let mut model =
        Cim::new(b, config, batch, 7).map_err(|e| anyhow!("building the model: {e}"))?;
    let host = synthetic::batch(&config, batch, 7)?;
    let mut inputs = Batch::new(b, &config, batch).map_err(backend_err)?;
    inputs
        .upload(b, &host.context, &host.exemplars, &host.maps)
        .map_err(backend_err)?;
    let adamw = AdamW {
        lr: 1e-4,
        ..AdamW::default()
    };
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let start = Instant::now();
        train_step(b, &mut model, &inputs, &adamw)?;
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let flops = StepFlops::of(&config);
    let tflops = flops.total() * batch as f64 / mean / 1e12;
    let profile = if breakdown {
        let start = Instant::now();
        let (stepped, profile) = b.record(|| train_step(b, &mut model, &inputs, &adamw));
        stepped?;
        Some(StepProfile {
            profiled_step_ms: start.elapsed().as_secs_f64() * 1e3,
            profiled_ops_ms: profile.total_seconds() * 1e3,
            breakdown: profile.ops(),
            gemm_shapes: profile.gemm_shapes(),
        })
    } else {
        None
    };
    Ok(BenchReport {
        backend: b.name().to_string(),
        model: model_name.to_string(),
        batch,
        steps,
        ms_per_step: mean * 1e3,
        ms_best: best * 1e3,
        images_per_s: batch as f64 / mean,
        flops_per_image: flops,
        tflops,
        mfu: peak_tflops.map(|p| tflops / p),
        profile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vit_base_step_flops_match_the_figures_in_gpu_md() {
        let f = StepFlops::of(&ModelConfig::preset("vit-base").unwrap());
        let close = |x: f64, want: f64| (x / 1e9 - want).abs() / want < 0.03;
        assert!(close(f.online, 52.3), "online {:.2} GFLOP", f.online / 1e9);
        assert!(close(f.target, 17.7), "target {:.2} GFLOP", f.target / 1e9);
        assert!(
            close(f.decoder, 10.3),
            "decoder {:.2} GFLOP",
            f.decoder / 1e9
        );
    }
}
