//! Data-parallel training: several processes, each with the same model and its own shard
//! of every batch, whose gradients are summed before every optimizer step.
//!
//! The trainer talks to the other ranks only through [`Collective`]: an all-reduce of the
//! gradient buffer, bucket by bucket as the last backward of a step finishes them
//! ([`buckets`]), and an all-gather of a few host bytes (on which the ranks decide
//! together whether to stop, and check that they hold the same model). Two
//! implementations live here, [`SingleProcess`] (nothing to talk to) and the CPU's
//! [`TcpCollective`]; a GPU backend brings its own (NCCL) after the same [`rendezvous`].
//! The processes are launched like torchrun's ([`World::from_env`]).

pub mod buckets;
mod tcp;
mod world;

use std::ops::Range;

use anyhow::{Result, bail};
use cim_model::Cim;
use cim_spec::backend::Backend;
use sha2::{Digest, Sha256};

use crate::device::download;

pub use buckets::{Bucket, BucketFeed, DEFAULT_BUCKET_BYTES, gradient_buckets};
pub use tcp::{Rendezvous, TcpCollective, rendezvous};
pub use world::{Master, World};

/// How the ranks of a run exchange values. Every rank calls the same operations in the
/// same order with the same sizes; results are identical, bit for bit, on every rank.
pub trait Collective<B: Backend> {
    /// This process's rank.
    fn rank(&self) -> usize;

    /// Processes taking part.
    fn world_size(&self) -> usize;

    /// Replaces `grads[range]`, for each range of `ranges`, by its sum over the ranks;
    /// elements outside the ranges are left alone. Every rank passes the same disjoint
    /// ranges (some may be empty). The summation order is fixed, so the result does not
    /// depend on timing.
    fn all_reduce_sum(
        &mut self,
        b: &B,
        grads: &mut B::Buffer,
        ranges: &[Range<usize>],
    ) -> Result<()>;

    /// The backward has finished `bucket` (the next of the step's buckets, in order):
    /// a collective that can sum in the background starts on it. The default waits for
    /// [`Collective::finish`].
    fn bucket_ready(&mut self, b: &B, grads: &mut B::Buffer, bucket: &Bucket) -> Result<()> {
        let _ = (b, grads, bucket);
        Ok(())
    }

    /// After the backward: every bucket of `buckets` is summed over the ranks (as
    /// [`Collective::all_reduce_sum`] of its ranges) as far as later work on `b` is
    /// concerned, those handed to [`Collective::bucket_ready`] and the rest. The default
    /// sums each bucket now, in order.
    fn finish(&mut self, b: &B, grads: &mut B::Buffer, buckets: &[Bucket]) -> Result<()> {
        for bucket in buckets {
            self.all_reduce_sum(b, grads, &bucket.ranges)?;
        }
        Ok(())
    }

    /// Every rank's `local` bytes, indexed by rank (lengths may differ between ranks).
    fn all_gather(&mut self, local: &[u8]) -> Result<Vec<Vec<u8>>>;
}

/// A run of one process: every operation returns what it was given.
pub struct SingleProcess;

impl<B: Backend> Collective<B> for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&mut self, _: &B, _: &mut B::Buffer, _: &[Range<usize>]) -> Result<()> {
        Ok(())
    }

    fn all_gather(&mut self, local: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![local.to_vec()])
    }
}

/// What each rank says at the end of an accumulation group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepVote {
    /// The rank's loss of the group, already divided by the world size.
    pub loss: f32,
    /// Whether a stop was requested on this rank (a signal).
    pub stop: bool,
}

impl StepVote {
    /// What the ranks decide together: the loss summed in rank order (so the mean over
    /// the ranks), and a stop if any rank asked for one.
    pub fn agree<B: Backend>(self, comm: &mut dyn Collective<B>) -> Result<StepVote> {
        let mut local = self.loss.to_le_bytes().to_vec();
        local.push(self.stop as u8);
        let mut agreed = StepVote {
            loss: 0.0,
            stop: false,
        };
        for (rank, part) in comm.all_gather(&local)?.iter().enumerate() {
            let Some((loss, [stop])) = part.split_first_chunk::<4>() else {
                bail!(
                    "rank {rank} sent a step vote of {} bytes, not 5: do all ranks run the same build?",
                    part.len()
                );
            };
            agreed.loss += f32::from_le_bytes(*loss);
            agreed.stop |= *stop != 0;
        }
        Ok(agreed)
    }
}

/// Fails on every rank unless all ranks pass the same `value` for `what`, naming the first
/// rank that differs, both values and `hint`.
pub fn ensure_agreement<B: Backend>(
    comm: &mut dyn Collective<B>,
    what: &str,
    value: &str,
    hint: &str,
) -> Result<()> {
    let all = comm.all_gather(value.as_bytes())?;
    if let Some((rank, theirs)) = all.iter().enumerate().find(|(_, v)| *v != &all[0]) {
        bail!(
            "rank {rank} disagrees with rank 0 on {what}: {} vs {}; {hint}",
            String::from_utf8_lossy(theirs),
            String::from_utf8_lossy(&all[0])
        );
    }
    Ok(())
}

/// SHA-256 (hex) of what a checkpoint holds of `model`: the step count, the online and
/// target weights and both AdamW moments, as f32 bits.
pub fn state_digest<B: Backend>(b: &B, model: &Cim<B>) -> Result<String> {
    let [params, target, _, m1, m2] = model.buffers();
    let mut hash = Sha256::new();
    hash.update(model.steps().to_le_bytes());
    for buf in [params, target, m1, m2] {
        for v in download(b, buf, 0..B::buffer_len(buf))? {
            hash.update(v.to_le_bytes());
        }
    }
    Ok(hash.finalize().iter().map(|x| format!("{x:02x}")).collect())
}

/// Checks that every rank holds the same model state at `when` (see [`state_digest`]);
/// returns the digest they agree on, or `None` for a single process (nothing to compare).
pub fn check_replicas<B: Backend>(
    b: &B,
    comm: &mut dyn Collective<B>,
    model: &Cim<B>,
    when: &str,
) -> Result<Option<String>> {
    if comm.world_size() == 1 {
        return Ok(None);
    }
    let digest = state_digest(b, model)?;
    let value = format!("step {} digest {digest}", model.steps());
    ensure_agreement(
        comm,
        &format!("the model state {when}"),
        &value,
        "every rank must start from the same seed or resume the same checkpoint (a run folder all ranks see), with the same backend on the same kind of hardware",
    )?;
    Ok(Some(digest))
}
