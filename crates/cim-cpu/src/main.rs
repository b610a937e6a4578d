//! The `cim-cpu` binary: CIM pre-training and its tools on the CPU backend. Everything
//! but the choice of backend is cim-train's CLI, shared with `cim-cuda`.

fn main() -> anyhow::Result<()> {
    cim_train::cli::main(|| Ok(cim_cpu::Cpu::new()), Default::default())
}
