//! The error design of the backend contract (DESIGN.md, "The backend contract").
//!
//! Every backend names its own error type, which reports an [`ErrorKind`] so generic code
//! (the trainer, the preflight) can react without knowing the backend, and which can be
//! built from a [`ShapeError`], the one error the shape-checking wrappers of
//! [`crate::ops`] raise before any backend code runs. Backends that cannot fail at run
//! time (the CPU ones) use [`HostError`], which holds only that.

use core::fmt;

/// What went wrong, independent of the backend.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A buffer could not be allocated.
    OutOfMemory,
    /// The device reported a fault (lost device, illegal address, driver error).
    Device,
    /// A kernel could not be compiled or launched.
    Launch,
    /// An argument broke an op's contract (sizes, view lengths, ranges).
    InvalidArgument,
    /// A collective (all-reduce, rendezvous) failed.
    Communication,
}

/// A backend error: printable, with a backend-independent kind.
pub trait Error: fmt::Debug + fmt::Display + From<ShapeError> {
    /// The kind of failure.
    fn kind(&self) -> ErrorKind;
}

/// An op was called with sizes that do not fit its views. Raised by the wrappers in
/// [`crate::ops`] before the backend runs anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShapeError {
    /// The op, e.g. `"layernorm_forward"`.
    pub op: &'static str,
    /// Which argument, e.g. `"gamma"`.
    pub argument: &'static str,
    /// The length the sizes imply (or a bound that was broken).
    pub expected: usize,
    /// The length the view has.
    pub actual: usize,
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: argument `{}` has {} elements, the sizes given need {}",
            self.op, self.argument, self.actual, self.expected
        )
    }
}

/// The error of backends whose ops cannot fail once their arguments are valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostError {
    /// An argument broke an op's contract.
    Shape(ShapeError),
}

impl From<ShapeError> for HostError {
    fn from(e: ShapeError) -> Self {
        HostError::Shape(e)
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Shape(e) => e.fmt(f),
        }
    }
}

impl Error for HostError {
    fn kind(&self) -> ErrorKind {
        match self {
            HostError::Shape(_) => ErrorKind::InvalidArgument,
        }
    }
}
