//! Data-parallel pre-training end to end: the `cim-cpu` binary launched as two processes
//! the way torchrun launches them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
//! MASTER_PORT) on generated images. Both ranks end with identical bits, which rank 0's
//! checkpoint holds, and they train like one process with their global batch; SIGINT on
//! one rank stops both at the same step with a checkpoint, and `--resume auto` continues.
//!
//! Tolerances against the single process, fixed from the error analysis before the test
//! was first run. Every context's forward and backward are the same arithmetic in both
//! runs (the loss is divided by the global batch in both), so the only difference is the
//! association of the gradient sums over contexts: one process sums its 4 contexts inside
//! each weight-gradient reduction; two processes sum 2 each and rank 0 adds the two
//! halves (and accumulation adds micro-batches in the same way). Reassociating an f32 sum
//! of n terms changes it by at most about n·ε times the sum of the magnitudes; with n of a
//! few hundred rows (contexts × tokens) and ε = 6e-8 that is ≲ 1e-5 of the gradient's norm
//! at the first step. Over 4 steps with a learning rate of 1e-3 the parameters differ only
//! at that level, so the gradients, and the AdamW moments that average them, may drift by
//! a small multiple: MOMENT_RTOL = 1e-3 (normwise) leaves a margin of ~100. AdamW's update
//! m̂/√v̂ keeps each element's relative error, except for an element whose gradient is
//! itself at rounding level, whose sign can flip and move it by up to 2·lr per step; such
//! elements are rare, so the parameter change θ − θ₀ may differ by PARAM_RTOL = 1e-2 of
//! its norm. The loss of each step agrees to LOSS_RTOL = 1e-4. A real fault (a shard read
//! twice, a missing average or sum, a rank on other data) is of order 1 in these norms.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cim_cpu::Cpu;
use cim_model::Cim;
use cim_spec::backend::Memory;
use cim_train::checkpoint;
use cim_train::distributed::state_digest;
use cim_train::recipe::Recipe;

const MOMENT_RTOL: f64 = 1e-3;
const PARAM_RTOL: f64 = 1e-2;
const LOSS_RTOL: f64 = 1e-4;

/// The torchrun variables, removed for a single process.
const TORCHRUN: [&str; 5] = [
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
];

/// Sixteen 64x48 images with distinct gradients.
fn images(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for k in 0..16u32 {
        let img = image::RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([
                (x * 4 + k * 15) as u8,
                (y * 5 + k * 3) as u8,
                (k * 16) as u8,
            ])
        });
        img.save(dir.join(format!("img{k:02}.png"))).unwrap();
    }
}

/// `pretrain` of the micro recipe on `data` into `run`, `batch` contexts per process and
/// micro-batch, two micro-batches per step, a learning rate of 1e-3 from the first step.
fn pretrain(data: &Path, run: &Path, batch: usize, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cim-cpu"));
    c.args(["pretrain", "--recipe", "micro", "--no-progress", "--data"])
        .arg(data)
        .arg("--out")
        .arg(run)
        .args(["--batch-size", &batch.to_string(), "--dist-timeout", "120"])
        // lr = blr * 8 / 256 for the global batch of 2 x 4 contexts.
        .args(["--set", "optim.blr=0.032", "--set", "optim.warmup_epochs=0"])
        .args(["--set", "optim.accum_iter=2", "--set", "data.workers=1"])
        .args(extra);
    for v in TORCHRUN {
        c.env_remove(v);
    }
    c
}

/// Starts rank `rank` of two, meeting at `port`.
fn rank(mut c: Command, rank: usize, port: u16) -> Child {
    c.env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Standard output and error, checking the process succeeded.
fn succeeded(out: Output, who: &str) -> String {
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{who}: {:?}\n{text}", out.status);
    text
}

/// Each rank's output, in rank order, checking every rank succeeded.
fn outputs(children: Vec<Child>) -> Vec<String> {
    children
        .into_iter()
        .enumerate()
        .map(|(r, c)| succeeded(c.wait_with_output().unwrap(), &format!("rank {r}")))
        .collect()
}

/// The digest a process reported the ranks agreed on.
fn reported_digest(text: &str) -> String {
    let at = text
        .find("(digest ")
        .unwrap_or_else(|| panic!("no digest in {text}"));
    text[at + 8..at + 8 + 64].to_string()
}

/// The model of the run's newest checkpoint (weights and moments).
fn load(cpu: &Cpu, run: &Path) -> Cim<Cpu> {
    let recipe = Recipe::read_resolved(&run.join("recipe.toml")).unwrap();
    let mut model = Cim::new(cpu, recipe.model_config().unwrap(), 1, recipe.run.seed).unwrap();
    let newest = checkpoint::list(run).unwrap().pop().unwrap();
    checkpoint::load(cpu, &mut model, &newest, true).unwrap();
    model
}

fn host(cpu: &Cpu, buf: &<Cpu as Memory>::Buffer) -> Vec<f64> {
    let mut out = vec![0.0f32; Cpu::buffer_len(buf)];
    cpu.download(cpu.view(buf, 0..out.len()), &mut out).unwrap();
    out.into_iter().map(f64::from).collect()
}

/// ‖a − b‖ / ‖b − base‖ (‖a − b‖ / ‖b‖ without a base).
fn normwise(a: &[f64], b: &[f64], base: Option<&[f64]>) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let scale: f64 = match base {
        Some(base) => b.iter().zip(base).map(|(x, y)| (x - y) * (x - y)).sum(),
        None => b.iter().map(|x| x * x).sum(),
    };
    (diff / scale).sqrt()
}

/// The loss of every step in a run's metrics.
fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

#[test]
fn two_processes_train_like_one_with_their_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("images");
    images(&data);
    // 16 images, 4 contexts per global micro-batch: 4 micro-batches, 2 steps per epoch.
    let epochs = ["--set", "optim.epochs=2"];
    let one = dir.path().join("one");
    succeeded(
        pretrain(&data, &one, 4, &epochs).output().unwrap(),
        "single process",
    );
    let two = dir.path().join("two");
    let port = free_port();
    let children: Vec<Child> = (0..2)
        .map(|r| rank(pretrain(&data, &two, 2, &epochs), r, port))
        .collect();
    let texts = outputs(children);
    assert!(texts[0].contains("finished after 4 steps"), "{}", texts[0]);
    assert!(
        texts[1].contains("rank 1 finished after 4 steps"),
        "{}",
        texts[1]
    );
    // Both ranks hold the same bits, and rank 0's checkpoint holds them.
    let digest = reported_digest(&texts[0]);
    assert_eq!(reported_digest(&texts[1]), digest);
    let cpu = Cpu::new();
    let (m1, m2) = (load(&cpu, &one), load(&cpu, &two));
    assert_eq!(state_digest(&cpu, &m2).unwrap(), digest);
    assert_eq!((m1.steps(), m2.steps()), (4, 4));

    let recipe = Recipe::read_resolved(&one.join("recipe.toml")).unwrap();
    let init = Cim::new(&cpu, recipe.model_config().unwrap(), 1, recipe.run.seed).unwrap();
    let theta0 = host(&cpu, init.buffers()[0]);
    let target0 = theta0[m1.layout().ema.clone()].to_vec();
    let [p1, t1, _, a1, v1] = m1.buffers().map(|b| host(&cpu, b));
    let [p2, t2, _, a2, v2] = m2.buffers().map(|b| host(&cpu, b));
    let measured = [
        ("first moment", normwise(&a2, &a1, None), MOMENT_RTOL),
        ("second moment", normwise(&v2, &v1, None), MOMENT_RTOL),
        (
            "parameter change",
            normwise(&p2, &p1, Some(&theta0)),
            PARAM_RTOL,
        ),
        (
            "target change",
            normwise(&t2, &t1, Some(&target0)),
            PARAM_RTOL,
        ),
    ];
    let max_abs = p1
        .iter()
        .zip(&p2)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!("1 vs 2 processes: max |Δθ| {max_abs:.3e}");
    for (what, value, tolerance) in measured {
        eprintln!(
            "1 vs 2 processes: {what}: normwise difference {value:.3e} (tolerance {tolerance:.0e})"
        );
        assert!(value <= tolerance, "{what}: {value:e} > {tolerance:e}");
    }
    let (l1, l2) = (losses(&one), losses(&two));
    assert_eq!(l1.len(), 4);
    assert_eq!(l2.len(), 4);
    for (step, (a, b)) in l1.iter().zip(&l2).enumerate() {
        let rel = (a - b).abs() / a.abs();
        eprintln!(
            "1 vs 2 processes: loss of step {}: {a} vs {b} ({rel:.1e})",
            step + 1
        );
        assert!(rel <= LOSS_RTOL, "step {}: loss {a} vs {b}", step + 1);
    }
}

#[test]
fn sigint_on_one_rank_stops_both_at_the_same_step_and_resume_continues() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("images");
    images(&data);
    let run = dir.path().join("run");
    let long = [
        "--set",
        "optim.epochs=100000",
        "--set",
        "run.checkpoint_every=1000000",
    ];
    let port = free_port();
    let children: Vec<Child> = (0..2)
        .map(|r| rank(pretrain(&data, &run, 2, &long), r, port))
        .collect();
    // Interrupt rank 1 alone once training is under way (rank 0 logged a step).
    let metrics = run.join("metrics.jsonl");
    let start = Instant::now();
    while std::fs::metadata(&metrics).map_or(0, |m| m.len()) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "training did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = Command::new("kill")
        .args(["-INT", &children[1].id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let texts = outputs(children);
    let ckpts = checkpoint::list(&run).unwrap();
    assert_eq!(ckpts.len(), 1, "exactly the interrupt's checkpoint");
    let step = checkpoint::read_state(&ckpts[0]).unwrap().step;
    assert!(
        texts[0].contains(&format!("checkpoint written at step {step}")),
        "{}",
        texts[0]
    );
    assert!(
        texts[1].contains(&format!("rank 0 wrote a checkpoint at step {step}")),
        "{}",
        texts[1]
    );
    // Both ranks resume from it for two more steps.
    let until = (step + 2).to_string();
    let more = [&long[..], &["--resume", "auto", "--max-steps", &until]].concat();
    let port = free_port();
    let children: Vec<Child> = (0..2)
        .map(|r| rank(pretrain(&data, &run, 2, &more), r, port))
        .collect();
    let texts = outputs(children);
    assert!(texts[0].contains("resuming from"), "{}", texts[0]);
    assert!(
        texts[1].contains(&format!("rank 1 finished after {} steps", step + 2)),
        "{}",
        texts[1]
    );
    assert_eq!(reported_digest(&texts[0]), reported_digest(&texts[1]));
    let newest = checkpoint::list(&run).unwrap().pop().unwrap();
    assert_eq!(checkpoint::read_state(&newest).unwrap().step, step + 2);
}
