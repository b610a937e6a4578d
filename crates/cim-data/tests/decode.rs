//! Decoding every hard input of DATA.md: each colour model converts to RGB as Pillow's
//! `convert('RGB')` does, and each bad file is an error of the right kind naming the file.

mod common;

use std::path::Path;

use cim_data::{DataError, RgbImage, decode_rgb8, read_rgb8};
use common::*;

fn decode(bytes: &[u8]) -> RgbImage {
    decode_rgb8(bytes, Path::new("mem")).unwrap()
}

fn max_diff(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

/// Pillow's CMYK -> RGB: R = (255 - K) - round(C (255 - K) / 255), rounding as its
/// MULDIV255 macro; likewise G from M and B from Y.
fn pillow_cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    cmyk.chunks_exact(4)
        .flat_map(|p| {
            let nk = 255 - i32::from(p[3]);
            let f = |c: u8| {
                let t = i32::from(c) * nk + 128;
                (nk - (((t >> 8) + t) >> 8)).clamp(0, 255) as u8
            };
            [f(p[0]), f(p[1]), f(p[2])]
        })
        .collect()
}

#[test]
fn cmyk_and_ycck_jpegs_match_pillow() {
    // Files written by Pillow (CMYK) and jpeg-encoder (YCCK), decoded by Pillow 13 into the
    // expected PNGs: the decoders differ only by IDCT and upsampling rounding.
    for name in ["cmyk", "ycck"] {
        let got = read_rgb8(&fixtures().join(format!("{name}.jpg"))).unwrap();
        let want = fixture_rgb(&format!("{name}.expected.png"));
        assert_eq!((got.width(), got.height()), (32, 24));
        let d = max_diff(got.as_raw(), want.as_raw());
        assert!(d <= 3, "{name}: max difference {d} from Pillow");
    }
}

#[test]
fn cmyk_and_ycck_polarity_follows_pillow_formula() {
    // Smooth CMYK content encoded both ways at quality 100; an inverted polarity or a
    // dropped K would be off by tens of levels.
    let (w, h) = (48u16, 40u16);
    let mut cmyk = Vec::new();
    for y in 0..u32::from(h) {
        for x in 0..u32::from(w) {
            cmyk.extend_from_slice(&[
                (x * 5) as u8,
                (y * 6) as u8,
                (120 + x + y) as u8,
                (y * 3 + x) as u8,
            ]);
        }
    }
    let want = pillow_cmyk_to_rgb(&cmyk);
    for color in [
        jpeg_encoder::ColorType::Cmyk,
        jpeg_encoder::ColorType::CmykAsYcck,
    ] {
        let got = decode(&jpeg(w, h, color, &cmyk, 100));
        let diff: Vec<u8> = got
            .as_raw()
            .iter()
            .zip(&want)
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let mean = diff.iter().map(|&d| f64::from(d)).sum::<f64>() / diff.len() as f64;
        let max = diff.iter().copied().max().unwrap();
        assert!(mean < 1.5 && max <= 8, "{color:?}: mean {mean}, max {max}");
    }
}

#[test]
fn grey_palette_alpha_and_sixteen_bit_pngs_convert_like_pillow() {
    // Grey 8-bit: copied to three channels.
    let grey: Vec<u8> = (0..12u8).map(|v| v * 20).collect();
    let img = decode(&png(
        4,
        3,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &grey,
        None,
    ));
    for (i, g) in grey.iter().enumerate() {
        assert_eq!(&img.as_raw()[i * 3..i * 3 + 3], &[*g, *g, *g]);
    }
    // Grey 2-bit: scaled by 85 (Pillow's L;2).
    let packed = [0b00_01_10_11u8];
    let img = decode(&png(
        4,
        1,
        png::ColorType::Grayscale,
        png::BitDepth::Two,
        &packed,
        None,
    ));
    assert_eq!(
        img.as_raw(),
        &[0, 0, 0, 85, 85, 85, 170, 170, 170, 255, 255, 255]
    );
    // Palette with transparency: colours looked up, alpha dropped.
    let pal = [10, 20, 30, 200, 100, 50, 1, 2, 3];
    let trns = [0u8, 128];
    let idx = [0u8, 1, 2, 1];
    let img = decode(&png(
        2,
        2,
        png::ColorType::Indexed,
        png::BitDepth::Eight,
        &idx,
        Some((&pal, Some(&trns))),
    ));
    assert_eq!(
        img.as_raw(),
        &[10, 20, 30, 200, 100, 50, 1, 2, 3, 200, 100, 50]
    );
    // RGBA and grey + alpha: colour kept, alpha dropped, never composited.
    let rgba = [9, 8, 7, 0, 250, 128, 3, 17];
    let img = decode(&png(
        2,
        1,
        png::ColorType::Rgba,
        png::BitDepth::Eight,
        &rgba,
        None,
    ));
    assert_eq!(img.as_raw(), &[9, 8, 7, 250, 128, 3]);
    let la = [77, 0, 200, 255];
    let img = decode(&png(
        2,
        1,
        png::ColorType::GrayscaleAlpha,
        png::BitDepth::Eight,
        &la,
        None,
    ));
    assert_eq!(img.as_raw(), &[77, 77, 77, 200, 200, 200]);
    // 16-bit RGB and RGBA: the high byte (Pillow's RGB;16B). 16-bit grey: the high byte
    // too (Pillow would clip I;16 to 255; see the decode module's notes).
    let vals: [u16; 6] = [0, 255, 256, 1000, 32768, 65535];
    let be: Vec<u8> = vals.iter().flat_map(|v| v.to_be_bytes()).collect();
    let img = decode(&png(
        2,
        1,
        png::ColorType::Rgb,
        png::BitDepth::Sixteen,
        &be,
        None,
    ));
    assert_eq!(img.as_raw(), &[0, 0, 1, 3, 128, 255]);
    let rgba16: Vec<u8> = [1000u16, 2000, 3000, 5, 60000, 50000, 40000, 65535]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    let img = decode(&png(
        2,
        1,
        png::ColorType::Rgba,
        png::BitDepth::Sixteen,
        &rgba16,
        None,
    ));
    assert_eq!(img.as_raw(), &[3, 7, 11, 234, 195, 156]);
    let img = decode(&png(
        6,
        1,
        png::ColorType::Grayscale,
        png::BitDepth::Sixteen,
        &be,
        None,
    ));
    let highs: Vec<u8> = vals.iter().flat_map(|v| [(v >> 8) as u8; 3]).collect();
    assert_eq!(img.as_raw(), &highs[..]);
}

#[test]
fn jpeg_colour_models_decode() {
    // Grey JPEG: three equal channels.
    let grey: Vec<u8> = (0..64 * 48).map(|i| (i % 251) as u8).collect();
    let img = decode(&jpeg(64, 48, jpeg_encoder::ColorType::Luma, &grey, 95));
    assert!(
        img.as_raw()
            .chunks_exact(3)
            .all(|p| p[0] == p[1] && p[1] == p[2])
    );
    // RGB JPEG close to its source at high quality (smooth parts of the pattern).
    let src = pattern(64, 48);
    let img = decode(&jpeg(64, 48, jpeg_encoder::ColorType::Rgb, &src, 100));
    let mean = img
        .as_raw()
        .iter()
        .zip(&src)
        .map(|(a, b)| f64::from(a.abs_diff(*b)))
        .sum::<f64>()
        / src.len() as f64;
    assert!(mean < 3.0, "mean error {mean}");
}

#[test]
fn webp_decodes_with_and_without_alpha() {
    let rgb = pattern(7, 5);
    let img = decode(&webp(7, 5, image_webp::ColorType::Rgb8, &rgb));
    assert_eq!(img.as_raw(), &rgb[..]);
    let rgba: Vec<u8> = rgb
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 99])
        .collect();
    let img = decode(&webp(7, 5, image_webp::ColorType::Rgba8, &rgba));
    assert_eq!(img.as_raw(), &rgb[..]);
}

#[test]
fn tiny_and_extreme_aspect_images_decode() {
    for (w, h) in [(8u16, 8u16), (4000, 10), (10, 4000), (1, 1)] {
        let img = decode(&jpeg_rgb(w, h));
        assert_eq!((img.width(), img.height()), (u32::from(w), u32::from(h)));
        let p = pattern(u32::from(w), u32::from(h));
        let img = decode(&png_rgb(u32::from(w), u32::from(h), &p));
        assert_eq!(img.as_raw(), &p[..]);
    }
}

#[test]
fn a_png_named_jpeg_decodes_by_content() {
    let dir = tempfile::tempdir().unwrap();
    let p = pattern(9, 6);
    let path = put(dir.path(), "n01440764_1234.JPEG", &png_rgb(9, 6, &p));
    assert_eq!(read_rgb8(&path).unwrap().as_raw(), &p[..]);
}

#[test]
fn bad_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let jpg = jpeg_rgb(120, 90);
    let pngb = png_rgb(40, 30, &pattern(40, 30));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.jpg", Vec::new(), "empty"),
        ("cut.jpg", jpg[..jpg.len() * 6 / 10].to_vec(), "truncated"),
        ("cut.png", pngb[..pngb.len() * 6 / 10].to_vec(), "truncated"),
        ("headers-only.jpg", jpg[..40].to_vec(), "truncated"),
        (
            ".DS_Store",
            b"\0\0\0\x01Bud1\0\0\x10\0".to_vec(),
            "not an image",
        ),
        (
            "notes.png",
            b"just some text, not a picture".to_vec(),
            "not an image",
        ),
        (
            "garbage.jpg",
            [&[0xFF, 0xD8, 0xFF, 0xE0][..], &[0x13; 200]].concat(),
            "corrupt",
        ),
    ];
    for (name, bytes, kind) in cases {
        let path = put(dir.path(), name, &bytes);
        let err = read_rgb8(&path).unwrap_err();
        let matches = match kind {
            "empty" => matches!(err, DataError::Empty { .. }),
            "truncated" => matches!(err, DataError::Truncated { .. }),
            "not an image" => matches!(err, DataError::NotAnImage { .. }),
            _ => matches!(err, DataError::Corrupt { .. } | DataError::Truncated { .. }),
        };
        assert!(matches, "{name}: expected {kind}, got {err:?}");
        assert_eq!(err.path(), Some(path.as_path()), "{name}");
        assert!(err.to_string().contains(name), "{err}");
    }
    let missing = dir.path().join("missing.jpg");
    let err = read_rgb8(&missing).unwrap_err();
    assert!(matches!(err, DataError::Unreadable { .. }));
    assert!(err.to_string().contains("missing.jpg"));
}

#[test]
fn decompression_bombs_are_refused_before_allocating() {
    // A PNG header claiming 60000 x 60000 pixels (3.6 G pixels) and no data.
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&60000u32.to_be_bytes());
    ihdr.extend_from_slice(&60000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    bytes.extend_from_slice(&13u32.to_be_bytes());
    bytes.extend_from_slice(&ihdr);
    bytes.extend_from_slice(&crc32fast::hash(&ihdr).to_be_bytes());
    let err = decode_rgb8(&bytes, Path::new("bomb.png")).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::TooLarge {
                width: 60000,
                height: 60000,
                ..
            }
        ),
        "{err:?}"
    );
}
