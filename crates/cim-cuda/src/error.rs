//! The backend's error: what failed (an [`ErrorKind`] for programs) and why, in words that
//! name the device call or kernel (for people).

use core::fmt;

use cim_spec::error::{Error, ErrorKind, ShapeError};

/// An error of the CUDA backend or its emulator.
#[derive(Clone, Debug)]
pub struct CudaError {
    kind: ErrorKind,
    message: String,
}

impl CudaError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CudaError {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn device(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Device, message)
    }

    pub(crate) fn launch(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Launch, message)
    }

    pub(crate) fn out_of_memory(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::OutOfMemory, message)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// The explanation, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for CudaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CudaError {}

impl From<ShapeError> for CudaError {
    fn from(e: ShapeError) -> Self {
        CudaError::invalid(e.to_string())
    }
}

impl Error for CudaError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}
