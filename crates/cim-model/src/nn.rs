//! Building blocks shared by the encoder and the decoder: whole-buffer views, disjoint
//! gradient views, the linear layer and the pre-norm transformer block's MLP half, each
//! as a forward and its backward written in exact reverse order.

use core::ops::Range;

use cim_spec::backend::{Backend, GemmArgs, LinearArgs, Memory};
use cim_spec::ops;

/// Result of the backend `B`.
pub(crate) type Res<B> = Result<(), <B as Memory>::Error>;

/// LayerNorm epsilon of S3 (timm's ViT uses 1e-6).
pub(crate) const LN_EPS: f32 = 1e-6;

/// Told by the backward, between its ops, that the gradients in a range of the buffer it
/// is handed are final for this micro-batch (see [`crate::Cim::forward_backward_reporting`]).
pub(crate) type Ready<'a, B> = dyn FnMut(&mut <B as Memory>::Buffer, Range<usize>) + 'a;

/// Reports each non-empty range of `ranges` to `ready`.
pub(crate) fn report<'r, B: Memory>(
    ready: &mut Ready<'_, B>,
    grads: &mut B::Buffer,
    ranges: impl IntoIterator<Item = &'r Range<usize>>,
) {
    for r in ranges {
        if !r.is_empty() {
            ready(grads, r.clone());
        }
    }
}

/// A view of a whole buffer.
pub(crate) fn all<'a, B: Memory>(b: &'a B, buf: &'a B::Buffer) -> B::View<'a> {
    b.view(buf, 0..B::buffer_len(buf))
}

/// An exclusive view of a whole buffer.
pub(crate) fn all_mut<'a, B: Memory>(b: &'a B, buf: &'a mut B::Buffer) -> B::ViewMut<'a> {
    let n = B::buffer_len(buf);
    b.view_mut(buf, 0..n)
}

/// Two disjoint exclusive views of one buffer (in either order).
pub(crate) fn pair_mut<'a, B: Memory>(
    b: &'a B,
    buf: &'a mut B::Buffer,
    r1: Range<usize>,
    r2: Range<usize>,
) -> (B::ViewMut<'a>, B::ViewMut<'a>) {
    let (lo, hi, swapped) = if r1.start <= r2.start {
        (r1, r2, false)
    } else {
        (r2, r1, true)
    };
    assert!(lo.end <= hi.start, "pair_mut: ranges overlap");
    let span = b.view_mut(buf, lo.start..hi.end);
    let (first, rest) = B::split_mut(span, lo.len());
    let (_, second) = B::split_mut(rest, hi.start - lo.end);
    if swapped {
        (second, first)
    } else {
        (first, second)
    }
}

/// Sizes of a linear layer applied to `rows` vectors.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Linear {
    pub rows: usize,
    pub inp: usize,
    pub out: usize,
}

impl Linear {
    /// The contract's sizes of this layer.
    fn args(&self) -> LinearArgs {
        LinearArgs {
            rows: self.rows,
            inp: self.inp,
            out: self.out,
        }
    }

    /// `y[rows, out] = x[rows, in] W^T + bias` with `W` stored `[out, in]` (S1).
    pub(crate) fn forward<B: Backend>(
        &self,
        b: &B,
        y: B::ViewMut<'_>,
        x: B::View<'_>,
        w: B::View<'_>,
        bias: B::View<'_>,
    ) -> Res<B> {
        ops::linear_forward(b, y, x, w, bias, &self.args())
    }

    /// Parameter gradients, accumulated: `dW += dy^T x`, `dbias += sum_rows dy`.
    pub(crate) fn backward_params<B: Backend>(
        &self,
        b: &B,
        grads: &mut B::Buffer,
        w: &Range<usize>,
        bias: &Range<usize>,
        dy: B::View<'_>,
        x: B::View<'_>,
    ) -> Res<B> {
        let (dw, dbias) = pair_mut(b, grads, w.clone(), bias.clone());
        ops::linear_backward_params(b, dw, dbias, dy, x, &self.args())
    }

    /// Input gradient `dx = dy W` (written, or accumulated when `accumulate`).
    pub(crate) fn backward_input<B: Backend>(
        &self,
        b: &B,
        dx: B::ViewMut<'_>,
        dy: B::View<'_>,
        w: B::View<'_>,
        accumulate: bool,
    ) -> Res<B> {
        let args = GemmArgs {
            beta: if accumulate { 1.0 } else { 0.0 },
            ..GemmArgs::single(self.rows, self.inp, self.out, false, false)
        };
        ops::gemm(b, dx, dy, w, &args)
    }
}
