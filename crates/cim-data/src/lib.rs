//! The data side of CIM (issue 4): from image files to exemplar-context batches (S2).
//!
//! This crate holds no code yet: its issue has not been taken. It exists so the workspace
//! layout of DESIGN.md is in place and dependency arrows can be checked from the start.
