//! The data-parallel layer without a GPU: ranks as threads meeting on loopback. The
//! rendezvous hands rank 0's payload to every rank and refuses, with the reason on every
//! rank, a mismatched world size, fingerprint or rank, and a rank that never shows up;
//! the CPU collective sums in rank order with identical bits everywhere (odd sizes, empty
//! buckets), gathers bytes of any length, and names a peer that dies or goes silent; the
//! bucket plan cuts the model's completion order into buckets within the budget, the feed
//! hands each to the collective once complete, and the default `finish` sums them as the
//! plain all-reduce does.

use std::net::TcpListener;
use std::ops::Range;
use std::thread;
use std::time::Duration;

use anyhow::Result;
use cim_model::layout::ParamLayout;
use cim_reference::Reference;
use cim_spec::backend::Memory;
use cim_spec::config::ModelConfig;
use cim_train::distributed::{
    Bucket, BucketFeed, Collective, Master, StepVote, TcpCollective, World, ensure_agreement,
    gradient_buckets, rendezvous,
};

const SHORT: Duration = Duration::from_secs(1);
const LONG: Duration = Duration::from_secs(30);

/// A port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn world(rank: usize, size: usize, port: u16) -> World {
    World {
        rank,
        size,
        local_rank: rank,
        master: Some(Master {
            addr: "127.0.0.1".into(),
            port,
        }),
    }
}

/// Runs `f(rank)` for every rank of `ranks` on its own thread; results in rank order.
fn on_ranks<T: Send + 'static>(
    ranks: Range<usize>,
    f: impl Fn(usize) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let handles: Vec<_> = ranks
        .map(|r| {
            let f = f.clone();
            thread::spawn(move || f(r))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn connect(size: usize, port: u16, rank: usize) -> TcpCollective {
    TcpCollective::connect(&world(rank, size, port), "recipe abc", LONG).unwrap()
}

fn error_text<T>(r: Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn the_rendezvous_hands_rank_0s_payload_to_every_rank() {
    for size in [2, 3, 5] {
        let port = free_port();
        let id: Vec<u8> = (0..128u8).collect();
        let expected = id.clone();
        let payloads = on_ranks(0..size, move |rank| {
            // The others start first: they must keep trying until rank 0 listens.
            if rank == 0 {
                thread::sleep(Duration::from_millis(300));
            }
            let id = id.clone();
            let payload = move || {
                assert_eq!(rank, 0, "only rank 0 makes the payload");
                id
            };
            rendezvous(&world(rank, size, port), "recipe abc", payload, LONG)
                .unwrap()
                .payload()
                .to_vec()
        });
        assert!(payloads.iter().all(|p| *p == expected), "size {size}");
    }
}

#[test]
fn a_single_process_meets_no_one() {
    let r = rendezvous(&World::SINGLE, "x", || b"id".to_vec(), SHORT).unwrap();
    assert_eq!(r.payload(), b"id");
}

/// Meets `size` ranks where `hello(rank)` gives each rank's (claimed rank, world size,
/// fingerprint); returns every thread's outcome.
fn meet(size: usize, hello: fn(usize) -> (usize, usize, &'static str)) -> Vec<String> {
    let port = free_port();
    on_ranks(0..size, move |thread_rank| {
        let (rank, size, fingerprint) = hello(thread_rank);
        match rendezvous(&world(rank, size, port), fingerprint, Vec::new, SHORT * 5) {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("{e:#}"),
        }
    })
}

#[test]
fn a_mismatched_fingerprint_is_refused_on_every_rank() {
    let out = meet(3, |r| {
        (r, 3, if r == 2 { "recipe def" } else { "recipe abc" })
    });
    let reason = "rank 2's run fingerprint differs from rank 0's: [recipe def] vs [recipe abc]";
    assert!(out[0].contains(reason), "{}", out[0]);
    // Rank 1 may have joined before or after rank 2: it hears the reason either way,
    // unless it joins after rank 0 gave up (then rank 0 is gone).
    assert!(
        out[1].contains(reason) || out[1].contains("rank 0"),
        "{}",
        out[1]
    );
    assert!(
        out[2].contains(&format!("rank 0 ended the rendezvous: {reason}")),
        "{}",
        out[2]
    );
}

#[test]
fn a_mismatched_world_size_or_a_duplicate_rank_is_refused() {
    let out = meet(2, |r| (r, if r == 1 { 3 } else { 2 }, "f"));
    assert!(
        out[0].contains("rank 1 (at 127.0.0.1:")
            && out[0].contains("WORLD_SIZE=3, rank 0 with WORLD_SIZE=2"),
        "{}",
        out[0]
    );
    assert!(out[1].contains("rank 0 ended the rendezvous"), "{}", out[1]);
    let out = meet(3, |r| (r.min(1), 3, "f"));
    assert!(out[0].contains("two processes claim RANK=1"), "{}", out[0]);
}

#[test]
fn a_rank_that_never_shows_up_is_named_after_the_timeout() {
    let port = free_port();
    // Ranks 0 and 1 of 3; rank 2 never starts.
    let out = on_ranks(0..2, move |rank| {
        error_text(rendezvous(&world(rank, 3, port), "f", Vec::new, SHORT))
    });
    let reason =
        format!("rank(s) 2 of 3 did not join the rendezvous at 127.0.0.1:{port} within 1 s");
    assert!(out[0].contains(&reason), "{}", out[0]);
    assert!(
        out[1].contains(&format!("rank 0 ended the rendezvous: {reason}")),
        "{}",
        out[1]
    );
    // Rank 0 never shows up.
    let port = free_port();
    let e = error_text(rendezvous(&world(1, 2, port), "f", Vec::new, SHORT));
    assert!(
        e.contains(&format!(
            "rank 1 could not reach rank 0 at MASTER_ADDR:MASTER_PORT = 127.0.0.1:{port} within 1 s"
        )),
        "{e}"
    );
}

/// Values whose f32 sums depend on the order: mixed signs and magnitudes.
fn values(rank: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let x = ((i * 7919 + rank * 104_729) % 1000) as f32 / 997.0 - 0.5;
            x * 10f32.powi((i % 9) as i32 - 4)
                * if (i + rank).is_multiple_of(3) {
                    -1.0
                } else {
                    1.0
                }
        })
        .collect()
}

#[test]
fn all_reduce_sums_in_rank_order_with_the_same_bits_on_every_rank() {
    const LEN: usize = 1001;
    // Out of order, an empty bucket, elements 3..10 in none.
    let buckets = vec![900..LEN, 500..900, 500..500, 0..3, 10..500];
    for size in [2, 3, 4] {
        let port = free_port();
        let buckets = buckets.clone();
        let results = on_ranks(0..size, move |rank| {
            let b = Reference::new();
            let mut comm = connect(size, port, rank);
            let mut buf = b.alloc(LEN, cim_spec::backend::Role::Gradient).unwrap();
            b.upload(b.view_mut(&mut buf, 0..LEN), &values(rank, LEN))
                .unwrap();
            Collective::<Reference>::all_reduce_sum(&mut comm, &b, &mut buf, &buckets).unwrap();
            let mut out = vec![0.0f32; LEN];
            b.download(b.view(&buf, 0..LEN), &mut out).unwrap();
            out
        });
        let mut expected = values(0, LEN);
        for r in 1..size {
            for (e, v) in expected.iter_mut().zip(values(r, LEN)) {
                *e += v;
            }
        }
        for (rank, got) in results.iter().enumerate() {
            for i in 0..LEN {
                let want = if (3..10).contains(&i) {
                    values(rank, LEN)[i]
                } else {
                    expected[i]
                };
                assert_eq!(
                    got[i].to_bits(),
                    want.to_bits(),
                    "size {size} rank {rank} [{i}]"
                );
            }
        }
    }
}

#[test]
fn all_gather_returns_every_ranks_bytes_in_rank_order() {
    let port = free_port();
    let out = on_ranks(0..3, move |rank| {
        let mut comm = connect(3, port, rank);
        let c: &mut dyn Collective<Reference> = &mut comm;
        let first = c.all_gather(&vec![rank as u8; rank * 2]).unwrap();
        let vote = StepVote {
            loss: 0.25 * rank as f32,
            stop: rank == 1,
        }
        .agree(c)
        .unwrap();
        let agreement = ensure_agreement(c, "the answer", &format!("{}", 42 + rank / 2), "hint");
        (first, vote, error_text(agreement))
    });
    for (first, vote, disagreement) in out {
        assert_eq!(first, vec![vec![], vec![1, 1], vec![2, 2, 2, 2]]);
        assert_eq!(
            vote,
            StepVote {
                loss: 0.75,
                stop: true
            }
        );
        assert_eq!(
            disagreement,
            "rank 2 disagrees with rank 0 on the answer: 43 vs 42; hint"
        );
    }
}

#[test]
fn a_peer_that_dies_or_goes_silent_is_named() {
    let port = free_port();
    let out = on_ranks(0..3, move |rank| {
        let mut comm = TcpCollective::new(
            rendezvous(&world(rank, 3, port), "f", Vec::new, LONG).unwrap(),
            SHORT,
        )
        .unwrap();
        match rank {
            // Rank 2 stops at once; rank 1 lives on but never calls.
            2 => String::new(),
            1 => {
                thread::sleep(SHORT * 3);
                String::new()
            }
            _ => {
                let c: &mut dyn Collective<Reference> = &mut comm;
                error_text(c.all_gather(b"x"))
            }
        }
    });
    assert!(out[0].contains("rank 1 sent nothing for 1 s"), "{}", out[0]);
    let port = free_port();
    let out = on_ranks(0..2, move |rank| {
        let mut comm = connect(2, port, rank);
        match rank {
            1 => String::new(),
            _ => {
                thread::sleep(Duration::from_millis(200));
                let c: &mut dyn Collective<Reference> = &mut comm;
                error_text(c.all_gather(b"x"))
            }
        }
    });
    assert!(
        out[0].contains("lost the connection to rank 1"),
        "{}",
        out[0]
    );
}

#[test]
fn buckets_hold_whole_trainable_tensors_in_completion_order_within_the_budget() {
    for frozen in [true, false] {
        let mut config = ModelConfig::preset("micro").unwrap();
        config.encoder.frozen_patch_embed = frozen;
        let layout = ParamLayout::new(&config);
        let order = layout.completion_order();
        let largest = order.iter().map(|r| r.len()).max().unwrap();
        for budget in [0, 4 * largest / 2, 4 * largest, 4 * 3 * largest, usize::MAX] {
            let buckets = gradient_buckets(&layout, budget);
            // The completion order cut into runs, each within the budget or one tensor.
            let tensors: Vec<Range<usize>> =
                buckets.iter().flat_map(|b| b.tensors.clone()).collect();
            assert_eq!(tensors, order, "frozen {frozen}, budget {budget}");
            for bucket in &buckets {
                assert!(
                    bucket.tensors.len() == 1 || 4 * bucket.len() <= budget,
                    "{bucket:?}"
                );
                // The summed ranges: ascending, disjoint, not touching, the same elements.
                for w in bucket.ranges.windows(2) {
                    assert!(w[0].end < w[1].start, "{bucket:?}");
                }
                let mut mine: Vec<usize> = bucket.tensors.iter().flat_map(|r| r.clone()).collect();
                mine.sort();
                let summed: Vec<usize> = bucket.ranges.iter().flat_map(|r| r.clone()).collect();
                assert_eq!(summed, mine, "{bucket:?}");
            }
            // A larger budget never needs more buckets.
            assert!(buckets.len() >= gradient_buckets(&layout, usize::MAX).len());
        }
        // Without a budget limit, one bucket; the decoder's predictor comes first and the
        // encoder's first block's tensors just before the class token (and patch embed).
        let unlimited = gradient_buckets(&layout, usize::MAX);
        assert_eq!(unlimited.len(), 1, "{unlimited:?}");
        let name = |r: &Range<usize>| {
            let t = layout.tensors.iter().find(|t| t.range == *r).unwrap();
            t.name.clone()
        };
        assert_eq!(name(&order[0]), "decoder_pred_mask.0.weight");
        let tail: Vec<String> = order[order.len() - 4..].iter().map(name).collect();
        let expected = if frozen {
            [
                "blocks.0.mlp.fc1.bias",
                "blocks.0.mlp.fc2.weight",
                "blocks.0.mlp.fc2.bias",
                "cls_token",
            ]
        } else {
            [
                "blocks.0.mlp.fc2.bias",
                "cls_token",
                "patch_embed.proj.weight",
                "patch_embed.proj.bias",
            ]
        };
        assert_eq!(tail, expected, "frozen {frozen}");
    }
}

/// A collective that records what the feed hands it.
#[derive(Default)]
struct Recorder {
    events: Vec<String>,
}

impl Collective<Reference> for Recorder {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(
        &mut self,
        _: &Reference,
        _: &mut <Reference as Memory>::Buffer,
        ranges: &[Range<usize>],
    ) -> Result<()> {
        self.events.push(format!("sum {ranges:?}"));
        Ok(())
    }
    fn bucket_ready(
        &mut self,
        _: &Reference,
        _: &mut <Reference as Memory>::Buffer,
        bucket: &Bucket,
    ) -> Result<()> {
        self.events.push(format!("ready {:?}", bucket.ranges));
        Ok(())
    }
    fn finish(
        &mut self,
        _: &Reference,
        _: &mut <Reference as Memory>::Buffer,
        buckets: &[Bucket],
    ) -> Result<()> {
        self.events.push(format!("finish {}", buckets.len()));
        Ok(())
    }
    fn all_gather(&mut self, local: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![local.to_vec()])
    }
}

#[test]
fn the_feed_hands_each_bucket_once_complete_then_finishes() {
    let layout = ParamLayout::new(&ModelConfig::preset("micro").unwrap());
    let order = layout.completion_order();
    let budget = 4 * order.iter().map(|r| r.len()).max().unwrap();
    let buckets = gradient_buckets(&layout, budget);
    assert!(buckets.len() > 2);
    let b = Reference::new();
    let mut grads = b
        .alloc(layout.total, cim_spec::backend::Role::Gradient)
        .unwrap();

    let mut comm = Recorder::default();
    let mut feed = BucketFeed::new(&mut comm, &buckets);
    for r in &order {
        feed.report(&b, &mut grads, r.clone());
    }
    feed.finish(&b, &mut grads).unwrap();
    let mut expected: Vec<String> = buckets
        .iter()
        .map(|k| format!("ready {:?}", k.ranges))
        .collect();
    expected.push(format!("finish {}", buckets.len()));
    assert_eq!(comm.events, expected);

    // A report out of order, or a backward that stops short, is an error at finish.
    let mut comm = Recorder::default();
    let mut feed = BucketFeed::new(&mut comm, &buckets);
    feed.report(&b, &mut grads, order[1].clone());
    let e = error_text(feed.finish(&b, &mut grads));
    assert!(e.contains("was due"), "{e}");
    let mut comm = Recorder::default();
    let mut feed = BucketFeed::new(&mut comm, &buckets);
    feed.report(&b, &mut grads, order[0].clone());
    let e = error_text(feed.finish(&b, &mut grads));
    assert!(
        e.contains(&format!("completed 0 of {}", buckets.len())),
        "{e}"
    );
    assert!(comm.events.is_empty(), "{:?}", comm.events);
}

#[test]
fn the_default_finish_sums_every_bucket_as_the_plain_all_reduce() {
    const LEN: usize = 1001;
    // Elements 3..10 in none; the first bucket's tensors merge into one range.
    let buckets = vec![
        Bucket::new(vec![900..LEN, 500..900]),
        Bucket::new(vec![0..3, 10..500]),
    ];
    assert_eq!(buckets[0].ranges.len(), 1);
    let port = free_port();
    let results = on_ranks(0..3, move |rank| {
        let b = Reference::new();
        let mut comm = connect(3, port, rank);
        let mut buf = b.alloc(LEN, cim_spec::backend::Role::Gradient).unwrap();
        b.upload(b.view_mut(&mut buf, 0..LEN), &values(rank, LEN))
            .unwrap();
        let c: &mut dyn Collective<Reference> = &mut comm;
        for k in &buckets {
            c.bucket_ready(&b, &mut buf, k).unwrap();
        }
        c.finish(&b, &mut buf, &buckets).unwrap();
        let mut out = vec![0.0f32; LEN];
        b.download(b.view(&buf, 0..LEN), &mut out).unwrap();
        out
    });
    let mut expected = values(0, LEN);
    for r in 1..3 {
        for (e, v) in expected.iter_mut().zip(values(r, LEN)) {
            *e += v;
        }
    }
    for (rank, got) in results.iter().enumerate() {
        for i in 0..LEN {
            let want = if (3..10).contains(&i) {
                values(rank, LEN)[i]
            } else {
                expected[i]
            };
            assert_eq!(got[i].to_bits(), want.to_bits(), "rank {rank} [{i}]");
        }
    }
}
