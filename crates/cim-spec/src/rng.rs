//! The seeded random number generator every pure function of the crate draws from.
//!
//! S2 asks that any sample can be regenerated from (run seed, epoch, index), and S8 that
//! initialisation is driven by a seeded RNG. [`CimRng`] is xoshiro256++ seeded through
//! SplitMix64: small, fast, `no_std`, with a stable output sequence that golden-value tests
//! pin. Its distributions (uniform, log-uniform, normal) are defined here once so every
//! crate samples them the same way.

use core::convert::Infallible;
use rand_core::{SeedableRng, TryRng};

/// xoshiro256++ with SplitMix64 seeding. The sequence for a given seed is part of the
/// contract (golden tests pin it): changing it changes every generated sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CimRng {
    s: [u64; 4],
}

/// One SplitMix64 step: advances `state` and returns a well-mixed word.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl CimRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        let mut st = seed;
        let s = [
            splitmix64(&mut st),
            splitmix64(&mut st),
            splitmix64(&mut st),
            splitmix64(&mut st),
        ];
        CimRng { s }
    }

    /// A generator for a path of identifiers below `seed`, e.g. `(seed, [epoch, index])`
    /// (S2) or `(seed, [tensor_id])` (S8). Different paths give independent streams; the
    /// result depends on every element and on their order.
    pub fn derive(seed: u64, path: &[u64]) -> Self {
        let mut st = seed;
        let mut h = splitmix64(&mut st);
        for &p in path {
            let mut mix = h ^ p.wrapping_mul(0xD6E8_FEB8_6659_FD93);
            h = splitmix64(&mut mix);
        }
        CimRng::new(h)
    }

    /// The next 64 random bits.
    pub fn next_word(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_word() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Log-uniform in [lo, hi] (both > 0): exp(U(ln lo, ln hi)), as torchvision samples
    /// aspect ratios.
    pub fn log_uniform(&mut self, lo: f64, hi: f64) -> f64 {
        libm::exp(self.uniform(libm::log(lo), libm::log(hi)))
    }

    /// True with probability `p`.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A standard normal draw (Box-Muller; one draw per call, the partner is discarded so
    /// the stream position does not depend on call history).
    pub fn normal(&mut self) -> f64 {
        // 1 - unit() lies in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(2.0 * core::f64::consts::PI * u2)
    }

    /// Uniform integer in [0, n) (n > 0), by rejection so there is no modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "CimRng::below(0)");
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_word();
            if x < zone {
                return x % n;
            }
        }
    }
}

impl TryRng for CimRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.next_word() >> 32) as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.next_word())
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let w = self.next_word().to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
        Ok(())
    }
}

impl SeedableRng for CimRng {
    type Seed = [u8; 8];
    fn from_seed(seed: [u8; 8]) -> Self {
        CimRng::new(u64::from_le_bytes(seed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden: the first words for seed 0 and 42. A change here changes every sample.
    #[test]
    fn sequence_is_pinned() {
        let mut r = CimRng::new(0);
        let got: [u64; 3] = [r.next_word(), r.next_word(), r.next_word()];
        let mut r42 = CimRng::new(42);
        let got42 = r42.next_word();
        assert_eq!(got, GOLDEN_SEED0);
        assert_eq!(got42, GOLDEN_SEED42);
    }

    // Computed by an independent Python transcription of xoshiro256++ / SplitMix64.
    const GOLDEN_SEED0: [u64; 3] = [
        0x5317_5d61_490b_23df,
        0x61da_6f3d_c380_d507,
        0x5c0f_df91_ec9a_7bfc,
    ];
    const GOLDEN_SEED42: u64 = 0xd076_4d4f_4476_689f;

    #[test]
    fn derive_depends_on_order_and_values() {
        let a = CimRng::derive(7, &[1, 2]).next_word();
        let b = CimRng::derive(7, &[2, 1]).next_word();
        let c = CimRng::derive(7, &[1, 3]).next_word();
        let d = CimRng::derive(8, &[1, 2]).next_word();
        assert!(a != b && a != c && a != d);
        assert_eq!(a, CimRng::derive(7, &[1, 2]).next_word());
    }

    #[test]
    fn distributions_have_their_moments() {
        let mut r = CimRng::new(3);
        let n = 200_000;
        let (mut s, mut s2, mut lu_min, mut lu_max) = (0.0, 0.0, f64::MAX, 0.0f64);
        for _ in 0..n {
            let x = r.normal();
            s += x;
            s2 += x * x;
            let l = r.log_uniform(1.0 / 3.0, 3.0);
            lu_min = lu_min.min(l);
            lu_max = lu_max.max(l);
        }
        let mean = s / n as f64;
        let var = s2 / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "normal mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "normal variance {var}");
        assert!(lu_min >= 1.0 / 3.0 && lu_max <= 3.0);
        let counts = (0..60_000).fold([0u32; 3], |mut c, _| {
            c[r.below(3) as usize] += 1;
            c
        });
        assert!(
            counts.iter().all(|&c| (19_000..21_000).contains(&c)),
            "{counts:?}"
        );
    }
}
