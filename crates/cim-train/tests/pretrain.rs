//! The trainer end to end on the reference backend with synthetic data: resumption is
//! bit-exact, bad starts are refused without touching earlier checkpoints, and the run
//! folder holds what the issue names.

use std::fs;
use std::path::Path;

use cim_reference::Reference;
use cim_train::checkpoint;
use cim_train::recipe::Recipe;
use cim_train::tensors::TensorSet;
use cim_train::trainer::{PairSource, Resume, SyntheticSource, TrainOptions, pretrain};

fn source(recipe: &Recipe) -> SyntheticSource {
    SyntheticSource {
        config: recipe.model_config().unwrap(),
        batch_size: recipe.optim.batch_size,
        per_epoch: 4,
        seed: 3,
    }
}

fn options(dir: &Path, resume: Resume, max_steps: Option<u64>) -> TrainOptions {
    TrainOptions {
        run_dir: dir.to_path_buf(),
        resume,
        max_steps,
        progress: false,
    }
}

fn recipe() -> Recipe {
    // Two micro-batches per step, so resumption also crosses accumulation groups.
    Recipe::load(
        "micro",
        &[
            "optim.accum_iter=2".into(),
            "optim.epochs=3".into(),
            "run.checkpoint_every=1".into(),
            "run.keep_last=2".into(),
        ],
    )
    .unwrap()
}

/// On the reference, whose buffers are f64, a checkpoint (f32, as S12 files are) rounds
/// the state, so the resumed run agrees to f32 precision; the bit-for-bit equality of
/// resumption is tested on the f32 CPU backend (crates/cim-cpu/tests/resume.rs).
#[test]
fn resumed_run_continues_where_it_stopped() {
    let b = Reference::new();
    let r = recipe();
    let whole = tempfile::tempdir().unwrap();
    let s = pretrain(
        &b,
        &r,
        &mut source(&r),
        &options(whole.path(), Resume::No, None),
    )
    .unwrap();
    assert_eq!(s.steps, 6, "3 epochs of 4 micro-batches, 2 per step");
    let parts = tempfile::tempdir().unwrap();
    let s1 = pretrain(
        &b,
        &r,
        &mut source(&r),
        &options(parts.path(), Resume::No, Some(3)),
    )
    .unwrap();
    assert_eq!(s1.steps, 3);
    let s2 = pretrain(
        &b,
        &r,
        &mut source(&r),
        &options(parts.path(), Resume::Auto, None),
    )
    .unwrap();
    assert_eq!(s2.steps, 6);
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let a = TensorSet::read(&checkpoint::step_dir(whole.path(), 6).join(file)).unwrap();
        let c = TensorSet::read(&checkpoint::step_dir(parts.path(), 6).join(file)).unwrap();
        assert!(a.len() > 10);
        for name in a.names() {
            let (x, y) = (a.get(name).unwrap().1, c.get(name).unwrap().1);
            let scale = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(
                err <= 1e-5 * scale.max(1e-6),
                "{file}: {name} differs by {err} after resumption"
            );
        }
    }
    let metrics = fs::read_to_string(parts.path().join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
    assert!(parts.path().join("loss.png").is_file() && parts.path().join("recipe.toml").is_file());
    // keep_last = 2.
    assert_eq!(checkpoint::list(parts.path()).unwrap().len(), 2);
}

#[test]
fn bad_starts_are_refused_and_leave_checkpoints_intact() {
    let b = Reference::new();
    let r = recipe();
    let dir = tempfile::tempdir().unwrap();
    pretrain(
        &b,
        &r,
        &mut source(&r),
        &options(dir.path(), Resume::No, Some(2)),
    )
    .unwrap();
    let before = checkpoint::list(dir.path()).unwrap();
    let snapshot = fs::read(before.last().unwrap().join("model.safetensors")).unwrap();
    // A fresh start into a folder with checkpoints.
    let e = pretrain(
        &b,
        &r,
        &mut source(&r),
        &options(dir.path(), Resume::No, None),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("already holds checkpoints") && e.contains("--resume auto"),
        "{e}"
    );
    // Resuming with another recipe.
    let other = Recipe::load(
        "micro",
        &[
            "optim.accum_iter=2".into(),
            "optim.epochs=4".into(),
            "run.checkpoint_every=1".into(),
            "run.keep_last=2".into(),
        ],
    )
    .unwrap();
    let e = pretrain(
        &b,
        &other,
        &mut source(&other),
        &options(dir.path(), Resume::Auto, None),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("recipe differs"), "{e}");
    // A damaged checkpoint names the tensor.
    let damaged = tempfile::tempdir().unwrap();
    let copy = damaged.path().join("step");
    fs::create_dir(&copy).unwrap();
    for f in ["state.json", "optimizer.safetensors"] {
        fs::copy(before.last().unwrap().join(f), copy.join(f)).unwrap();
    }
    let mut w = TensorSet::read(&before.last().unwrap().join("model.safetensors")).unwrap();
    let mut broken = TensorSet::new();
    for name in w.names().collect::<Vec<_>>() {
        if name != "norm.weight" {
            let (s, d) = w.get(name).unwrap();
            broken.push(name, s, d.to_vec()).unwrap();
        }
    }
    broken.write(&copy.join("model.safetensors"), None).unwrap();
    let e = format!(
        "{:#}",
        pretrain(
            &b,
            &r,
            &mut source(&r),
            &options(dir.path(), Resume::From(copy.clone()), None)
        )
        .unwrap_err()
    );
    assert!(e.contains("norm.weight is missing"), "{e}");
    w = TensorSet::new();
    w.push("x", &[1], vec![0.0]).unwrap();
    drop(w);
    // Nothing earlier was touched.
    assert_eq!(checkpoint::list(dir.path()).unwrap(), before);
    assert_eq!(
        fs::read(before.last().unwrap().join("model.safetensors")).unwrap(),
        snapshot
    );
}

#[test]
fn too_little_data_is_a_clear_error() {
    let b = Reference::new();
    let r = recipe();
    let dir = tempfile::tempdir().unwrap();
    let mut src = source(&r);
    src.per_epoch = 1;
    let e = pretrain(&b, &r, &mut src, &options(dir.path(), Resume::No, None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("fewer than one optimizer step"), "{e}");
    assert_eq!(src.batches_per_epoch(), 1);
}

/// Poisons the contexts of chosen micro-batches with NaN.
struct Poisoned {
    inner: SyntheticSource,
    bad: fn(u64, u64) -> bool,
}

impl PairSource for Poisoned {
    fn batches_per_epoch(&self) -> u64 {
        self.inner.batches_per_epoch()
    }
    fn batch(&mut self, epoch: u64, index: u64) -> anyhow::Result<cim_train::synthetic::HostBatch> {
        let mut b = self.inner.batch(epoch, index)?;
        if (self.bad)(epoch, index) {
            b.context[0] = f32::NAN;
        }
        Ok(b)
    }
}

#[test]
fn non_finite_steps_are_skipped_counted_and_finally_stop_the_run() {
    let b = Reference::new();
    let r = recipe();
    // One poisoned micro-batch: its step is skipped, the run goes on.
    let dir = tempfile::tempdir().unwrap();
    let mut src = Poisoned {
        inner: source(&r),
        bad: |e, i| e == 0 && i == 2,
    };
    let s = pretrain(&b, &r, &mut src, &options(dir.path(), Resume::No, None)).unwrap();
    assert_eq!((s.steps, s.skipped), (5, 1));
    assert!(s.last_loss.is_finite());
    // From epoch 1 on every batch is poisoned: after max_nonfinite (3) skips in a row the
    // run stops naming the step and the first non-finite tensor; checkpoints stay finite.
    let dir = tempfile::tempdir().unwrap();
    let mut src = Poisoned {
        inner: source(&r),
        bad: |e, _| e >= 1,
    };
    let e = pretrain(&b, &r, &mut src, &options(dir.path(), Resume::No, None))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("stopping at step 3") && e.contains("non-finite tensor"),
        "{e}"
    );
    let last = checkpoint::list(dir.path()).unwrap().pop().unwrap();
    assert!(last.ends_with("step-00000002"));
    let w = TensorSet::read(&last.join("model.safetensors")).unwrap();
    assert!(
        w.names()
            .all(|n| w.get(n).unwrap().1.iter().all(|v| v.is_finite()))
    );
}
