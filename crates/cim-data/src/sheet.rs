//! A picture of generated pairs, so a person can see that the geometry is right: one row
//! per pair with the context and each exemplar's footprint outlined in its own colour, the
//! exemplars (framed in the same colours), and the ground-truth maps drawn over a dimmed
//! context. Written as an 8-bit RGB PNG.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use crate::error::DataError;
use crate::pair::{Pair, denormalize};

/// Side of every tile in the sheet, in pixels.
const TILE: usize = 160;
/// Gap between tiles.
const GAP: usize = 4;

const COLOURS: [[u8; 3]; 8] = [
    [255, 60, 60],
    [60, 220, 60],
    [70, 130, 255],
    [255, 210, 0],
    [255, 0, 255],
    [0, 230, 230],
    [255, 140, 0],
    [255, 255, 255],
];

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn put(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    /// Draws a planar normalised `[3][side][side]` image scaled (nearest) to a tile at
    /// (x0, y0); `shade` picks each pixel's brightness factor.
    fn tile(
        &mut self,
        x0: usize,
        y0: usize,
        planar: &[f32],
        side: usize,
        shade: impl Fn(usize) -> f32,
    ) {
        let plane = side * side;
        for ty in 0..TILE {
            for tx in 0..TILE {
                let (sx, sy) = (tx * side / TILE, ty * side / TILE);
                let o = sy * side + sx;
                let f = shade(o);
                let mut c = [0u8; 3];
                for (ch, v) in c.iter_mut().enumerate() {
                    *v = (denormalize(planar[ch * plane + o], ch) * f) as u8;
                }
                self.put((x0 + tx) as i64, (y0 + ty) as i64, c);
            }
        }
    }

    /// A 2-pixel line from a to b.
    fn line(&mut self, a: (f64, f64), b: (f64, f64), c: [u8; 3]) {
        let steps = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).max(1);
        for s in 0..=steps {
            let t = s as f64 / steps as f64;
            let (x, y) = (a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1));
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                self.put(x.floor() as i64 + dx, y.floor() as i64 + dy, c);
            }
        }
    }

    fn frame(&mut self, x0: usize, y0: usize, c: [u8; 3]) {
        let (a, b) = (x0 as f64 - 2.0, (x0 + TILE) as f64);
        let (top, bottom) = (y0 as f64 - 2.0, (y0 + TILE) as f64);
        self.line((a, top), (b, top), c);
        self.line((b, top), (b, bottom), c);
        self.line((b, bottom), (a, bottom), c);
        self.line((a, bottom), (a, top), c);
    }
}

/// Writes a PNG sheet of `pairs` to `path`: per pair a row of the context with every
/// footprint outlined, the K exemplars, and the K ground-truth maps (footprint at full
/// brightness over a dimmed context). All pairs must share their sizes.
pub fn pair_sheet(pairs: &[Pair], path: &Path) -> Result<(), DataError> {
    let Some(first) = pairs.first() else {
        return Err(DataError::Config("pair_sheet: no pairs".into()));
    };
    let k = first.plan.rects.len();
    let s = first.search_view.width() as f64;
    let m = ((first.context.len() / 3) as f64).sqrt() as usize;
    let n = if k > 0 {
        ((first.exemplars.len() / (3 * k)) as f64).sqrt() as usize
    } else {
        0
    };
    for p in pairs {
        let same = p.plan.rects.len() == k
            && p.context.len() == 3 * m * m
            && p.exemplars.len() == k * 3 * n * n
            && p.maps.len() == k * m * m;
        if !same {
            return Err(DataError::Config(
                "pair_sheet: pairs of different sizes".into(),
            ));
        }
    }
    let cols = 1 + 2 * k;
    let w = cols * (TILE + GAP) + GAP;
    let h = pairs.len() * (TILE + GAP) + GAP;
    let mut cv = Canvas {
        w,
        h,
        px: vec![24; w * h * 3],
    };
    let scale = TILE as f64 / s;
    for (row, p) in pairs.iter().enumerate() {
        let y0 = GAP + row * (TILE + GAP);
        cv.tile(GAP, y0, &p.context, m, |_| 1.0);
        for (e, rect) in p.plan.rects.iter().enumerate() {
            let colour = COLOURS[e % COLOURS.len()];
            let corners = rect.corners();
            for c in 0..4 {
                let (a, b) = (corners[c], corners[(c + 1) % 4]);
                let at = |q: (f64, f64)| (GAP as f64 + q.0 * scale, y0 as f64 + q.1 * scale);
                cv.line(at(a), at(b), colour);
            }
            // The exemplar's top-left corner, so its orientation can be read off.
            let (tx, ty) = corners[0];
            for dy in -2..=2 {
                for dx in -2..=2 {
                    cv.put(
                        (GAP as f64 + tx * scale) as i64 + dx,
                        (y0 as f64 + ty * scale) as i64 + dy,
                        colour,
                    );
                }
            }
            let ex0 = GAP + (1 + e) * (TILE + GAP);
            let ex = &p.exemplars[e * 3 * n * n..(e + 1) * 3 * n * n];
            cv.tile(ex0, y0, ex, n, |_| 1.0);
            cv.frame(ex0, y0, colour);
            let mx0 = GAP + (1 + k + e) * (TILE + GAP);
            let map = &p.maps[e * m * m..(e + 1) * m * m];
            cv.tile(mx0, y0, &p.context, m, |o| {
                if map[o] > 0.5 { 1.0 } else { 0.25 }
            });
            cv.frame(mx0, y0, colour);
        }
    }
    let file = File::create(path).map_err(|e| DataError::write(path, e))?;
    let mut enc = png::Encoder::new(BufWriter::new(file), w as u32, h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let io = |e: png::EncodingError| DataError::write(path, std::io::Error::other(e));
    let mut writer = enc.write_header().map_err(io)?;
    writer.write_image_data(&cv.px).map_err(io)?;
    writer.finish().map_err(io)
}
