//! Decoding image files to RGB8 (S2 item 1) the way Pillow's `Image.open(f).convert('RGB')`
//! does, since that is what the public release (torchvision's ImageFolder loader) feeds the
//! crop pipeline. The format is chosen by the file's signature, never its name, so a PNG
//! saved as `.JPEG` (ImageNet has some) decodes. JPEG goes through zune-jpeg (SIMD IDCT and
//! colour conversion), PNG through `png`, WebP through `image-webp`.
//!
//! Colour models, as Pillow converts them:
//! - grey (any bit depth) is copied to three channels; palettes are expanded;
//! - alpha is dropped, never composited (Pillow's RGBA -> RGB keeps the colour channels);
//! - 16-bit samples keep their high byte (Pillow's `RGB;16B` and `RGBA;16B` unpackers).
//!   One deliberate difference: Pillow opens 16-bit grey as `I;16` and clips it to 255 when
//!   converting, which turns almost every 16-bit grey photo white; we take the high byte as
//!   for the colour 16-bit models;
//! - CMYK and YCCK JPEGs: Pillow assumes Adobe polarity for every CMYK JPEG (libjpeg hands
//!   it inverted samples c', m', y', k' and Pillow reads them as `CMYK;I`, i.e.
//!   C = 255 - c'), then converts with R = (255 - K) - round(C (255 - K) / 255), which
//!   equals round(c' k' / 255); likewise G from m', B from y'. YCCK is first turned into
//!   those inverted samples by libjpeg (c' = 255 - R(Y, Cb, Cr), k' as stored). zune-jpeg's
//!   CMYK -> RGB and YCCK -> RGB conversions compute exactly round(c' k' / 255) with the
//!   same polarity assumption, so we use them (tests check against Pillow's output).
//! - ICC profiles, gamma chunks and EXIF orientation are ignored, as Pillow's `convert` does.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use crate::error::DataError;
use crate::rgb::RgbImage;

/// The largest image decoded, in pixels: Pillow's decompression-bomb error threshold
/// (twice its warning limit of 89,478,485 pixels). Larger images are refused before their
/// pixels are allocated.
pub const MAX_PIXELS: u64 = 2 * 89_478_485;

/// The container formats recognised from a file's first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// JPEG (JFIF, EXIF, Adobe), baseline or progressive.
    Jpeg,
    /// PNG, any colour type and bit depth.
    Png,
    /// WebP, lossy or lossless.
    WebP,
}

impl ImageFormat {
    /// The format's name as errors print it.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "JPEG",
            ImageFormat::Png => "PNG",
            ImageFormat::WebP => "WebP",
        }
    }

    /// The format whose signature starts `bytes`, if any.
    pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(ImageFormat::Jpeg)
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(ImageFormat::Png)
        } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(ImageFormat::WebP)
        } else {
            None
        }
    }
}

/// Reads and decodes one image file to RGB8; every error names `path`.
pub fn read_rgb8(path: &Path) -> Result<RgbImage, DataError> {
    // Opening a FIFO (or a device) named like an image would block forever or read
    // without end; such a file is refused by name instead of opened.
    let meta = std::fs::metadata(path).map_err(|e| DataError::unreadable(path, e))?;
    if !meta.is_file() {
        let why = "not a regular file (a folder, FIFO, socket or device), so not opened";
        return Err(DataError::unreadable(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| DataError::unreadable(path, e))?;
    decode_rgb8(&bytes, path)
}

/// Decodes an encoded image (JPEG, PNG or WebP, recognised by signature) to RGB8 as
/// Pillow's `convert('RGB')` would (see the module notes). `path` only names the file in
/// errors. A decoder panic is caught and reported as a corrupt file, so one hostile file
/// cannot take down a loader thread.
pub fn decode_rgb8(bytes: &[u8], path: &Path) -> Result<RgbImage, DataError> {
    if bytes.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    let format = ImageFormat::sniff(bytes).ok_or_else(|| DataError::NotAnImage {
        path: path.to_path_buf(),
    })?;
    let decoded = catch_unwind(AssertUnwindSafe(|| match format {
        ImageFormat::Jpeg => decode_jpeg(bytes),
        ImageFormat::Png => decode_png(bytes),
        ImageFormat::WebP => decode_webp(bytes),
    }))
    .unwrap_or_else(|_| Err(Failure::Corrupt("the decoder panicked".into())));
    decoded.map_err(|failure| failure.into_error(path, format))
}

/// A decoder failure before the file's path is attached.
enum Failure {
    Truncated(String),
    Corrupt(String),
    TooLarge(u64, u64),
}

impl Failure {
    fn into_error(self, path: &Path, format: ImageFormat) -> DataError {
        let path = path.to_path_buf();
        let format = format.name();
        match self {
            Failure::Truncated(detail) => DataError::Truncated {
                path,
                format,
                detail,
            },
            Failure::Corrupt(detail) => DataError::Corrupt {
                path,
                format,
                detail,
            },
            Failure::TooLarge(width, height) => DataError::TooLarge {
                path,
                width,
                height,
            },
        }
    }
}

fn check_size(width: u64, height: u64) -> Result<(), Failure> {
    if width == 0 || height == 0 {
        return Err(Failure::Corrupt(format!("zero size {width} x {height}")));
    }
    if width.saturating_mul(height) > MAX_PIXELS {
        return Err(Failure::TooLarge(width, height));
    }
    Ok(())
}

fn jpeg_options(strict: bool) -> DecoderOptions {
    DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX))
        .set_strict_mode(strict)
}

fn decode_jpeg(bytes: &[u8]) -> Result<RgbImage, Failure> {
    // Strict first: zune-jpeg's lenient mode fills a truncated scan with grey and reports
    // success, where Pillow raises "image file is truncated". When strict decoding fails,
    // a file whose scan data never reaches an end-of-image marker is reported truncated;
    // any other failure is retried leniently, which accepts the small stream defects that
    // libjpeg (and so Pillow) only warns about.
    match decode_jpeg_with(bytes, true) {
        Ok(img) => Ok(img),
        Err(Failure::Corrupt(detail)) => {
            if jpeg_lacks_end(bytes) {
                Err(Failure::Truncated(detail))
            } else {
                decode_jpeg_with(bytes, false)
            }
        }
        Err(other) => Err(other),
    }
}

fn decode_jpeg_with(bytes: &[u8], strict: bool) -> Result<RgbImage, Failure> {
    let mut dec = JpegDecoder::new_with_options(ZCursor::new(bytes), jpeg_options(strict));
    dec.decode_headers()
        .map_err(|e| Failure::Corrupt(e.to_string()))?;
    let (w, h) = dec
        .dimensions()
        .ok_or_else(|| Failure::Corrupt("no frame header".into()))?;
    check_size(w as u64, h as u64)?;
    let len = dec
        .output_buffer_size()
        .ok_or_else(|| Failure::Corrupt("size overflows memory".into()))?;
    if len != w * h * 3 {
        return Err(Failure::Corrupt(format!(
            "unsupported colour model {:?}",
            dec.input_colorspace()
        )));
    }
    let mut out = vec![0u8; len];
    dec.decode_into(&mut out)
        .map_err(|e| Failure::Corrupt(e.to_string()))?;
    RgbImage::from_raw(w as u32, h as u32, out)
        .ok_or_else(|| Failure::Corrupt("size mismatch".into()))
}

/// Whether the JPEG's first scan is never followed by an end-of-image marker (FF D9), or
/// its header segments run past the end of the bytes: the signature of a cut-off file. The
/// search starts at the first start-of-scan so an EXIF thumbnail's own end marker, which
/// lies in the headers, does not count.
fn jpeg_lacks_end(bytes: &[u8]) -> bool {
    let mut i = 2;
    let sos = loop {
        if i + 1 >= bytes.len() {
            return true;
        }
        if bytes[i] != 0xFF {
            // Not a marker where one must be: malformed, but not evidence of a cut.
            return false;
        }
        match bytes[i + 1] {
            0xFF => i += 1,
            0xDA => break i,
            0x01 | 0xD0..=0xD7 => i += 2,
            _ => {
                if i + 3 >= bytes.len() {
                    return true;
                }
                let seg = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
                i += 2 + seg;
            }
        }
    };
    !bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9])
}

fn png_failure(e: png::DecodingError) -> Failure {
    match e {
        png::DecodingError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            Failure::Truncated(io.to_string())
        }
        png::DecodingError::LimitsExceeded => Failure::Corrupt("memory limit exceeded".into()),
        other => Failure::Corrupt(other.to_string()),
    }
}

fn decode_png(bytes: &[u8]) -> Result<RgbImage, Failure> {
    let mut dec = png::Decoder::new_with_limits(
        Cursor::new(bytes),
        png::Limits {
            // Enough for the largest accepted image at 16-bit RGBA.
            bytes: (MAX_PIXELS * 8) as usize,
        },
    );
    // EXPAND: palettes to RGB(A), grey below 8 bits scaled to 8 bits (1-bit 0/255, 2-bit
    // x85, 4-bit x17, as Pillow's "1", "L;2", "L;4" unpackers), tRNS to an alpha channel
    // that is then dropped.
    dec.set_transformations(png::Transformations::EXPAND);
    dec.set_ignore_text_chunk(true);
    let header = dec.read_header_info().map_err(png_failure)?;
    check_size(u64::from(header.width), u64::from(header.height))?;
    let mut reader = dec.read_info().map_err(png_failure)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| Failure::Corrupt("size overflows memory".into()))?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(png_failure)?;
    buf.truncate(frame.buffer_size());
    let channels = frame.color_type.samples();
    let bytes_per_sample = match frame.bit_depth {
        png::BitDepth::Eight => 1,
        png::BitDepth::Sixteen => 2,
        other => {
            return Err(Failure::Corrupt(format!(
                "unexpected bit depth {other:?} after expansion"
            )));
        }
    };
    let (w, h) = (frame.width, frame.height);
    let pixels = w as usize * h as usize;
    let stride = channels * bytes_per_sample;
    if buf.len() != pixels * stride {
        return Err(Failure::Corrupt("frame size mismatch".into()));
    }
    let mut out = Vec::with_capacity(pixels * 3);
    // Samples are big-endian, so the high byte of a 16-bit sample comes first.
    let sample = |px: &[u8], c: usize| px[c * bytes_per_sample];
    for px in buf.chunks_exact(stride) {
        match channels {
            1 | 2 => {
                let g = sample(px, 0);
                out.extend_from_slice(&[g, g, g]);
            }
            3 | 4 => out.extend_from_slice(&[sample(px, 0), sample(px, 1), sample(px, 2)]),
            _ => return Err(Failure::Corrupt(format!("{channels} channels"))),
        }
    }
    RgbImage::from_raw(w, h, out).ok_or_else(|| Failure::Corrupt("size mismatch".into()))
}

fn webp_failure(e: image_webp::DecodingError) -> Failure {
    match e {
        image_webp::DecodingError::IoError(io)
            if io.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            Failure::Truncated(io.to_string())
        }
        other => Failure::Corrupt(other.to_string()),
    }
}

fn decode_webp(bytes: &[u8]) -> Result<RgbImage, Failure> {
    let mut dec = image_webp::WebPDecoder::new(Cursor::new(bytes)).map_err(webp_failure)?;
    let (w, h) = dec.dimensions();
    check_size(u64::from(w), u64::from(h))?;
    let size = dec
        .output_buffer_size()
        .ok_or_else(|| Failure::Corrupt("size overflows memory".into()))?;
    let mut buf = vec![0u8; size];
    dec.read_image(&mut buf).map_err(webp_failure)?;
    let pixels = w as usize * h as usize;
    let data = if buf.len() == pixels * 4 {
        buf.chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect()
    } else if buf.len() == pixels * 3 {
        buf
    } else {
        return Err(Failure::Corrupt("frame size mismatch".into()));
    };
    RgbImage::from_raw(w, h, data).ok_or_else(|| Failure::Corrupt("size mismatch".into()))
}
