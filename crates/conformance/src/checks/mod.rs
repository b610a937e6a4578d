//! The checks: one generic function per op direction of the contract, plus the
//! determinism rerun and the NaN-propagation check.
//!
//! Each `<op>_case(backend, case)` builds its inputs from the case, runs the op through
//! `cim_spec::ops` on the backend and on the reference, and compares every output under
//! `tolerance(Op::..., backend.precision())`; it returns a [`crate::Mismatch`] on the
//! first output out of tolerance (or on a backend error). Written outputs start as NaN,
//! accumulated or in-place outputs start nonzero (see `harness`).

mod attention;
pub(crate) mod conv;
mod determinism;
pub(crate) mod elementwise;
pub(crate) mod gemm;
mod loss;
mod nan;
pub(crate) mod norm;
mod optim;
mod tokens;

pub use attention::{
    cross_attention_backward_case, cross_attention_forward_case, self_attention_backward_case,
    self_attention_forward_case,
};
pub use conv::{
    conv_transpose_backward_case, conv_transpose_forward_case, depthwise_xcorr_backward_case,
    depthwise_xcorr_forward_case,
};
pub use determinism::determinism;
pub use elementwise::{
    add_assign_case, add_broadcast_case, gelu_backward_case, gelu_forward_case,
    repeat_backward_case, repeat_forward_case, scale_case, sum_broadcast_case,
};
pub use gemm::{gemm_case, linear_backward_params_case, linear_forward_case};
pub use loss::{map_loss_backward_case, map_loss_forward_case};
pub use nan::nan_propagation;
pub use norm::{layernorm_backward_case, layernorm_forward_case};
pub use optim::{adamw_case, clip_by_norm_case, ema_case, sum_squares_case};
pub use tokens::{
    mean_pool_backward_case, mean_pool_forward_case, patchify_case, prepend_cls_backward_case,
    prepend_cls_forward_case, upsample_backward_case, upsample_forward_case,
};
