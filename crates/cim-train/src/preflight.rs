//! The preflight: before a long run (and as `selftest`), every op of the contract at small
//! sizes and whole micro training steps, on the device at hand, against the f64 reference
//! on the CPU, under the tolerance table. A run never starts on a backend that disagrees
//! with the reference on this card and driver: the first mismatch is an error naming the
//! op and the case.

use std::time::Instant;

use anyhow::{Result, bail};
use cim_spec::backend::Backend;
use conformance::{Property, RunConfig};
use serde::Serialize;

/// Cases per op in the preflight: enough to hit odd sizes, few enough for seconds.
pub const PREFLIGHT_CASES: u32 = 6;

/// A fixed seed, so a preflight failure can be rerun exactly.
const PREFLIGHT_SEED: u64 = 0x0C1A_5E1F;

/// One op's outcome (as `selftest --json` writes it).
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// The conformance property (op direction, or `training_steps`, ...).
    #[serde(rename = "check")]
    pub name: &'static str,
    /// Wall time in seconds.
    pub seconds: f64,
    /// The mismatch, if any.
    pub failure: Option<String>,
}

/// Runs every conformance property with `cases` cases on `backend`, then whole micro
/// training steps against the reference, printing one line per check to stderr, and
/// returns every outcome (it does not stop at the first failure, so the report names all
/// disagreeing ops).
pub fn run_checks<B: Backend>(backend: &B, cases: u32) -> Vec<Check> {
    let config = RunConfig {
        cases,
        seed: Some(PREFLIGHT_SEED),
    };
    let mut properties: Vec<Property<B>> = conformance::properties();
    properties.push(Property {
        name: "training_steps",
        run: |backend, _| conformance::training_steps(backend).map_err(|m| m.to_string()),
    });
    let mut checks = Vec::with_capacity(properties.len());
    for property in properties {
        let start = Instant::now();
        let failure = (property.run)(backend, &config).err();
        let seconds = start.elapsed().as_secs_f64();
        let status = if failure.is_some() { "MISMATCH" } else { "ok" };
        eprintln!("  {:<34} {status:>8} {:>8.3} s", property.name, seconds);
        checks.push(Check {
            name: property.name,
            seconds,
            failure,
        });
    }
    checks
}

/// `Ok` when every check passed; otherwise prints every mismatch to stderr and returns an
/// error, prefixed by `what`, naming every disagreeing check and giving the first in full.
pub fn verdict(what: &str, backend_name: &str, checks: &[Check]) -> Result<()> {
    let failed: Vec<&Check> = checks.iter().filter(|c| c.failure.is_some()).collect();
    let Some(first) = failed.first() else {
        return Ok(());
    };
    for c in &failed {
        eprintln!("{}: {}", c.name, c.failure.as_deref().unwrap_or_default());
    }
    let names: Vec<&str> = failed.iter().map(|c| c.name).collect();
    bail!(
        "{what}: {backend_name} disagrees with the reference in {} of {} checks ({}); first: {}: {}",
        failed.len(),
        checks.len(),
        names.join(", "),
        first.name,
        first.failure.as_deref().unwrap_or_default()
    )
}

/// The preflight: [`run_checks`], then [`verdict`].
pub fn preflight<B: Backend>(backend: &B, cases: u32) -> Result<Vec<Check>> {
    eprintln!(
        "preflight: every op of the contract on {} against the f64 reference ({cases} cases each)",
        backend.name()
    );
    let start = Instant::now();
    let checks = run_checks(backend, cases);
    verdict("preflight", backend.name(), &checks)?;
    eprintln!(
        "preflight: {} checks passed in {:.1} s",
        checks.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(checks)
}
