//! The fast CPU backend (issue 3): every op of the cim-spec contract in f32 with a SIMD GEMM and threads.
//!
//! This crate holds no code yet: its issue has not been taken. It exists so the workspace
//! layout of DESIGN.md is in place and dependency arrows can be checked from the start.
