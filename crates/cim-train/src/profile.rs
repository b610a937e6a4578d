//! Where a step's time goes: [`Profiled`] wraps any backend and, while it records, times
//! every op call, synchronising the device before and after it so that the wall time
//! between the two belongs to that op alone. Times add up per op name (the trait method's
//! name: "gemm", "layernorm_forward", ...) and, for GEMMs, per shape class; GEMMs and
//! attention also count their FLOPs, so achieved TFLOP/s can be read per op. The linear
//! layers' composite ops go to the inner backend whole (it may fuse their bias work into
//! the GEMM, issue 6) and are timed as themselves, with their GEMM's FLOPs and shape class.
//!
//! Synchronising around every op removes the overlap of launches with execution that an
//! asynchronous device relies on, so on a GPU the ops of a profiled step add up to more
//! than an unprofiled step takes (each op pays its launch latency in full). The shares
//! tell where the time goes; the unprofiled step time says how long a step really takes.
//! While it does not record, the wrapper is a pass-through (one relaxed atomic load per
//! op), and its results are bit-identical to the inner backend's either way.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use cim_spec::backend::{
    AdamWArgs, Attention, AttentionArgs, Backend, Conv, ConvTransposeArgs, Elementwise, Gemm,
    GemmArgs, LinearArgs, MapLossArgs, MapLossOps, Memory, Norm, Optim, PatchArgs, Precision, Role,
    Tokens, XcorrArgs,
};
use serde::Serialize;

/// The sizes that set a GEMM's cost: the key of the per-shape breakdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GemmShape {
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// The contracted size.
    pub k: usize,
    /// Independent products.
    pub batch: usize,
    /// A is stored transposed.
    pub trans_a: bool,
    /// B is stored transposed.
    pub trans_b: bool,
}

impl GemmShape {
    /// The shape class of a call.
    pub fn of(args: &GemmArgs) -> Self {
        GemmShape {
            m: args.m,
            n: args.n,
            k: args.k,
            batch: args.batch,
            trans_a: args.trans_a,
            trans_b: args.trans_b,
        }
    }

    /// FLOPs of one call: 2 per multiply-add.
    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.n) as f64 * (self.k * self.batch) as f64
    }
}

impl fmt::Display for GemmShape {
    /// `m=197 n=2304 k=768 NT`, with ` batch=12` when there are several products; `N`/`T`
    /// say whether A and B are stored as they are or transposed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = |trans| if trans { 'T' } else { 'N' };
        write!(
            f,
            "m={} n={} k={} {}{}",
            self.m,
            self.n,
            self.k,
            t(self.trans_a),
            t(self.trans_b)
        )?;
        if self.batch > 1 {
            write!(f, " batch={}", self.batch)?;
        }
        Ok(())
    }
}

/// FLOPs of an attention call: the two products `q k^T` and `p v` forward
/// (`2 * 2 B Nq Nk D`), twice as many backward (`dp`, `dv`, `dq`, `dk`).
fn attention_flops(a: &AttentionArgs, backward: bool) -> f64 {
    let products = if backward { 4.0 } else { 2.0 };
    products * 2.0 * (a.batch * a.q_len * a.kv_len) as f64 * (a.heads * a.head_dim) as f64
}

/// What the calls of one key added up to.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Totals {
    calls: u64,
    seconds: f64,
    flops: f64,
}

impl Totals {
    fn add(&mut self, seconds: f64, flops: f64) {
        self.calls += 1;
        self.seconds += seconds;
        self.flops += flops;
    }
}

/// One row of a breakdown.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OpTime {
    /// The op ("gemm", "layernorm_forward", ...), or for a GEMM shape class "gemm" and the
    /// shape.
    pub op: String,
    /// Calls in the profiled span.
    pub calls: u64,
    /// Their total time in milliseconds, synchronised before and after each call.
    pub ms: f64,
    /// `ms` over the time of all ops of the span.
    pub share: f64,
    /// Achieved TFLOP/s, for the ops whose FLOPs are counted (GEMM, attention).
    pub tflops: Option<f64>,
}

/// The times recorded by [`Profiled::record`].
#[derive(Clone, Debug, Default)]
pub struct Profile {
    ops: BTreeMap<&'static str, Totals>,
    gemm_shapes: BTreeMap<GemmShape, Totals>,
}

impl Profile {
    /// Seconds of all ops together.
    pub fn total_seconds(&self) -> f64 {
        self.ops.values().map(|t| t.seconds).sum()
    }

    /// One row per op, most time first.
    pub fn ops(&self) -> Vec<OpTime> {
        self.rows(self.ops.iter().map(|(op, t)| (op.to_string(), t)))
    }

    /// One row per GEMM shape class, most time first.
    pub fn gemm_shapes(&self) -> Vec<OpTime> {
        self.rows(
            self.gemm_shapes
                .iter()
                .map(|(shape, t)| (format!("gemm {shape}"), t)),
        )
    }

    fn rows<'t>(&self, keyed: impl Iterator<Item = (String, &'t Totals)>) -> Vec<OpTime> {
        let total = self.total_seconds();
        let mut rows: Vec<OpTime> = keyed
            .map(|(op, t)| OpTime {
                op,
                calls: t.calls,
                ms: t.seconds * 1e3,
                share: if total > 0.0 { t.seconds / total } else { 0.0 },
                tflops: (t.flops > 0.0 && t.seconds > 0.0).then(|| t.flops / t.seconds / 1e12),
            })
            .collect();
        rows.sort_by(|a, b| b.ms.total_cmp(&a.ms).then_with(|| a.op.cmp(&b.op)));
        rows
    }
}

/// A backend that delegates every op to `B` and, inside [`Profiled::record`], times each
/// call. Buffers, views and errors are `B`'s own, so a model built on the wrapper holds
/// ordinary `B` buffers.
pub struct Profiled<'a, B: Backend> {
    inner: &'a B,
    recording: AtomicBool,
    profile: Mutex<Profile>,
}

impl<'a, B: Backend> Profiled<'a, B> {
    /// A pass-through wrapper of `inner` until [`Profiled::record`] is called.
    pub fn new(inner: &'a B) -> Self {
        Profiled {
            inner,
            recording: AtomicBool::new(false),
            profile: Mutex::new(Profile::default()),
        }
    }

    /// Runs `work` with every op timed, and returns its result with the op times.
    pub fn record<R>(&self, work: impl FnOnce() -> R) -> (R, Profile) {
        *self.lock() = Profile::default();
        self.recording.store(true, Ordering::Relaxed);
        let out = work();
        self.recording.store(false, Ordering::Relaxed);
        (out, std::mem::take(&mut *self.lock()))
    }

    fn lock(&self) -> MutexGuard<'_, Profile> {
        self.profile.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `call`; while recording, between two synchronisations, adding its time and
    /// `flops` to `op` (and to `shape`'s class when it is a GEMM).
    fn time<R>(
        &self,
        op: &'static str,
        flops: f64,
        shape: Option<GemmShape>,
        call: impl FnOnce() -> Result<R, B::Error>,
    ) -> Result<R, B::Error> {
        if !self.recording.load(Ordering::Relaxed) {
            return call();
        }
        self.inner.synchronize()?;
        let start = Instant::now();
        let out = call()?;
        self.inner.synchronize()?;
        let seconds = start.elapsed().as_secs_f64();
        let mut profile = self.lock();
        profile.ops.entry(op).or_default().add(seconds, flops);
        if let Some(shape) = shape {
            profile
                .gemm_shapes
                .entry(shape)
                .or_default()
                .add(seconds, flops);
        }
        Ok(out)
    }
}

/// `timed!(self.op(args..))` runs the inner backend's `op` under [`Profiled::time`],
/// keyed by the op's name; `timed!(self.op(args..), flops)` also counts its FLOPs.
macro_rules! timed {
    ($self:ident . $op:ident ( $($arg:expr),* )) => {
        timed!($self.$op($($arg),*), 0.0)
    };
    ($self:ident . $op:ident ( $($arg:expr),* ), $flops:expr) => {
        $self.time(stringify!($op), $flops, None, || $self.inner.$op($($arg),*))
    };
}

impl<B: Backend> Memory for Profiled<'_, B> {
    type Error = B::Error;
    type Buffer = B::Buffer;
    type View<'v>
        = B::View<'v>
    where
        Self: 'v;
    type ViewMut<'v>
        = B::ViewMut<'v>
    where
        Self: 'v;

    fn alloc(&self, len: usize, role: Role) -> Result<B::Buffer, B::Error> {
        timed!(self.alloc(len, role))
    }
    fn buffer_len(buf: &B::Buffer) -> usize {
        B::buffer_len(buf)
    }
    fn view_len(view: &B::View<'_>) -> usize {
        B::view_len(view)
    }
    fn view_mut_len(view: &B::ViewMut<'_>) -> usize {
        B::view_mut_len(view)
    }
    fn view<'v>(&'v self, buf: &'v B::Buffer, range: Range<usize>) -> B::View<'v> {
        self.inner.view(buf, range)
    }
    fn view_mut<'v>(&'v self, buf: &'v mut B::Buffer, range: Range<usize>) -> B::ViewMut<'v> {
        self.inner.view_mut(buf, range)
    }
    fn reborrow<'b>(view: &'b mut B::ViewMut<'_>) -> B::ViewMut<'b>
    where
        Self: 'b,
    {
        B::reborrow(view)
    }
    fn as_view<'b>(view: &'b B::ViewMut<'_>) -> B::View<'b>
    where
        Self: 'b,
    {
        B::as_view(view)
    }
    fn sub_view<'v>(view: B::View<'v>, range: Range<usize>) -> B::View<'v> {
        B::sub_view(view, range)
    }
    fn split_mut<'v>(view: B::ViewMut<'v>, at: usize) -> (B::ViewMut<'v>, B::ViewMut<'v>) {
        B::split_mut(view, at)
    }
    fn upload(&self, dst: B::ViewMut<'_>, src: &[f32]) -> Result<(), B::Error> {
        timed!(self.upload(dst, src))
    }
    fn download(&self, src: B::View<'_>, dst: &mut [f32]) -> Result<(), B::Error> {
        timed!(self.download(src, dst))
    }
    fn copy(&self, dst: B::ViewMut<'_>, src: B::View<'_>) -> Result<(), B::Error> {
        timed!(self.copy(dst, src))
    }
    fn fill(&self, dst: B::ViewMut<'_>, value: f32) -> Result<(), B::Error> {
        timed!(self.fill(dst, value))
    }
    fn synchronize(&self) -> Result<(), B::Error> {
        self.inner.synchronize()
    }
}

impl<B: Backend> Gemm for Profiled<'_, B> {
    fn gemm(
        &self,
        c: B::ViewMut<'_>,
        a: B::View<'_>,
        b: B::View<'_>,
        args: &GemmArgs,
    ) -> Result<(), B::Error> {
        let shape = GemmShape::of(args);
        self.time("gemm", shape.flops(), Some(shape), || {
            self.inner.gemm(c, a, b, args)
        })
    }
}

impl<B: Backend> Elementwise for Profiled<'_, B> {
    fn add_assign(&self, x: B::ViewMut<'_>, y: B::View<'_>) -> Result<(), B::Error> {
        timed!(self.add_assign(x, y))
    }
    fn scale(&self, x: B::ViewMut<'_>, alpha: f32) -> Result<(), B::Error> {
        timed!(self.scale(x, alpha))
    }
    fn add_broadcast(
        &self,
        out: B::ViewMut<'_>,
        v: B::View<'_>,
        outer: usize,
        len: usize,
        inner: usize,
    ) -> Result<(), B::Error> {
        timed!(self.add_broadcast(out, v, outer, len, inner))
    }
    fn sum_broadcast(
        &self,
        dv: B::ViewMut<'_>,
        dout: B::View<'_>,
        outer: usize,
        len: usize,
        inner: usize,
    ) -> Result<(), B::Error> {
        timed!(self.sum_broadcast(dv, dout, outer, len, inner))
    }
    fn repeat_forward(
        &self,
        out: B::ViewMut<'_>,
        x: B::View<'_>,
        batch: usize,
        copies: usize,
        len: usize,
    ) -> Result<(), B::Error> {
        timed!(self.repeat_forward(out, x, batch, copies, len))
    }
    fn repeat_backward(
        &self,
        dx: B::ViewMut<'_>,
        dout: B::View<'_>,
        batch: usize,
        copies: usize,
        len: usize,
    ) -> Result<(), B::Error> {
        timed!(self.repeat_backward(dx, dout, batch, copies, len))
    }
    fn gelu_forward(&self, out: B::ViewMut<'_>, x: B::View<'_>) -> Result<(), B::Error> {
        timed!(self.gelu_forward(out, x))
    }
    fn gelu_backward(&self, d: B::ViewMut<'_>, x: B::View<'_>) -> Result<(), B::Error> {
        timed!(self.gelu_backward(d, x))
    }
}

impl<B: Backend> Norm for Profiled<'_, B> {
    fn layernorm_forward(
        &self,
        out: B::ViewMut<'_>,
        mean: B::ViewMut<'_>,
        rstd: B::ViewMut<'_>,
        x: B::View<'_>,
        gamma: B::View<'_>,
        beta: B::View<'_>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(), B::Error> {
        timed!(self.layernorm_forward(out, mean, rstd, x, gamma, beta, rows, cols, eps))
    }
    fn layernorm_backward(
        &self,
        dx: B::ViewMut<'_>,
        dgamma: B::ViewMut<'_>,
        dbeta: B::ViewMut<'_>,
        dout: B::View<'_>,
        x: B::View<'_>,
        gamma: B::View<'_>,
        mean: B::View<'_>,
        rstd: B::View<'_>,
        rows: usize,
        cols: usize,
    ) -> Result<(), B::Error> {
        timed!(self.layernorm_backward(dx, dgamma, dbeta, dout, x, gamma, mean, rstd, rows, cols))
    }
}

impl<B: Backend> Attention for Profiled<'_, B> {
    fn self_attention_forward(
        &self,
        out: B::ViewMut<'_>,
        probs: B::ViewMut<'_>,
        qkv: B::View<'_>,
        args: &AttentionArgs,
    ) -> Result<(), B::Error> {
        timed!(
            self.self_attention_forward(out, probs, qkv, args),
            attention_flops(args, false)
        )
    }
    fn self_attention_backward(
        &self,
        dqkv: B::ViewMut<'_>,
        scratch: B::ViewMut<'_>,
        dout: B::View<'_>,
        qkv: B::View<'_>,
        probs: B::View<'_>,
        args: &AttentionArgs,
    ) -> Result<(), B::Error> {
        timed!(
            self.self_attention_backward(dqkv, scratch, dout, qkv, probs, args),
            attention_flops(args, true)
        )
    }
    fn cross_attention_forward(
        &self,
        out: B::ViewMut<'_>,
        probs: B::ViewMut<'_>,
        q: B::View<'_>,
        kv: B::View<'_>,
        args: &AttentionArgs,
    ) -> Result<(), B::Error> {
        timed!(
            self.cross_attention_forward(out, probs, q, kv, args),
            attention_flops(args, false)
        )
    }
    fn cross_attention_backward(
        &self,
        dq: B::ViewMut<'_>,
        dkv: B::ViewMut<'_>,
        scratch: B::ViewMut<'_>,
        dout: B::View<'_>,
        q: B::View<'_>,
        kv: B::View<'_>,
        probs: B::View<'_>,
        args: &AttentionArgs,
    ) -> Result<(), B::Error> {
        timed!(
            self.cross_attention_backward(dq, dkv, scratch, dout, q, kv, probs, args),
            attention_flops(args, true)
        )
    }
}

impl<B: Backend> Tokens for Profiled<'_, B> {
    fn patchify(
        &self,
        out: B::ViewMut<'_>,
        img: B::View<'_>,
        args: &PatchArgs,
    ) -> Result<(), B::Error> {
        timed!(self.patchify(out, img, args))
    }
    fn prepend_cls_forward(
        &self,
        out: B::ViewMut<'_>,
        patches: B::View<'_>,
        cls: B::View<'_>,
        batch: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<(), B::Error> {
        timed!(self.prepend_cls_forward(out, patches, cls, batch, tokens, dim))
    }
    fn prepend_cls_backward(
        &self,
        dpatches: Option<B::ViewMut<'_>>,
        dcls: B::ViewMut<'_>,
        dout: B::View<'_>,
        batch: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<(), B::Error> {
        timed!(self.prepend_cls_backward(dpatches, dcls, dout, batch, tokens, dim))
    }
    fn mean_pool_forward(
        &self,
        out: B::ViewMut<'_>,
        x: B::View<'_>,
        batch: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<(), B::Error> {
        timed!(self.mean_pool_forward(out, x, batch, tokens, dim))
    }
    fn mean_pool_backward(
        &self,
        dx: B::ViewMut<'_>,
        dout: B::View<'_>,
        batch: usize,
        tokens: usize,
        dim: usize,
    ) -> Result<(), B::Error> {
        timed!(self.mean_pool_backward(dx, dout, batch, tokens, dim))
    }
    fn upsample_bilinear_forward(
        &self,
        out: B::ViewMut<'_>,
        x: B::View<'_>,
        planes: usize,
        in_h: usize,
        in_w: usize,
        out_h: usize,
        out_w: usize,
    ) -> Result<(), B::Error> {
        timed!(self.upsample_bilinear_forward(out, x, planes, in_h, in_w, out_h, out_w))
    }
    fn upsample_bilinear_backward(
        &self,
        dx: B::ViewMut<'_>,
        dout: B::View<'_>,
        planes: usize,
        in_h: usize,
        in_w: usize,
        out_h: usize,
        out_w: usize,
    ) -> Result<(), B::Error> {
        timed!(self.upsample_bilinear_backward(dx, dout, planes, in_h, in_w, out_h, out_w))
    }
}

impl<B: Backend> Conv for Profiled<'_, B> {
    fn depthwise_xcorr_forward(
        &self,
        out: B::ViewMut<'_>,
        x: B::View<'_>,
        t: B::View<'_>,
        args: &XcorrArgs,
    ) -> Result<(), B::Error> {
        timed!(self.depthwise_xcorr_forward(out, x, t, args))
    }
    fn depthwise_xcorr_backward(
        &self,
        dx: B::ViewMut<'_>,
        dt: B::ViewMut<'_>,
        dout: B::View<'_>,
        x: B::View<'_>,
        t: B::View<'_>,
        args: &XcorrArgs,
    ) -> Result<(), B::Error> {
        timed!(self.depthwise_xcorr_backward(dx, dt, dout, x, t, args))
    }
    fn conv_transpose_forward(
        &self,
        out: B::ViewMut<'_>,
        x: B::View<'_>,
        weight: B::View<'_>,
        bias: B::View<'_>,
        args: &ConvTransposeArgs,
    ) -> Result<(), B::Error> {
        timed!(self.conv_transpose_forward(out, x, weight, bias, args))
    }
    fn conv_transpose_backward(
        &self,
        dx: B::ViewMut<'_>,
        dweight: B::ViewMut<'_>,
        dbias: B::ViewMut<'_>,
        dout: B::View<'_>,
        x: B::View<'_>,
        weight: B::View<'_>,
        args: &ConvTransposeArgs,
    ) -> Result<(), B::Error> {
        timed!(self.conv_transpose_backward(dx, dweight, dbias, dout, x, weight, args))
    }
}

impl<B: Backend> MapLossOps for Profiled<'_, B> {
    fn map_loss_forward(
        &self,
        loss: B::ViewMut<'_>,
        logits: B::View<'_>,
        target: B::View<'_>,
        args: &MapLossArgs,
    ) -> Result<(), B::Error> {
        timed!(self.map_loss_forward(loss, logits, target, args))
    }
    fn map_loss_backward(
        &self,
        dlogits: B::ViewMut<'_>,
        logits: B::View<'_>,
        target: B::View<'_>,
        args: &MapLossArgs,
    ) -> Result<(), B::Error> {
        timed!(self.map_loss_backward(dlogits, logits, target, args))
    }
}

impl<B: Backend> Optim for Profiled<'_, B> {
    fn adamw_update(
        &self,
        param: B::ViewMut<'_>,
        m: B::ViewMut<'_>,
        v: B::ViewMut<'_>,
        grad: B::View<'_>,
        args: &AdamWArgs,
    ) -> Result<(), B::Error> {
        timed!(self.adamw_update(param, m, v, grad, args))
    }
    fn ema_update(
        &self,
        target: B::ViewMut<'_>,
        online: B::View<'_>,
        momentum: f64,
    ) -> Result<(), B::Error> {
        timed!(self.ema_update(target, online, momentum))
    }
    fn sum_squares(&self, out: B::ViewMut<'_>, x: B::View<'_>) -> Result<(), B::Error> {
        timed!(self.sum_squares(out, x))
    }
    fn clip_by_norm(
        &self,
        x: B::ViewMut<'_>,
        norm_sq: B::View<'_>,
        max_norm: f32,
    ) -> Result<(), B::Error> {
        timed!(self.clip_by_norm(x, norm_sq, max_norm))
    }
}

impl<B: Backend> Backend for Profiled<'_, B> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn precision(&self) -> Precision {
        self.inner.precision()
    }
    fn linear_forward(
        &self,
        y: B::ViewMut<'_>,
        x: B::View<'_>,
        weight: B::View<'_>,
        bias: B::View<'_>,
        args: &LinearArgs,
    ) -> Result<(), B::Error> {
        let shape = GemmShape::of(&args.forward_gemm());
        self.time("linear_forward", shape.flops(), Some(shape), || {
            self.inner.linear_forward(y, x, weight, bias, args)
        })
    }
    fn linear_backward_params(
        &self,
        dweight: B::ViewMut<'_>,
        dbias: B::ViewMut<'_>,
        dy: B::View<'_>,
        x: B::View<'_>,
        args: &LinearArgs,
    ) -> Result<(), B::Error> {
        let shape = GemmShape::of(&args.weight_gradient_gemm());
        self.time("linear_backward_params", shape.flops(), Some(shape), || {
            self.inner
                .linear_backward_params(dweight, dbias, dy, x, args)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::train_step;
    use crate::synthetic;
    use cim_model::{Batch, Cim};
    use cim_reference::Reference;
    use cim_spec::config::{Correlation, ModelConfig, Predictor};
    use cim_spec::schedule::AdamW;

    /// Every buffer of the model after one training step on `b` (the reference's f64
    /// buffers, so the comparison is bit for bit).
    fn step<B>(b: &B, config: ModelConfig) -> Vec<Vec<f64>>
    where
        B: Backend<Buffer = Vec<f64>>,
    {
        let mut model = Cim::new(b, config, 2, 7).unwrap();
        let host = synthetic::batch(&config, 2, 7).unwrap();
        let mut inputs = Batch::new(b, &config, 2).unwrap();
        inputs
            .upload(b, &host.context, &host.exemplars, &host.maps)
            .unwrap();
        train_step(b, &mut model, &inputs, &AdamW::default()).unwrap();
        let mut out: Vec<Vec<f64>> = model.buffers().into_iter().cloned().collect();
        out.push(model.loss().clone());
        out
    }

    fn bits(buffers: &[Vec<f64>]) -> Vec<Vec<u64>> {
        buffers
            .iter()
            .map(|v| v.iter().map(|x| x.to_bits()).collect())
            .collect()
    }

    /// The micro model with the decoder options that exercise different ops.
    fn configs() -> [(ModelConfig, &'static [&'static str]); 2] {
        let plain = ModelConfig::micro();
        let mut conv = plain;
        conv.decoder.correlation = Correlation::Conv;
        conv.decoder.predictor = Predictor::Deconv;
        [
            (
                plain,
                &[
                    "cross_attention_forward",
                    "cross_attention_backward",
                    "upsample_bilinear_forward",
                    "upsample_bilinear_backward",
                ],
            ),
            (
                conv,
                &[
                    "depthwise_xcorr_forward",
                    "depthwise_xcorr_backward",
                    "conv_transpose_forward",
                    "conv_transpose_backward",
                ],
            ),
        ]
    }

    /// The ops of every training step, whatever the decoder options.
    const COMMON_OPS: &[&str] = &[
        "fill",
        "patchify",
        "gemm",
        "linear_forward",
        "linear_backward_params",
        "add_broadcast",
        "prepend_cls_forward",
        "prepend_cls_backward",
        "layernorm_forward",
        "layernorm_backward",
        "self_attention_forward",
        "self_attention_backward",
        "add_assign",
        "gelu_forward",
        "gelu_backward",
        "repeat_forward",
        "repeat_backward",
        "map_loss_forward",
        "map_loss_backward",
        "sum_squares",
        "download",
        "adamw_update",
        "ema_update",
    ];

    #[test]
    fn a_profiled_step_equals_a_plain_one_and_times_every_op() {
        let plain = Reference::new();
        for (config, decoder_ops) in configs() {
            let profiled = Profiled::new(&plain);
            let (buffers, profile) = profiled.record(|| step(&profiled, config));
            assert_eq!(bits(&buffers), bits(&step(&plain, config)));

            let rows = profile.ops();
            let recorded: Vec<&str> = rows.iter().map(|r| r.op.as_str()).collect();
            for op in COMMON_OPS.iter().chain(decoder_ops) {
                assert!(recorded.contains(op), "{op} missing from {recorded:?}");
            }
            assert!(
                rows.windows(2).all(|w| w[0].ms >= w[1].ms),
                "sorted by time"
            );
            let shares: f64 = rows.iter().map(|r| r.share).sum();
            assert!((shares - 1.0).abs() < 1e-9, "shares add up to {shares}");
            // FLOPs are counted for GEMMs, linear layers and attention only, and the GEMM
            // shape classes add up to the GEMM and linear rows.
            let with_gemm = |op: &str| op == "gemm" || op.starts_with("linear_");
            for r in &rows {
                let counted = with_gemm(&r.op) || r.op.contains("attention");
                assert_eq!(r.tflops.is_some(), counted, "{}", r.op);
            }
            let gemm_calls: u64 = rows
                .iter()
                .filter(|r| with_gemm(&r.op))
                .map(|r| r.calls)
                .sum();
            let shapes = profile.gemm_shapes();
            assert_eq!(shapes.iter().map(|r| r.calls).sum::<u64>(), gemm_calls);
            assert!(shapes.iter().all(|r| r.op.starts_with("gemm m=")));
        }
    }

    #[test]
    fn ops_outside_record_are_not_timed() {
        let plain = Reference::new();
        let profiled = Profiled::new(&plain);
        step(&profiled, ModelConfig::micro());
        let ((), profile) = profiled.record(|| ());
        assert!(profile.ops().is_empty());
    }

    #[test]
    fn gemm_shape_flops_and_names() {
        let mut args = GemmArgs::single(197, 2304, 768, false, true);
        let shape = GemmShape::of(&args);
        assert_eq!(shape.flops(), 2.0 * 197.0 * 2304.0 * 768.0);
        assert_eq!(shape.to_string(), "m=197 n=2304 k=768 NT");
        args.batch = 12;
        args.trans_b = false;
        assert_eq!(
            GemmShape::of(&args).to_string(),
            "m=197 n=2304 k=768 NN batch=12"
        );
        assert_eq!(GemmShape::of(&args).flops(), 12.0 * shape.flops());
    }
}
