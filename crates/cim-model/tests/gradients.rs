//! The hand-written backward of the whole CIM step (encoder, decoder, loss) against
//! central finite differences of the loss, on the f64 reference backend, for at least
//! one element of every trainable tensor of the `micro` configuration; and AdamW/EMA
//! against their S6/S7 formulas.

use cim_model::cim_spec::backend::Memory;
use cim_model::cim_spec::config::{Correlation, ModelConfig, Predictor};
use cim_model::cim_spec::loss::MapLoss;
use cim_model::cim_spec::rng::CimRng;
use cim_model::cim_spec::schedule::AdamW;
use cim_model::{Batch, Cim};
use cim_reference::Reference;

/// A batch of random normalised images and random rectangular 0/1 maps.
fn batch(b: &Reference, c: &ModelConfig, n: usize, seed: u64) -> Batch<Reference> {
    let mut rng = CimRng::new(seed);
    let (m, e, k) = (c.context_size, c.exemplar_size, c.exemplars);
    let ctx: Vec<f32> = (0..n * 3 * m * m).map(|_| rng.normal() as f32).collect();
    let ex: Vec<f32> = (0..n * k * 3 * e * e)
        .map(|_| rng.normal() as f32)
        .collect();
    let mut maps = vec![0.0f32; n * k * m * m];
    for map in maps.chunks_mut(m * m) {
        let (y0, x0) = (
            rng.below(m as u64 / 2) as usize,
            rng.below(m as u64 / 2) as usize,
        );
        for i in y0..y0 + m / 3 {
            for j in x0..x0 + m / 4 {
                map[i * m + j] = 1.0;
            }
        }
    }
    let mut out = Batch::new(b, c, n).unwrap();
    out.upload(b, &ctx, &ex, &maps).unwrap();
    out
}

fn loss_of(model: &mut Cim<Reference>, b: &Reference, data: &Batch<Reference>) -> f64 {
    model.forward(b, data).unwrap();
    model.loss()[0]
}

fn check_gradients(config: ModelConfig) {
    let b = Reference::new();
    let mut model = Cim::new(&b, config, 2, 11).unwrap();
    let data = batch(&b, &config, 2, 5);
    model.zero_grads(&b).unwrap();
    model.forward_backward(&b, &data, 1).unwrap();
    let grads = model.buffers()[2].clone();
    let layout = model.layout().clone();
    let mut rng = CimRng::new(99);
    let mut checked = 0;
    // The class token is also read by the target network (S3), which receives no
    // gradient: the loss's total derivative includes that detached path, so the token is
    // left out here (its gradient path, prepend_cls_backward, is checked op by op).
    for t in layout
        .tensors
        .iter()
        .filter(|t| t.trainable && t.name != "cls_token")
    {
        // Three elements per tensor: first, last and one at random.
        let len = t.range.len();
        for off in [0, len - 1, rng.below(len as u64) as usize] {
            let i = t.range.start + off;
            let h = 1e-5;
            let orig = model.buffers()[0][i];
            model.buffers_mut().0[0][i] = orig + h;
            let up = loss_of(&mut model, &b, &data);
            model.buffers_mut().0[0][i] = orig - h;
            let down = loss_of(&mut model, &b, &data);
            model.buffers_mut().0[0][i] = orig;
            let fd = (up - down) / (2.0 * h);
            let an = grads[i];
            let err = (fd - an).abs();
            assert!(
                err <= 1e-6 * (1.0 + an.abs().max(fd.abs())) + 1e-9,
                "{}[{off}]: analytic {an:e}, finite difference {fd:e}",
                t.name
            );
            checked += 1;
        }
    }
    assert!(checked >= 3 * (layout.tensors.iter().filter(|t| t.trainable).count() - 1));
    // Frozen tensors get no gradient.
    for t in layout.tensors.iter().filter(|t| !t.trainable) {
        assert!(
            grads[t.range.clone()].iter().all(|&g| g == 0.0),
            "{}",
            t.name
        );
    }
}

#[test]
fn every_trainable_tensor_matches_finite_differences() {
    check_gradients(ModelConfig::micro());
}

#[test]
fn frozen_patch_embedding_and_two_decoder_blocks() {
    let mut c = ModelConfig::micro();
    c.encoder.frozen_patch_embed = true;
    c.decoder.depth = 2;
    check_gradients(c);
}

#[test]
fn conv_correlation() {
    // An odd exemplar grid (3: 'same' padding on both sides) in two correlation blocks,
    // and the even grid of `micro` (2: the extra padding row below and right).
    let mut c = ModelConfig::micro();
    c.decoder.correlation = Correlation::Conv;
    c.encoder.depth = 1;
    c.exemplar_size = 24;
    c.decoder.depth = 2;
    check_gradients(c);
    let mut c = ModelConfig::micro();
    c.decoder.correlation = Correlation::Conv;
    c.encoder.depth = 1;
    check_gradients(c);
}

#[test]
fn deconv_predictor() {
    let mut c = ModelConfig::micro();
    c.decoder.predictor = Predictor::Deconv;
    c.encoder.depth = 1;
    check_gradients(c);
    // Both options together, with the single-logit loss (one output channel).
    c.decoder.correlation = Correlation::Conv;
    c.loss = MapLoss::BinaryCrossEntropy;
    check_gradients(c);
}

#[test]
fn single_logit_losses() {
    for loss in [
        MapLoss::BinaryCrossEntropy,
        MapLoss::BalancedBinaryCrossEntropy,
        MapLoss::MeanSquaredError,
        MapLoss::focal(),
    ] {
        let mut c = ModelConfig::micro();
        c.loss = loss;
        c.encoder.depth = 1;
        check_gradients(c);
    }
}

#[test]
fn accumulation_averages_micro_batches() {
    // Two micro-batches with accum 2 give the mean of the two single-batch gradients.
    let b = Reference::new();
    let c = ModelConfig::micro();
    let (d1, d2) = (batch(&b, &c, 2, 1), batch(&b, &c, 2, 2));
    let mut model = Cim::new(&b, c, 2, 3).unwrap();
    let mut single = Vec::new();
    for d in [&d1, &d2] {
        model.zero_grads(&b).unwrap();
        model.forward_backward(&b, d, 1).unwrap();
        single.push(model.buffers()[2].clone());
    }
    model.zero_grads(&b).unwrap();
    model.forward_backward(&b, &d1, 2).unwrap();
    model.forward_backward(&b, &d2, 2).unwrap();
    let acc = model.buffers()[2];
    for i in 0..acc.len() {
        let want = 0.5 * (single[0][i] + single[1][i]);
        assert!(
            (acc[i] - want).abs() <= 1e-12 * (1.0 + want.abs()),
            "element {i}"
        );
    }
}

#[test]
fn optimizer_step_is_adamw_then_ema() {
    let b = Reference::new();
    let c = ModelConfig::micro();
    let data = batch(&b, &c, 2, 4);
    let mut model = Cim::new(&b, c, 2, 8).unwrap();
    let layout = model.layout().clone();
    let before = model.buffers()[0].clone();
    let target_before = model.buffers()[1].clone();
    model.zero_grads(&b).unwrap();
    model.forward_backward(&b, &data, 1).unwrap();
    let grads = model.buffers()[2].clone();
    let opt = AdamW {
        lr: 1e-3,
        ..AdamW::default()
    };
    let momentum = 0.99;
    model.optimizer_step(&b, &opt, momentum).unwrap();
    let after = model.buffers()[0];
    for t in &layout.tensors {
        let decay = cim_model::cim_spec::schedule::is_decayed(&t.shape, &t.name);
        for i in t.range.clone() {
            let want = if t.trainable {
                // S6, first step: m = (1-b1) g, v = (1-b2) g^2, bias-corrected.
                let g = grads[i];
                let theta = before[i]
                    * if decay {
                        1.0 - opt.lr * opt.weight_decay
                    } else {
                        1.0
                    };
                let m = (1.0 - opt.beta1) * g / (1.0 - opt.beta1);
                let v = ((1.0 - opt.beta2) * g * g).sqrt() / (1.0 - opt.beta2).sqrt();
                theta - opt.lr * m / (v + opt.eps)
            } else {
                before[i]
            };
            assert!((after[i] - want).abs() <= 1e-12, "{} element {i}", t.name);
        }
    }
    let target = model.buffers()[1];
    for (j, i) in layout.ema.clone().enumerate() {
        let want = momentum * target_before[j] + (1.0 - momentum) * after[i];
        assert!((target[j] - want).abs() <= 1e-7, "target element {j}");
    }
    assert_eq!(model.steps(), 1);
    let _ = Reference::buffer_len(model.buffers()[1]);
}
