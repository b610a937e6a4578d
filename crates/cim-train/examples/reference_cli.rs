//! The CLI on the f64 reference backend (slow, exact): `cargo run -p cim-train --example
//! reference_cli -- step-dump --model micro --out DIR` gives the oracle's step dump.

fn main() -> anyhow::Result<()> {
    cim_train::cli::main(|| Ok(cim_reference::Reference::new()), Default::default())
}
