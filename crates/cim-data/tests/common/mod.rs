//! Helpers shared by cim-data's integration tests: encoders for every hard input of
//! DATA.md, so fixtures are generated in the tests rather than committed.
#![allow(dead_code)] // each test file uses its own subset of the helpers

use std::path::{Path, PathBuf};

use cim_data::PairConfig;
use cim_spec::geometry::ExemplarParams;

/// A deterministic colourful pattern, `w * h * 3` bytes.
pub fn pattern(w: u32, h: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            v.push(((x * 255) / w.max(2)) as u8);
            v.push(((y * 255) / h.max(2)) as u8);
            v.push(((x * 7 + y * 13) % 256) as u8);
        }
    }
    v
}

/// A PNG of `data` in the given colour type and depth (16-bit samples big-endian).
pub fn png(
    w: u32,
    h: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
    palette: Option<(&[u8], Option<&[u8]>)>,
) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        if let Some((pal, trns)) = palette {
            enc.set_palette(pal.to_vec());
            if let Some(t) = trns {
                enc.set_trns(t.to_vec());
            }
        }
        let mut wr = enc.write_header().unwrap();
        wr.write_image_data(data).unwrap();
    }
    out
}

/// An 8-bit RGB PNG.
pub fn png_rgb(w: u32, h: u32, data: &[u8]) -> Vec<u8> {
    png(w, h, png::ColorType::Rgb, png::BitDepth::Eight, data, None)
}

/// A JPEG of `data` (layout given by `color`).
pub fn jpeg(w: u16, h: u16, color: jpeg_encoder::ColorType, data: &[u8], quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, quality)
        .encode(data, w, h, color)
        .unwrap();
    out
}

/// An RGB JPEG of the pattern.
pub fn jpeg_rgb(w: u16, h: u16) -> Vec<u8> {
    jpeg(
        w,
        h,
        jpeg_encoder::ColorType::Rgb,
        &pattern(u32::from(w), u32::from(h)),
        90,
    )
}

/// A lossless WebP.
pub fn webp(w: u32, h: u32, color: image_webp::ColorType, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    image_webp::WebPEncoder::new(&mut out)
        .encode(data, w, h, color)
        .unwrap();
    out
}

/// Writes `bytes` to `dir/name`, creating folders, and returns the path.
pub fn put(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A small pair configuration so debug-build tests stay fast: S = 64, m = 32, n = 16,
/// K = 3, the paper's distributions otherwise.
pub fn small_cfg() -> PairConfig {
    PairConfig {
        input_size: 64,
        context_size: 32,
        exemplar_size: 16,
        exemplars: 3,
        exemplar: ExemplarParams::default(),
        ..PairConfig::default()
    }
}

/// The repository root (for data/ fetched by scripts/fetch-sample-data.sh).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The fixture folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Decodes a PNG fixture to RGB8 bytes with cim-data itself (fixtures are 8-bit RGB).
pub fn fixture_rgb(name: &str) -> cim_data::RgbImage {
    cim_data::read_rgb8(&fixtures().join(name)).unwrap()
}
