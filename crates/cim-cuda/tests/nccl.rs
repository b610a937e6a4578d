//! NCCL on one GPU: a communicator of one rank (all that one card allows; NCCL refuses two
//! ranks on the same GPU) must leave every value as it is, bit for bit, whether the sums
//! are queued bucket by bucket during the backward (the trainer's way, on the
//! communication stream, overlapped with the compute stream) or in one `all_reduce_sum`;
//! `all_gather` returns this rank's bytes. Without a GPU, or without libnccl on the
//! library path, the test prints why and passes (`CIM_REQUIRE_GPU=1` makes a missing GPU a
//! failure, not a missing libnccl: scripts/gpu-check.sh reports that as skipped).

mod common;

use std::time::Duration;

use cim_cuda::{Cuda, Gpu, NcclCollective, nccl_unavailable_reason};
use cim_model::{Batch, Cim};
use cim_spec::backend::Memory;
use cim_spec::config::ModelConfig;
use cim_train::distributed::{BucketFeed, Collective, World, gradient_buckets};
use common::gpu_or_skip;

fn host(b: &Cuda<Gpu>, buf: &<Cuda<Gpu> as Memory>::Buffer) -> Vec<u32> {
    let mut out = vec![0.0f32; Cuda::<Gpu>::buffer_len(buf)];
    b.download(b.view(buf, 0..out.len()), &mut out).unwrap();
    out.into_iter().map(f32::to_bits).collect()
}

#[test]
fn a_one_rank_nccl_communicator_sums_buckets_during_the_backward_to_the_same_bits() {
    let Some(b) = gpu_or_skip() else {
        return;
    };
    if let Some(reason) = nccl_unavailable_reason() {
        println!("skipped: {reason}");
        return;
    }
    let mut comm = NcclCollective::connect(&b, &World::SINGLE, "test", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let config = ModelConfig::micro();
    let batch = 2;
    let host_batch = cim_train::synthetic::batch(&config, batch, 5).unwrap();
    let mut data = Batch::new(&b, &config, batch).unwrap();
    data.upload(
        &b,
        &host_batch.context,
        &host_batch.exemplars,
        &host_batch.maps,
    )
    .unwrap();
    let mut plain = Cim::new(&b, config, batch, 3).unwrap();
    let mut summed = Cim::new(&b, config, batch, 3).unwrap();
    // Buckets of a few tensors each, so several are queued while the backward runs.
    let largest = summed
        .layout()
        .completion_order()
        .iter()
        .map(|r| r.len())
        .max()
        .unwrap();
    let buckets = gradient_buckets(summed.layout(), 4 * largest);
    assert!(buckets.len() > 2, "{} buckets", buckets.len());
    for step in 0..2 {
        plain.zero_grads(&b).unwrap();
        plain.forward_backward(&b, &data, 1).unwrap();
        summed.zero_grads(&b).unwrap();
        let mut feed = BucketFeed::new(&mut comm, &buckets);
        summed
            .forward_backward_reporting(&b, &data, 1, &mut |grads, range| {
                feed.report(&b, grads, range)
            })
            .unwrap();
        let ([_, _, grads, _, _], _) = summed.buffers_mut();
        feed.finish(&b, grads).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            host(&b, summed.buffers()[2]),
            host(&b, plain.buffers()[2]),
            "step {step}: gradients after the bucketed sum"
        );
        let ([_, _, grads, _, _], _) = summed.buffers_mut();
        let all = 0..Cuda::<Gpu>::buffer_len(grads);
        comm.all_reduce_sum(&b, grads, &[all]).unwrap();
        assert_eq!(
            host(&b, summed.buffers()[2]),
            host(&b, plain.buffers()[2]),
            "step {step}: gradients after a whole-buffer sum"
        );
        let opt = cim_spec::schedule::AdamW::default();
        plain.optimizer_step(&b, &opt, 0.99).unwrap();
        summed.optimizer_step(&b, &opt, 0.99).unwrap();
    }
    let gathered = Collective::<Cuda<Gpu>>::all_gather(&mut comm, b"rank 0").unwrap();
    assert_eq!(gathered, vec![b"rank 0".to_vec()]);
    println!("nccl: one-rank communicator, bucketed sums during the backward: same bits");
}
