//! The trainer as ranks of a data-parallel run (threads on loopback, reference backend):
//! a non-finite value on one rank makes every rank skip the same step and they still hold
//! the same model; only rank 0 writes the run folder; ranks that read different data or
//! start from different models stop with an error naming the disagreement. (That the
//! ranks together train like one process with their global batch is checked end to end
//! in crates/cim-cpu/tests/data_parallel.rs.)

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use anyhow::Result;
use cim_reference::Reference;
use cim_train::distributed::{Master, TcpCollective, World};
use cim_train::recipe::Recipe;
use cim_train::synthetic::HostBatch;
use cim_train::trainer::{
    PairSource, Resume, Summary, SyntheticSource, TrainOptions, pretrain_distributed,
};

/// Rank `rank`'s synthetic micro-batches, with a NaN pixel in micro-batch `poison`.
struct Source {
    inner: SyntheticSource,
    poison: Option<(u64, u64)>,
}

impl PairSource for Source {
    fn batches_per_epoch(&self) -> u64 {
        self.inner.batches_per_epoch()
    }
    fn batch(&mut self, epoch: u64, index: u64) -> Result<HostBatch> {
        let mut batch = self.inner.batch(epoch, index)?;
        if self.poison == Some((epoch, index)) {
            batch.context[5] = f32::NAN;
        }
        Ok(batch)
    }
}

fn recipe(seed: u64) -> Recipe {
    let o = [
        "optim.accum_iter=2".to_string(),
        "optim.epochs=2".to_string(),
        "run.checkpoint_every=2".to_string(),
        format!("run.seed={seed}"),
    ];
    Recipe::load("micro", &o).unwrap()
}

/// Runs ranks 0 and 1 on threads, rank r with `recipe(seeds[r])`, `per_epoch[r]`
/// micro-batches per epoch and NaN in `poison[r]`, all in the run folder `run`.
fn two_ranks(
    run: &Path,
    seeds: [u64; 2],
    per_epoch: [u64; 2],
    poison: [Option<(u64, u64)>; 2],
) -> Vec<Result<Summary, String>> {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            let run: PathBuf = run.to_path_buf();
            thread::spawn(move || {
                let r = recipe(seeds[rank]);
                let world = World {
                    rank,
                    size: 2,
                    local_rank: rank,
                    master: Some(Master {
                        addr: "127.0.0.1".into(),
                        port,
                    }),
                };
                let mut comm =
                    TcpCollective::connect(&world, "test", Duration::from_secs(60)).unwrap();
                let mut source = Source {
                    inner: SyntheticSource {
                        config: r.model_config().unwrap(),
                        batch_size: r.optim.batch_size,
                        per_epoch: per_epoch[rank],
                        seed: 100 + rank as u64,
                    },
                    poison: poison[rank],
                };
                let opts = TrainOptions {
                    run_dir: run,
                    resume: Resume::No,
                    max_steps: None,
                    progress: false,
                };
                pretrain_distributed(&Reference::new(), &r, &mut source, &opts, &mut comm)
                    .map_err(|e| format!("{e:#}"))
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn a_non_finite_value_on_one_rank_makes_every_rank_skip_that_step() {
    let dir = tempfile::tempdir().unwrap();
    // 4 micro-batches per epoch, 2 per step: 4 steps; rank 1's second micro-batch (step 1)
    // holds a NaN.
    let out = two_ranks(dir.path(), [0, 0], [4, 4], [None, Some((0, 1))]);
    let [Ok(a), Ok(b)] = &out[..] else {
        panic!("{out:?}");
    };
    assert_eq!((a.steps, a.nonfinite_steps), (3, 1));
    assert_eq!((b.steps, b.nonfinite_steps), (3, 1));
    assert_eq!(a.last_loss.to_bits(), b.last_loss.to_bits());
    assert!(a.replica_digest.is_some());
    assert_eq!(a.replica_digest, b.replica_digest);
    assert!(a.checkpoint.is_some() && b.checkpoint.is_none());
    // One metrics line per step taken, from rank 0 alone.
    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, [1, 2, 3]);
}

#[test]
fn ranks_that_disagree_on_the_data_or_the_model_stop_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    for result in two_ranks(dir.path(), [0, 0], [4, 6], [None, None]) {
        let e = result.unwrap_err();
        assert!(
            e.contains("rank 1 disagrees with rank 0 on the micro-batches per epoch: 6 vs 4"),
            "{e}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    for result in two_ranks(dir.path(), [0, 1], [4, 4], [None, None]) {
        let e = result.unwrap_err();
        assert!(
            e.contains(
                "rank 1 disagrees with rank 0 on the model state at the start: step 0 digest"
            ),
            "{e}"
        );
    }
}
