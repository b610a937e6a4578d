//! Pairs per second per core for the ImageNet recipe (224 search view, 160 context,
//! 6 x 64 exemplars, every transform on), from JPEG files and from packed shards (raw and JPEG records), beside the
//! same pipeline written the way the public PyTorch release does it
//! (`benches/python/pairs_baseline.py`, PIL + torchvision, one thread), on the same images.
//! Side by side in one table with their ratios to that baseline: the whole pair on the CPU
//! (the `Loader`'s work per slot) and the device path's CPU share, decode + plan + search
//! view (the `ViewLoader`'s work per slot; the GPU renders the rest, issue 6). Also splits
//! the Rust time into its stages, times both loaders on all cores, and compares two JPEG
//! decoders. Prints; never asserts timings.
//!
//!   scripts/fetch-sample-data.sh && cargo bench -p cim-data --bench pairs
//!
//! `CIM_BENCH_SECONDS` sets the time per measurement (default 5), `CIM_BENCH_IMAGES` the
//! image folder (default data/imagenet-val), `CIM_BENCH_PYTHON` the interpreter (python3;
//! `none` skips the baseline).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cim_data::{
    Batch, BatchLoader, CropBox, Dataset, Encoding, Kernel, LoaderBatch, LoaderOptions,
    PackOptions, PairConfig, ViewBatch, decode_rgb8, make_pair, pack, plan_pair, plan_view,
    render_exemplar, resize, resize_crop, sample,
};
use cim_spec::rng::CimRng;

/// CPU time of the calling thread (Linux `schedstat`), so a loaded machine slows the
/// measurement less than wall time would; `None` elsewhere.
fn thread_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Runs `f` repeatedly for about `secs` of wall time, returning calls per second of this
/// thread's CPU time (wall time where that is unavailable).
fn rate(secs: f64, mut f: impl FnMut(usize)) -> f64 {
    // Warm up the caches and the allocator first.
    for i in 0..3 {
        f(i);
    }
    let start = Instant::now();
    let cpu0 = thread_cpu();
    let mut calls = 0;
    while start.elapsed() < Duration::from_secs_f64(secs) {
        f(calls);
        calls += 1;
    }
    let spent = match (cpu0, thread_cpu()) {
        (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
        _ => start.elapsed().as_secs_f64(),
    };
    calls as f64 / spent
}

/// Samples per second of wall time of a loader yielding `T` with `workers` threads over
/// whole epochs of `ds` (batches of 16, or the whole set when smaller), for about `secs`.
fn loader_rate<T: LoaderBatch>(
    ds: &Arc<Dataset>,
    cfg: PairConfig,
    workers: usize,
    secs: f64,
) -> f64 {
    let batch = ds.len().min(16);
    let start = Instant::now();
    let mut samples = 0;
    let mut epoch = 0;
    while start.elapsed() < Duration::from_secs_f64(secs) {
        let opts = LoaderOptions {
            batch_size: batch,
            workers,
            epoch,
            ..LoaderOptions::default()
        };
        for b in BatchLoader::<T>::new(Arc::clone(ds), cfg, opts).expect("loader") {
            b.expect("batch");
            samples += batch;
        }
        epoch += 1;
    }
    samples as f64 / start.elapsed().as_secs_f64()
}

/// The pairs/s of the release-style Python pipeline on `images`, or `None` (with the
/// reason on stderr) when `python` is `none` or the script fails.
fn python_rate(root: &Path, python: &str, images: &Path, secs: f64) -> Option<f64> {
    if python == "none" {
        return None;
    }
    let script = root.join("benches/python/pairs_baseline.py");
    let out = Command::new(python)
        .arg(&script)
        .arg("--images")
        .arg(images)
        .arg("--seconds")
        .arg(secs.to_string())
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| v.get("pairs_per_s").and_then(serde_json::Value::as_f64)),
        Ok(o) => {
            eprintln!(
                "python baseline failed:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("python baseline not run ({python}: {e})");
            None
        }
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let secs: f64 = std::env::var("CIM_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let images = std::env::var("CIM_BENCH_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("data/imagenet-val"));
    let ds = match Dataset::open(&images) {
        Ok(ds) => Arc::new(ds),
        Err(e) => {
            eprintln!("pairs bench: {e}\nrun scripts/fetch-sample-data.sh first");
            return;
        }
    };
    let cfg = PairConfig::default();
    let n = ds.len();
    println!(
        "cim-data pairs bench: {} images from {}, {secs} s per measurement, one thread unless noted",
        n,
        images.display()
    );

    // Stage split on decoded images.
    let bytes: Vec<Vec<u8>> = (0..n)
        .map(|i| std::fs::read(ds.path(i).expect("in range")).expect("readable"))
        .collect();
    let decoded: Vec<_> = bytes
        .iter()
        .map(|b| decode_rgb8(b, Path::new("bench")).expect("decodes"))
        .collect();
    let mpix: f64 = decoded
        .iter()
        .map(|d| f64::from(d.width()) * f64::from(d.height()))
        .sum::<f64>()
        / n as f64
        / 1e6;
    let zune = rate(secs, |i| {
        black_box(decode_rgb8(&bytes[i % n], Path::new("bench")).ok());
    });
    let jpeg_decoder = rate(secs, |i| {
        let mut d = jpeg_decoder::Decoder::new(&bytes[i % n][..]);
        black_box(d.decode().ok());
    });
    let plans: Vec<_> = (0..n)
        .map(|i| {
            plan_pair(
                decoded[i].width(),
                decoded[i].height(),
                &cfg,
                &mut CimRng::new(i as u64),
            )
            .expect("plans")
        })
        .collect();
    let search = rate(secs, |i| {
        let (img, p) = (&decoded[i % n], &plans[i % n]);
        let crop = CropBox {
            x0: p.search.x0,
            y0: p.search.y0,
            w: p.search.w,
            h: p.search.h,
        };
        black_box(resize_crop(img, crop, 224, 224, Kernel::Bicubic));
    });
    let views: Vec<_> = (0..n)
        .map(|i| {
            let p = &plans[i].search;
            let crop = CropBox {
                x0: p.x0,
                y0: p.y0,
                w: p.w,
                h: p.h,
            };
            resize_crop(&decoded[i], crop, 224, 224, Kernel::Bicubic).expect("fits")
        })
        .collect();
    let context = rate(secs, |i| {
        black_box(resize(&views[i % n], 160, 160, Kernel::Bicubic));
    });
    let mut ex = vec![0.0f32; 3 * 64 * 64];
    let exemplars = rate(secs, |i| {
        for r in &plans[i % n].rects {
            render_exemplar(&views[i % n], r, 64, Kernel::Bicubic, &mut ex);
        }
        black_box(&ex);
    });
    let pairs_decoded = rate(secs, |i| {
        black_box(make_pair(&decoded[i % n], &cfg, &mut CimRng::new(i as u64)).ok());
    });
    let bilinear = PairConfig {
        kernel: Kernel::Bilinear,
        ..cfg
    };
    let pairs_bilinear = rate(secs, |i| {
        black_box(make_pair(&decoded[i % n], &bilinear, &mut CimRng::new(i as u64)).ok());
    });
    let files = rate(secs, |i| {
        black_box(sample(&ds, &cfg, 0, 0, i % n).ok());
    });

    let dir = tempfile::tempdir().expect("temp dir");
    let packed = pack(
        &ds,
        dir.path(),
        &PackOptions {
            shorter_side: 256,
            ..PackOptions::default()
        },
    )
    .expect("packs");
    let shards = Dataset::open(dir.path()).expect("opens shards");
    let shard_rate = rate(secs, |i| {
        black_box(sample(&shards, &cfg, 0, 0, i % n).ok());
    });
    let jpeg_dir = tempfile::tempdir().expect("temp dir");
    let jpeg_packed = pack(
        &ds,
        jpeg_dir.path(),
        &PackOptions {
            shorter_side: 256,
            encoding: Encoding::Jpeg { quality: 90 },
            ..PackOptions::default()
        },
    )
    .expect("packs");
    let jpeg_shards = Dataset::open(jpeg_dir.path()).expect("opens shards");
    let jpeg_shard_rate = rate(secs, |i| {
        black_box(sample(&jpeg_shards, &cfg, 0, 0, i % n).ok());
    });
    // What stays on the CPU when the device renders the context, exemplars and maps from
    // an uploaded 8-bit search view (S2 item 2): a ViewLoader slot's work, load + plan_view.
    let view_only = |ds: &Dataset, i: usize| {
        let img = ds.load(i % n).expect("loads");
        black_box(plan_view(&img, &cfg, &mut CimRng::new(i as u64)).expect("plans"));
    };
    let files_view = rate(secs, |i| view_only(&ds, i));
    let shards_view = rate(secs, |i| view_only(&shards, i));
    let jpeg_shards_view = rate(secs, |i| view_only(&jpeg_shards, i));
    let workers = std::thread::available_parallelism().map_or(1, |c| c.get());
    let loader_pairs = loader_rate::<Batch>(&ds, cfg, workers, secs);
    let loader_views = loader_rate::<ViewBatch>(&ds, cfg, workers, secs);
    let python = std::env::var("CIM_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let py = python_rate(&root, &python, &images, secs);

    println!();
    println!("stage (Rust, one thread)                   per second   ms each");
    let row = |name: &str, r: f64| println!("{name:<42} {r:>10.1} {:>9.3}", 1000.0 / r);
    row(&format!("JPEG decode, zune-jpeg ({mpix:.2} MP avg)"), zune);
    row("JPEG decode, jpeg-decoder (for comparison)", jpeg_decoder);
    row("search view: crop + bicubic resize to 224", search);
    row("context: 224 -> 160 bicubic", context);
    row("6 exemplars rendered (64 x 64, rotated)", exemplars);
    row("pair from a decoded image (all of S2)", pairs_decoded);
    row("  the same with bilinear exemplars", pairs_bilinear);
    println!();
    println!(
        "pairs per second per core, ImageNet recipe                       pairs/s   ms each   x Python"
    );
    let versus = |name: &str, r: f64| {
        let ratio = py.map_or("-".to_string(), |py| format!("{:.1}x", r / py));
        println!("{name:<64} {r:>8.1} {:>9.3} {ratio:>10}", 1000.0 / r);
    };
    let shard_note = format!("raw shards (256, {:.1} MB)", packed.bytes as f64 / 1e6);
    let jpeg_note = format!(
        "JPEG q90 shards (256, {:.1} MB)",
        jpeg_packed.bytes as f64 / 1e6
    );
    versus("whole pair on the CPU, JPEG files", files);
    versus(&format!("whole pair on the CPU, {shard_note}"), shard_rate);
    versus(
        &format!("whole pair on the CPU, {jpeg_note}"),
        jpeg_shard_rate,
    );
    versus("device path (plan + search view), JPEG files", files_view);
    versus(
        &format!("device path (plan + search view), {shard_note}"),
        shards_view,
    );
    versus(
        &format!("device path (plan + search view), {jpeg_note}"),
        jpeg_shards_view,
    );
    match py {
        Some(py) => versus("Python/PIL/torchvision, release style, JPEG files", py),
        None => println!("Python/PIL/torchvision baseline: not run ({python})"),
    }
    println!();
    println!(
        "loaders, {workers} workers, batches of {}, JPEG files (wall)",
        n.min(16)
    );
    row("  Loader (whole pairs), pairs/s", loader_pairs);
    row("  ViewLoader (plans + search views), pairs/s", loader_views);
}
