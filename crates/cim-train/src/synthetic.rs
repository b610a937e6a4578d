//! Deterministic synthetic micro-batches: random normalised pixels with ground-truth maps
//! from the real S2 geometry, for step dumps, benchmarks and tests that need inputs of
//! the right shapes and statistics but no image files.

use anyhow::{Result, anyhow};
use cim_spec::config::ModelConfig;
use cim_spec::geometry::{self, ExemplarParams};
use cim_spec::rng::CimRng;

/// Host values of one micro-batch in the layouts of `cim_model::Batch`.
pub struct HostBatch {
    /// `[B, 3, m, m]`.
    pub context: Vec<f32>,
    /// `[B, K, 3, n, n]`.
    pub exemplars: Vec<f32>,
    /// `[B, K, m, m]`, 0 or 1.
    pub maps: Vec<f32>,
}

/// `batch` contexts for `config`, drawn from `CimRng::derive(seed, [b])` per context: unit
/// normal pixels, and for each exemplar a rectangle sampled as S2 on a canvas of
/// `1.4 m` (the 224/160 ratio of the paper's recipe) with its ground-truth map.
pub fn batch(config: &ModelConfig, batch: usize, seed: u64) -> Result<HostBatch> {
    let (m, n, k) = (config.context_size, config.exemplar_size, config.exemplars);
    let canvas = 1.4 * m as f64;
    let mut out = HostBatch {
        context: Vec::with_capacity(batch * 3 * m * m),
        exemplars: Vec::with_capacity(batch * k * 3 * n * n),
        maps: vec![0.0; batch * k * m * m],
    };
    for (b, maps) in out.maps.chunks_mut(k * m * m).enumerate() {
        let mut rng = CimRng::derive(seed, &[b as u64]);
        out.context
            .extend((0..3 * m * m).map(|_| rng.normal() as f32));
        out.exemplars
            .extend((0..k * 3 * n * n).map(|_| rng.normal() as f32));
        for map in maps.chunks_mut(m * m) {
            let rect = geometry::sample_exemplar(&mut rng, canvas, &ExemplarParams::default())
                .map_err(|e| anyhow!("sampling an exemplar: {e}"))?;
            geometry::ground_truth_map_f32(&rect, canvas, m, map)
                .map_err(|e| anyhow!("ground-truth map: {e}"))?;
        }
    }
    Ok(out)
}
