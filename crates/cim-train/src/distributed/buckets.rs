//! Gradient buckets in backward order, and the feed that hands each one to the collective
//! as soon as the backward has finished it.
//!
//! As in PyTorch's DDP, the buckets follow the order in which the backward finishes the
//! gradients ([`ParamLayout::completion_order`]: decoder first, encoder blocks last to
//! first, patch embedding last), not the buffer's layout, so the first bucket is complete
//! while most of the backward is still to run and a collective that can work in the
//! background (NCCL on its own stream) sums it meanwhile. The tensors finished one after
//! another are scattered over the buffer's optimizer groups (S6), so a bucket is a list
//! of ranges, coalesced where they touch.
//!
//! Only the last micro-batch of an accumulation group feeds the collective: earlier ones
//! report the same tensors, whose values the later micro-batches still add to.

use std::ops::Range;

use anyhow::{Result, bail};
use cim_model::layout::ParamLayout;
use cim_spec::backend::Backend;

use super::Collective;

/// Bytes of gradient per bucket unless told otherwise (PyTorch DDP's default, 25 MiB).
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// Whole trainable tensors that the backward finishes one after another.
#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    /// The tensors' ranges, in the order the backward reports them.
    pub tensors: Vec<Range<usize>>,
    /// The same elements as ascending, disjoint ranges, touching ones merged: what is
    /// summed.
    pub ranges: Vec<Range<usize>>,
}

impl Bucket {
    /// The bucket of `tensors` (disjoint ranges, in the order the backward reports them).
    pub fn new(tensors: Vec<Range<usize>>) -> Bucket {
        let mut sorted = tensors.clone();
        sorted.sort_by_key(|r| r.start);
        let mut ranges: Vec<Range<usize>> = Vec::with_capacity(sorted.len());
        for r in sorted {
            match ranges.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => ranges.push(r),
            }
        }
        Bucket { tensors, ranges }
    }

    /// Elements in the bucket.
    pub fn len(&self) -> usize {
        self.ranges.iter().map(|r| r.len()).sum()
    }

    /// Whether the bucket holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The buckets of `layout`'s trainable tensors: its completion order cut into runs of as
/// many tensors as fit in `budget_bytes` of f32 (a larger tensor gets a bucket of its
/// own). Frozen tensors, whose gradients stay zero, are in none.
pub fn gradient_buckets(layout: &ParamLayout, budget_bytes: usize) -> Vec<Bucket> {
    let budget = budget_bytes / size_of::<f32>();
    let mut runs: Vec<(Vec<Range<usize>>, usize)> = Vec::new();
    for t in layout.completion_order() {
        match runs.last_mut() {
            Some((run, len)) if *len + t.len() <= budget => {
                *len += t.len();
                run.push(t);
            }
            _ => {
                let len = t.len();
                runs.push((vec![t], len));
            }
        }
    }
    runs.into_iter().map(|(run, _)| Bucket::new(run)).collect()
}

/// Hands `buckets` to a collective during one backward: each bucket once all its tensors
/// are reported (in order, through [`Collective::bucket_ready`]), then, after the
/// backward, [`BucketFeed::finish`]. A report out of the plan's order is an error (the
/// plan and the model disagree); since the backward's callback cannot fail, the first
/// error is kept and returned by `finish`.
pub struct BucketFeed<'a, B: Backend> {
    comm: &'a mut dyn Collective<B>,
    buckets: &'a [Bucket],
    /// The bucket being filled, and how many of its tensors were reported.
    bucket: usize,
    reported: usize,
    error: Option<anyhow::Error>,
}

impl<'a, B: Backend> BucketFeed<'a, B> {
    /// A feed of `buckets` (from [`gradient_buckets`]) into `comm`.
    pub fn new(comm: &'a mut dyn Collective<B>, buckets: &'a [Bucket]) -> Self {
        BucketFeed {
            comm,
            buckets,
            bucket: 0,
            reported: 0,
            error: None,
        }
    }

    /// The backward finished the gradients in `grads[range]`.
    pub fn report(&mut self, b: &B, grads: &mut B::Buffer, range: Range<usize>) {
        if self.error.is_none()
            && let Err(e) = self.advance(b, grads, range)
        {
            self.error = Some(e);
        }
    }

    fn advance(&mut self, b: &B, grads: &mut B::Buffer, range: Range<usize>) -> Result<()> {
        let Some(bucket) = self.buckets.get(self.bucket) else {
            bail!(
                "the backward reported gradients {range:?} after every bucket was complete: the bucket plan does not cover the model's trainable tensors"
            );
        };
        let due = &bucket.tensors[self.reported];
        if *due != range {
            bail!(
                "the backward reported gradients {range:?} where {due:?} was due (bucket {}): the bucket plan does not follow the model's completion order",
                self.bucket
            );
        }
        self.reported += 1;
        if self.reported == bucket.tensors.len() {
            self.comm.bucket_ready(b, grads, bucket)?;
            self.bucket += 1;
            self.reported = 0;
        }
        Ok(())
    }

    /// After the backward: the first error of a report, else [`Collective::finish`] over
    /// every bucket (an error if the backward left one incomplete).
    pub fn finish(self, b: &B, grads: &mut B::Buffer) -> Result<()> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.bucket != self.buckets.len() {
            bail!(
                "the backward completed {} of {} gradient buckets: the bucket plan does not follow the model",
                self.bucket,
                self.buckets.len()
            );
        }
        self.comm.finish(b, grads, self.buckets)
    }
}
