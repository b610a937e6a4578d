//! The CIM run: what a user of either binary touches.
//!
//! Generic over the backend, so `cim-cpu` and `cim-cuda` are a few lines each that pick
//! a backend and call [`cli::run`]. So far it holds the step dump that lets tools outside
//! Rust (the PyTorch parity script under `benches/pytorch/`) check one training step
//! against ours; the trainer, checkpoints, export and evaluation join it with issue 5.

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod data;
mod device;
pub mod distributed;
pub mod dump;
pub mod eval;
pub mod export;
pub mod output;
pub mod plot;
pub mod preflight;
pub mod profile;
pub mod recipe;
pub mod runs;
pub mod synthetic;
pub mod tensors;
pub mod trainer;
pub mod visualize;
