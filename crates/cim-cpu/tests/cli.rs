//! The `cim-cpu` binary end to end on a few generated images: a SIGINT during
//! pre-training checkpoints at the next step and exits cleanly, `--resume auto` continues
//! from that checkpoint, bad input ends with an error that names it, and `selftest` and
//! `bench` report what they measured; any other subcommand stops at the first SIGINT.

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
    ];
    for (args, want) in cases {
        let out = bin().args(*args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn selftest_passes_and_reports_every_check_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("selftest.json");
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
    let json = dir.path().join("bench.json");
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
}

/// Only `pretrain` turns Ctrl-C into "checkpoint, then stop": any other subcommand has
/// nothing to save, so the first SIGINT stops it at once (a long bench here).
#[test]
fn sigint_stops_other_subcommands_at_once() {
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
        .args(["-INT", &child.id().to_string()])
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
                "bench still ran 30 s after SIGINT: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(exited.signal(), Some(2), "{exited:?}");
}

/// `pretrain --recipe micro` on `data` into `out` for `steps` steps, with `extra` flags.
fn pretrain(data: &Path, out: &Path, steps: u64, extra: &[&str]) -> (bool, String) {
    let out = bin()
        .args(["pretrain", "--recipe", "micro", "--no-progress", "--data"])
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--max-steps", &steps.to_string()])
        .args(extra)
        .output()
        .unwrap();
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
