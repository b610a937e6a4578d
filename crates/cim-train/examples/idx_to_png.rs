//! Writes the first N training images of Fashion-MNIST's IDX files as PNGs in one flat
//! folder, the unlabelled image set the learning check pre-trains on:
//! `cargo run -p cim-train --example idx_to_png -- data/fashion-mnist 6000 data/fashion-mnist-png`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [src, count, out] = args.as_slice() else {
        bail!("usage: idx_to_png IDX_FOLDER COUNT OUT_FOLDER");
    };
    let count: usize = count
        .parse()
        .with_context(|| format!("COUNT {count:?} is not a number"))?;
    let (train, _) = cim_train::eval::fashion_mnist(&PathBuf::from(src))?;
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let (h, w) = (train.height, train.width);
    for i in 0..count.min(train.len()) {
        let px = train.pixels[i * h * w..(i + 1) * h * w].to_vec();
        let img = image::GrayImage::from_raw(w as u32, h as u32, px).expect("sizes match");
        img.save(out.join(format!("{i:05}.png")))?;
    }
    println!(
        "wrote {} images to {}",
        count.min(train.len()),
        out.display()
    );
    Ok(())
}
