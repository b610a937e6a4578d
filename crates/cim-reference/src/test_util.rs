//! Shared test helpers: seeded random inputs and the one finite-difference gradient check.

use cim_spec::rng::CimRng;

/// A seeded generator, so every test sees the same inputs on every run.
pub(crate) fn rng(seed: u64) -> CimRng {
    CimRng::derive(0x5EED_C1A0, &[seed])
}

/// `len` values uniform in [-1, 1).
pub(crate) fn rand_vec(rng: &mut CimRng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

/// Largest magnitude of a slice (0 for an empty one).
pub(crate) fn max_abs(x: &[f64]) -> f64 {
    x.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// `sum w_i x_i`: the scalar loss `L = sum w . out` whose output gradient is `w`.
pub(crate) fn weighted_sum(w: &[f64], x: &[f64]) -> f64 {
    assert_eq!(w.len(), x.len());
    w.iter().zip(x).map(|(w, x)| w * x).sum()
}

/// Checks an analytic gradient of the scalar `f` at `x` against central finite
/// differences `(f(x + h e_i) - f(x - h e_i)) / 2h`, h = 1e-6, normwise:
/// `max_i |fd_i - analytic_i| <= 1e-6 * max_i |fd_i|`. In f64 the central difference is
/// accurate to about `h^2 |f'''| + 1e-16 |f| / h`, far below that bound for the O(1)
/// inputs the tests use, while a wrong formula misses it by orders of magnitude. A check
/// whose gradient is identically zero would prove nothing, so that fails too.
pub(crate) fn fd_check(f: impl Fn(&[f64]) -> f64, x: &[f64], analytic_grad: &[f64]) {
    const H: f64 = 1e-6;
    const REL: f64 = 1e-6;
    assert_eq!(x.len(), analytic_grad.len(), "fd_check: gradient length");
    let mut probe = x.to_vec();
    let mut numeric = vec![0.0; x.len()];
    for i in 0..x.len() {
        let original = probe[i];
        probe[i] = original + H;
        let up = f(&probe);
        probe[i] = original - H;
        let down = f(&probe);
        probe[i] = original;
        numeric[i] = (up - down) / (2.0 * H);
    }
    let scale = max_abs(&numeric);
    assert!(
        scale > 0.0,
        "fd_check: the gradient is zero, the check is vacuous"
    );
    let (worst, at) = numeric
        .iter()
        .zip(analytic_grad)
        .map(|(n, a)| (n - a).abs())
        .enumerate()
        .fold(
            (0.0, 0),
            |(w, wi), (i, e)| {
                if e > w || e.is_nan() { (e, i) } else { (w, wi) }
            },
        );
    assert!(
        worst <= REL * scale,
        "fd_check: element {at}: analytic {} vs finite difference {} (error {worst:e}, \
         allowed {:e})",
        analytic_grad[at],
        numeric[at],
        REL * scale
    );
}

#[test]
fn fd_check_catches_a_wrong_gradient() {
    let f = |x: &[f64]| x[0] * x[0] + 3.0 * x[1];
    fd_check(f, &[0.5, 2.0], &[1.0, 3.0]);
    let wrong = std::panic::catch_unwind(|| fd_check(f, &[0.5, 2.0], &[1.0, 3.0001]));
    assert!(wrong.is_err());
    let nan = std::panic::catch_unwind(|| fd_check(f, &[0.5, 2.0], &[f64::NAN, 3.0]));
    assert!(nan.is_err());
}
