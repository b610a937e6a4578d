//! Small bridges between the backend API and the tool's `anyhow` errors, shared by every
//! module that talks to a device: a backend error as an `anyhow::Error`, and a downloaded
//! range of a buffer.

use std::ops::Range;

use anyhow::{Result, anyhow};
use cim_spec::backend::Backend;

/// A backend error, prefixed so the user sees where it came from.
pub(crate) fn backend_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("backend: {e}")
}

/// The values of `range` of `buf`, as f32 on the host.
pub(crate) fn download<B: Backend>(
    b: &B,
    buf: &B::Buffer,
    range: Range<usize>,
) -> Result<Vec<f32>> {
    let mut out = vec![0.0; range.len()];
    b.download(b.view(buf, range), &mut out)
        .map_err(backend_err)?;
    Ok(out)
}
