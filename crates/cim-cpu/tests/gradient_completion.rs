//! Issue 6, step 1: the backward tells its caller which gradients are final as it goes.
//!
//! `Cim::forward_backward_reporting` must report every trainable tensor's range exactly
//! once per micro-batch, never a frozen one, in `ParamLayout::completion_order`; and when
//! a range is reported its values must already be those the whole call leaves (a snapshot
//! taken in the callback equals the buffer at the end). Checked on this backend and on
//! the reference, for the attention and conv decoders, with a frozen and a trained patch
//! embedding, over two accumulated micro-batches (each reports the values it leaves; the
//! last one's are the group's gradients, which a data-parallel trainer sums).

use std::ops::Range;

use cim_cpu::Cpu;
use cim_model::{Batch, Cim};
use cim_reference::Reference;
use cim_spec::backend::Backend;
use cim_spec::config::{Correlation, ModelConfig, Predictor};

fn download<B: Backend>(b: &B, buf: &B::Buffer, range: Range<usize>) -> Vec<f32> {
    let mut out = vec![0.0f32; range.len()];
    b.download(b.view(buf, range), &mut out).unwrap();
    out
}

fn check<B: Backend>(b: &B, backend: &str) {
    let options = [
        (Correlation::Attention, Predictor::Conv1x1, true),
        (Correlation::Attention, Predictor::Conv1x1, false),
        (Correlation::Conv, Predictor::Deconv, true),
        (Correlation::Conv, Predictor::Conv1x1, false),
    ];
    for (correlation, predictor, frozen) in options {
        let what = format!("{backend}, {correlation:?} decoder, frozen patch embed {frozen}");
        let mut config = ModelConfig::micro();
        config.decoder.correlation = correlation;
        config.decoder.predictor = predictor;
        config.encoder.frozen_patch_embed = frozen;
        let batch = 2;
        let mut model = Cim::new(b, config, batch, 3).unwrap();
        let layout = model.layout().clone();
        let order = layout.completion_order();
        let mut trainable: Vec<Range<usize>> = layout
            .tensors
            .iter()
            .filter(|t| t.trainable && !t.range.is_empty())
            .map(|t| t.range.clone())
            .collect();
        let mut sorted = order.clone();
        sorted.sort_by_key(|r| r.start);
        trainable.sort_by_key(|r| r.start);
        assert_eq!(sorted, trainable, "{what}: every trainable tensor, once");
        let mut data = Batch::new(b, &config, batch).unwrap();
        model.zero_grads(b).unwrap();
        let accum = 2;
        for micro in 0..accum {
            let host = cim_train::synthetic::batch(&config, batch, 11 + micro as u64).unwrap();
            data.upload(b, &host.context, &host.exemplars, &host.maps)
                .unwrap();
            let mut reported: Vec<(Range<usize>, Vec<f32>)> = Vec::new();
            model
                .forward_backward_reporting(b, &data, accum, &mut |grads, range| {
                    let values = download(b, grads, range.clone());
                    reported.push((range, values));
                })
                .unwrap();
            let ranges: Vec<Range<usize>> = reported.iter().map(|(r, _)| r.clone()).collect();
            assert_eq!(
                ranges, order,
                "{what}, micro-batch {micro}: completion order"
            );
            let [_, _, grads, _, _] = model.buffers();
            for (range, at_report) in &reported {
                let name = &layout
                    .tensors
                    .iter()
                    .find(|t| t.range == *range)
                    .unwrap()
                    .name;
                let at_end = download(b, grads, range.clone());
                assert!(
                    at_end.iter().any(|v| *v != 0.0),
                    "{what}, micro-batch {micro}: {name} has no gradient"
                );
                let same = at_report
                    .iter()
                    .zip(&at_end)
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same,
                    "{what}, micro-batch {micro}: {name} changed after it was reported"
                );
            }
            for t in layout.tensors.iter().filter(|t| !t.trainable) {
                let values = download(b, grads, t.range.clone());
                assert!(
                    values.iter().all(|v| *v == 0.0),
                    "{what}: frozen {} has a gradient",
                    t.name
                );
            }
        }
    }
}

#[test]
fn the_backward_reports_each_trainable_gradient_once_when_final_on_the_cpu() {
    check(&Cpu::with_threads(2), "cim-cpu");
}

#[test]
fn the_backward_reports_each_trainable_gradient_once_when_final_on_the_reference() {
    check(&Reference::new(), "reference");
}
