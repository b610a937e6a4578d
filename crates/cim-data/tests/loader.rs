//! The loader: batches in the model's layout, identical for any worker count, resumable
//! mid-epoch, and bad files handled by the skip policy (fail with the file's error, or
//! replace, log and count until the budget runs out); the shards of data-parallel
//! processes together make exactly the single-process epoch; the view loader yields the
//! search views and plans the pairs are rendered from.

mod common;

use std::sync::Arc;

use cim_data::{
    DataError, Dataset, Loader, LoaderOptions, Shard, SkipPolicy, ViewLoader, epoch_order,
    make_pair, sample,
};
use cim_spec::rng::CimRng;
use common::*;

fn dataset(dir: &std::path::Path, images: usize, bad: &[usize]) -> Arc<Dataset> {
    for i in 0..images {
        let name = format!("c{}/img{i:03}.jpg", i % 2);
        if bad.contains(&i) {
            put(dir, &name, &jpeg_rgb(40, 30)[..50]);
        } else {
            put(
                dir,
                &name,
                &jpeg_rgb(40 + (i as u16 % 7) * 9, 30 + (i as u16 % 5) * 7),
            );
        }
    }
    Arc::new(Dataset::open(dir).unwrap())
}

fn options(workers: usize) -> LoaderOptions {
    LoaderOptions {
        batch_size: 4,
        workers,
        prefetch: 2,
        seed: 11,
        epoch: 3,
        shuffle: true,
        drop_last: false,
        skip: SkipPolicy::Fail,
        start_batch: 0,
        shard: Shard::WHOLE,
    }
}

#[test]
fn batches_do_not_depend_on_the_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path(), 14, &[]);
    let cfg = small_cfg();
    let run = |workers, prefetch| {
        let opts = LoaderOptions {
            prefetch,
            ..options(workers)
        };
        Loader::new(Arc::clone(&ds), cfg, opts)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    };
    let one = run(1, 1);
    for (workers, prefetch) in [(3, 2), (5, 1), (2, 8)] {
        assert_eq!(
            one,
            run(workers, prefetch),
            "{workers} workers, prefetch {prefetch}"
        );
    }
    // 14 images in batches of 4 without drop_last: 4, 4, 4, 2.
    let sizes: Vec<usize> = one.iter().map(|b| b.len()).collect();
    assert_eq!(sizes, [4, 4, 4, 2]);
    let (m, n, k) = (cfg.context_size, cfg.exemplar_size, cfg.exemplars);
    let b = &one[0];
    assert_eq!(b.context.len(), 4 * 3 * m * m);
    assert_eq!(b.exemplars.len(), 4 * k * 3 * n * n);
    assert_eq!(b.maps.len(), 4 * k * m * m);
    // The epoch visits every image once, in the (seed, epoch) order.
    let visited: Vec<usize> = one.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(visited, epoch_order(14, 11, 3, true));
    // Each sample is the standalone sample of its index, and labels follow the images.
    for (slot, &index) in b.indices.iter().enumerate() {
        let p = sample(&ds, &cfg, 11, 3, index).unwrap();
        let len = 3 * m * m;
        assert_eq!(&b.context[slot * len..(slot + 1) * len], &p.context[..]);
        assert_eq!(b.labels[slot], ds.label(index));
    }
}

#[test]
fn epoch_orders_are_permutations_that_change_with_the_epoch() {
    let a = epoch_order(100, 1, 0, true);
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    assert_ne!(a, epoch_order(100, 1, 1, true));
    assert_ne!(a, epoch_order(100, 2, 0, true));
    assert_eq!(a, epoch_order(100, 1, 0, true));
    assert_eq!(epoch_order(5, 1, 0, false), [0, 1, 2, 3, 4]);
}

#[test]
fn a_resumed_epoch_continues_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path(), 12, &[]);
    let cfg = small_cfg();
    let full: Vec<_> = Loader::new(Arc::clone(&ds), cfg, options(2))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let resumed: Vec<_> = Loader::new(
        Arc::clone(&ds),
        cfg,
        LoaderOptions {
            start_batch: 1,
            ..options(2)
        },
    )
    .unwrap()
    .map(Result::unwrap)
    .collect();
    assert_eq!(resumed, full[1..]);
    let mut loader = Loader::new(Arc::clone(&ds), cfg, options(2)).unwrap();
    assert_eq!(loader.batches(), 3);
    loader.next();
    let share = loader.wait_share();
    assert!((0.0..=1.0).contains(&share), "{share}");
}

#[test]
fn a_bad_file_fails_the_epoch_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path(), 8, &[5]);
    let results: Vec<_> = Loader::new(ds, small_cfg(), options(2)).unwrap().collect();
    let err = results
        .iter()
        .find_map(|r| r.as_ref().err())
        .expect("an error");
    assert!(matches!(err, DataError::Truncated { .. }), "{err:?}");
    assert!(err.to_string().contains("img005.jpg"));
    assert!(
        results.last().unwrap().is_err(),
        "the loader stops at the error"
    );
}

#[test]
fn skipped_files_are_replaced_logged_and_counted_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(&dir.path().join("data"), 12, &[2, 7]);
    let log = dir.path().join("skips.jsonl");
    let opts = |workers, budget| LoaderOptions {
        skip: SkipPolicy::Skip {
            budget,
            log: Some(log.clone()),
        },
        ..options(workers)
    };
    let cfg = small_cfg();
    let one: Vec<_> = Loader::new(Arc::clone(&ds), cfg, opts(1, 2))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut loader = Loader::new(Arc::clone(&ds), cfg, opts(3, 2)).unwrap();
    let three: Vec<_> = loader.by_ref().map(Result::unwrap).collect();
    assert_eq!(one, three, "replacements do not depend on the worker count");
    assert_eq!(loader.skipped(), 2);
    // Shapes stay fixed: every batch is full except the epoch's short last one.
    assert_eq!(one.iter().map(|b| b.len()).collect::<Vec<_>>(), [4, 4, 4]);
    let skipped: Vec<_> = one.iter().flat_map(|b| b.skipped.clone()).collect();
    let mut bad: Vec<String> = skipped
        .iter()
        .map(|r| r.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    bad.sort();
    assert_eq!(bad, ["img002.jpg", "img007.jpg"]);
    for r in &skipped {
        assert_eq!(ds.path(r.index), Some(r.path.as_path()));
        assert_eq!(
            r.replacement,
            r.index + 1,
            "the next image in dataset order"
        );
        assert_eq!(r.epoch, 3);
    }
    // Two runs appended two lines each, as JSON.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert!(lines[0]["path"].as_str().unwrap().contains("img00"));
    assert!(lines[0]["error"].as_str().unwrap().contains("truncated"));

    // One skip over the budget stops the epoch with an error naming the file.
    let results: Vec<_> = Loader::new(Arc::clone(&ds), cfg, opts(2, 1))
        .unwrap()
        .collect();
    let err = results.last().unwrap().as_ref().unwrap_err();
    assert!(
        matches!(
            err,
            DataError::SkipBudget {
                skipped: 2,
                budget: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("img00"));
}

#[test]
fn shards_together_make_the_single_process_epoch() {
    let dir = tempfile::tempdir().unwrap();
    // 23 images: batches of 2 x 3 shards leave 5 images out, like one loader of batch 6.
    let ds = dataset(dir.path(), 23, &[]);
    let cfg = small_cfg();
    let whole: Vec<_> = Loader::new(
        Arc::clone(&ds),
        cfg,
        LoaderOptions {
            batch_size: 6,
            drop_last: true,
            ..options(2)
        },
    )
    .unwrap()
    .map(Result::unwrap)
    .collect();
    assert_eq!(whole.len(), 3);
    let shards: Vec<Vec<_>> = (0..3)
        .map(|index| {
            let opts = LoaderOptions {
                batch_size: 2,
                drop_last: true,
                shard: Shard { index, count: 3 },
                ..options(2)
            };
            assert_eq!(opts.batches(ds.len()), 3);
            Loader::new(Arc::clone(&ds), cfg, opts)
                .unwrap()
                .map(Result::unwrap)
                .collect()
        })
        .collect();
    for (b, batch) in whole.iter().enumerate() {
        let joined: Vec<usize> = shards.iter().flat_map(|s| s[b].indices.clone()).collect();
        assert_eq!(joined, batch.indices, "batch {b}");
        let context: Vec<f32> = shards.iter().flat_map(|s| s[b].context.clone()).collect();
        assert_eq!(context, batch.context, "batch {b}: the same samples");
    }
    // A shard resumed mid-epoch continues its own sequence.
    let resumed: Vec<_> = Loader::new(
        Arc::clone(&ds),
        cfg,
        LoaderOptions {
            batch_size: 2,
            drop_last: true,
            shard: Shard { index: 1, count: 3 },
            start_batch: 2,
            ..options(1)
        },
    )
    .unwrap()
    .map(Result::unwrap)
    .collect();
    assert_eq!(resumed, shards[1][2..]);
}

#[test]
fn impossible_options_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(dir.path(), 3, &[]);
    let cfg = small_cfg();
    let bad = [
        LoaderOptions {
            batch_size: 0,
            ..options(1)
        },
        LoaderOptions {
            batch_size: 4,
            drop_last: true,
            ..options(1)
        },
        LoaderOptions {
            start_batch: 5,
            ..options(1)
        },
        LoaderOptions {
            batch_size: 1,
            drop_last: true,
            shard: Shard { index: 2, count: 2 },
            ..options(1)
        },
        LoaderOptions {
            batch_size: 1,
            shard: Shard { index: 0, count: 2 },
            ..options(1)
        },
        LoaderOptions {
            batch_size: 1,
            drop_last: true,
            shard: Shard { index: 0, count: 4 },
            ..options(1)
        },
    ];
    for opts in bad {
        assert!(matches!(
            Loader::new(Arc::clone(&ds), cfg, opts),
            Err(DataError::Config(_))
        ));
    }
}

#[test]
fn view_batches_are_what_the_pairs_are_rendered_from_for_any_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset(&dir.path().join("data"), 13, &[2, 7]);
    let cfg = small_cfg();
    let opts = |workers, prefetch| LoaderOptions {
        prefetch,
        skip: SkipPolicy::Skip {
            budget: 2,
            log: None,
        },
        ..options(workers)
    };
    let pairs: Vec<_> = Loader::new(Arc::clone(&ds), cfg, opts(2, 2))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let views: Vec<_> = ViewLoader::new(Arc::clone(&ds), cfg, opts(1, 1))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (workers, prefetch) in [(3, 2), (4, 1)] {
        let other: Vec<_> = ViewLoader::new(Arc::clone(&ds), cfg, opts(workers, prefetch))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(views, other, "{workers} workers, prefetch {prefetch}");
    }
    assert_eq!(views.len(), pairs.len());
    let view_bytes = cfg.input_size * cfg.input_size * 3;
    let mut replaced = 0;
    for (v, p) in views.iter().zip(&pairs) {
        assert_eq!(
            (&v.indices, &v.labels, &v.skipped),
            (&p.indices, &p.labels, &p.skipped)
        );
        assert_eq!(v.views.len(), v.len() * view_bytes);
        assert_eq!(v.plans.len(), v.len());
        for (slot, &index) in v.indices.iter().enumerate() {
            // The pair the full path renders in this slot: the sample of its index, or of
            // its replacement with the slot's first retry generator.
            let pair = match v.skipped.iter().find(|r| r.index == index) {
                None => sample(&ds, &cfg, 11, 3, index).unwrap(),
                Some(r) => {
                    replaced += 1;
                    let img = ds.load(r.replacement).unwrap();
                    make_pair(&img, &cfg, &mut CimRng::derive(11, &[3, index as u64, 1])).unwrap()
                }
            };
            assert_eq!(v.plans[slot], pair.plan, "image {index}");
            assert_eq!(
                &v.views[slot * view_bytes..(slot + 1) * view_bytes],
                pair.search_view.as_raw(),
                "image {index}"
            );
            let len = 3 * cfg.context_size * cfg.context_size;
            assert_eq!(
                &p.context[slot * len..(slot + 1) * len],
                &pair.context[..],
                "image {index}: the pair loader rendered this pair"
            );
        }
    }
    assert_eq!(replaced, 2, "both bad files were replaced");
    // Resumed mid-epoch, it continues where it stopped.
    let resumed: Vec<_> = ViewLoader::new(
        Arc::clone(&ds),
        cfg,
        LoaderOptions {
            start_batch: 2,
            ..opts(2, 2)
        },
    )
    .unwrap()
    .map(Result::unwrap)
    .collect();
    assert_eq!(resumed, views[2..]);
}
