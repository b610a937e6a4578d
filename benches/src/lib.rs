//! Shared pieces of the CIM-rs benches: timing a whole training step of any backend on
//! synthetic data, and running the PyTorch baseline scripts beside it so every ratio is
//! measured in one run on the same machine (these machines are noisy: compare only
//! numbers taken side by side).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use cim_model::{Batch, Cim};
use cim_spec::backend::Backend;
use cim_spec::config::ModelConfig;
use cim_spec::schedule::AdamW;

/// Milliseconds per full CIM step (forward, backward, AdamW, EMA) of `config` with
/// `batch` contexts on backend `b`, after `warmup` untimed steps.
pub fn step_ms<B: Backend>(
    b: &B,
    config: ModelConfig,
    batch: usize,
    warmup: usize,
    steps: usize,
) -> f64 {
    let mut model =
        Cim::new(b, config, batch, 0).unwrap_or_else(|e| panic!("building the model: {e}"));
    let host = cim_train::synthetic::batch(&config, batch, 1).expect("synthetic batch");
    let mut data = Batch::new(b, &config, batch).expect("allocating the batch");
    data.upload(b, &host.context, &host.exemplars, &host.maps)
        .expect("upload");
    let opt = AdamW {
        lr: 1e-4,
        ..AdamW::default()
    };
    let mut step = || {
        model.zero_grads(b).expect("zero");
        model
            .forward_backward(b, &data, 1)
            .expect("forward/backward");
        model.optimizer_step(b, &opt, 0.99).expect("optimizer step");
        b.synchronize().expect("synchronize");
    };
    for _ in 0..warmup {
        step();
    }
    let t = Instant::now();
    for _ in 0..steps {
        step();
    }
    t.elapsed().as_secs_f64() * 1e3 / steps as f64
}

/// Runs `benches/pytorch/step_bench.py` with `args`; its milliseconds per step, or why
/// it could not run (no python3 with torch, or the script failed).
pub fn pytorch_step_ms(args: &[&str]) -> Result<f64, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("pytorch/step_bench.py");
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .map_err(|e| format!("python3 did not start: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "step_bench.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().ok_or("step_bench.py printed nothing")?;
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("step_bench.py output: {e}"))?;
    v["ms_per_step"]
        .as_f64()
        .ok_or_else(|| "step_bench.py output has no ms_per_step".into())
}
