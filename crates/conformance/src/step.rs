//! Whole-step conformance: several complete CIM training steps of the `micro` model
//! (online encoder on the exemplars with a trainable patch embedding, target encoder,
//! decoder, loss, backward, AdamW, EMA) on a backend and on the reference from the same
//! initialisation and inputs, compared after every step: the loss (`StepLoss`), every
//! parameter gradient tensor by tensor (`StepGradients`), and the online parameters
//! after AdamW and the target after EMA (`StepParameters`).
//!
//! Two choices keep the check well-conditioned. AdamW runs with eps = 1e-3: at the
//! default 1e-8 the first update is about lr * sign(g), discontinuous at g = 0, and some
//! gradients are exactly zero in exact arithmetic (the key bias of every attention:
//! softmax ignores a constant added to all scores), so rounding noise would decide their
//! update's sign; the op-level AdamW check covers eps = 1e-8. Parameters are compared as
//! one vector (normwise over the whole model), because zero-initialised biases are only
//! about lr large after a step and would otherwise be measured against themselves.

use cim_model::cim_spec::backend::Backend;
use cim_model::cim_spec::config::ModelConfig;
use cim_model::cim_spec::geometry::{self, ExemplarParams};
use cim_model::cim_spec::rng::CimRng;
use cim_model::cim_spec::schedule::AdamW;
use cim_model::cim_spec::tolerance::{Op, tolerance};
use cim_model::{Batch, Cim};
use cim_reference::Reference;

use crate::mismatch::{Mismatch, Problem};

/// Steps compared.
const STEPS: u64 = 3;
/// Contexts per micro-batch.
const BATCH: usize = 2;

/// Normalised random pixels and S2 ground-truth maps for `config`.
fn inputs(config: &ModelConfig, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = CimRng::new(seed);
    let (m, n, k) = (config.context_size, config.exemplar_size, config.exemplars);
    let context = (0..BATCH * 3 * m * m)
        .map(|_| rng.normal() as f32)
        .collect();
    let exemplars = (0..BATCH * k * 3 * n * n)
        .map(|_| rng.normal() as f32)
        .collect();
    let mut maps = vec![0.0f32; BATCH * k * m * m];
    let canvas = 1.4 * m as f64;
    for map in maps.chunks_mut(m * m) {
        let rect = geometry::sample_exemplar(&mut rng, canvas, &ExemplarParams::default())
            .expect("default exemplar parameters are valid");
        geometry::ground_truth_map_f32(&rect, canvas, m, map).expect("map length");
    }
    (context, exemplars, maps)
}

fn backend_error(name: &str, op: Op, e: impl core::fmt::Display) -> Mismatch {
    Mismatch {
        backend: name.into(),
        op,
        tensor: "-",
        case: "training_steps".into(),
        problem: Problem::BackendError(e.to_string()),
    }
}

/// The backend's buffer as f32.
fn read<B: Backend>(b: &B, buf: &B::Buffer, name: &str, op: Op) -> Result<Vec<f32>, Mismatch> {
    let mut out = vec![0.0f32; B::buffer_len(buf)];
    b.download(b.view(buf, 0..out.len()), &mut out)
        .map_err(|e| backend_error(name, op, e))?;
    Ok(out)
}

/// Compares `x` with the reference `r` under `op`'s tolerance; `kind` is the report's
/// tensor field and `what` (step and model tensor) goes into its case description.
fn compare(
    name: &str,
    op: Op,
    kind: &'static str,
    what: &str,
    x: &[f32],
    r: &[f64],
    b: &impl Backend,
) -> Result<(), Mismatch> {
    let tol = tolerance(op, b.precision());
    let (ratio, index) = tol.worst_ratio(x, r);
    if ratio <= 1.0 {
        return Ok(());
    }
    Err(Mismatch {
        backend: name.into(),
        op,
        tensor: kind,
        case: format!("training_steps: micro model, batch {BATCH}, {what}"),
        problem: Problem::OutOfTolerance {
            index,
            backend: x[index],
            reference: r[index],
            ratio,
            tolerance: tol,
        },
    })
}

/// Runs [`STEPS`] training steps on `backend` and on the reference and compares them.
pub fn training_steps<B: Backend>(backend: &B) -> Result<(), Mismatch> {
    let name = backend.name().to_string();
    let config = ModelConfig::micro();
    let reference = Reference::new();
    let mut ours =
        Cim::new(backend, config, BATCH, 5).map_err(|e| backend_error(&name, Op::StepLoss, e))?;
    let mut oracle = Cim::new(&reference, config, BATCH, 5)
        .map_err(|e| backend_error("reference", Op::StepLoss, e))?;
    let layout = ours.layout().clone();
    let opt = AdamW {
        lr: 1e-3,
        eps: 1e-3,
        ..AdamW::default()
    };
    for step in 1..=STEPS {
        let (ctx, ex, maps) = inputs(&config, step);
        let mut batch = Batch::new(backend, &config, BATCH)
            .map_err(|e| backend_error(&name, Op::StepLoss, e))?;
        batch
            .upload(backend, &ctx, &ex, &maps)
            .map_err(|e| backend_error(&name, Op::StepLoss, e))?;
        let mut rbatch = Batch::new(&reference, &config, BATCH).expect("reference allocation");
        rbatch
            .upload(&reference, &ctx, &ex, &maps)
            .expect("reference upload");

        ours.zero_grads(backend)
            .map_err(|e| backend_error(&name, Op::StepGradients, e))?;
        ours.forward_backward(backend, &batch, 1)
            .map_err(|e| backend_error(&name, Op::StepGradients, e))?;
        oracle.zero_grads(&reference).expect("reference");
        oracle
            .forward_backward(&reference, &rbatch, 1)
            .expect("reference");

        let loss = read(backend, ours.loss(), &name, Op::StepLoss)?;
        compare(
            &name,
            Op::StepLoss,
            "loss",
            &format!("step {step}, the loss"),
            &loss,
            oracle.loss(),
            backend,
        )?;
        let grads = read(backend, ours.buffers()[2], &name, Op::StepGradients)?;
        let rgrads = oracle.buffers()[2];
        for t in layout.tensors.iter().filter(|t| t.trainable) {
            let r = t.range.clone();
            compare(
                &name,
                Op::StepGradients,
                "gradient",
                &format!("step {step}, {}", t.name),
                &grads[r.clone()],
                &rgrads[r],
                backend,
            )?;
        }

        let momentum = 0.9;
        ours.optimizer_step(backend, &opt, momentum)
            .map_err(|e| backend_error(&name, Op::StepParameters, e))?;
        oracle
            .optimizer_step(&reference, &opt, momentum)
            .expect("reference");
        let params = read(backend, ours.buffers()[0], &name, Op::StepParameters)?;
        compare(
            &name,
            Op::StepParameters,
            "parameters",
            &format!("step {step}, the online parameters after AdamW"),
            &params,
            oracle.buffers()[0],
            backend,
        )?;
        let target = read(backend, ours.buffers()[1], &name, Op::StepParameters)?;
        compare(
            &name,
            Op::StepParameters,
            "target",
            &format!("step {step}, the target encoder after EMA"),
            &target,
            oracle.buffers()[1],
            backend,
        )?;
    }
    Ok(())
}
