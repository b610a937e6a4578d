//! The pair sheet: a PNG of pairs whose footprints can be checked by eye. Written from the
//! sample photos when `scripts/fetch-sample-data.sh` has run (to target/pair-sheet.png, to
//! look at), and always from a synthetic image.

mod common;

use cim_data::RgbImage;
use cim_data::{Dataset, PairConfig, make_pair, pair_sheet, read_rgb8, sample};
use cim_spec::rng::CimRng;
use common::*;

#[test]
fn a_sheet_of_synthetic_pairs_is_a_png_of_the_expected_size() {
    let dir = tempfile::tempdir().unwrap();
    let img = RgbImage::from_raw(120, 90, pattern(120, 90)).unwrap();
    let cfg = small_cfg();
    let pairs: Vec<_> = (0..2)
        .map(|s| make_pair(&img, &cfg, &mut CimRng::new(s)).unwrap())
        .collect();
    let path = dir.path().join("sheet.png");
    pair_sheet(&pairs, &path).unwrap();
    let sheet = read_rgb8(&path).unwrap();
    // One row per pair; the context, K exemplars and K maps per row, 160-pixel tiles.
    assert_eq!(sheet.width() as usize, (1 + 2 * cfg.exemplars) * 164 + 4);
    assert_eq!(sheet.height(), 2 * 164 + 4);
    assert!(pair_sheet(&[], &path).is_err());
}

#[test]
fn a_sheet_of_sample_photos() {
    let photos = repo_root().join("data/photos");
    let Ok(ds) = Dataset::open(&photos) else {
        eprintln!(
            "skipped: no {} (run scripts/fetch-sample-data.sh)",
            photos.display()
        );
        return;
    };
    let cfg = PairConfig::default();
    let step = ds.len() / 4;
    let pairs: Vec<_> = (0..4)
        .map(|i| sample(&ds, &cfg, 0, 0, i * step).unwrap())
        .collect();
    let out = repo_root().join("target/pair-sheet.png");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    pair_sheet(&pairs, &out).unwrap();
    eprintln!("wrote {}", out.display());
}
