//! Packed shards: a dataset pre-resized (shorter side to a chosen size, never enlarged) and
//! stored in a few large files, so a loader maps them into memory and skips the file
//! system's per-file cost. Records are raw RGB8 (no decoding at all: the fastest, about
//! 200 KB per image at shorter side 256) or, by choice, re-encoded as JPEG (about a tenth
//! of the size; decoding an image of that size costs far less than decoding the original).
//!
//! On disk, in one folder: `shard-NNNNN.bin` files, each the 8-byte magic `CIMSHRD1`
//! followed by records back to back, and the index `cim-shards.json` (written last, so a
//! folder without it is not a finished pack) holding the records' encoding, per shard its
//! size and CRC-32, and per record its shard, offset, image size, stored size (JPEG only),
//! label, source path and CRC-32 of the stored bytes. Raw packs are format version 1, as
//! before JPEG records existed; JPEG packs are version 2, which older builds refuse. Every read checks the
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
use crate::decode::decode_rgb8;
use crate::error::DataError;
use crate::resample::{Kernel, resize};
use crate::rgb::RgbImage;

/// Name of the index file inside a pack folder.
pub const SHARD_INDEX: &str = "cim-shards.json";
const MAGIC: &[u8; 8] = b"CIMSHRD1";
const FORMAT: &str = "cim-shards";
/// The index version of raw packs (readable by every build).
const VERSION_RAW: u32 = 1;
/// The index version of packs with encoded records.
const VERSION_ENCODED: u32 = 2;

/// How a pack stores its records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Encoding {
    /// RGB8 as decoded: nothing to decode when read.
    #[default]
    Raw,
    /// Baseline JPEG at this quality (1-100; 4:2:0 chroma below 90, 4:4:4 from 90), decoded
    /// when read: lossy, a fraction of the size.
    Jpeg {
        /// The encoder's quality.
        quality: u8,
    },
}

#[derive(Serialize, Deserialize)]
struct IndexFile {
    format: String,
    version: u32,
    #[serde(default)]
    encoding: Encoding,
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
    /// Bytes stored, for encoded records (raw ones hold width x height x 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stored: Option<u64>,
    label: Option<usize>,
    crc32: u32,
    path: PathBuf,
}

impl RecordEntry {
    /// Bytes the record takes in its shard.
    fn len(&self) -> u64 {
        self.stored
            .unwrap_or(u64::from(self.width) * u64::from(self.height) * 3)
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
    /// How records are stored.
    pub encoding: Encoding,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            shorter_side: 256,
            shard_bytes: 1 << 30,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            encoding: Encoding::Raw,
        }
    }
}

/// The bytes `img` is stored as under `encoding`.
fn encode(img: RgbImage, encoding: Encoding) -> Result<Vec<u8>, String> {
    match encoding {
        Encoding::Raw => Ok(img.into_raw()),
        Encoding::Jpeg { quality } => {
            let (w, h) = (img.width(), img.height());
            let too_large = || format!("{w}x{h} is too large for a JPEG record (65535 at most)");
            let w16 = u16::try_from(w).map_err(|_| too_large())?;
            let h16 = u16::try_from(h).map_err(|_| too_large())?;
            let mut out = Vec::new();
            let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
            if quality >= 90 {
                encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_4_4);
            }
            encoder
                .encode(img.as_raw(), w16, h16, jpeg_encoder::ColorType::Rgb)
                .map_err(|e| format!("encoding as JPEG: {e}"))?;
            Ok(out)
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
    if let Encoding::Jpeg { quality } = opts.encoding
        && !(1..=100).contains(&quality)
    {
        return Err(DataError::Config(format!(
            "pack: JPEG quality {quality} is outside 1-100"
        )));
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
            let img = dataset.load(i).map_err(|e| e.to_string())?;
            let (w, h) = packed_size(img.width(), img.height(), opts.shorter_side);
            let img = if (w, h) == (img.width(), img.height()) {
                img
            } else {
                resize(&img, w, h, Kernel::Bicubic).unwrap_or(img)
            };
            Ok::<_, String>((w, h, encode(img, opts.encoding)?))
        });
        for (i, result) in (start..end).zip(results) {
            let path = dataset.path(i).map(Path::to_path_buf).unwrap_or_default();
            match result {
                Ok((width, height, bytes)) => {
                    let (shard, offset) = writer.append(&bytes, opts.shard_bytes)?;
                    records.push(RecordEntry {
                        shard,
                        offset,
                        width,
                        height,
                        stored: (opts.encoding != Encoding::Raw).then_some(bytes.len() as u64),
                        label: dataset.label(i),
                        crc32: crc32fast::hash(&bytes),
                        path,
                    });
                }
                Err(reason) => skipped.push(Problem { path, reason }),
            }
        }
        start = end;
    }
    writer.close()?;
    let index = IndexFile {
        format: FORMAT.into(),
        version: match opts.encoding {
            Encoding::Raw => VERSION_RAW,
            Encoding::Jpeg { .. } => VERSION_ENCODED,
        },
        encoding: opts.encoding,
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
        let known = match index.encoding {
            Encoding::Raw => [VERSION_RAW, VERSION_ENCODED].contains(&index.version),
            Encoding::Jpeg { .. } => index.version == VERSION_ENCODED,
        };
        if index.format != FORMAT || !known {
            return Err(DataError::dataset(
                &index_path,
                format!(
                    "format {} version {} ({:?} records), expected {FORMAT} version {VERSION_RAW} or {VERSION_ENCODED}",
                    index.format, index.version, index.encoding
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

    /// Copies record `i` out of its shard after checking its CRC-32, decoding it if it is
    /// encoded.
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
        let mismatch = || DataError::dataset(&self.files[r.shard], "record size mismatch");
        match self.index.encoding {
            Encoding::Raw => {
                RgbImage::from_raw(r.width, r.height, bytes.to_vec()).ok_or_else(mismatch)
            }
            Encoding::Jpeg { .. } => {
                let img = decode_rgb8(bytes, &r.path)?;
                if (img.width(), img.height()) != (r.width, r.height) {
                    return Err(mismatch());
                }
                Ok(img)
            }
        }
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
