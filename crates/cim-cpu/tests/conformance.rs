//! The conformance suite of cim-spec's backend contract, run on the CPU backend against
//! the f64 reference.

use cim_cpu::Cpu;

conformance::suite!(Cpu, Cpu::new());
