//! What a failed check reports.
//!
//! A [`Mismatch`] carries everything needed to understand and reproduce a failure without
//! rerunning anything: the backend, the op direction, the output tensor, the case (its
//! `Debug` form holds the seed and every size), and a [`Problem`] with the offending
//! element. Its `Display` is what the `suite!` tests print.

use core::fmt;

use cim_spec::tolerance::{Op, Tolerance};

/// A backend failed a conformance check.
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    /// The backend's [`cim_spec::backend::Backend::name`].
    pub backend: String,
    /// The op direction that was checked.
    pub op: Op,
    /// The tensor at fault (an output for value problems, `"-"` for errors).
    pub tensor: &'static str,
    /// The case, in its `Debug` form (seed and sizes: enough to rebuild it).
    pub case: String,
    /// What went wrong.
    pub problem: Problem,
}

/// The kind of failure a [`Mismatch`] reports.
#[derive(Clone, Debug, PartialEq)]
pub enum Problem {
    /// The worst element of an output lies outside the tolerance of the table.
    OutOfTolerance {
        /// Flat index of the worst element.
        index: usize,
        /// The backend's value there.
        backend: f32,
        /// The reference's (f64) value there.
        reference: f64,
        /// `|backend - reference| / (abs + rel * max|reference|)`; above 1 fails.
        ratio: f64,
        /// The tolerance applied.
        tolerance: Tolerance,
    },
    /// The backend returned an error for valid arguments.
    BackendError(String),
    /// The reference returned an error: the check itself is wrong.
    ReferenceError(String),
    /// Two runs on identical inputs gave different bits.
    NotDeterministic {
        /// Flat index of the first differing element.
        index: usize,
        /// The first run's value.
        first: f32,
        /// The second run's value.
        second: f32,
    },
    /// A NaN or infinity in an input did not reach an output element that depends on it.
    NonFiniteLost {
        /// Flat index of the output element that should be NaN or infinite.
        index: usize,
        /// The finite value the backend produced there.
        value: f32,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backend `{}`, op {:?}, ", self.backend, self.op)?;
        match &self.problem {
            Problem::OutOfTolerance {
                index,
                backend,
                reference,
                ratio,
                tolerance,
            } => write!(
                f,
                "output `{}` element {index}: backend {backend:e}, reference {reference:e}, \
                 error {ratio:.3e} times the tolerance (abs {:e} + rel {:e} x max|reference|)",
                self.tensor, tolerance.abs, tolerance.rel
            )?,
            Problem::BackendError(e) => write!(f, "the backend returned an error: {e}")?,
            Problem::ReferenceError(e) => write!(
                f,
                "the reference returned an error (a bug of the check): {e}"
            )?,
            Problem::NotDeterministic {
                index,
                first,
                second,
            } => write!(
                f,
                "output `{}` element {index} differs between two identical runs: \
                 {first:e} (bits {:#010x}) then {second:e} (bits {:#010x})",
                self.tensor,
                first.to_bits(),
                second.to_bits()
            )?,
            Problem::NonFiniteLost { index, value } => write!(
                f,
                "output `{}` element {index} is {value:e}, but it depends on a non-finite \
                 input and must be NaN or infinite",
                self.tensor
            )?,
        }
        write!(f, "; case: {}", self.case)
    }
}

impl std::error::Error for Mismatch {}
