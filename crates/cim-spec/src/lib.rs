//! The CIM contract.
//!
//! Everything a backend must compute and every pure formula of Correlational Image
//! Modeling lives here, free of `std`, files, threads and clocks, so that the model, the
//! reference oracle, every backend and every tool agree on one definition. Section
//! numbers (S1..S12) refer to `SPEC.md`.
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

pub mod backend;
pub mod config;
pub mod error;
pub mod geometry;
pub mod init;
pub mod loss;
pub mod ops;
pub mod pos_embed;
pub mod rng;
pub mod schedule;
pub mod tolerance;
