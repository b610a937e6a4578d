//! Packed shards: a dataset pre-resized (shorter side to a chosen size, never enlarged) and
//! stored as raw RGB8 records in a few large files, so a loader maps them into memory and
//! skips both the file system's per-file cost and JPEG decoding.
//!
//! On disk, in one folder: `shard-NNNNN.bin` files, each the 8-byte magic `CIMSHRD1`
//! followed by records back to back, and the index `cim-shards.json` (written last, so a
//! folder without it is not a finished pack) holding, per shard, its size and CRC-32, and
//! per record its shard, offset, size, label, source path and CRC-32. Every read checks the
//! record's CRC-32 (crc32fast runs at memory speed, a few microseconds per record); whole
//! files are checked by `check_data`. A mismatch is an error naming the shard, the record
//! and the file it was packed from.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::check::Problem;
use crate::dataset::Dataset;
use crate::error::DataError;
use crate::resample::{Kernel, resize};
use crate::rgb::RgbImage;

/// Name of the index file inside a pack folder.
pub const SHARD_INDEX: &str = "cim-shards.json";
const MAGIC: &[u8; 8] = b"CIMSHRD1";
const FORMAT: &str = "cim-shards";
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct IndexFile {
    format: String,
    version: u32,
    shorter_side: u32,
    classes: Vec<String>,
    shards: Vec<ShardEntry>,
    records: Vec<RecordEntry>,
}

#[derive(Serialize, Deserialize)]
struct ShardEntry {
    file: String,
    bytes: u64,
    crc32: u32,
}

#[derive(Serialize, Deserialize)]
struct RecordEntry {
    shard: usize,
    offset: u64,
    width: u32,
    height: u32,
    label: Option<usize>,
    crc32: u32,
    path: PathBuf,
}

impl RecordEntry {
    fn len(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height) * 3
    }
}

/// How to pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackOptions {
    /// Images whose shorter side exceeds this are resized (antialiased bicubic, as PIL) so
    /// that it equals this; smaller ones are stored as they are.
    pub shorter_side: u32,
    /// A shard is closed once adding the next record would pass this size.
    pub shard_bytes: u64,
    /// Decoding threads.
    pub threads: usize,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            shorter_side: 256,
            shard_bytes: 1 << 30,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// What a pack wrote.
#[derive(Clone, Debug, Serialize)]
pub struct PackSummary {
    /// Records written.
    pub records: usize,
    /// Shard files written.
    pub shards: usize,
    /// Bytes written, index excluded.
    pub bytes: u64,
    /// Images that could not be decoded and were left out, with the reason.
    pub skipped: Vec<Problem>,
}

/// The size an image of `w` x `h` is stored at: shorter side brought down to `shorter`,
/// the longer scaled by the same factor and truncated (torchvision's `Resize(int)`).
fn packed_size(w: u32, h: u32, shorter: u32) -> (u32, u32) {
    let short = w.min(h);
    if short <= shorter {
        return (w, h);
    }
    let long = |l: u32| ((u64::from(l) * u64::from(shorter)) / u64::from(short)).max(1) as u32;
    if w <= h {
        (shorter, long(h))
    } else {
        (long(w), shorter)
    }
}

/// A shard being written: its path, writer, running CRC-32 and size so far.
type OpenShard = (PathBuf, BufWriter<File>, crc32fast::Hasher, u64);

struct ShardWriter {
    dir: PathBuf,
    index: usize,
    file: Option<OpenShard>,
    done: Vec<ShardEntry>,
}

impl ShardWriter {
    fn name(index: usize) -> String {
        format!("shard-{index:05}.bin")
    }

    /// Creates the next shard file and writes its magic.
    fn open(&self) -> Result<OpenShard, DataError> {
        let path = self.dir.join(Self::name(self.index));
        let f = File::create(&path).map_err(|e| DataError::write(&path, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        w.write_all(MAGIC).map_err(|e| DataError::write(&path, e))?;
        let mut h = crc32fast::Hasher::new();
        h.update(MAGIC);
        Ok((path, w, h, MAGIC.len() as u64))
    }

    fn close(&mut self) -> Result<(), DataError> {
        if let Some((path, mut w, h, bytes)) = self.file.take() {
            w.flush().map_err(|e| DataError::write(&path, e))?;
            w.get_ref()
                .sync_all()
                .map_err(|e| DataError::write(&path, e))?;
            self.done.push(ShardEntry {
                file: Self::name(self.index),
                bytes,
                crc32: h.finalize(),
            });
            self.index += 1;
        }
        Ok(())
    }

    /// Appends a record, rotating to a new shard when this one would pass `limit`.
    /// Returns (shard, offset).
    fn append(&mut self, data: &[u8], limit: u64) -> Result<(usize, u64), DataError> {
        let len = data.len() as u64;
        if let Some((_, _, _, bytes)) = &self.file
            && *bytes > MAGIC.len() as u64
            && bytes + len > limit
        {
            self.close()?;
        }
        let current = match self.file.take() {
            Some(f) => f,
            None => self.open()?,
        };
        let (path, w, h, bytes) = self.file.insert(current);
        w.write_all(data).map_err(|e| DataError::write(path, e))?;
        h.update(data);
        let offset = *bytes;
        *bytes += len;
        Ok((self.index, offset))
    }
}

/// Packs `dataset` into `out_dir` (created if missing; refused if it already holds a pack).
/// Images that fail to decode are left out and listed in the summary. Labels, class names
/// and source paths are kept, so a packed ImageFolder stays labelled.
pub fn pack(
    dataset: &Dataset,
    out_dir: &Path,
    opts: &PackOptions,
) -> Result<PackSummary, DataError> {
    if opts.shorter_side == 0 || opts.shard_bytes == 0 {
        return Err(DataError::Config(
            "pack: shorter_side and shard_bytes must be positive".into(),
        ));
    }
    fs::create_dir_all(out_dir).map_err(|e| DataError::write(out_dir, e))?;
    let index_path = out_dir.join(SHARD_INDEX);
    if index_path.exists() {
        return Err(DataError::dataset(
            out_dir,
            "already holds a pack; remove it or choose another folder",
        ));
    }
    let mut writer = ShardWriter {
        dir: out_dir.to_path_buf(),
        index: 0,
        file: None,
        done: Vec::new(),
    };
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    let threads = opts.threads.max(1);
    // Decode and resize in parallel a chunk at a time, write in dataset order.
    let chunk = 64 * threads;
    let mut start = 0;
    while start < dataset.len() {
        let end = (start + chunk).min(dataset.len());
        let results = parallel_map(start..end, threads, |i| {
            dataset.load(i).map(|img| {
                let (w, h) = packed_size(img.width(), img.height(), opts.shorter_side);
                if (w, h) == (img.width(), img.height()) {
                    img
                } else {
                    resize(&img, w, h, Kernel::Bicubic).unwrap_or(img)
                }
            })
        });
        for (i, result) in (start..end).zip(results) {
            let path = dataset.path(i).map(Path::to_path_buf).unwrap_or_default();
            match result {
                Ok(img) => {
                    let (shard, offset) = writer.append(img.as_raw(), opts.shard_bytes)?;
                    records.push(RecordEntry {
                        shard,
                        offset,
                        width: img.width(),
                        height: img.height(),
                        label: dataset.label(i),
                        crc32: crc32fast::hash(img.as_raw()),
                        path,
                    });
                }
                Err(e) => skipped.push(Problem {
                    path,
                    reason: e.to_string(),
                }),
            }
        }
        start = end;
    }
    writer.close()?;
    let index = IndexFile {
        format: FORMAT.into(),
        version: VERSION,
        shorter_side: opts.shorter_side,
        classes: dataset.classes().to_vec(),
        shards: writer.done,
        records,
    };
    let tmp = out_dir.join(format!("{SHARD_INDEX}.tmp"));
    let text = serde_json::to_vec(&index).map_err(|e| DataError::Config(e.to_string()))?;
    fs::write(&tmp, text).map_err(|e| DataError::write(&tmp, e))?;
    fs::rename(&tmp, &index_path).map_err(|e| DataError::write(&index_path, e))?;
    Ok(PackSummary {
        records: index.records.len(),
        shards: index.shards.len(),
        bytes: index.shards.iter().map(|s| s.bytes).sum(),
        skipped,
    })
}

/// Maps `f` over `range` on `threads` threads, results in range order.
pub(crate) fn parallel_map<T: Send>(
    range: std::ops::Range<usize>,
    threads: usize,
    f: impl Fn(usize) -> T + Sync,
) -> Vec<T> {
    let next = AtomicUsize::new(range.start);
    let mut slots: Vec<Option<T>> = (range.start..range.end).map(|_| None).collect();
    let done = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.clamp(1, range.len().max(1)))
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= range.end {
                            break out;
                        }
                        out.push((i, f(i)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect::<Vec<_>>()
    });
    for (i, v) in done {
        slots[i - range.start] = Some(v);
    }
    slots
        .into_iter()
        .map(|s| s.expect("every index was claimed by one thread"))
        .collect()
}

/// A pack folder opened for reading: every shard memory-mapped, the index in memory.
pub(crate) struct ShardSet {
    files: Vec<PathBuf>,
    maps: Vec<Mmap>,
    index: IndexFile,
}

impl ShardSet {
    /// Opens a pack: reads the index, maps each shard, checks each shard's size and magic
    /// and that every record lies inside its shard.
    pub(crate) fn open(dir: &Path) -> Result<ShardSet, DataError> {
        let index_path = dir.join(SHARD_INDEX);
        let text = fs::read(&index_path).map_err(|e| DataError::unreadable(&index_path, e))?;
        let index: IndexFile = serde_json::from_slice(&text)
            .map_err(|e| DataError::dataset(&index_path, format!("malformed index: {e}")))?;
        if index.format != FORMAT || index.version != VERSION {
            return Err(DataError::dataset(
                &index_path,
                format!(
                    "format {} version {}, expected {FORMAT} version {VERSION}",
                    index.format, index.version
                ),
            ));
        }
        let mut files = Vec::new();
        let mut maps = Vec::new();
        for entry in &index.shards {
            let path = dir.join(&entry.file);
            let file = File::open(&path).map_err(|e| DataError::unreadable(&path, e))?;
            // SAFETY: shards are written once by `pack` and only read afterwards; the map is
            // read-only. Contents are verified by CRC-32 on every record read; the one
            // hazard left is another process truncating the file while it is mapped, which
            // the pack format documents as unsupported (as for any memory-mapped data set).
            let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::unreadable(&path, e))?;
            if map.len() as u64 != entry.bytes || !map.starts_with(MAGIC) {
                return Err(DataError::dataset(
                    &path,
                    format!(
                        "shard is {} bytes or lacks its magic; the index says {} bytes",
                        map.len(),
                        entry.bytes
                    ),
                ));
            }
            files.push(path);
            maps.push(map);
        }
        for (i, r) in index.records.iter().enumerate() {
            let fits = r.shard < maps.len()
                && r.width > 0
                && r.height > 0
                && r.offset >= MAGIC.len() as u64
                && r.offset
                    .checked_add(r.len())
                    .is_some_and(|end| end <= maps[r.shard].len() as u64);
            if !fits {
                return Err(DataError::dataset(
                    &index_path,
                    format!("record {i} lies outside its shard"),
                ));
            }
        }
        Ok(ShardSet { files, maps, index })
    }

    pub(crate) fn len(&self) -> usize {
        self.index.records.len()
    }

    pub(crate) fn classes(&self) -> &[String] {
        &self.index.classes
    }

    pub(crate) fn label(&self, i: usize) -> Option<usize> {
        self.index.records.get(i).and_then(|r| r.label)
    }

    pub(crate) fn path(&self, i: usize) -> Option<&Path> {
        self.index.records.get(i).map(|r| r.path.as_path())
    }

    /// Copies record `i` out of its shard after checking its CRC-32.
    pub(crate) fn load(&self, i: usize) -> Result<RgbImage, DataError> {
        let r = self.index.records.get(i).ok_or_else(|| {
            DataError::dataset(
                self.files.first().map_or(Path::new(""), |p| p.as_path()),
                format!("record {i} out of range ({} records)", self.len()),
            )
        })?;
        // Bounds were checked at open.
        let start = r.offset as usize;
        let bytes = &self.maps[r.shard][start..start + r.len() as usize];
        if crc32fast::hash(bytes) != r.crc32 {
            return Err(DataError::Checksum {
                shard: self.files[r.shard].clone(),
                record: i,
                source_path: r.path.clone(),
            });
        }
        RgbImage::from_raw(r.width, r.height, bytes.to_vec())
            .ok_or_else(|| DataError::dataset(&self.files[r.shard], "record size mismatch"))
    }

    /// Checks every shard file's CRC-32 against the index.
    pub(crate) fn verify_files(&self) -> Vec<DataError> {
        self.maps
            .iter()
            .zip(&self.index.shards)
            .zip(&self.files)
            .filter(|((map, entry), _)| crc32fast::hash(map) != entry.crc32)
            .map(|(_, path)| {
                DataError::dataset(path, "shard checksum mismatch (the file was modified)")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_size_brings_the_shorter_side_down_only() {
        assert_eq!(packed_size(500, 375, 256), (341, 256));
        assert_eq!(packed_size(375, 500, 256), (256, 341));
        assert_eq!(packed_size(200, 100, 256), (200, 100));
        assert_eq!(packed_size(4000, 10, 8), (3200, 8));
        assert_eq!(packed_size(300, 300, 256), (256, 256));
    }

    #[test]
    fn parallel_map_keeps_order() {
        let v = parallel_map(3..40, 4, |i| i * 2);
        assert_eq!(v, (3..40).map(|i| i * 2).collect::<Vec<_>>());
        assert!(parallel_map(0..0, 4, |i| i).is_empty());
    }
}
