//! The trainer end to end on the reference backend with synthetic data: resumption is
//! bit-exact, bad starts are refused without touching earlier checkpoints, and the run
//! folder holds what the issue names.

use std::fs;
use std::path::Path;

use cim_model::Cim;
use cim_reference::Reference;
use cim_train::checkpoint;
use cim_train::recipe::Recipe;
use cim_train::tensors::TensorSet;
use cim_train::trainer::{PairSource, Resume, Summary, SyntheticSource, TrainOptions, pretrain};

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

/// `pretrain` of `recipe` on its synthetic source into `dir`.
fn train(
    b: &Reference,
    recipe: &Recipe,
    dir: &Path,
    resume: Resume,
    max_steps: Option<u64>,
) -> anyhow::Result<Summary> {
    pretrain(
        b,
        recipe,
        &mut source(recipe),
        &options(dir, resume, max_steps),
    )
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
    let s = train(&b, &r, whole.path(), Resume::No, None).unwrap();
    assert_eq!(s.steps, 6, "3 epochs of 4 micro-batches, 2 per step");
    let parts = tempfile::tempdir().unwrap();
    let s1 = train(&b, &r, parts.path(), Resume::No, Some(3)).unwrap();
    assert_eq!(s1.steps, 3);
    let s2 = train(&b, &r, parts.path(), Resume::Auto, None).unwrap();
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
    train(&b, &r, dir.path(), Resume::No, Some(2)).unwrap();
    let before = checkpoint::list(dir.path()).unwrap();
    let snapshot = fs::read(before.last().unwrap().join("model.safetensors")).unwrap();
    // A fresh start into a folder with checkpoints.
    let e = train(&b, &r, dir.path(), Resume::No, None)
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
    let e = train(&b, &other, dir.path(), Resume::Auto, None)
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
    let fork = damaged.path().join("fork");
    let e = format!(
        "{:#}",
        train(&b, &r, &fork, Resume::From(copy.clone()), None).unwrap_err()
    );
    assert!(e.contains("norm.weight is missing"), "{e}");
    assert!(!fork.exists(), "a refused start writes nothing");
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
    let run = dir.path().join("run");
    let e = pretrain(&b, &r, &mut src, &options(&run, Resume::No, None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("fewer than one optimizer step"), "{e}");
    assert!(!run.exists(), "a refused start writes nothing");
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
    assert_eq!((s.steps, s.nonfinite_steps, s.skipped_files), (5, 1, 0));
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

/// The metric lines' steps of a run folder.
fn metric_steps(run: &Path) -> Vec<u64> {
    fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// The names of a run's complete checkpoints.
fn checkpoint_names(run: &Path) -> Vec<String> {
    checkpoint::list(run)
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn resuming_behind_newer_checkpoints_or_into_another_run_is_refused() {
    let b = Reference::new();
    let r = recipe();
    let runs = tempfile::tempdir().unwrap();
    let (ra, rx) = (runs.path().join("ra"), runs.path().join("rx"));
    train(&b, &r, &ra, Resume::No, None).unwrap();
    train(&b, &r, &rx, Resume::No, Some(3)).unwrap();
    let ra_before = checkpoint_names(&ra);
    assert_eq!(ra_before, ["step-00000005", "step-00000006"]);
    // Rolling back inside a run would leave the abandoned newer checkpoint beside the new.
    let back = checkpoint::step_dir(&ra, 5);
    let e = train(&b, &r, &ra, Resume::From(back), Some(6))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("step-00000006") && e.contains("newer than the resume point (step 5)"),
        "{e}"
    );
    assert!(e.contains("fresh --out"), "{e}");
    // Another run's checkpoint into a folder with checkpoints would mix the two runs.
    let theirs = checkpoint::step_dir(&rx, 3);
    let e = train(&b, &r, &ra, Resume::From(theirs.clone()), Some(4))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("step-00000005") && e.contains("step-00000006"),
        "{e}"
    );
    // Nothing of the run was touched.
    assert_eq!(checkpoint_names(&ra), ra_before);
    assert_eq!(metric_steps(&ra), [1, 2, 3, 4, 5, 6]);
    // Resuming from the newest checkpoint of the run itself stays allowed, as does a fork
    // into a fresh folder.
    let newest = checkpoint::step_dir(&rx, 3);
    let s = train(&b, &r, &rx, Resume::From(newest), Some(4));
    assert_eq!(s.unwrap().steps, 4);
    let fork = runs.path().join("fork");
    let s = train(&b, &r, &fork, Resume::From(theirs), Some(5));
    assert_eq!(s.unwrap().steps, 5);
    assert_eq!(checkpoint_names(&fork), ["step-00000004", "step-00000005"]);
    assert_eq!(metric_steps(&fork), [4, 5]);
}

#[test]
fn the_checkpoint_just_written_is_never_pruned() {
    let b = Reference::new();
    let r = recipe();
    let dir = tempfile::tempdir().unwrap();
    train(&b, &r, dir.path(), Resume::No, Some(2)).unwrap();
    // Checkpoints newer than the one about to be written (as a rollback once left).
    for step in [8, 9] {
        let to = checkpoint::step_dir(dir.path(), step);
        fs::create_dir(&to).unwrap();
        for f in ["state.json", "model.safetensors", "optimizer.safetensors"] {
            fs::copy(checkpoint::step_dir(dir.path(), 2).join(f), to.join(f)).unwrap();
        }
    }
    let mut model = Cim::new(&b, r.model_config().unwrap(), 2, 0).unwrap();
    let mut state =
        checkpoint::load(&b, &mut model, &checkpoint::step_dir(dir.path(), 2), true).unwrap();
    state.step = 3;
    let written = checkpoint::save(&b, &model, &state, dir.path(), 2).unwrap();
    assert!(written.join("state.json").is_file());
    assert_eq!(
        checkpoint_names(dir.path()),
        ["step-00000003", "step-00000009"]
    );
}

#[test]
fn a_refused_start_writes_nothing() {
    let b = Reference::new();
    let r = recipe();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&b, &r, &run, Resume::No, Some(2)).unwrap();
    // Without its recipe.toml, resuming with another recipe is refused by the
    // checkpoint's recipe hash, and recipe.toml must not have been rewritten before.
    fs::remove_file(run.join("recipe.toml")).unwrap();
    let metrics = fs::read(run.join("metrics.jsonl")).unwrap();
    let other = Recipe::load(
        "micro",
        &[
            "optim.accum_iter=2".into(),
            "optim.epochs=3".into(),
            "optim.blr=0.5".into(),
            "run.checkpoint_every=1".into(),
            "run.keep_last=2".into(),
        ],
    )
    .unwrap();
    let e = train(&b, &other, &run, Resume::Auto, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("written by another recipe"), "{e}");
    assert!(!run.join("recipe.toml").exists());
    assert_eq!(fs::read(run.join("metrics.jsonl")).unwrap(), metrics);
    // The right recipe still resumes.
    let s = train(&b, &r, &run, Resume::Auto, Some(3)).unwrap();
    assert_eq!(s.steps, 3);
    assert_eq!(
        Recipe::read_resolved(&run.join("recipe.toml"))
            .unwrap()
            .hash(),
        r.hash()
    );
    // A recipe value rejected while building the run leaves no run folder (set past
    // `Recipe::load`, whose validation would refuse it first).
    let mut bad = Recipe::load("micro", &[]).unwrap();
    bad.optim.min_lr = -1.0;
    let fresh = dir.path().join("fresh");
    let e = train(&b, &bad, &fresh, Resume::No, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("learning-rate schedule"), "{e}");
    assert!(!fresh.exists());
}

#[test]
fn a_new_run_needs_an_absent_or_empty_folder() {
    let b = Reference::new();
    let r = recipe();
    let dir = tempfile::tempdir().unwrap();
    // A folder of the user's.
    let docs = dir.path().join("mydocs");
    fs::create_dir(&docs).unwrap();
    for (f, text) in [
        ("notes.txt", "n"),
        ("loss.png", "mine"),
        ("recipe.toml", "x"),
    ] {
        fs::write(docs.join(f), text).unwrap();
    }
    for resume in [Resume::No, Resume::Auto] {
        let e = train(&b, &r, &docs, resume, Some(1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mydocs is not empty")
                && e.contains("loss.png, notes.txt, recipe.toml")
                && e.contains("another --out"),
            "{e}"
        );
    }
    assert_eq!(fs::read_to_string(docs.join("loss.png")).unwrap(), "mine");
    assert_eq!(fs::read_to_string(docs.join("recipe.toml")).unwrap(), "x");
    // A run stopped before its first complete checkpoint: its files stay as they were.
    let left = dir.path().join("left");
    fs::create_dir_all(left.join("checkpoints/step-00000004")).unwrap();
    fs::write(left.join("metrics.jsonl"), "{\"step\":1}\n").unwrap();
    let e = train(&b, &r, &left, Resume::Auto, Some(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("checkpoints, metrics.jsonl"), "{e}");
    assert_eq!(
        fs::read_to_string(left.join("metrics.jsonl")).unwrap(),
        "{\"step\":1}\n"
    );
    // A fork from another run's checkpoint also needs a fresh folder.
    let run = dir.path().join("run");
    train(&b, &r, &run, Resume::No, Some(1)).unwrap();
    let e = train(
        &b,
        &r,
        &docs,
        Resume::From(checkpoint::step_dir(&run, 1)),
        Some(2),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("mydocs is not empty") && e.contains("forked"),
        "{e}"
    );
    // An empty folder, and --resume auto into an absent one, start fresh.
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    train(&b, &r, &empty, Resume::No, Some(1)).unwrap();
    let absent = dir.path().join("absent");
    let s = train(&b, &r, &absent, Resume::Auto, Some(1));
    assert_eq!(s.unwrap().steps, 1);
}

/// A requeued `--resume auto` job whose first start died before any complete checkpoint
/// starts over, but only when the folder holds nothing beyond what that start of this
/// same recipe wrote; and resuming a run with no step left does not rewrite its
/// checkpoint (the rewrite replaced the only copy).
#[test]
fn requeued_starts_begin_again_and_finished_runs_are_left_alone() {
    use std::os::unix::fs::MetadataExt;
    let b = Reference::new();
    let r = recipe();
    let dir = tempfile::tempdir().unwrap();
    let left = |name: &str, recipe_text: &str| {
        let run = dir.path().join(name);
        fs::create_dir_all(run.join("checkpoints/.tmp-step-00000001")).unwrap();
        fs::write(run.join("recipe.toml"), recipe_text).unwrap();
        fs::write(run.join("metrics.jsonl"), "{\"step\":1,\"loss\":9.0}\n").unwrap();
        fs::write(run.join("skipped.jsonl"), "").unwrap();
        run
    };
    let killed = left("killed", &r.to_toml());
    let e = train(&b, &r, &killed, Resume::No, Some(1)).unwrap_err();
    assert!(e.to_string().contains("is not empty"), "{e}");
    assert_eq!(
        train(&b, &r, &killed, Resume::Auto, Some(2)).unwrap().steps,
        2
    );
    assert_eq!(
        metric_steps(&killed),
        [1, 2],
        "the dead start's metrics are replaced"
    );
    let other = Recipe::load("micro", &["optim.epochs=5".into()]).unwrap();
    let foreign = left("foreign", &other.to_toml());
    let e = train(&b, &r, &foreign, Resume::Auto, Some(1)).unwrap_err();
    assert!(e.to_string().contains("is not empty"), "{e}");
    let with_notes = left("notes", &r.to_toml());
    fs::write(with_notes.join("notes.txt"), "mine").unwrap();
    let e = train(&b, &r, &with_notes, Resume::Auto, Some(1)).unwrap_err();
    assert!(e.to_string().contains("notes.txt"), "{e}");

    let weights = checkpoint::step_dir(&killed, 2).join("model.safetensors");
    let inode = fs::metadata(&weights).unwrap().ino();
    let s = train(&b, &r, &killed, Resume::Auto, Some(2)).unwrap();
    assert_eq!(s.steps, 2);
    assert_eq!(fs::metadata(&weights).unwrap().ino(), inode, "rewritten");
    assert_eq!(s.checkpoint, Some(checkpoint::step_dir(&killed, 2)));
}

#[test]
fn a_checkpoint_with_an_unexpected_tensor_is_refused() {
    let b = Reference::new();
    let r = recipe();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&b, &r, &run, Resume::No, Some(1)).unwrap();
    let ckpt = checkpoint::step_dir(&run, 1);
    let mut model = Cim::new(&b, r.model_config().unwrap(), 2, 0).unwrap();
    checkpoint::load(&b, &mut model, &ckpt, true).unwrap();
    for (file, extra) in [
        ("model.safetensors", "blocks.99.attn.qkv.weight"),
        ("optimizer.safetensors", "exp_avg.not_a_parameter"),
    ] {
        let path = ckpt.join(file);
        let original = fs::read(&path).unwrap();
        let mut set = TensorSet::read(&path).unwrap();
        set.push(extra, &[2], vec![0.0, 1.0]).unwrap();
        set.write(&path, None).unwrap();
        let e = format!(
            "{:#}",
            checkpoint::load(&b, &mut model, &ckpt, true).unwrap_err()
        );
        assert!(
            e.contains("unexpected tensor(s) ") && e.contains(extra),
            "{e}"
        );
        fs::write(&path, original).unwrap();
    }
}

/// A link to a checkpoint (`latest -> RUN/checkpoints/step-N`) leads to its own run, whose
/// recipe.toml says how to build the model.
#[test]
fn a_link_to_a_checkpoint_finds_its_run() {
    let b = Reference::new();
    let r = recipe();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&b, &r, &run, Resume::No, Some(1)).unwrap();
    let latest = dir.path().join("latest");
    std::os::unix::fs::symlink(checkpoint::step_dir(&run, 1), &latest).unwrap();
    let found = cim_train::runs::locate(&latest).unwrap();
    assert_eq!(found.run, run.canonicalize().unwrap());
    cim_train::runs::open(&b, &latest, 1).unwrap();
}
