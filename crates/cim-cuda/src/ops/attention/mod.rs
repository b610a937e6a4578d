//! [`Attention`] on the device (S3 self-attention, S4 cross-attention): the launches of the
//! kernels in `kernels.cu` and the shared-memory plan of each.
//!
//! The forward is one kernel; the backward is two, one over query rows (dS into `scratch`,
//! then dq) and one over keys (dk and dv from dS and P, summed over the query rows in
//! order). Self- and cross-attention launch the same kernels and differ only in the base
//! addresses and token strides of q, k and v (the thirds of `qkv`, or `q` and the halves of
//! `kv`) and of their gradients.

use cim_spec::backend::{Attention, AttentionArgs};

use super::kernels::attention as k;
use crate::device::{DEFAULT_SHARED_BYTES, Device, LaunchDims};
use crate::error::CudaError;
use crate::{Cuda, DeviceView, DeviceViewMut, F32_BYTES};

/// Rows (queries, or keys in the key pass) each warp owns; fixed by the kernels' `Rows4`.
const ROWS_PER_WARP: usize = 4;
/// Warps per block at most.
const MAX_WARPS: usize = 8;
/// Fewer staged tokens than this per chunk would leave lanes idle; a smaller block is
/// preferred then.
const MIN_CHUNK: usize = 32;

/// The address `elements` f32 values after `ptr`.
fn offset(ptr: u64, elements: usize) -> u64 {
    ptr + elements as u64 * F32_BYTES
}

/// Where one call's q, k and v live: base addresses and elements between tokens.
struct Inputs {
    q: u64,
    k: u64,
    v: u64,
    q_stride: usize,
    kv_stride: usize,
}

/// Where the backward's gradients go, with the same meaning as [`Inputs`].
struct Gradients {
    dq: u64,
    dk: u64,
    dv: u64,
    dq_stride: usize,
    dkv_stride: usize,
}

impl Inputs {
    fn self_attention(qkv: &DeviceView<'_>, dim: usize) -> Self {
        let ptr = qkv.ptr();
        Inputs {
            q: ptr,
            k: offset(ptr, dim),
            v: offset(ptr, 2 * dim),
            q_stride: 3 * dim,
            kv_stride: 3 * dim,
        }
    }

    fn cross_attention(q: &DeviceView<'_>, kv: &DeviceView<'_>, dim: usize) -> Self {
        Inputs {
            q: q.ptr(),
            k: kv.ptr(),
            v: offset(kv.ptr(), dim),
            q_stride: dim,
            kv_stride: 2 * dim,
        }
    }
}

/// The sizes as the kernels take them.
struct Sizes {
    heads: i32,
    q_len: i32,
    kv_len: i32,
    head_dim: i32,
    /// Blocks in x: one per (sequence, head).
    sequences_x_heads: u32,
    scale: f32,
}

fn int(value: usize, what: &str) -> Result<i32, CudaError> {
    i32::try_from(value).map_err(|_| {
        CudaError::invalid(format!(
            "attention: {what} = {value} does not fit the kernels' int"
        ))
    })
}

impl Sizes {
    fn new(args: &AttentionArgs) -> Result<Self, CudaError> {
        let blocks = args.batch * args.heads;
        Ok(Sizes {
            heads: int(args.heads, "heads")?,
            q_len: int(args.q_len, "q_len")?,
            kv_len: int(args.kv_len, "kv_len")?,
            head_dim: int(args.head_dim, "head_dim")?,
            sequences_x_heads: int(blocks, "batch * heads")? as u32,
            scale: (1.0 / (args.head_dim as f64).sqrt()) as f32,
        })
    }
}

/// One launch's shape: warps per block, tokens staged per chunk, dynamic shared memory.
struct Plan {
    warps: usize,
    chunk: usize,
    shared_bytes: usize,
}

impl Plan {
    /// `rows` are shared out four per warp (tiles of at most 8 warps, balanced); `items`
    /// tokens go through shared memory `chunk` at a time; `floats(warps)` is the kernel's
    /// shared memory in floats: (fixed part, part per staged token). The smallest limit and
    /// then the most warps that still stage `MIN_CHUNK` tokens (or all of them) win: the
    /// default 48 KiB (a block that size leaves room for four per H100 SM, and fits 8 warps
    /// for up to ~200 keys of 64 channels) before the device's opt-in `max_shared`.
    fn new(
        rows: usize,
        items: usize,
        max_shared: usize,
        floats: impl Fn(usize) -> (usize, usize),
    ) -> Result<Self, CudaError> {
        let tiles = rows.div_ceil(ROWS_PER_WARP * MAX_WARPS).max(1);
        let want = rows
            .div_ceil(tiles)
            .div_ceil(ROWS_PER_WARP)
            .clamp(1, MAX_WARPS);
        let min_chunk = items.clamp(1, MIN_CHUNK);
        for limit in [DEFAULT_SHARED_BYTES, max_shared.max(DEFAULT_SHARED_BYTES)] {
            for warps in (1..=want).rev() {
                let (fixed, per_item) = floats(warps);
                let fit = (limit / 4).saturating_sub(fixed) / per_item;
                if fit >= min_chunk {
                    let chunk = fit.min(items).max(1);
                    return Ok(Plan {
                        warps,
                        chunk,
                        shared_bytes: 4 * (fixed + chunk * per_item),
                    });
                }
            }
        }
        Err(CudaError::invalid(format!(
            "attention: {rows} x {items} tokens need more than the {max_shared} bytes of \
             shared memory a block may have on this device"
        )))
    }

    /// Blocks (one per sequence and head, then tiles of `rows`), threads, shared memory.
    fn dims(&self, sizes: &Sizes, rows: usize) -> LaunchDims {
        let tiles = rows.div_ceil(ROWS_PER_WARP * self.warps).clamp(1, 65535) as u32;
        LaunchDims {
            grid: (sizes.sequences_x_heads, tiles, 1),
            block: (32 * self.warps as u32, 1, 1),
            shared_bytes: self.shared_bytes as u32,
        }
    }
}

/// The shared memory of a row pass (`kernels.cu`, `AttentionRowsArgs`).
fn rows_plan(args: &AttentionArgs, max_shared: usize) -> Result<Plan, CudaError> {
    let (hd, nk) = (args.head_dim, args.kv_len);
    Plan::new(args.q_len, nk, max_shared, |warps| {
        (ROWS_PER_WARP * warps * (nk + hd), hd | 1)
    })
}

fn forward<D: Device>(
    backend: &Cuda<D>,
    out: DeviceViewMut<'_>,
    probs: DeviceViewMut<'_>,
    inputs: Inputs,
    args: &AttentionArgs,
) -> Result<(), CudaError> {
    if args.batch == 0 || args.q_len == 0 {
        return Ok(());
    }
    let sizes = Sizes::new(args)?;
    let plan = rows_plan(args, backend.device.max_shared_bytes())?;
    let params = k::AttentionRowsArgs {
        y: out.ptr(),
        row_out: probs.ptr(),
        // Read by the backward only.
        probs: 0,
        x: inputs.q,
        first: inputs.k,
        second: inputs.v,
        x_stride: inputs.q_stride as i64,
        y_stride: (args.heads * args.head_dim) as i64,
        kv_stride: inputs.kv_stride as i64,
        heads: sizes.heads,
        q_len: sizes.q_len,
        kv_len: sizes.kv_len,
        head_dim: sizes.head_dim,
        chunk: int(plan.chunk, "chunk")?,
        score_scale: sizes.scale,
        y_scale: 1.0,
    };
    backend.launch(&k::ATTENTION_FORWARD, plan.dims(&sizes, args.q_len), params)
}

fn backward<D: Device>(
    backend: &Cuda<D>,
    grads: Gradients,
    scratch: DeviceViewMut<'_>,
    dout: DeviceView<'_>,
    inputs: Inputs,
    probs: DeviceView<'_>,
    args: &AttentionArgs,
) -> Result<(), CudaError> {
    if args.batch == 0 {
        return Ok(());
    }
    let sizes = Sizes::new(args)?;
    let dim = args.heads * args.head_dim;
    if args.q_len > 0 {
        let plan = rows_plan(args, backend.device.max_shared_bytes())?;
        let params = k::AttentionRowsArgs {
            y: grads.dq,
            row_out: scratch.ptr(),
            probs: probs.ptr(),
            x: dout.ptr(),
            first: inputs.v,
            second: inputs.k,
            x_stride: dim as i64,
            y_stride: grads.dq_stride as i64,
            kv_stride: inputs.kv_stride as i64,
            heads: sizes.heads,
            q_len: sizes.q_len,
            kv_len: sizes.kv_len,
            head_dim: sizes.head_dim,
            chunk: int(plan.chunk, "chunk")?,
            score_scale: 1.0,
            y_scale: sizes.scale,
        };
        backend.launch(
            &k::ATTENTION_BACKWARD_ROWS,
            plan.dims(&sizes, args.q_len),
            params,
        )?;
    }
    // With no queries this writes dk = dv = 0, the empty sums.
    let hd = args.head_dim;
    let plan = Plan::new(
        args.kv_len,
        args.q_len,
        backend.device.max_shared_bytes(),
        |warps| {
            (
                2 * ROWS_PER_WARP * warps * hd,
                2 * ROWS_PER_WARP * warps + 2 * (hd | 1),
            )
        },
    )?;
    let params = k::AttentionKeysArgs {
        dk: grads.dk,
        dv: grads.dv,
        dscores: scratch.ptr(),
        probs: probs.ptr(),
        q: inputs.q,
        dout: dout.ptr(),
        q_stride: inputs.q_stride as i64,
        dout_stride: dim as i64,
        dkv_stride: grads.dkv_stride as i64,
        heads: sizes.heads,
        q_len: sizes.q_len,
        kv_len: sizes.kv_len,
        head_dim: sizes.head_dim,
        chunk: int(plan.chunk, "chunk")?,
        scale: sizes.scale,
    };
    backend.launch(
        &k::ATTENTION_BACKWARD_KEYS,
        plan.dims(&sizes, args.kv_len),
        params,
    )
}

impl<D: Device> Attention for Cuda<D> {
    fn self_attention_forward(
        &self,
        out: DeviceViewMut<'_>,
        probs: DeviceViewMut<'_>,
        qkv: DeviceView<'_>,
        args: &AttentionArgs,
    ) -> Result<(), CudaError> {
        let inputs = Inputs::self_attention(&qkv, args.heads * args.head_dim);
        forward(self, out, probs, inputs, args)
    }

    fn self_attention_backward(
        &self,
        dqkv: DeviceViewMut<'_>,
        scratch: DeviceViewMut<'_>,
        dout: DeviceView<'_>,
        qkv: DeviceView<'_>,
        probs: DeviceView<'_>,
        args: &AttentionArgs,
    ) -> Result<(), CudaError> {
        let dim = args.heads * args.head_dim;
        let grads = Gradients {
            dq: dqkv.ptr(),
            dk: offset(dqkv.ptr(), dim),
            dv: offset(dqkv.ptr(), 2 * dim),
            dq_stride: 3 * dim,
            dkv_stride: 3 * dim,
        };
        let inputs = Inputs::self_attention(&qkv, dim);
        backward(self, grads, scratch, dout, inputs, probs, args)
    }

    fn cross_attention_forward(
        &self,
        out: DeviceViewMut<'_>,
        probs: DeviceViewMut<'_>,
        q: DeviceView<'_>,
        kv: DeviceView<'_>,
        args: &AttentionArgs,
    ) -> Result<(), CudaError> {
        let inputs = Inputs::cross_attention(&q, &kv, args.heads * args.head_dim);
        forward(self, out, probs, inputs, args)
    }

    fn cross_attention_backward(
        &self,
        dq: DeviceViewMut<'_>,
        dkv: DeviceViewMut<'_>,
        scratch: DeviceViewMut<'_>,
        dout: DeviceView<'_>,
        q: DeviceView<'_>,
        kv: DeviceView<'_>,
        probs: DeviceView<'_>,
        args: &AttentionArgs,
    ) -> Result<(), CudaError> {
        let dim = args.heads * args.head_dim;
        let grads = Gradients {
            dq: dq.ptr(),
            dk: dkv.ptr(),
            dv: offset(dkv.ptr(), dim),
            dq_stride: dim,
            dkv_stride: 2 * dim,
        };
        let inputs = Inputs::cross_attention(&q, &kv, dim);
        backward(self, grads, scratch, dout, inputs, probs, args)
    }
}

#[cfg(test)]
mod tests {
    //! Sizes the conformance strategies (at most 17 tokens of 16 channels) do not reach:
    //! CIM's own (ViT-B's 101 context tokens of 64 channels, the decoder's 101 queries on
    //! 17 keys of 32 channels), keys and queries staged in several chunks, several row
    //! tiles per head, and head_dim above 64; checked against the reference on the emulator.
    use conformance::cases::AttentionCase;

    use super::*;

    fn args(
        batch: usize,
        q_len: usize,
        kv_len: usize,
        heads: usize,
        head_dim: usize,
    ) -> AttentionArgs {
        AttentionArgs {
            batch,
            q_len,
            kv_len,
            heads,
            head_dim,
        }
    }

    fn case(seed: u64, args: AttentionArgs) -> AttentionCase {
        AttentionCase {
            seed,
            args,
            qk_scale: 1.0,
            v_scale: 1.0,
            grad_scale: 1.0,
        }
    }

    /// sm_90's opt-in limit.
    const H100: usize = 227 * 1024;

    #[test]
    fn plans_stage_what_fits_and_balance_the_tiles() {
        // ViT-B context: 4 tiles of 7 warps (28 rows) rather than 32 + 32 + 32 + 5, and
        // all 101 keys staged at once within the default limit.
        let plan = rows_plan(&args(1, 101, 101, 12, 64), H100).unwrap();
        assert_eq!((plan.warps, plan.chunk), (7, 101));
        assert!(plan.shared_bytes <= DEFAULT_SHARED_BYTES);
        // 300 keys of 64 channels go through in chunks of 32.
        let plan = rows_plan(&args(1, 300, 300, 1, 64), H100).unwrap();
        assert_eq!(plan.chunk, 32);
        assert!(plan.shared_bytes <= DEFAULT_SHARED_BYTES);
    }

    #[test]
    fn long_sequences_match_the_reference() {
        let backend = Cuda::emulated();
        let self_cases = [
            args(2, 101, 101, 2, 64),
            args(1, 300, 300, 1, 64),
            args(1, 257, 257, 1, 80),
        ];
        for (seed, a) in self_cases.into_iter().enumerate() {
            let c = case(seed as u64, a);
            conformance::self_attention_forward_case(&backend, &c).unwrap();
            conformance::self_attention_backward_case(&backend, &c).unwrap();
        }
        let cross_cases = [
            args(2, 101, 17, 2, 32),
            args(1, 40, 300, 2, 64),
            args(2, 0, 5, 2, 3),
        ];
        for (seed, a) in cross_cases.into_iter().enumerate() {
            let c = case(10 + seed as u64, a);
            conformance::cross_attention_forward_case(&backend, &c).unwrap();
            conformance::cross_attention_backward_case(&backend, &c).unwrap();
        }
    }
}
