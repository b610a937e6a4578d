//! The `cim-cpu` binary end to end on a few generated images: a SIGINT during
//! pre-training checkpoints at the next step and exits cleanly, `--resume auto` continues
//! from that checkpoint, bad input ends with an error that names it, and `selftest` and
//! `bench` report what they measured; any other subcommand stops at the first signal; `pack`
//! makes shards that `pretrain` reads.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cim-cpu"))
}

/// Twelve 64x48 images with distinct gradients.
fn images(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for k in 0..12u32 {
        let img = image::RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4 + k * 20) as u8, (y * 5) as u8, (k * 21) as u8])
        });
        img.save(dir.join(format!("img{k:02}.png"))).unwrap();
    }
}

#[test]
fn sigint_checkpoints_and_resume_continues() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("images");
    images(&data);
    let run = dir.path().join("run");
    let args = |extra: &[&str]| {
        let mut v = vec![
            "pretrain",
            "--recipe",
            "micro",
            "--data",
            data.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--no-progress",
            "--set",
            "optim.epochs=100000",
            "--set",
            "run.checkpoint_every=1000000",
        ];
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let child = bin()
        .args(args(&[]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training is under way (the metrics file appears), then interrupt.
    let start = Instant::now();
    while !run.join("metrics.jsonl").exists()
        || std::fs::metadata(run.join("metrics.jsonl")).unwrap().len() == 0
    {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "training did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {err}", out.status);
    assert!(err.contains("checkpoint written at step"), "{err}");
    let ckpts: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .collect();
    assert_eq!(ckpts.len(), 1, "exactly the interrupt's checkpoint");
    // Resuming continues from it for a few more steps.
    let step = checkpoint_step(&run);
    let out = bin()
        .args(args(&[
            "--resume",
            "auto",
            "--max-steps",
            &(step + 2).to_string(),
        ]))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("resuming from") && text.contains(&format!("after {} steps", step + 2)),
        "{text}"
    );
}

/// The step of the run's only checkpoint.
fn checkpoint_step(run: &Path) -> u64 {
    let dir = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    state["step"].as_u64().unwrap()
}

#[test]
fn bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let photo = dir.path().join("photo.png");
    image::RgbImage::new(4, 4).save(&photo).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "pretrain",
                "--recipe",
                "nope",
                "--out",
                run.to_str().unwrap(),
            ],
            "neither a built-in recipe",
        ),
        (
            &[
                "pretrain",
                "--recipe",
                "micro",
                "--data",
                "/does/not/exist",
                "--out",
                run.to_str().unwrap(),
            ],
            "/does/not/exist",
        ),
        (
            &[
                "pretrain",
                "--recipe",
                "micro",
                "--set",
                "optim.lr=1",
                "--out",
                run.to_str().unwrap(),
            ],
            "unknown recipe key \"optim.lr\"",
        ),
        (
            &[
                "pretrain",
                "--recipe",
                "micro",
                "--render",
                "device",
                "--out",
                run.to_str().unwrap(),
            ],
            "--render device: the cpu",
        ),
        (
            &[
                "export",
                "--checkpoint",
                dir.path().to_str().unwrap(),
                "--out",
                run.to_str().unwrap(),
            ],
            "holds no complete checkpoint",
        ),
        (
            &["inspect", "/does/not/exist.safetensors"],
            "/does/not/exist.safetensors",
        ),
        (&["check-data", "/does/not/exist"], "/does/not/exist"),
        (&["check-data", photo.to_str().unwrap()], "a single image"),
        (&["selftest", "--cases", "0"], "--cases must be at least 1"),
        (
            &["selftest", "--json", dir.path().to_str().unwrap()],
            "not a folder",
        ),
        (
            &[
                "step-dump",
                "--batch",
                "100000",
                "--out",
                run.to_str().unwrap(),
            ],
            "--batch must lie in 1..=64",
        ),
    ];
    for (args, want) in cases {
        let out = bin().args(*args).output().unwrap();
        // check-data lists its problems on stdout before the error.
        let err = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn selftest_passes_and_reports_every_check_as_json() {
    let dir = tempfile::tempdir().unwrap();
    // Its folder does not exist yet: it is made before the checks run.
    let json = dir.path().join("new/selftest.json");
    let out = bin()
        .args(["selftest", "--cases", "2", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let checks = report["checks"].as_array().unwrap();
    assert!(checks.iter().any(|c| c["check"] == "training_steps"));
    assert!(
        checks
            .iter()
            .any(|c| c["check"] == "self_attention_backward")
    );
    assert!(checks.iter().all(|c| c["failure"].is_null()));
}

#[test]
fn bench_reports_images_per_second_and_mfu() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("new/bench.json");
    let out = bin()
        .args([
            "bench", "--model", "micro", "--batch", "2", "--warmup", "1", "--steps", "2",
        ])
        .args(["--peak-tflops", "1", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(report["images_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["mfu"].as_f64().unwrap() > 0.0);
    let e = bin()
        .args(["bench", "--model", "vit-gigantic"])
        .output()
        .unwrap();
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("vit-gigantic"));
    for peak in ["0", "-1", "nan", "inf"] {
        let e = bin()
            .args(["bench", "--model", "micro", "--batch", "1"])
            .arg(format!("--peak-tflops={peak}"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&e.stderr);
        assert!(!e.status.success(), "--peak-tflops {peak} accepted");
        assert!(
            err.contains("--peak-tflops must be a finite positive"),
            "{err}"
        );
    }
}

/// Runs the binary, expecting failure; returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = bin().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{args:?} succeeded: {err}");
    err
}

/// Writes a labelled ImageFolder split: `classes` folders of two 8x8 images each.
fn split(dir: &Path, classes: &[&str]) {
    for (i, c) in classes.iter().enumerate() {
        std::fs::create_dir_all(dir.join(c)).unwrap();
        for k in 0..2u8 {
            image::RgbImage::from_pixel(8, 8, image::Rgb([40 * i as u8, 10 * k, 0]))
                .save(dir.join(c).join(format!("{k}.png")))
                .unwrap();
        }
    }
}

#[test]
fn bad_input_on_a_run_is_named_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("images");
    images(&data);
    let run = dir.path().join("run");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let out = bin()
        .args([
            "pretrain",
            "--recipe",
            "micro",
            "--no-progress",
            "--max-steps",
            "2",
        ])
        .args(["--data", &s(&data), "--out", &s(&run)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ckpt = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let weights = std::fs::read(ckpt.join("model.safetensors")).unwrap();

    // Export never writes into a folder that holds files: the checkpoint stays resumable.
    let err = fails(&["export", "--checkpoint", &s(&run), "--out", &s(&ckpt)]);
    assert!(
        err.contains(&s(&ckpt)) && err.contains("not empty"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(ckpt.join("model.safetensors")).unwrap(),
        weights
    );
    let export = dir.path().join("export");
    let ok = bin()
        .args(["export", "--checkpoint", &s(&run), "--out", &s(&export)])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(export.join("model.safetensors").is_file());
    let err = fails(&["export", "--checkpoint", &s(&run), "--out", &s(&export)]);
    assert!(err.contains("not empty"), "{err}");

    // visualize: the format and the count are checked before any work; a file that
    // cannot be written is left as it was.
    let jpg = dir.path().join("photo.jpg");
    std::fs::write(&jpg, b"precious").unwrap();
    let vis = |out: &Path, count: &str| {
        fails(&[
            "visualize",
            "--checkpoint",
            &s(&run),
            "--images",
            &s(&data),
            "--out",
            &s(out),
            "--count",
            count,
        ])
    };
    let err = vis(&jpg, "2");
    assert!(
        err.contains("photo.jpg") && err.contains("only png"),
        "{err}"
    );
    assert_eq!(std::fs::read(&jpg).unwrap(), b"precious");
    let err = vis(&dir.path().join("f.png"), "100000");
    assert!(err.contains("--count must lie in 1..=32"), "{err}");

    // eval: class folders that differ, and out-of-range numbers, are refused by name.
    let mismatch = dir.path().join("mismatch");
    split(&mismatch.join("train"), &["a", "b"]);
    split(&mismatch.join("val"), &["a", "c"]);
    let eval = |data: &Path, extra: &[&str]| {
        let mut args = vec!["eval".to_string(), "--checkpoint".into(), s(&run)];
        args.extend([
            "--data".into(),
            s(data),
            "--probe-epochs".into(),
            "0".into(),
        ]);
        args.extend(extra.iter().map(|a| a.to_string()));
        fails(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let err = eval(&mismatch, &[]);
    assert!(
        err.contains("only in train/: b") && err.contains("only in val/: c"),
        "{err}"
    );
    let labelled = dir.path().join("labelled");
    split(&labelled.join("train"), &["a", "b"]);
    split(&labelled.join("val"), &["a", "b"]);
    for k in ["0", "5"] {
        let err = eval(&labelled, &["--knn-k", k]);
        assert!(err.contains("--knn-k must lie in 1..=4"), "{err}");
    }
    for size in ["2048", "0", "20"] {
        let err = eval(&labelled, &["--image-size", size]);
        assert!(err.contains("--image-size must be a multiple"), "{err}");
    }

    // A checkpoint copied out of its run has no recipe two folders up: say where we looked.
    let copy = dir.path().join("qa/ckpt");
    std::fs::create_dir_all(&copy).unwrap();
    for f in std::fs::read_dir(&ckpt).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, copy.join(f.file_name().unwrap())).unwrap();
    }
    let err = fails(&[
        "export",
        "--checkpoint",
        &s(&copy),
        "--out",
        &s(&dir.path().join("e2")),
    ]);
    assert!(
        err.contains("two folders above") && err.contains(&s(&dir.path().join("recipe.toml"))),
        "{err}"
    );

    // inspect validates state.json as export does.
    let state = copy.join("state.json");
    let good: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let with = |key: &str, value: i64| {
        let mut v = good.clone();
        v[key] = value.into();
        v.to_string()
    };
    for bad in ["{garbage".to_string(), with("format", 99), with("step", -5)] {
        std::fs::write(&state, &bad).unwrap();
        let err = fails(&["inspect", &s(&copy)]);
        assert!(err.contains("state.json"), "{bad}: {err}");
    }

    // --resume wants a checkpoint folder, not a run folder.
    let err = fails(&[
        "pretrain",
        "--recipe",
        "micro",
        "--no-progress",
        "--data",
        &s(&data),
        "--out",
        &s(&run),
        "--resume",
        &s(&run),
    ]);
    assert!(
        err.contains("is not a checkpoint folder") && err.contains("auto"),
        "{err}"
    );
}

/// Only `pretrain` turns SIGINT and SIGTERM into "checkpoint, then stop": any other
/// subcommand has nothing to save, so the first signal stops it at once (a long bench
/// here). SIGTERM, because a test run from a background job inherits SIGINT ignored.
#[test]
fn a_signal_stops_other_subcommands_at_once() {
    use std::os::unix::process::ExitStatusExt;
    let mut child = bin()
        .args(["bench", "--model", "micro", "--batch", "2", "--warmup", "0"])
        .args(["--steps", "100000000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    let exited = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "bench still ran 30 s after SIGTERM: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(exited.signal(), Some(15), "{exited:?}");
}

/// `pretrain --recipe micro` on `data` into `out` for `steps` steps, with `extra` flags.
fn pretrain(data: &Path, out: &Path, steps: u64, extra: &[&str]) -> (bool, String) {
    outcome(
        bin()
            .args(["pretrain", "--recipe", "micro", "--no-progress", "--data"])
            .arg(data)
            .arg("--out")
            .arg(out)
            .args(["--max-steps", &steps.to_string()])
            .args(extra),
    )
}

/// Whether `cmd` succeeded, and its stdout and stderr.
fn outcome(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn skipping_bad_files_lasts_to_the_end_of_run_figure_and_is_counted_apart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("images");
    images(&data);
    // Sorts first, so the figure's first image is the bad one.
    std::fs::write(data.join("aa-text.jpg"), "not a jpeg").unwrap();
    let run = dir.path().join("run");
    // Enough steps to read all of epoch 0, so training meets the bad file too.
    let (ok, text) = pretrain(&data, &run, 8, &["--skip-bad-files", "3"]);
    assert!(ok, "{text}");
    assert!(run.join("figure5.png").is_file(), "{text}");
    let skipped_files = std::fs::read_to_string(run.join("skipped.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(skipped_files >= 1, "{text}");
    assert!(
        text.contains(&format!(
            "nonfinite_steps 0, skipped_files {skipped_files};"
        )),
        "{text}"
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["nonfinite_steps"], 0, "{last}");
    assert_eq!(last["skipped_files"], skipped_files, "{last}");
    assert!(last.get("skipped").is_none(), "{last}");
    // Without the skip policy the bad file stops the run, naming it.
    let (ok, text) = pretrain(&data, &dir.path().join("strict"), 8, &[]);
    assert!(!ok && text.contains("aa-text.jpg"), "{text}");
}

#[test]
fn a_run_folder_in_the_data_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("images");
    images(&data);
    let (ok, text) = pretrain(&data, &data, 1, &[]);
    assert!(!ok && text.contains("lies in the data folder"), "{text}");
    let (ok, text) = pretrain(&data, &data.join("runs/one"), 1, &["--resume", "auto"]);
    assert!(!ok && text.contains("lies in the data folder"), "{text}");
    assert_eq!(
        std::fs::read_dir(&data).unwrap().count(),
        12,
        "nothing added"
    );
}

/// `pack` turns a folder into shards that `check-data` and `pretrain` read; undecodable
/// images are left out by name, and an existing folder is never packed into.
#[test]
fn pack_makes_shards_that_pretrain_reads() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("images");
    images(&data);
    std::fs::write(data.join("zz-text.jpg"), "not a jpeg").unwrap();
    let pack = dir.path().join("pack");
    let run = |args: &[&std::ffi::OsStr]| outcome(bin().args(args));
    let args = [
        "pack".as_ref(),
        data.as_os_str(),
        "--out".as_ref(),
        pack.as_os_str(),
        "--shorter-side".as_ref(),
        "32".as_ref(),
    ];
    let (ok, text) = run(&args);
    assert!(ok, "{text}");
    assert!(text.contains("packed 12 images"), "{text}");
    assert!(
        text.contains("zz-text.jpg") && text.contains("1 undecodable"),
        "{text}"
    );
    let (ok, text) = run(&args);
    assert!(
        !ok && text.contains("not empty"),
        "packing into a pack: {text}"
    );
    let (ok, text) = run(&["check-data".as_ref(), pack.as_os_str()]);
    assert!(ok, "{text}");
    let (ok, text) = pretrain(&pack, &dir.path().join("run"), 1, &[]);
    assert!(ok, "{text}");
    let jpeg = dir.path().join("jpeg");
    let (ok, text) = run(&[
        "pack".as_ref(),
        data.as_os_str(),
        "--out".as_ref(),
        jpeg.as_os_str(),
        "--jpeg-quality".as_ref(),
        "90".as_ref(),
    ]);
    assert!(ok && text.contains("packed 12 images"), "{text}");
    let (ok, text) = pretrain(&jpeg, &dir.path().join("run-jpeg"), 1, &[]);
    assert!(ok, "{text}");
    let (ok, text) = run(&[
        "pack".as_ref(),
        data.as_os_str(),
        "--out".as_ref(),
        dir.path().join("q0").as_os_str(),
        "--jpeg-quality".as_ref(),
        "0".as_ref(),
    ]);
    assert!(!ok && text.contains("--jpeg-quality"), "{text}");
}
