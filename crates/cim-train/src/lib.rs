//! The pre-training tool (issue 5): trainer, checkpoints, export, evaluation, the CLI.
//!
//! This crate holds no code yet: its issue has not been taken. It exists so the workspace
//! layout of DESIGN.md is in place and dependency arrows can be checked from the start.
