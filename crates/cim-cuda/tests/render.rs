//! The on-device pair renderer against cim-data's CPU renderer (S2): the same plans
//! rendered from the same 8-bit search views, on the host emulator always and on a GPU when
//! one is present (`CIM_REQUIRE_GPU=1` makes its absence a failure). Sources are the sample
//! photos when `scripts/fetch-sample-data.sh` has run, plus generated images always (flat
//! greys, saturated colours, noise, edges). The same tolerances then hold for whole loader
//! batches (cim-data's view loader rendered here against its pair loader), and `cim-cuda
//! pretrain` on the emulator trains alike with pairs rendered on the device or the host.
//!
//! Tolerances, fixed from the arithmetic before the first run:
//! - Contexts: identical bits. Both are Pillow's integer resize with the same coefficient
//!   table, then the same f32 expression (IEEE division on the device).
//! - Maps: identical. Both run the same f64 operations in the same order with every product
//!   and sum rounded on its own (the kernel forbids fused multiply-adds there), so even a
//!   centre on the rectangle's edge is decided alike.
//! - Exemplars without transforms: 4e-3 of an 8-bit level. Each renderer is a normalised
//!   f32 sum of at most a few hundred weighted bytes with f32 weights from offsets accurate
//!   to ~1e-6 pixels; cim-data holds its renderer within 2e-3 of the f64 definition
//!   (resample.rs tests), so two such renderers differ by at most twice that.
//! - Exemplars with transforms: 0.05 of a level. The transforms are Lipschitz with
//!   constants at most 1.4 (brightness), 1.8 (contrast: f v + (1 - f) mean), 1.4
//!   (saturation), 3.2 (hue: within a sector the output is min + (g - b)-like differences
//!   plus 6 |shift| times the chroma), 1 (greyscale, blur, flip); 4e-3 times their product
//!   (11.3) is 0.045, and each step's own f32 rounding adds ~1e-4.
//! - Solarise is the one discontinuity: a value within the tolerance of 128 may land on
//!   either side, which moves it by one level. Where the exemplar was solarised, both
//!   values in [127 - tol, 128 + tol] and differing by at most 1 + tol count as agreeing.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

mod common;

use cim_cuda::{Cuda, Device, DeviceBuffer, Emulator, PairOutputs};
use cim_data::{
    Dataset, Jitter, JitterOp, Kernel, Loader, LoaderOptions, MEAN, Pair, PairConfig, PairPlan,
    Photometric, PhotometricDraw, RgbImage, STD, ViewLoader, plan_pair, render_pair,
};
use cim_spec::backend::{Memory, Role};
use cim_spec::rng::CimRng;

/// Exemplars without transforms, in 8-bit levels (module notes).
const TOL_GEOMETRY: f32 = 4e-3;
/// Exemplars with transforms, in 8-bit levels (module notes).
const TOL_TRANSFORMS: f32 = 0.05;

/// The sample photos (a spread of up to `count`), or none when they were not fetched.
fn photos(count: usize) -> Vec<RgbImage> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/photos");
    let Ok(ds) = Dataset::open(&dir) else {
        eprintln!(
            "no {} (scripts/fetch-sample-data.sh): generated images only",
            dir.display()
        );
        return Vec::new();
    };
    let step = (ds.len() / count).max(1);
    (0..ds.len())
        .step_by(step)
        .take(count)
        .map(|i| ds.load(i).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// Generated sources: flat greys and saturated colour blocks (hue's grey and sector edges),
/// smooth ramps with sharp edges, and noise, in three sizes and aspects.
fn generated() -> Vec<RgbImage> {
    let image = |w: u32, h: u32, f: &dyn Fn(u32, u32, &mut CimRng) -> [u8; 3]| {
        let mut rng = CimRng::new(u64::from(w * h));
        let data = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .flat_map(|(x, y)| f(x, y, &mut rng))
            .collect();
        RgbImage::from_raw(w, h, data).unwrap()
    };
    vec![
        image(320, 240, &|x, y, _| {
            let block = (x / 40 + 3 * (y / 40)) % 8;
            let palette = [
                [128, 128, 128],
                [255, 0, 0],
                [0, 255, 0],
                [0, 0, 255],
                [255, 255, 0],
                [20, 20, 20],
                [200, 120, 40],
                [127, 128, 129],
            ];
            palette[block as usize]
        }),
        image(97, 203, &|_, _, rng| {
            [
                rng.below(256) as u8,
                rng.below(256) as u8,
                rng.below(256) as u8,
            ]
        }),
        image(500, 310, &|x, y, _| {
            let edge = if (x as i32 - 250).pow(2) + (y as i32 - 155).pow(2) < 90 * 90 {
                90
            } else {
                0
            };
            [
                (x / 2) as u8,
                (y * 255 / 310) as u8,
                ((x + y) % 160 + edge) as u8,
            ]
        }),
    ]
}

/// Every source the tests render from.
fn sources() -> Vec<RgbImage> {
    let mut all = photos(6);
    all.extend(generated());
    all
}

/// CPU pairs of `cfg` from each source, `per_source` plans each, the plans' draws replaced
/// by `draws` in turn when given.
fn cpu_pairs(cfg: &PairConfig, per_source: u64, draws: Option<&[PhotometricDraw]>) -> Vec<Pair> {
    let mut next = 0;
    let mut pairs = Vec::new();
    for (i, img) in sources().iter().enumerate() {
        for seed in 0..per_source {
            let mut rng = CimRng::derive(7, &[i as u64, seed]);
            let mut plan: PairPlan = plan_pair(img.width(), img.height(), cfg, &mut rng).unwrap();
            if let Some(draws) = draws {
                for d in &mut plan.photometric {
                    *d = draws[next % draws.len()];
                    next += 1;
                }
            }
            pairs.push(render_pair(img, plan, cfg).unwrap());
        }
    }
    pairs
}

fn buffer<D: Device>(cuda: &Cuda<D>, len: usize) -> DeviceBuffer<D> {
    let mut buf = cuda.alloc(len, Role::Activation).unwrap();
    // Poison, so values the renderer fails to write show.
    cuda.fill(cuda.view_mut(&mut buf, 0..len), f32::NAN)
        .unwrap();
    buf
}

fn download<D: Device>(cuda: &Cuda<D>, buf: &DeviceBuffer<D>) -> Vec<f32> {
    let mut out = vec![0.0; Cuda::<D>::buffer_len(buf)];
    cuda.download(cuda.view(buf, 0..out.len()), &mut out)
        .unwrap();
    out
}

/// A batch of the model's inputs: contexts, exemplars, maps (model layouts).
type Inputs = (Vec<f32>, Vec<f32>, Vec<f32>);

/// What the device renders from `views` (back to back) and their `plans`.
fn device_render<D: Device>(
    cuda: &Cuda<D>,
    cfg: &PairConfig,
    views: &[u8],
    plans: &[PairPlan],
) -> Inputs {
    let (b, m, n, k) = (
        plans.len(),
        cfg.context_size,
        cfg.exemplar_size,
        cfg.exemplars,
    );
    let mut context = buffer(cuda, b * 3 * m * m);
    let mut exemplars = buffer(cuda, b * k * 3 * n * n);
    let mut maps = buffer(cuda, b * k * m * m);
    let mut renderer = cuda.pair_renderer(cfg).unwrap();
    // The first pair alone, then the whole batch through the same renderer: its upload
    // buffers grow, and must carry nothing over.
    for pairs in [1, b] {
        let out = PairOutputs {
            context: cuda.view_mut(&mut context, 0..pairs * 3 * m * m),
            exemplars: cuda.view_mut(&mut exemplars, 0..pairs * k * 3 * n * n),
            maps: cuda.view_mut(&mut maps, 0..pairs * k * m * m),
        };
        let view_bytes = views.len() / b;
        renderer
            .render(&views[..pairs * view_bytes], &plans[..pairs], out)
            .unwrap();
    }
    (
        download(cuda, &context),
        download(cuda, &exemplars),
        download(cuda, &maps),
    )
}

/// A normalised value of channel `c` back in 8-bit levels (no clamping).
fn levels(v: f32, c: usize) -> f32 {
    (v * STD[c] + MEAN[c]) * 255.0
}

/// Renders `pairs` on the device and checks every output against the CPU's (module notes);
/// returns the largest exemplar difference in levels outside solarise's jump.
fn check<D: Device>(cuda: &Cuda<D>, cfg: &PairConfig, pairs: &[Pair], tol: f32) -> f32 {
    let views: Vec<u8> = pairs
        .iter()
        .flat_map(|p| p.search_view.as_raw().iter().copied())
        .collect();
    let plans: Vec<PairPlan> = pairs.iter().map(|p| p.plan.clone()).collect();
    let cpu = (
        pairs.iter().flat_map(|p| p.context.clone()).collect(),
        pairs.iter().flat_map(|p| p.exemplars.clone()).collect(),
        pairs.iter().flat_map(|p| p.maps.clone()).collect(),
    );
    compare(
        cfg,
        &device_render(cuda, cfg, &views, &plans),
        &cpu,
        &plans,
        tol,
    )
}

/// Checks the device's batch of `plans` against the CPU's (module notes); returns the
/// largest exemplar difference in levels outside solarise's jump.
fn compare(cfg: &PairConfig, device: &Inputs, cpu: &Inputs, plans: &[PairPlan], tol: f32) -> f32 {
    let (context, exemplars, maps) = device;
    let (m, n, k) = (cfg.context_size, cfg.exemplar_size, cfg.exemplars);
    let mut worst = 0.0f32;
    for (b, plan) in plans.iter().enumerate() {
        let want = &cpu.0[b * 3 * m * m..(b + 1) * 3 * m * m];
        let got = &context[b * 3 * m * m..(b + 1) * 3 * m * m];
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "pair {b}: context value {i}: {g} vs {w}"
            );
        }
        let want = &cpu.2[b * k * m * m..(b + 1) * k * m * m];
        let got = &maps[b * k * m * m..(b + 1) * k * m * m];
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g, w, "pair {b}: map {} cell {}", i / (m * m), i % (m * m));
        }
        let plane = n * n;
        let want = &cpu.1[b * k * 3 * plane..(b + 1) * k * 3 * plane];
        let got = &exemplars[b * k * 3 * plane..(b + 1) * k * 3 * plane];
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let (e, c) = (i / (3 * plane), (i / plane) % 3);
            let (g8, w8) = (levels(*g, c), levels(*w, c));
            let diff = (g8 - w8).abs();
            let jump = plan.photometric[e].solarize
                && diff <= 1.0 + tol
                && [g8, w8]
                    .iter()
                    .all(|v| (127.0 - tol..=128.0 + tol).contains(v));
            assert!(
                diff <= tol || jump,
                "pair {b}, exemplar {e}, channel {c}, pixel {}: device {g8} vs cpu {w8} levels \
                 ({:?})",
                i % plane,
                plan.photometric[e]
            );
            if !jump {
                worst = worst.max(diff);
            }
        }
    }
    worst
}

/// Every transform singly and together: each jitter operation at both ends of its range
/// and in each position, greyscale, the narrowest and widest blur, solarise, flip.
fn forced_draws() -> Vec<PhotometricDraw> {
    use JitterOp::{Brightness, Contrast, Hue, Saturation};
    let none = PhotometricDraw::identity();
    let jitter = |order, brightness, contrast, saturation, hue| PhotometricDraw {
        jitter: Some(Jitter {
            order,
            brightness,
            contrast,
            saturation,
            hue,
        }),
        ..none
    };
    vec![
        none,
        jitter([Brightness, Contrast, Saturation, Hue], 1.4, 1.0, 1.0, 0.0),
        jitter([Contrast, Brightness, Hue, Saturation], 1.0, 0.6, 1.0, 0.0),
        jitter([Saturation, Hue, Brightness, Contrast], 1.0, 1.0, 1.2, 0.0),
        jitter([Hue, Saturation, Contrast, Brightness], 1.0, 1.0, 1.0, -0.1),
        jitter([Hue, Contrast, Saturation, Brightness], 0.6, 1.4, 0.8, 0.1),
        PhotometricDraw {
            grayscale: true,
            ..none
        },
        PhotometricDraw {
            blur_sigma: Some(0.1),
            ..none
        },
        PhotometricDraw {
            blur_sigma: Some(2.0),
            ..none
        },
        PhotometricDraw {
            solarize: true,
            ..none
        },
        PhotometricDraw { flip: true, ..none },
        PhotometricDraw {
            grayscale: true,
            blur_sigma: Some(1.3),
            solarize: true,
            flip: true,
            ..jitter([Saturation, Brightness, Hue, Contrast], 1.3, 0.7, 1.1, 0.07)
        },
    ]
}

/// The cases every device runs: name, config, plans per source, forced draws, tolerance.
type Case = (
    &'static str,
    PairConfig,
    u64,
    Option<Vec<PhotometricDraw>>,
    f32,
);

fn cases() -> Vec<Case> {
    let recipe = PairConfig::default();
    let small = PairConfig {
        input_size: 57,
        context_size: 41,
        exemplar_size: 19,
        exemplars: 3,
        kernel: Kernel::Bilinear,
        ..recipe
    };
    vec![
        ("recipe", recipe, 1, None, TOL_TRANSFORMS),
        (
            "recipe, no transforms",
            PairConfig {
                photometric: Photometric::none(),
                ..recipe
            },
            1,
            None,
            TOL_GEOMETRY,
        ),
        (
            "recipe, each transform forced",
            recipe,
            1,
            Some(forced_draws()),
            TOL_TRANSFORMS,
        ),
        ("small, bilinear", small, 4, None, TOL_TRANSFORMS),
        (
            "small, bilinear, no transforms",
            PairConfig {
                photometric: Photometric::none(),
                ..small
            },
            4,
            None,
            TOL_GEOMETRY,
        ),
        (
            // The context as large as the canvas (an identity resize), exemplars larger than
            // most rectangles (enlarged: the filter keeps its unit width).
            "context = canvas, enlarged exemplars",
            PairConfig {
                input_size: 48,
                context_size: 48,
                exemplar_size: 40,
                exemplars: 4,
                ..recipe
            },
            3,
            None,
            TOL_TRANSFORMS,
        ),
        (
            // The context enlarged from the canvas.
            "context larger than the canvas",
            PairConfig {
                input_size: 40,
                context_size: 70,
                exemplar_size: 33,
                exemplars: 2,
                ..small
            },
            3,
            None,
            TOL_TRANSFORMS,
        ),
    ]
}

fn run_case<D: Device>(cuda: &Cuda<D>, case: &Case) {
    let (name, cfg, per_source, draws, tol) = case;
    let pairs = cpu_pairs(cfg, *per_source, draws.as_deref());
    let worst = check(cuda, cfg, &pairs, *tol);
    eprintln!(
        "{} {name}: {} pairs, contexts and maps identical, exemplars within {worst:.2e} levels (tolerance {tol})",
        cuda.device().name(),
        pairs.len()
    );
}

#[test]
fn emulator_renders_the_recipe_like_the_cpu() {
    let cuda = Cuda::emulated();
    for case in &cases()[..3] {
        run_case(&cuda, case);
    }
}

#[test]
fn emulator_renders_other_sizes_and_kernels_like_the_cpu() {
    let cuda = Cuda::emulated();
    for case in &cases()[3..] {
        run_case(&cuda, case);
    }
}

#[test]
fn gpu_renders_like_the_cpu() {
    let Some(cuda) = common::gpu_or_skip() else {
        return;
    };
    for case in &cases() {
        run_case(&cuda, case);
    }
}

#[test]
fn bad_batches_are_refused_with_the_reason() {
    let cuda = Cuda::<Emulator>::emulated();
    let cfg = PairConfig {
        input_size: 32,
        context_size: 24,
        exemplar_size: 8,
        exemplars: 2,
        ..PairConfig::default()
    };
    let pairs = cpu_pairs(&cfg, 1, None);
    let plans: Vec<PairPlan> = pairs.iter().take(2).map(|p| p.plan.clone()).collect();
    let views = vec![0u8; 2 * 32 * 32 * 3];
    let mut bufs: Vec<DeviceBuffer<Emulator>> = [2 * 3 * 24 * 24, 2 * 2 * 3 * 64, 2 * 2 * 24 * 24]
        .iter()
        .map(|&len| buffer(&cuda, len))
        .collect();
    let mut renderer = cuda.pair_renderer(&cfg).unwrap();
    let mut attempt = |views: &[u8], plans: &[PairPlan], short_maps: bool| {
        let [context, exemplars, maps] = &mut bufs[..] else {
            unreachable!()
        };
        let maps_len = Cuda::<Emulator>::buffer_len(maps) - usize::from(short_maps);
        let out = PairOutputs {
            context: cuda.view_mut(context, 0..2 * 3 * 24 * 24),
            exemplars: cuda.view_mut(exemplars, 0..2 * 2 * 3 * 64),
            maps: cuda.view_mut(maps, 0..maps_len),
        };
        renderer.render(views, plans, out).unwrap_err().to_string()
    };
    let err = attempt(&views[1..], &plans, false);
    assert!(err.contains("bytes of search views"), "{err}");
    let err = attempt(&views, &plans, true);
    assert!(err.contains("the maps output"), "{err}");
    let mut short = plans.clone();
    short[1].rects.pop();
    let err = attempt(&views, &short, false);
    assert!(err.contains("plan 1 has 1 rectangles"), "{err}");
    let mut broken = plans.clone();
    broken[0].rects[1].w = f64::NAN;
    let err = attempt(&views, &broken, false);
    assert!(
        err.contains("plan 0, exemplar 1") && err.contains("not finite"),
        "{err}"
    );
    let mut blurry = plans;
    blurry[1].photometric[0].blur_sigma = Some(-1.0);
    let err = attempt(&views, &blurry, false);
    assert!(err.contains("blur sigma -1"), "{err}");

    let huge = PairConfig {
        exemplar_size: 200,
        ..cfg
    };
    let err = cuda.pair_renderer(&huge).err().unwrap().to_string();
    assert!(
        err.contains("exemplar_size = 200") && err.contains("shared memory"),
        "{err}"
    );
    let invalid = PairConfig {
        context_size: 0,
        ..cfg
    };
    let err = cuda.pair_renderer(&invalid).err().unwrap().to_string();
    assert!(err.contains("context_size = 0"), "{err}");
}

/// A folder of PNG images: the generated sources and their mirror images.
fn image_folder(dir: &Path) -> Arc<Dataset> {
    for (i, mut img) in generated().into_iter().enumerate() {
        for side in ["a", "b"] {
            let path = dir.join(format!("{side}{i}.png"));
            let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
            let mut encoder = png::Encoder::new(file, img.width(), img.height());
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().unwrap();
            writer.write_image_data(img.as_raw()).unwrap();
            writer.finish().unwrap();
            img.flip_horizontal();
        }
    }
    Arc::new(Dataset::open(dir).unwrap())
}

#[test]
fn emulator_renders_view_loader_batches_like_the_pair_loader() {
    let dir = tempfile::tempdir().unwrap();
    let ds = image_folder(dir.path());
    let cuda = Cuda::emulated();
    let cfg = PairConfig {
        input_size: 64,
        context_size: 48,
        exemplar_size: 24,
        exemplars: 3,
        ..PairConfig::default()
    };
    let opts = LoaderOptions {
        batch_size: 3,
        workers: 2,
        seed: 5,
        epoch: 1,
        ..LoaderOptions::default()
    };
    let pairs = Loader::new(Arc::clone(&ds), cfg, opts.clone()).unwrap();
    let views = ViewLoader::new(Arc::clone(&ds), cfg, opts).unwrap();
    let mut batches = 0;
    for (p, v) in pairs.zip(views) {
        let (p, v) = (p.unwrap(), v.unwrap());
        assert_eq!(p.indices, v.indices);
        let cpu = (p.context, p.exemplars, p.maps);
        let device = device_render(&cuda, &cfg, &v.views, &v.plans);
        let worst = compare(&cfg, &device, &cpu, &v.plans, TOL_TRANSFORMS);
        eprintln!("loader batch {batches}: exemplars within {worst:.2e} levels");
        batches += 1;
    }
    assert_eq!(batches, 2);
}

/// The losses `cim-cuda pretrain` logged, one per step.
fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["loss"].as_f64().unwrap()
        })
        .collect()
}

/// The micro recipe for a few steps on the emulator, pairs rendered where `render` says
/// (`None`: the binary's default); returns the losses and what the run printed.
fn emulated_pretrain(data: &Path, run: &Path, render: Option<&str>) -> (Vec<f64>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cim-cuda"));
    cmd.env("CIM_CUDA_EMULATE", "1")
        .args(["pretrain", "--recipe", "micro", "--max-steps", "3"])
        .args(["--preflight", "off", "--no-progress", "--data"])
        .arg(data)
        .arg("--out")
        .arg(run);
    if let Some(render) = render {
        cmd.args(["--render", render]);
    }
    let out = cmd.output().unwrap();
    let printed =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cim-cuda pretrain failed:\n{printed}");
    (losses(run), printed)
}

/// The emulated binary trains alike with pairs rendered on the device (its default) and
/// on the host: the inputs differ by at most 0.05 of a level in exemplars (above), which
/// moves the micro model's loss by orders of magnitude less than 1e-3 of itself.
#[test]
fn emulated_pretrain_renders_on_the_device_and_trains_as_on_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("images");
    std::fs::create_dir(&data).unwrap();
    image_folder(&data);
    let (device, printed) = emulated_pretrain(&data, &dir.path().join("device"), None);
    assert!(
        printed.contains("pairs rendered on the device"),
        "{printed}"
    );
    let (host, printed) = emulated_pretrain(&data, &dir.path().join("host"), Some("host"));
    assert!(printed.contains("pairs rendered on the host"), "{printed}");
    assert_eq!(device.len(), 3);
    for (step, (d, h)) in device.iter().zip(&host).enumerate() {
        assert!(
            (d - h).abs() <= 1e-3 * h.abs(),
            "step {}: loss {d} with device rendering, {h} with host rendering",
            step + 1
        );
    }
    eprintln!("losses, device rendering {device:?}, host rendering {host:?}");
}
