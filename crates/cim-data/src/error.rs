//! The one error type of the crate. Every failure that comes from a file names that file,
//! so a bad image among a million is found from the message alone (issue 4: bad inputs never
//! crash a run silently).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Why data could not be produced.
#[derive(Debug)]
#[non_exhaustive]
pub enum DataError {
    /// The file could not be read (missing, permissions, I/O failure).
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The file holds zero bytes.
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The bytes start with no signature of a supported format (JPEG, PNG, WebP).
    NotAnImage {
        /// The file.
        path: PathBuf,
    },
    /// The image ends before its data does (e.g. a partial download).
    Truncated {
        /// The file.
        path: PathBuf,
        /// The format ("JPEG", "PNG", "WebP").
        format: &'static str,
        /// What the decoder reported.
        detail: String,
    },
    /// The image's data is malformed.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The format ("JPEG", "PNG", "WebP").
        format: &'static str,
        /// What the decoder reported.
        detail: String,
    },
    /// The image has more pixels than the decompression-bomb limit (Pillow's error
    /// threshold, [`crate::MAX_PIXELS`]).
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Width in pixels.
        width: u64,
        /// Height in pixels.
        height: u64,
    },
    /// A dataset could not be opened or listed: no images, a bad list line, a malformed
    /// shard index.
    Dataset {
        /// The dataset path (or the offending file inside it).
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A shard record's bytes do not match their checksum.
    Checksum {
        /// The shard file.
        shard: PathBuf,
        /// The record's index in the dataset.
        record: usize,
        /// The image the record was packed from.
        source_path: PathBuf,
    },
    /// A configuration value is out of range (pair geometry, loader options).
    Config(String),
    /// More files were skipped than the skip budget allows.
    SkipBudget {
        /// Files skipped so far, this one included.
        skipped: usize,
        /// The budget.
        budget: usize,
        /// The file that exceeded it.
        last_path: PathBuf,
        /// Why that file was skipped.
        last_error: String,
    },
    /// A file the crate writes (skip log, shard, sheet) could not be written.
    Write {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
}

impl DataError {
    /// The file this error is about, when there is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            DataError::Unreadable { path, .. }
            | DataError::Empty { path }
            | DataError::NotAnImage { path }
            | DataError::Truncated { path, .. }
            | DataError::Corrupt { path, .. }
            | DataError::TooLarge { path, .. }
            | DataError::Dataset { path, .. }
            | DataError::Write { path, .. }
            | DataError::SkipBudget {
                last_path: path, ..
            } => Some(path),
            DataError::Checksum { source_path, .. } => Some(source_path),
            DataError::Config(_) => None,
        }
    }

    pub(crate) fn unreadable(path: &Path, source: io::Error) -> Self {
        DataError::Unreadable {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn write(path: &Path, source: io::Error) -> Self {
        DataError::Write {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn dataset(path: &Path, detail: impl Into<String>) -> Self {
        DataError::Dataset {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::Unreadable { path, source } => {
                write!(f, "{}: cannot read: {source}", path.display())
            }
            DataError::Empty { path } => write!(f, "{}: empty file (0 bytes)", path.display()),
            DataError::NotAnImage { path } => write!(
                f,
                "{}: not an image (no JPEG, PNG or WebP signature)",
                path.display()
            ),
            DataError::Truncated {
                path,
                format,
                detail,
            } => write!(f, "{}: truncated {format}: {detail}", path.display()),
            DataError::Corrupt {
                path,
                format,
                detail,
            } => write!(f, "{}: corrupt {format}: {detail}", path.display()),
            DataError::TooLarge {
                path,
                width,
                height,
            } => write!(
                f,
                "{}: {width} x {height} pixels exceeds the limit of {} pixels",
                path.display(),
                crate::MAX_PIXELS
            ),
            DataError::Dataset { path, detail } => write!(f, "{}: {detail}", path.display()),
            DataError::Checksum {
                shard,
                record,
                source_path,
            } => write!(
                f,
                "{}: checksum mismatch in record {record} (packed from {})",
                shard.display(),
                source_path.display()
            ),
            DataError::Config(msg) => write!(f, "invalid configuration: {msg}"),
            DataError::SkipBudget {
                skipped,
                budget,
                last_error,
                ..
            } => write!(
                f,
                "{skipped} bad files skipped, over the budget of {budget}; last: {last_error}"
            ),
            DataError::Write { path, source } => {
                write!(f, "{}: cannot write: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for DataError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DataError::Unreadable { source, .. } | DataError::Write { source, .. } => Some(source),
            _ => None,
        }
    }
}
