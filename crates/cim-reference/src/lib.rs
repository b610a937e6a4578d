//! The CIM oracle: every op of the backend contract as naive loops in f64.
//!
//! This crate is what every other backend is measured against (DESIGN.md, "Conformance").
//! It is written to be read and believed, not to be fast: each op is the formula of its
//! doc comment in [`cim_spec::backend`] spelled out as plain nested loops over row-major
//! indices, with f64 storage and f64 arithmetic, sums taken in index order (so results
//! are deterministic), and no unsafe code.
//!
//! Two layers:
//! - one module per topic ([`gemm`], [`elementwise`], [`norm`], [`attention`],
//!   [`tokens`], [`conv`], [`loss`], [`optim`]) holds pure functions on plain `f64` slices, one per
//!   op, that tests and tools may call directly;
//! - [`Reference`] implements every trait of [`cim_spec::backend`] by calling them, with
//!   `Vec<f64>` buffers and `&[f64]` / `&mut [f64]` views.
//!
//! Accumulating outputs (`+=`) are updated with one addition per element of a result
//! computed in full first, so calling such an op twice from zero gives exactly twice the
//! first result.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Index loops mirror the formulas (`out[b, i, c] = sum_j ...`); iterator chains would hide
// them.
#![allow(clippy::needless_range_loop)]
// The pure functions take the same arguments as the contract's ops, in the same order.
#![allow(clippy::too_many_arguments)]

pub mod attention;
mod backend;
pub mod conv;
pub mod elementwise;
pub mod gemm;
pub mod loss;
pub mod norm;
pub mod optim;
pub mod tokens;

#[cfg(test)]
mod test_util;

pub use backend::Reference;
