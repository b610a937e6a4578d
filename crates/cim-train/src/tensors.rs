//! Named f32 tensors to and from safetensors files.
//!
//! Files are written under a temporary name in the destination folder and renamed into
//! place, so a crash never leaves a half-written file under the final name.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

/// An ordered collection of named f32 tensors.
#[derive(Default, Debug, Clone, PartialEq)]
pub struct TensorSet {
    entries: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl TensorSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tensor; the shape must match the data (an empty shape is a scalar).
    pub fn push(&mut self, name: impl Into<String>, shape: &[usize], data: Vec<f32>) -> Result<()> {
        let name = name.into();
        let n: usize = shape.iter().product();
        if n != data.len() {
            bail!(
                "tensor {name}: shape {shape:?} needs {n} values, got {}",
                data.len()
            );
        }
        if self.get(&name).is_some() {
            bail!("tensor {name} is already in the set");
        }
        self.entries.push((name, shape.to_vec(), data));
        Ok(())
    }

    /// The tensor called `name`: its shape and values.
    pub fn get(&self, name: &str) -> Option<(&[usize], &[f32])> {
        self.entries
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, s, d)| (s.as_slice(), d.as_slice()))
    }

    /// Names in insertion order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _, _)| n.as_str())
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the set as a safetensors file (little-endian f32), atomically.
    pub fn write(&self, path: &Path, metadata: Option<HashMap<String, String>>) -> Result<()> {
        let bytes: Vec<Vec<u8>> = self
            .entries
            .iter()
            .map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect())
            .collect();
        let views = self
            .entries
            .iter()
            .zip(&bytes)
            .map(|((n, s, _), b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
        let data = safetensors::tensor::serialize(views, metadata)?;
        crate::output::write_bytes(path, &data)
    }

    /// Reads a safetensors file of f32 tensors; any other dtype is an error naming the
    /// tensor.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let st = SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
        let mut set = TensorSet::new();
        let mut names: Vec<&str> = st.names();
        names.sort_unstable();
        for name in names {
            let t = st.tensor(name)?;
            if t.dtype() != Dtype::F32 {
                bail!(
                    "{}: tensor {name} is {:?}, expected F32",
                    path.display(),
                    t.dtype()
                );
            }
            let data = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            set.push(name, t.shape(), data)?;
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let mut s = TensorSet::new();
        s.push("a", &[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, -0.5])
            .unwrap();
        s.push("loss", &[], vec![0.25]).unwrap();
        assert!(s.push("bad", &[4], vec![1.0]).is_err());
        assert!(s.push("a", &[1], vec![1.0]).is_err());
        s.write(&path, None).unwrap();
        let back = TensorSet::read(&path).unwrap();
        assert_eq!(back.get("a"), s.get("a"));
        assert_eq!(back.get("loss").unwrap().0, &[] as &[usize]);
        fs::write(&path, b"not a tensor file").unwrap();
        let err = TensorSet::read(&path).unwrap_err().to_string();
        assert!(err.contains("not a valid safetensors file"), "{err}");
    }
}
