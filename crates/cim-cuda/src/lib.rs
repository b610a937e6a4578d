//! The NVIDIA backend (issue 6): every op of the cim-spec contract on the GPU through cudarc.
//!
//! This crate holds no code yet: its issue has not been taken. It exists so the workspace
//! layout of DESIGN.md is in place and dependency arrows can be checked from the start.
