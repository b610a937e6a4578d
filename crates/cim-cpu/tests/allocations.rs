//! Issue 3: once warmed up, a whole training step on the CPU backend allocates nothing.
//!
//! A counting global allocator wraps the system one and counts every allocation made by
//! any thread (the caller and the pool's workers alike) while a step runs. Each model
//! takes a few warm-up steps (scratch buffers grow to their final sizes there), then
//! several more steps, as the trainer runs them (upload, zero, forward/backward per
//! micro-batch reporting finished gradients, loss download, gradient norm, clipping,
//! AdamW and EMA), must count zero.
//! The configurations cover the micro model and a small ViT-like one with several heads,
//! K > 1 exemplars, accumulation, GEMMs large enough to be split over the pool, the
//! conv correlation with the deconvolution predictor, and a loss other than the default.
//!
//! Its own binary without libtest's harness, so that no other test and no harness thread
//! allocates while the counter is armed; one backend serves every model, so that no pool
//! threads exit meanwhile either (an exiting worker hands its crossbeam-epoch garbage
//! bag to the global list, which allocates).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cim_cpu::Cpu;
use cim_model::{Batch, Cim};
use cim_spec::backend::Memory;
use cim_spec::config::{Correlation, DecoderConfig, EncoderConfig, ModelConfig, Predictor};
use cim_spec::loss::MapLoss;
use cim_spec::schedule::AdamW;

/// The system allocator, counting allocations (fresh, zeroed and reallocations) while
/// [`ARMED`] is set.
struct Counting;

static ARMED: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

fn count() {
    if ARMED.load(Ordering::SeqCst) {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees are this allocator's; counting touches only atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded as received (see the impl).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded as received (see the impl).
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded as received (see the impl).
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received (see the impl).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on any thread.
fn allocations_in(f: impl FnOnce()) -> usize {
    ALLOCATIONS.store(0, Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
    f();
    ARMED.store(false, Ordering::SeqCst);
    ALLOCATIONS.load(Ordering::SeqCst)
}

/// A small ViT-like model: 3 encoder heads, 4 decoder heads in 2 blocks, K = 3.
fn small() -> ModelConfig {
    ModelConfig {
        encoder: EncoderConfig {
            dim: 96,
            depth: 2,
            heads: 3,
            patch: 8,
            mlp_ratio: 4,
            pos_embed_size: 64,
            frozen_patch_embed: true,
        },
        decoder: DecoderConfig {
            width: 64,
            depth: 2,
            heads: 4,
            correlation: Correlation::Attention,
            predictor: Predictor::Conv1x1,
            predictor_init_scale: 1.0,
        },
        context_size: 64,
        exemplar_size: 32,
        exemplars: 3,
        loss: MapLoss::SoftmaxCrossEntropy,
    }
}

/// Runs warm-up steps, then asserts that further steps allocate nothing.
fn check(cpu: &Cpu, name: &str, config: ModelConfig, batch: usize, accum: usize) {
    const WARMUP: usize = 3;
    const STEPS: usize = 4;
    let mut model = Cim::new(cpu, config, batch, 5).unwrap();
    let host = cim_train::synthetic::batch(&config, batch, 9).unwrap();
    let mut data = Batch::new(cpu, &config, batch).unwrap();
    let opt = AdamW {
        lr: 1e-4,
        ..AdamW::default()
    };
    let mut loss = [0.0f32];
    let mut step = || {
        model.zero_grads(cpu).unwrap();
        for _ in 0..accum {
            data.upload(cpu, &host.context, &host.exemplars, &host.maps)
                .unwrap();
            // The trainer's variant (plain forward_backward reports to a no-op).
            let mut reported = 0;
            model
                .forward_backward_reporting(cpu, &data, accum, &mut |_, _| reported += 1)
                .unwrap();
            assert!(reported > 0);
            cpu.download(cpu.view(model.loss(), 0..1), &mut loss)
                .unwrap();
        }
        let norm = model.grad_norm(cpu).unwrap();
        assert!(norm.is_finite() && loss[0].is_finite());
        model.clip_grads(cpu, 1.0).unwrap();
        model.optimizer_step(cpu, &opt, 0.99).unwrap();
    };
    for _ in 0..WARMUP {
        step();
    }
    let counts: Vec<usize> = (0..STEPS).map(|_| allocations_in(&mut step)).collect();
    println!("{name}: allocations per step after {WARMUP} warm-up steps: {counts:?}");
    assert!(
        counts.iter().all(|&c| c == 0),
        "{name}: a warmed-up step allocated ({counts:?} per step)"
    );
}

fn main() {
    let cpu = Cpu::with_threads(3);
    check(&cpu, "micro", ModelConfig::micro(), 2, 1);
    check(&cpu, "small", small(), 4, 2);
    let mut conv = small();
    conv.decoder.correlation = Correlation::Conv;
    conv.decoder.predictor = Predictor::Deconv;
    conv.loss = MapLoss::BalancedBinaryCrossEntropy;
    check(
        &cpu,
        "small, conv correlation, deconv predictor",
        conv,
        4,
        1,
    );
    println!("allocations: ok");
}
