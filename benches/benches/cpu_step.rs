//! The full CIM step on the CPU (issue 3's speed goal): cim-cpu against PyTorch eager
//! f32 on the same cores, and against the f64 reference, printed side by side with their
//! ratios. `cargo bench -p cim-benches --bench cpu_step` (set CIM_BENCH_STEPS to change
//! the number of timed steps).

use cim_benches::{pytorch_step_ms, step_ms};
use cim_cpu::Cpu;
use cim_reference::Reference;
use cim_spec::config::ModelConfig;

fn main() {
    let steps: usize = std::env::var("CIM_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let cpu = Cpu::new();

    // ViT-Tiny, batch 16, context 160, six exemplars of 64 (the shape).
    let tiny = ModelConfig::preset("vit-tiny").expect("preset");
    let ours = step_ms(&cpu, tiny, 16, 2, steps);
    println!(
        "cim-cpu   vit-tiny b16 full step: {ours:9.1} ms  ({:.1} img/s)",
        16e3 / ours
    );
    let t = threads.to_string();
    let s = steps.to_string();
    match pytorch_step_ms(&[
        "--model",
        "vit-tiny",
        "--batch",
        "16",
        "--threads",
        &t,
        "--steps",
        &s,
    ]) {
        Ok(theirs) => println!(
            "PyTorch   vit-tiny b16 eager f32 on {threads} threads: {theirs:9.1} ms  -> cim-cpu is {:.2}x PyTorch",
            theirs / ours
        ),
        Err(why) => println!("PyTorch baseline skipped: {why}"),
    }

    // The oracle against the fast backend on the micro model.
    let micro = ModelConfig::micro();
    let fast = step_ms(&cpu, micro, 8, 2, steps * 4);
    let slow = step_ms(&Reference::new(), micro, 8, 1, steps);
    println!(
        "micro b8 full step: reference {slow:.2} ms, cim-cpu {fast:.2} ms -> reference/cpu = {:.1}x",
        slow / fast
    );
}
