//! Small raster pictures without a plotting stack: a line chart (the loss curve) and a
//! tiny 5x7 bitmap font for its labels, written as PNG through the `image` crate.

use std::path::Path;

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};

/// 5x7 glyphs, one byte per row (low 5 bits, most significant = leftmost column).
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        'e' => [0, 0, 0x0E, 0x11, 0x1F, 0x10, 0x0E],
        'l' => [0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'o' => [0, 0, 0x0E, 0x11, 0x11, 0x11, 0x0E],
        's' => [0, 0, 0x0F, 0x10, 0x0E, 0x01, 0x1E],
        't' => [0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06],
        'p' => [0, 0, 0x1E, 0x11, 0x1E, 0x10, 0x10],
        'r' => [0, 0, 0x16, 0x19, 0x10, 0x10, 0x10],
        'a' => [0, 0, 0x0E, 0x01, 0x0F, 0x11, 0x0F],
        'n' => [0, 0, 0x16, 0x19, 0x11, 0x11, 0x11],
        'i' => [0x04, 0, 0x0C, 0x04, 0x04, 0x04, 0x0E],
        'd' => [0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F],
        'c' => [0, 0, 0x0E, 0x10, 0x10, 0x11, 0x0E],
        'g' => [0, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E],
        'm' => [0, 0, 0x1A, 0x15, 0x15, 0x11, 0x11],
        'x' => [0, 0, 0x11, 0x0A, 0x04, 0x0A, 0x11],
        'h' => [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11],
        'u' => [0, 0, 0x11, 0x11, 0x11, 0x13, 0x0D],
        'v' => [0, 0, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'w' => [0, 0, 0x11, 0x11, 0x15, 0x15, 0x0A],
        'y' => [0, 0, 0x11, 0x11, 0x0F, 0x01, 0x0E],
        'f' => [0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08],
        'k' => [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12],
        'b' => [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E],
        'z' => [0, 0, 0x1F, 0x02, 0x04, 0x08, 0x1F],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        _ => [0; 7],
    }
}

/// Draws `text` with its top-left corner at (x, y), `scale` pixels per font pixel.
pub fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, scale: i64, color: [u8; 3]) {
    for (k, c) in s.chars().enumerate() {
        let g = glyph(c.to_ascii_lowercase());
        for (row, bits) in g.iter().enumerate() {
            for col in 0..5 {
                if bits & (0x10 >> col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            put(
                                img,
                                x + (k as i64 * 6 + col) * scale + dx,
                                y + row as i64 * scale + dy,
                                color,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Sets one pixel if it lies inside the image.
pub fn put(img: &mut RgbImage, x: i64, y: i64, color: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, Rgb(color));
    }
}

/// A straight line (Bresenham).
pub fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), color: [u8; 3]) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        put(img, x, y, color);
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// Formats an axis value compactly.
fn label(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e4 || v.abs() < 1e-2) {
        format!("{v:.2e}")
    } else {
        format!("{v:.3}")
    }
}

/// A line chart of `series` (x, y) with a title and axis extremes, saved as PNG.
pub fn line_chart(path: &Path, title: &str, x_name: &str, series: &[(f64, f64)]) -> Result<()> {
    let (w, h) = (720u32, 420u32);
    let (left, right, top, bottom) = (80i64, 20i64, 40i64, 50i64);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let pts: Vec<(f64, f64)> = series
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    text(&mut img, left, 12, title, 2, [0, 0, 0]);
    let (x0, y0, x1, y1) = (left, top, w as i64 - right, h as i64 - bottom);
    line(&mut img, (x0, y1), (x1, y1), [0, 0, 0]);
    line(&mut img, (x0, y0), (x0, y1), [0, 0, 0]);
    if let (Some(first), Some(last)) = (pts.first(), pts.last()) {
        let (xmin, xmax) = (first.0, last.0.max(first.0 + 1e-9));
        let ymin = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let ymax = pts
            .iter()
            .map(|p| p.1)
            .fold(f64::NEG_INFINITY, f64::max)
            .max(ymin + 1e-9);
        let px = |x: f64| x0 + ((x - xmin) / (xmax - xmin) * (x1 - x0) as f64).round() as i64;
        let py = |y: f64| y1 - ((y - ymin) / (ymax - ymin) * (y1 - y0) as f64).round() as i64;
        for pair in pts.windows(2) {
            line(
                &mut img,
                (px(pair[0].0), py(pair[0].1)),
                (px(pair[1].0), py(pair[1].1)),
                [200, 40, 40],
            );
        }
        text(&mut img, 4, y0, &label(ymax), 1, [0, 0, 0]);
        text(&mut img, 4, y1 - 7, &label(ymin), 1, [0, 0, 0]);
        text(&mut img, x0, y1 + 8, &label(xmin), 1, [0, 0, 0]);
        let xl = label(xmax);
        text(
            &mut img,
            x1 - 6 * xl.len() as i64,
            y1 + 8,
            &xl,
            1,
            [0, 0, 0],
        );
    }
    text(
        &mut img,
        (x0 + x1) / 2 - 3 * x_name.len() as i64,
        y1 + 26,
        x_name,
        2,
        [0, 0, 0],
    );
    img.save(path)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_draws_the_curve_inside_the_axes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.png");
        let pts: Vec<(f64, f64)> = (0..50)
            .map(|i| (i as f64, 3.0 / (1.0 + i as f64)))
            .collect();
        line_chart(&p, "loss", "step", &pts).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        let red = img.pixels().filter(|px| px.0 == [200, 40, 40]).count();
        assert!(red > 300, "the curve has {red} pixels");
        // The first point (highest loss) is at the top-left of the plot area.
        assert_eq!(img.get_pixel(80, 40).0, [200, 40, 40]);
    }
}
