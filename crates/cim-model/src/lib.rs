//! The CIM network and its training step, written once over the `cim-spec` backend traits.
//!
//! The encoder (S3), correlation decoder (S4), losses (S5), AdamW (S6), EMA (S7) and
//! initialisation (S8) arrive here with the training-step issue; until then this crate
//! only pins down its place in the layout and its `no_std` promise.
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

pub use cim_spec;
