//! An 8-bit RGB raster: the one image type that leaves the decoder (S2 item 1) and that the
//! search view and context are made of. Row-major, three interleaved bytes per pixel, no
//! padding; its fields are private so the length always matches the size.

/// An 8-bit RGB image, row-major, `width * height * 3` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

impl RgbImage {
    /// Wraps interleaved RGB bytes; `None` unless `data.len() == width * height * 3`.
    pub fn from_raw(width: u32, height: u32, data: Vec<u8>) -> Option<Self> {
        let len = (width as usize)
            .checked_mul(height as usize)?
            .checked_mul(3)?;
        (data.len() == len).then_some(RgbImage {
            width,
            height,
            data,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The interleaved bytes.
    pub fn as_raw(&self) -> &[u8] {
        &self.data
    }

    /// The interleaved bytes, by value.
    pub fn into_raw(self) -> Vec<u8> {
        self.data
    }

    /// The pixel at column `x`, row `y`; `None` outside the image.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        Some([self.data[i], self.data[i + 1], self.data[i + 2]])
    }

    /// Mirrors the image left-right in place.
    pub fn flip_horizontal(&mut self) {
        let w = self.width as usize;
        if w == 0 {
            return;
        }
        for row in self.data.chunks_exact_mut(w * 3) {
            for j in 0..w / 2 {
                let (a, b) = (j * 3, (w - 1 - j) * 3);
                for c in 0..3 {
                    row.swap(a + c, b + c);
                }
            }
        }
    }
}
