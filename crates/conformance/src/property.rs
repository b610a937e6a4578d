//! Running checks as properties: a check over many cases drawn from its strategy, with
//! proptest's shrinking to a minimal failing case.
//!
//! [`run_property`] is what each `suite!` test calls; [`properties`] lists every property
//! of the suite (the same list the macro expands, plus the determinism and NaN checks) so a
//! harness can run them all and see which fail, as the crate's own perturbation tests do.

use core::fmt::Debug;

use cim_spec::backend::Backend;
use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};

use crate::mismatch::Mismatch;

/// Cases per property when `CIM_CONFORMANCE_CASES` is not set.
pub const DEFAULT_CASES: u32 = 32;

/// How many cases a property runs, and from which seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunConfig {
    /// Cases drawn from the strategy.
    pub cases: u32,
    /// A fixed seed for proptest's generator (reproducible runs); `None` draws one
    /// (proptest then honours `PROPTEST_RNG_SEED`).
    pub seed: Option<u64>,
}

impl RunConfig {
    /// `CIM_CONFORMANCE_CASES` cases (default [`DEFAULT_CASES`]), random seed.
    pub fn from_env() -> Self {
        let cases = std::env::var("CIM_CONFORMANCE_CASES")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_CASES);
        RunConfig { cases, seed: None }
    }

    fn runner(&self) -> TestRunner {
        let mut config = Config {
            cases: self.cases,
            failure_persistence: None,
            max_shrink_iters: 512,
            ..Config::default()
        };
        if let Some(seed) = self.seed {
            config.rng_seed = RngSeed::Fixed(seed);
        }
        TestRunner::new(config)
    }
}

/// Runs `check` on `backend` over `config.cases` cases of `strategy`; on failure, shrinks
/// to a minimal case and returns a message with the property's name and the
/// [`Mismatch`] of that case.
pub fn run_property<B, S, F>(
    backend: &B,
    name: &str,
    config: &RunConfig,
    strategy: S,
    check: F,
) -> Result<(), String>
where
    B: Backend,
    S: Strategy,
    S::Value: Debug,
    F: Fn(&B, &S::Value) -> Result<(), Mismatch>,
{
    let mut runner = config.runner();
    let result = runner.run(&strategy, |case| {
        check(backend, &case).map_err(|m| TestCaseError::fail(m.to_string()))
    });
    match result {
        Ok(()) => Ok(()),
        Err(TestError::Fail(reason, case)) => Err(format!(
            "conformance property `{name}` failed on backend `{}`\n{reason}\nminimal case: {case:?}",
            backend.name()
        )),
        Err(TestError::Abort(reason)) => Err(format!(
            "conformance property `{name}` aborted on backend `{}`: {reason}",
            backend.name()
        )),
    }
}

/// One property of the suite, runnable on a backend of type `B`.
pub struct Property<B> {
    /// The name of the `suite!` test that runs it.
    pub name: &'static str,
    /// Runs it; `Err` holds the failure message.
    pub run: fn(&B, &RunConfig) -> Result<(), String>,
}

/// Every property of the suite: each op direction over its strategy (every map-loss kind
/// separately), then `determinism` and `nan_propagation` (which ignore the config).
pub fn properties<B: Backend>() -> Vec<Property<B>> {
    let mut all: Vec<Property<B>> = crate::__conformance_properties!(__conformance_registry {});
    all.push(Property {
        name: "determinism",
        run: |backend, _| crate::determinism(backend).map_err(|m| m.to_string()),
    });
    all.push(Property {
        name: "nan_propagation",
        run: |backend, _| crate::nan_propagation(backend).map_err(|m| m.to_string()),
    });
    all
}
