//! Packed shards: a pack round-trips (pixels pre-resized as Pillow would, labels, classes,
//! source paths), spreads over several files, plugs into the loader, and any corruption is
//! an error naming the shard and the record.

mod common;

use std::sync::Arc;

use cim_data::{
    DataError, Dataset, Encoding, Kernel, Layout, Loader, LoaderOptions, PackOptions, SHARD_INDEX,
    check_data, pack, resize,
};
use common::*;

fn source(dir: &std::path::Path) -> Dataset {
    put(dir, "b/one.jpg", &jpeg_rgb(40, 30));
    put(dir, "b/two.png", &png_rgb(10, 12, &pattern(10, 12)));
    put(dir, "a/three.jpg", &jpeg_rgb(25, 60));
    put(dir, "a/broken.jpg", b"");
    put(
        dir,
        "a/four.webp",
        &webp(33, 17, image_webp::ColorType::Rgb8, &pattern(33, 17)),
    );
    Dataset::open(dir).unwrap()
}

fn small_pack() -> PackOptions {
    PackOptions {
        shorter_side: 16,
        shard_bytes: 3000,
        threads: 2,
        encoding: Encoding::Raw,
    }
}

#[test]
fn a_pack_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(&dir.path().join("src"));
    let out = dir.path().join("packed");
    let summary = pack(&src, &out, &small_pack()).unwrap();
    assert_eq!(summary.records, 4);
    assert!(summary.shards >= 2, "{summary:?}");
    assert_eq!(summary.skipped.len(), 1);
    assert!(summary.skipped[0].path.ends_with("a/broken.jpg"));

    let packed = Dataset::open(&out).unwrap();
    assert_eq!(packed.layout(), Layout::Shards);
    assert_eq!(packed.classes(), src.classes());
    assert_eq!(packed.len(), 4);
    let mut j = 0;
    for i in 0..src.len() {
        let Ok(original) = src.load(i) else { continue };
        assert_eq!(packed.path(j), src.path(i));
        assert_eq!(packed.label(j), src.label(i));
        let got = packed.load(j).unwrap();
        // Shorter side brought down to 16 (never up), the longer side scaled and truncated.
        let (w, h) = (original.width(), original.height());
        let short = w.min(h);
        let want = if short > 16 {
            let (nw, nh) = if w <= h {
                (16, h * 16 / short)
            } else {
                (w * 16 / short, 16)
            };
            resize(&original, nw, nh, Kernel::Bicubic).unwrap()
        } else {
            original
        };
        assert_eq!(got, want, "record {j}");
        j += 1;
    }
    assert!(check_data(&out).is_clean());
    // A finished pack is not overwritten.
    assert!(matches!(
        pack(&src, &out, &small_pack()),
        Err(DataError::Dataset { .. })
    ));
    // Shards plug into the loader like any dataset.
    let batches: Vec<_> = Loader::new(
        Arc::new(packed),
        small_cfg(),
        LoaderOptions {
            batch_size: 2,
            workers: 2,
            ..LoaderOptions::default()
        },
    )
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap();
    assert_eq!(batches.len(), 2);
}

/// JPEG records: the same images as the raw pack's, within JPEG's loss at quality 95, in
/// a fraction of the bytes (the images here are smooth gradients), with the same labels
/// and paths; a corrupted record is still a checksum error naming it; the index says
/// version 2, and a raw pack stays version 1 for older builds.
#[test]
fn a_jpeg_pack_round_trips_within_its_loss() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(&dir.path().join("src"));
    let opts = |encoding| PackOptions {
        shorter_side: 32,
        encoding,
        ..small_pack()
    };
    let raw_dir = dir.path().join("raw");
    let jpeg_dir = dir.path().join("jpeg");
    let raw_summary = pack(&src, &raw_dir, &opts(Encoding::Raw)).unwrap();
    let jpeg_summary = pack(&src, &jpeg_dir, &opts(Encoding::Jpeg { quality: 95 })).unwrap();
    assert_eq!(jpeg_summary.records, raw_summary.records);
    assert!(
        jpeg_summary.bytes < raw_summary.bytes,
        "{jpeg_summary:?} vs {raw_summary:?}"
    );
    let version = |d: &std::path::Path| {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join(SHARD_INDEX)).unwrap()).unwrap();
        index["version"].as_u64().unwrap()
    };
    assert_eq!((version(&raw_dir), version(&jpeg_dir)), (1, 2));
    let (raw, jpeg) = (
        Dataset::open(&raw_dir).unwrap(),
        Dataset::open(&jpeg_dir).unwrap(),
    );
    assert_eq!(jpeg.len(), raw.len());
    for i in 0..raw.len() {
        assert_eq!((jpeg.path(i), jpeg.label(i)), (raw.path(i), raw.label(i)));
        let (a, b) = (raw.load(i).unwrap(), jpeg.load(i).unwrap());
        assert_eq!((a.width(), a.height()), (b.width(), b.height()));
        let mean_error = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(&x, &y)| f64::from(x.abs_diff(y)))
            .sum::<f64>()
            / a.as_raw().len() as f64;
        assert!(
            mean_error < 3.0,
            "record {i}: mean error {mean_error} levels"
        );
    }
    assert!(check_data(&jpeg_dir).is_clean());
    let shard = jpeg_dir.join("shard-00000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[8 + 40] ^= 0x40;
    std::fs::write(&shard, &bytes).unwrap();
    let err = Dataset::open(&jpeg_dir).unwrap().load(0).unwrap_err();
    assert!(
        matches!(err, DataError::Checksum { record: 0, .. }),
        "{err:?}"
    );
    assert!(matches!(
        pack(
            &src,
            &dir.path().join("bad"),
            &opts(Encoding::Jpeg { quality: 0 })
        ),
        Err(DataError::Config(_))
    ));
}

#[test]
fn corruption_is_an_error_naming_shard_and_record() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(&dir.path().join("src"));
    let out = dir.path().join("packed");
    pack(&src, &out, &small_pack()).unwrap();
    // Flip one byte inside the first record of the first shard (after the 8-byte magic).
    let shard = out.join("shard-00000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[8 + 5] ^= 0x40;
    std::fs::write(&shard, &bytes).unwrap();

    let packed = Dataset::open(&out).unwrap();
    let err = packed.load(0).unwrap_err();
    match &err {
        DataError::Checksum {
            shard: s, record, ..
        } => {
            assert_eq!(s, &shard);
            assert_eq!(*record, 0);
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("shard-00000.bin") && text.contains("record 0"),
        "{text}"
    );
    assert!(text.contains("four.webp"), "names the packed file: {text}");
    // check_data finds both the bad record and the modified shard file.
    let report = check_data(&out);
    assert_eq!(report.problems.len(), 2, "{report}");

    // A truncated shard or a malformed index is refused at open, naming the file.
    std::fs::write(&shard, &bytes[..bytes.len() - 1]).unwrap();
    let err = Dataset::open(&out).unwrap_err();
    assert!(err.to_string().contains("shard-00000.bin"), "{err}");
    std::fs::write(out.join(SHARD_INDEX), b"{\"format\": 1").unwrap();
    let err = Dataset::open(&out).unwrap_err();
    assert!(err.to_string().contains(SHARD_INDEX), "{err}");
}
