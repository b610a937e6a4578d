//! GEMM throughput of the CPU backend on the ViT-Tiny shapes of a CIM step (3200 token
//! rows: 32 contexts of 100 patches), against this machine's peak.
//!
//! First prints a table (best of several timed runs: GFLOP/s and the share of the
//! assumed peak), then hands the same shapes to criterion. The peak is cores x 2 FMA
//! units x 8 f32 lanes (AVX2) x 2 flops x the clock read from /proc/cpuinfo now; where
//! the CPU also has AVX-512 (matrixmultiply then uses 16-lane kernels) the AVX-512 peak,
//! twice that, is printed as well. `cpu MHz` is often the base clock: boost can make the
//! measured share exceed 100%. Criterion's throughput is in flops (its "elem/s" are
//! flop/s); on a shared machine its means suffer from other load more than the table's
//! best-of-10.

use std::hint::black_box;
use std::time::Instant;

use cim_cpu::Cpu;
use cim_spec::backend::{Backend, GemmArgs};
use cim_spec::ops;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// (name, m, n, k, trans_a, trans_b): C[m,n] = op(A) op(B).
const SHAPES: &[(&str, usize, usize, usize, bool, bool)] = &[
    (
        "qkv fwd  [3200x192]x[576x192]^T",
        3200,
        576,
        192,
        false,
        true,
    ),
    (
        "fc1 fwd  [3200x192]x[768x192]^T",
        3200,
        768,
        192,
        false,
        true,
    ),
    (
        "fc2 fwd  [3200x768]x[192x768]^T",
        3200,
        192,
        768,
        false,
        true,
    ),
    (
        "qkv dX   [3200x576]x[576x192]",
        3200,
        192,
        576,
        false,
        false,
    ),
    (
        "fc2 dX   [3200x192]x[192x768]",
        3200,
        768,
        192,
        false,
        false,
    ),
    (
        "qkv dW   [3200x576]^Tx[3200x192]",
        576,
        192,
        3200,
        true,
        false,
    ),
    (
        "fc1 dW   [3200x768]^Tx[3200x192]",
        768,
        192,
        3200,
        true,
        false,
    ),
    (
        "fc2 dW   [3200x192]^Tx[3200x768]",
        192,
        768,
        3200,
        true,
        false,
    ),
];

fn values(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
        .collect()
}

fn clock_ghz() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    Some(mhz / 1000.0)
}

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

struct Problem {
    args: GemmArgs,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
}

impl Problem {
    fn new(m: usize, n: usize, k: usize, ta: bool, tb: bool) -> Self {
        Problem {
            args: GemmArgs::single(m, n, k, ta, tb),
            a: values(m * k),
            b: values(k * n),
            c: vec![0.0; m * n],
        }
    }

    fn run(&mut self, cpu: &Cpu) {
        ops::gemm(cpu, &mut self.c, &self.a, &self.b, &self.args).expect("valid shapes");
        black_box(&self.c);
    }

    fn flops(&self) -> f64 {
        2.0 * (self.args.m * self.args.n * self.args.k) as f64
    }
}

fn print_table(cpu: &Cpu) {
    let cores = cpu.threads();
    println!(
        "\ncim-cpu GEMM ({} threads, backend `{}`)",
        cores,
        cpu.name()
    );
    let peak = clock_ghz().map(|ghz| {
        let avx2 = cores as f64 * 2.0 * 8.0 * 2.0 * ghz;
        println!(
            "assumed peak: {cores} cores x 2 FMA x 8 lanes x 2 flops x {ghz:.3} GHz = {avx2:.1} GFLOP/s (AVX2){}",
            if has_avx512() {
                format!("; {:.1} GFLOP/s with AVX-512", 2.0 * avx2)
            } else {
                String::new()
            }
        );
        avx2
    });
    for &(name, m, n, k, ta, tb) in SHAPES {
        let mut p = Problem::new(m, n, k, ta, tb);
        for _ in 0..3 {
            p.run(cpu);
        }
        let mut best = f64::INFINITY;
        for _ in 0..10 {
            let t = Instant::now();
            p.run(cpu);
            best = best.min(t.elapsed().as_secs_f64());
        }
        let gflops = p.flops() / best / 1e9;
        match peak {
            Some(pk) => println!(
                "{name:36} {:7.3} ms {gflops:7.1} GFLOP/s  {:5.1}% of AVX2 peak",
                best * 1e3,
                100.0 * gflops / pk
            ),
            None => println!("{name:36} {:7.3} ms {gflops:7.1} GFLOP/s", best * 1e3),
        }
    }
    println!();
}

fn gemm_benches(c: &mut Criterion) {
    let cpu = Cpu::new();
    print_table(&cpu);
    let mut group = c.benchmark_group("gemm");
    group.sample_size(20);
    for &(name, m, n, k, ta, tb) in SHAPES {
        let mut p = Problem::new(m, n, k, ta, tb);
        group.throughput(Throughput::Elements(p.flops() as u64));
        group.bench_function(
            name.split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join("_"),
            |bch| bch.iter(|| p.run(&cpu)),
        );
    }
    group.finish();
}

criterion_group!(benches, gemm_benches);
criterion_main!(benches);
