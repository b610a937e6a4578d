//! Issue 5: on the CPU, a run stopped and resumed from its checkpoint equals the
//! uninterrupted run bit for bit (parameters, target, AdamW moments), across epoch and
//! accumulation-group boundaries.

use cim_cpu::Cpu;
use cim_train::checkpoint;
use cim_train::recipe::Recipe;
use cim_train::tensors::TensorSet;
use cim_train::trainer::{Resume, SyntheticSource, TrainOptions, pretrain};

fn recipe() -> Recipe {
    let o = [
        "optim.accum_iter=2",
        "optim.epochs=3",
        "run.checkpoint_every=1",
    ];
    Recipe::load("micro", &o.map(String::from)).unwrap()
}

fn source(r: &Recipe) -> SyntheticSource {
    SyntheticSource {
        config: r.model_config().unwrap(),
        batch_size: r.optim.batch_size,
        per_epoch: 5,
        seed: 11,
    }
}

fn opts(dir: &std::path::Path, resume: Resume, max_steps: Option<u64>) -> TrainOptions {
    TrainOptions {
        run_dir: dir.to_path_buf(),
        resume,
        max_steps,
        progress: false,
    }
}

#[test]
fn resumed_run_equals_uninterrupted_run_bit_for_bit() {
    let cpu = Cpu::with_threads(2);
    let r = recipe();
    let whole = tempfile::tempdir().unwrap();
    // 5 micro-batches per epoch, 2 per step: 2 steps per epoch (the odd one is dropped).
    let s = pretrain(
        &cpu,
        &r,
        &mut source(&r),
        &opts(whole.path(), Resume::No, None),
    )
    .unwrap();
    assert_eq!(s.steps, 6);
    let parts = tempfile::tempdir().unwrap();
    for (stop, resume) in [
        (Some(1), Resume::No),
        (Some(3), Resume::Auto),
        (None, Resume::Auto),
    ] {
        pretrain(&cpu, &r, &mut source(&r), &opts(parts.path(), resume, stop)).unwrap();
    }
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let a = TensorSet::read(&checkpoint::step_dir(whole.path(), 6).join(file)).unwrap();
        let b = TensorSet::read(&checkpoint::step_dir(parts.path(), 6).join(file)).unwrap();
        assert_eq!(a.len(), b.len());
        for name in a.names() {
            let (x, y) = (a.get(name).unwrap().1, b.get(name).unwrap().1);
            assert!(
                x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{file}: {name} differs"
            );
        }
    }
    // And a different seed really gives different weights (the comparison can fail).
    let other = tempfile::tempdir().unwrap();
    let mut src = source(&r);
    src.seed = 12;
    pretrain(&cpu, &r, &mut src, &opts(other.path(), Resume::No, None)).unwrap();
    let a =
        TensorSet::read(&checkpoint::step_dir(whole.path(), 6).join("model.safetensors")).unwrap();
    let c =
        TensorSet::read(&checkpoint::step_dir(other.path(), 6).join("model.safetensors")).unwrap();
    assert_ne!(
        a.get("blocks.0.attn.qkv.weight"),
        c.get("blocks.0.attn.qkv.weight")
    );
}
