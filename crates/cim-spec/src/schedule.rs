//! The optimisation schedules and update rules of S6 and S7: the scaled learning rate, its
//! warmup-then-cosine schedule, the EMA momentum schedule, the per-element AdamW and EMA
//! updates, and the weight-decay rule. They are pure scalar formulas so the trainer, the
//! model (written once over the backend traits) and every backend's fused kernels share
//! one definition, down to the f32 operation order PyTorch uses.

use core::f64::consts::PI;
use core::fmt;

/// Why a schedule's parameters were refused.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum ScheduleError {
    /// A learning rate is negative or not finite.
    LearningRate(f64),
    /// The warmup length is negative or not finite.
    Warmup(f64),
    /// The run length is not finite and positive.
    Epochs(f64),
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ScheduleError::LearningRate(lr) => {
                write!(f, "learning rate {lr} is negative or not finite")
            }
            ScheduleError::Warmup(w) => write!(f, "warmup of {w} epochs is negative or not finite"),
            ScheduleError::Epochs(e) => write!(f, "run length of {e} epochs is not positive"),
        }
    }
}

impl core::error::Error for ScheduleError {}

/// The learning rate for a base rate and an effective batch (S6): `blr * B_eff / 256`,
/// with `B_eff = batch per device * accumulation steps * devices`. Evaluated in MAE's
/// order (`blr * B_eff`, then `/ 256`).
pub fn scaled_lr(blr: f64, effective_batch: usize) -> f64 {
    blr * effective_batch as f64 / 256.0
}

/// The fractional epoch `e = epoch + i / I_epoch` at which S6 sets the rate, for the
/// micro-batch with 0-based index `i` within its epoch (the first micro-batch of an
/// accumulation group). Evaluated as MAE writes it, `i / I_epoch + epoch`. An epoch with
/// no micro-batches (`I_epoch = 0`) gives `epoch`.
pub fn epoch_fraction(epoch: u64, micro_batch_index: u64, micro_batches_per_epoch: u64) -> f64 {
    if micro_batches_per_epoch == 0 {
        return epoch as f64;
    }
    micro_batch_index as f64 / micro_batches_per_epoch as f64 + epoch as f64
}

/// The learning-rate schedule of S6: linear warmup from 0 to `peak_lr`, then a half
/// cosine from `peak_lr` down to `min_lr` at `epochs`. Lengths are in (fractional) epochs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    /// The rate reached at the end of warmup (`scaled_lr(blr, B_eff)`).
    pub peak_lr: f64,
    /// The rate the cosine decays to (0 in the recipes).
    pub min_lr: f64,
    /// Warmup length in epochs (40 in the ImageNet recipe).
    pub warmup_epochs: f64,
    /// Run length in epochs (300 in the ImageNet recipe).
    pub epochs: f64,
}

impl LrSchedule {
    /// A schedule whose rates are finite and non-negative, warmup finite and
    /// non-negative, and run length finite and positive.
    pub fn new(
        peak_lr: f64,
        min_lr: f64,
        warmup_epochs: f64,
        epochs: f64,
    ) -> Result<Self, ScheduleError> {
        for lr in [peak_lr, min_lr] {
            if !(lr.is_finite() && lr >= 0.0) {
                return Err(ScheduleError::LearningRate(lr));
            }
        }
        if !(warmup_epochs.is_finite() && warmup_epochs >= 0.0) {
            return Err(ScheduleError::Warmup(warmup_epochs));
        }
        if !(epochs.is_finite() && epochs > 0.0) {
            return Err(ScheduleError::Epochs(epochs));
        }
        Ok(LrSchedule {
            peak_lr,
            min_lr,
            warmup_epochs,
            epochs,
        })
    }

    /// The rate at fractional epoch `e` (see [`epoch_fraction`]), in MAE's operation
    /// order: `peak * e / warmup` for `e < warmup`, else
    /// `min + (peak - min) * 0.5 * (1 + cos(pi * (e - warmup) / (epochs - warmup)))`.
    ///
    /// Edges, none of which a run inside `[0, epochs)` with `warmup < epochs` meets:
    /// `warmup = 0` starts on the cosine at `peak`; `e < 0` (or NaN) counts as 0; from
    /// `e >= epochs` on the rate stays at `min_lr` instead of climbing the cosine again;
    /// with `warmup >= epochs` the whole run is warmup (the rate never reaches the peak).
    pub fn at(&self, epoch_fraction: f64) -> f64 {
        let e = if epoch_fraction > 0.0 {
            epoch_fraction
        } else {
            0.0
        };
        if e < self.warmup_epochs {
            self.peak_lr * e / self.warmup_epochs
        } else if e >= self.epochs {
            self.min_lr
        } else {
            let progress = PI * (e - self.warmup_epochs) / (self.epochs - self.warmup_epochs);
            self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + libm::cos(progress))
        }
    }
}

/// The EMA momentum of S7: `1 - (1 - m0) * (cos(pi * i / I) + 1) / 2`, rising from `m0`
/// at `i = 0` to 1 at `i = I`, evaluated in the release's order.
///
/// Counted in micro-batches, as the release does: `total` is the run's micro-batch count
/// (`epochs * micro-batches per epoch`) and `i` the 0-based index of the LAST micro-batch
/// of the accumulation group just stepped (with `accum_iter = 2`, steps happen after
/// micro-batches 1, 3, 5, ... and pass those indices). Without accumulation `i` is the
/// optimizer step's index. `i > total` counts as `total` (momentum 1), and so does a run
/// with `total = 0`.
pub fn ema_momentum(base_momentum: f64, i: u64, total: u64) -> f64 {
    if total == 0 {
        return 1.0;
    }
    let i = i.min(total);
    1.0 - (1.0 - base_momentum) * (libm::cos(PI * i as f64 / total as f64) + 1.0) / 2.0
}

/// One element of the target update of S7: `m * target + (1 - m) * online`, in the
/// release's f32 order `target * f32(m) + online * f32(1 - m)` (it writes
/// `param_k.data * m + param_q.data * (1. - m)` on f32 tensors; `1 - m` is taken in f64
/// before the rounding, and the two products are separate tensor ops, so nothing is fused).
pub fn ema_scalar(target: f32, online: f32, momentum: f64) -> f32 {
    target * momentum as f32 + online * (1.0 - momentum) as f32
}

/// Whether weight decay applies to a trainable parameter (S6), by timm's
/// `param_groups_weight_decay` rule, which MAE-style pre-training uses: no decay for 0-D
/// and 1-D tensors or for names ending in `.bias`; everything else decays, including the
/// class token `[1, 1, D]`. Frozen tensors have no optimizer state and never reach this.
pub fn is_decayed(shape: &[usize], name: &str) -> bool {
    !(shape.len() <= 1 || name.ends_with(".bias"))
}

/// AdamW hyperparameters (S6). [`Default`] gives the S6 values with `lr = 0`; the trainer
/// sets `lr` from [`LrSchedule::at`] before each step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate of this step.
    pub lr: f64,
    /// First-moment decay (0.9).
    pub beta1: f64,
    /// Second-moment decay (0.95).
    pub beta2: f64,
    /// Denominator guard (1e-8).
    pub eps: f64,
    /// Decoupled weight decay (0.05).
    pub weight_decay: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            lr: 0.0,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.05,
        }
    }
}

/// The scalars of one AdamW step, rounded to f32 as PyTorch hands its Python floats to
/// the f32 kernels. A backend kernel takes exactly these, so every backend rounds them
/// the same way; [`AdamWStep::apply`] is the per-element update they must reproduce.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// `f32(1 - lr * weight_decay)`, applied to decayed parameters only.
    pub decay_factor: f32,
    /// `f32(1 - beta1)`, the weight of the first-moment `lerp`.
    pub lerp_weight: f32,
    /// `f32(beta2)`.
    pub beta2: f32,
    /// `f32(1 - beta2)`.
    pub one_minus_beta2: f32,
    /// `f32(sqrt(1 - beta2^t))`.
    pub bias_correction2_sqrt: f32,
    /// `f32(eps)`.
    pub eps: f32,
    /// `f32(-lr / (1 - beta1^t))`.
    pub neg_step_size: f32,
}

impl AdamW {
    /// The host-side bias corrections of step `step_t` (1-based), in f64 as PyTorch
    /// computes them on Python floats: `(step_size, bias_correction2_sqrt)` with
    /// `step_size = lr / (1 - beta1^t)` and `bias_correction2_sqrt = sqrt(1 - beta2^t)`.
    ///
    /// `step_t` counts optimizer steps from 1; 0 is a programming error (the division
    /// by `1 - beta1^0 = 0`), so it panics.
    pub fn bias_corrections(&self, step_t: u64) -> (f64, f64) {
        assert!(step_t >= 1, "AdamW steps are counted from 1");
        let t = step_t as f64;
        let bias_correction1 = 1.0 - libm::pow(self.beta1, t);
        let bias_correction2 = 1.0 - libm::pow(self.beta2, t);
        (self.lr / bias_correction1, libm::sqrt(bias_correction2))
    }

    /// The f32 scalars of step `step_t` (1-based; panics on 0, see
    /// [`AdamW::bias_corrections`]).
    pub fn step_scalars(&self, step_t: u64) -> AdamWStep {
        let (step_size, bias_correction2_sqrt) = self.bias_corrections(step_t);
        AdamWStep {
            decay_factor: (1.0 - self.lr * self.weight_decay) as f32,
            lerp_weight: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            bias_correction2_sqrt: bias_correction2_sqrt as f32,
            eps: self.eps as f32,
            neg_step_size: (-step_size) as f32,
        }
    }

    /// One element of AdamW step `step_t` (1-based): returns the new `(theta, m, v)`.
    /// `decay` says whether this parameter is decayed ([`is_decayed`]). See
    /// [`AdamWStep::apply`] for the exact arithmetic.
    pub fn step_scalar(
        &self,
        theta: f32,
        m: f32,
        v: f32,
        grad: f32,
        step_t: u64,
        decay: bool,
    ) -> (f32, f32, f32) {
        self.step_scalars(step_t).apply(theta, m, v, grad, decay)
    }
}

impl AdamWStep {
    /// One element of the update, in PyTorch's single-tensor (`foreach=False`) AdamW:
    ///
    /// 1. `theta *= decay_factor` (decayed parameters only);
    /// 2. `m = m.lerp(grad, 1 - beta1)`, i.e. `fma(w, grad - m, m)` for `|w| < 0.5`, else
    ///    `fma(w - 1, grad - m, grad)`;
    /// 3. `v = v * beta2 + (1 - beta2) * grad * grad`, as `fma((1 - beta2) * grad, grad,
    ///    v * beta2)`;
    /// 4. `denom = sqrt(v) / bias_correction2_sqrt + eps`;
    /// 5. `theta = theta + (neg_step_size * m) / denom` (`addcdiv_`).
    ///
    /// The fused multiply-adds of steps 2 and 3 are what PyTorch computes on x86-64 CPUs
    /// with AVX2 or AVX-512 (its vectorised `lerp` is an explicit `fmadd`, and its
    /// compiler fuses `addcmul`), in both its vector and its scalar tail loops; the tests
    /// check every bit against `torch.optim.AdamW` for three steps. This is the
    /// mathematical S6 update (`m = b1 m + (1 - b1) g`) with PyTorch's rounding.
    pub fn apply(&self, theta: f32, m: f32, v: f32, grad: f32, decay: bool) -> (f32, f32, f32) {
        let theta = if decay {
            theta * self.decay_factor
        } else {
            theta
        };
        let diff = grad - m;
        let m = if self.lerp_weight.abs() < 0.5 {
            libm::fmaf(self.lerp_weight, diff, m)
        } else {
            libm::fmaf(self.lerp_weight - 1.0, diff, grad)
        };
        let v = libm::fmaf(self.one_minus_beta2 * grad, grad, v * self.beta2);
        let denom = libm::sqrtf(v) / self.bias_correction2_sqrt + self.eps;
        (theta + (self.neg_step_size * m) / denom, m, v)
    }
}

#[cfg(test)]
mod tests {
    //! Golden values come from `tests/golden/schedule_golden.py`: MAE's learning-rate
    //! formula and the release's momentum formula transcribed on Python floats, and
    //! `torch.optim.AdamW(foreach=False)` of torch 2.15.0 run on an AVX-512 CPU.
    use super::*;

    const N: usize = 37;

    /// Exact binary fractions, as in the golden script.
    fn theta0(i: usize) -> f32 {
        (i as f32 - 18.0) / 16.0
    }

    /// Exact binary fractions spanning 2^-18..11, element 5 always zero.
    fn grad(i: usize, step: usize) -> f32 {
        if i == 5 {
            return 0.0;
        }
        let k = ((i * 7 + step * 13) % 23) as f32 - 11.0;
        k / (1u32 << (3 * (i % 7))) as f32
    }

    #[test]
    fn scaled_lr_is_blr_times_batch_over_256() {
        assert_eq!(scaled_lr(1.5e-4, 4096), PEAK_LR);
        assert_eq!(scaled_lr(1e-3, 256), 1e-3);
    }

    #[test]
    fn lr_schedule_matches_mae_formula() {
        let s = LrSchedule::new(scaled_lr(1.5e-4, 4096), 0.0, 40.0, 300.0).unwrap();
        // libm's cos may differ from glibc's by an ulp of 1, which 1 + cos near -1
        // amplifies; an absolute bound of peak * 1e-15 covers that and nothing more.
        let tol = PEAK_LR * 1e-15;
        for (e, lr) in LR_GOLDEN {
            assert!(
                (s.at(e) - lr).abs() <= tol,
                "epoch {e}: {} vs {lr}",
                s.at(e)
            );
        }
        let with_min = LrSchedule::new(PEAK_LR, 1e-6, 40.0, 300.0).unwrap();
        assert!((with_min.at(123.4) - LR_MIN_GOLDEN).abs() <= tol);
        // the warmup part involves no transcendental function: exact
        assert_eq!(s.at(0.5), LR_GOLDEN[1].1);
        assert_eq!(epoch_fraction(3, 17, 1251), LR_GOLDEN[2].0);
        assert_eq!(epoch_fraction(299, 1250, 1251), LR_GOLDEN[10].0);
    }

    #[test]
    fn lr_schedule_edges() {
        let no_warmup = LrSchedule::new(1.0, 0.1, 0.0, 10.0).unwrap();
        assert_eq!(no_warmup.at(0.0), 1.0);
        assert!((no_warmup.at(5.0) - 0.55).abs() < 1e-15);
        assert_eq!(no_warmup.at(10.0), 0.1);
        assert_eq!(no_warmup.at(25.0), 0.1, "no second cosine past the end");
        assert_eq!(no_warmup.at(-1.0), 1.0);
        assert_eq!(no_warmup.at(f64::NAN), 1.0);
        let all_warmup = LrSchedule::new(1.0, 0.0, 20.0, 10.0).unwrap();
        assert_eq!(all_warmup.at(5.0), 0.25);
        assert_eq!(all_warmup.at(9.999), 1.0 * 9.999 / 20.0);
        let s = LrSchedule::new(1.0, 0.0, 2.0, 10.0).unwrap();
        assert_eq!(s.at(2.0), 1.0, "warmup ends exactly at the peak");
        assert_eq!(epoch_fraction(4, 3, 0), 4.0);
    }

    #[test]
    fn lr_schedule_rejects_bad_parameters() {
        assert_eq!(
            LrSchedule::new(-1.0, 0.0, 1.0, 2.0),
            Err(ScheduleError::LearningRate(-1.0))
        );
        assert!(matches!(
            LrSchedule::new(1.0, f64::NAN, 1.0, 2.0),
            Err(ScheduleError::LearningRate(_))
        ));
        assert_eq!(
            LrSchedule::new(1.0, 0.0, -1.0, 2.0),
            Err(ScheduleError::Warmup(-1.0))
        );
        assert_eq!(
            LrSchedule::new(1.0, 0.0, 1.0, 0.0),
            Err(ScheduleError::Epochs(0.0))
        );
    }

    #[test]
    fn momentum_matches_release_formula() {
        let total = 300 * 1251;
        for (i, m) in MOMENTUM_GOLDEN {
            let got = ema_momentum(0.99, i, total);
            assert!((got - m).abs() <= 1e-15, "i {i}: {got} vs {m}");
        }
        assert_eq!(ema_momentum(0.99, 0, total), 0.99);
        assert_eq!(ema_momentum(0.99, total, total), 1.0);
        assert_eq!(ema_momentum(0.99, 2 * total, total), 1.0);
        assert_eq!(ema_momentum(0.99, 0, 0), 1.0);
    }

    #[test]
    fn ema_update_matches_torch_bit_for_bit() {
        for (i, &want) in EMA_OUT.iter().enumerate() {
            let target = theta0(i);
            let online = grad(i, 1) + theta0(i);
            let got = ema_scalar(target, online, EMA_M);
            assert_eq!(got.to_bits(), want, "element {i}: {got}");
        }
        assert_eq!(ema_scalar(0.5, -3.0, 1.0), 0.5);
        assert_eq!(ema_scalar(0.5, -3.0, 0.0), -3.0);
    }

    #[test]
    fn weight_decay_rule_follows_timm() {
        assert!(is_decayed(&[1, 1, 768], "cls_token"));
        assert!(is_decayed(&[2304, 768], "blocks.0.attn.qkv.weight"));
        assert!(is_decayed(&[768, 3, 16, 16], "patch_embed.proj.weight"));
        assert!(is_decayed(&[2, 512, 1, 1], "decoder_pred_mask.0.weight"));
        assert!(!is_decayed(&[2304], "blocks.0.attn.qkv.bias"));
        assert!(!is_decayed(&[768], "norm.weight"));
        assert!(!is_decayed(&[2], "decoder_pred_mask.0.bias"));
        assert!(
            !is_decayed(&[4, 4], "odd.bias"),
            "named bias, whatever its rank"
        );
        assert!(!is_decayed(&[], "scalar"));
    }

    #[test]
    fn bias_corrections_are_host_f64() {
        let opt = AdamW {
            lr: 2e-3,
            ..AdamW::default()
        };
        let (step_size, bc2) = opt.bias_corrections(1);
        assert_eq!(step_size, 2e-3 / (1.0 - 0.9));
        assert_eq!(bc2, libm::sqrt(1.0 - 0.95));
        let (step_size, bc2) = opt.bias_corrections(3);
        assert_eq!(step_size, 2e-3 / (1.0 - libm::pow(0.9, 3.0)));
        assert_eq!(bc2, libm::sqrt(1.0 - libm::pow(0.95, 3.0)));
        let d = AdamW::default();
        assert_eq!(
            (d.lr, d.beta1, d.beta2, d.eps, d.weight_decay),
            (0.0, 0.9, 0.95, 1e-8, 0.05)
        );
    }

    #[test]
    #[should_panic(expected = "counted from 1")]
    fn step_zero_is_a_programming_error() {
        AdamW::default().bias_corrections(0);
    }

    /// Three steps of both groups (weight decay 0.05 and 0), every bit of theta after
    /// each step and of m and v after the last, against torch.optim.AdamW.
    #[test]
    fn adamw_matches_torch_bit_for_bit() {
        let thetas = [
            (
                true,
                [
                    ADAMW_DECAY_THETA_STEP1,
                    ADAMW_DECAY_THETA_STEP2,
                    ADAMW_DECAY_THETA_STEP3,
                ],
            ),
            (
                false,
                [
                    ADAMW_NODECAY_THETA_STEP1,
                    ADAMW_NODECAY_THETA_STEP2,
                    ADAMW_NODECAY_THETA_STEP3,
                ],
            ),
        ];
        for (decay, expected) in thetas {
            let mut state: [(f32, f32, f32); N] = core::array::from_fn(|i| (theta0(i), 0.0, 0.0));
            for (s, lr) in ADAMW_LRS.iter().enumerate() {
                let opt = AdamW {
                    lr: *lr,
                    ..AdamW::default()
                };
                for (i, (theta, m, v)) in state.iter_mut().enumerate() {
                    (*theta, *m, *v) =
                        opt.step_scalar(*theta, *m, *v, grad(i, s + 1), s as u64 + 1, decay);
                    assert_eq!(
                        theta.to_bits(),
                        expected[s][i],
                        "decay {decay}, step {}, element {i}: {theta} vs {}",
                        s + 1,
                        f32::from_bits(expected[s][i])
                    );
                }
            }
            for (i, (_, m, v)) in state.iter().enumerate() {
                assert_eq!(m.to_bits(), ADAMW_M_STEP3[i], "m, element {i}");
                assert_eq!(v.to_bits(), ADAMW_V_STEP3[i], "v, element {i}");
            }
        }
    }

    /// The f32 update stays within rounding of the textbook S6 formula in f64, for the
    /// S6 betas and for a first-moment weight >= 0.5 (the other `lerp` branch).
    #[test]
    fn adamw_follows_the_s6_formula() {
        for (beta1, beta2) in [(0.9, 0.95), (0.3, 0.999)] {
            let opt = AdamW {
                lr: 1e-3,
                beta1,
                beta2,
                ..AdamW::default()
            };
            let (mut theta, mut m, mut v) = (0.7f32, 0.0f32, 0.0f32);
            let (mut theta64, mut m64, mut v64) = (0.7f64, 0.0f64, 0.0f64);
            for t in 1..=5u64 {
                let g = 0.3 - 0.1 * t as f32;
                (theta, m, v) = opt.step_scalar(theta, m, v, g, t, true);
                let g = g as f64;
                theta64 *= 1.0 - opt.lr * opt.weight_decay;
                m64 = beta1 * m64 + (1.0 - beta1) * g;
                v64 = beta2 * v64 + (1.0 - beta2) * g * g;
                let bc1 = 1.0 - libm::pow(beta1, t as f64);
                let bc2 = 1.0 - libm::pow(beta2, t as f64);
                theta64 -= (opt.lr / bc1) * m64 / (libm::sqrt(v64) / libm::sqrt(bc2) + opt.eps);
                assert!(
                    (m as f64 - m64).abs() <= 1e-6 * m64.abs().max(1e-3),
                    "m {m} {m64}"
                );
                assert!((v as f64 - v64).abs() <= 1e-6 * v64, "v {v} {v64}");
                assert!(
                    (theta as f64 - theta64).abs() <= 1e-6,
                    "theta {theta} {theta64}"
                );
            }
        }
    }

    #[test]
    fn adamw_at_zero_lr_moves_only_the_moments() {
        let opt = AdamW {
            lr: 0.0,
            ..AdamW::default()
        };
        // lr = 0 (the first warmup step): theta stays, even when decayed
        let (theta, m, v) = opt.step_scalar(0.25, 0.0, 0.0, 1.0, 1, true);
        assert_eq!(theta, 0.25);
        assert_eq!((m, v), (0.1, 0.05f64 as f32));
    }

    // ---- golden values, printed by tests/golden/schedule_golden.py ----

    const PEAK_LR: f64 = 0.0024;
    const LR_GOLDEN: [(f64, f64); 11] = [
        (0.0, 0.0),
        (0.5, 2.9999999999999997e-05),
        (3.0135891286970424, 0.00018081534772182252),
        (39.999, 0.00239994),
        (40.0, 0.0024),
        (40.00079936051159, 0.0023999999999440255),
        (41.3, 0.0023998519589779927),
        (150.0, 0.0014871787971450692),
        (170.0, 0.0012),
        (299.99, 8.760003922247961e-12),
        (299.99920063948844, 5.5974425094973405e-14),
    ];
    const LR_MIN_GOLDEN: f64 = 0.001840774893110677;
    const MOMENTUM_GOLDEN: [(u64, f64); 6] = [
        (0, 0.99),
        (1, 0.9900000000001752),
        (12345, 0.9900266733951376),
        (187650, 0.995),
        (375299, 0.9999999999998248),
        (375300, 1.0),
    ];
    const EMA_M: f64 = 0.9900266733951376;
    const ADAMW_LRS: [f64; 3] = [0.001, 0.0024, 0.0005];
    const ADAMW_DECAY_THETA_STEP1: [u32; 37] = [
        0xbf90_1eed,
        0xbf88_1f07,
        0xbf7f_bb30,
        0xbf6f_fced,
        0xbf60_3eab,
        0xbf4f_fd56,
        0xbf3f_bc18,
        0xbf30_3f48,
        0xbf1f_bc6b,
        0xbf0f_bc9f,
        0xbf00_3fe6,
        0xbee0_8034,
        0xbebf_7a7a,
        0xbea0_80af,
        0xbe80_816f,
        0xbe3e_f766,
        0xbdfd_f06f,
        0xbd82_0aa6,
        0x3a83_124b,
        0x3d82_0a98,
        0x3dfd_f0c7,
        0x3e3e_f766,
        0x3e80_816f,
        0x3e9f_7ae2,
        0x3ebf_7a79,
        0x3ee0_8034,
        0x3eff_fcb9,
        0x3f0f_bca5,
        0x3f20_3f7d,
        0x3f30_3f48,
        0x3f3f_bc02,
        0x3f50_3edf,
        0x3f60_3eab,
        0x3f6f_bb66,
        0x3f7f_bb34,
        0x3f88_1f07,
        0x3f8f_dd63,
    ];
    const ADAMW_NODECAY_THETA_STEP1: [u32; 37] = [
        0xbf90_20c5,
        0xbf88_20c5,
        0xbf7f_be77,
        0xbf70_0000,
        0xbf60_4189,
        0xbf50_0000,
        0xbf3f_be8d,
        0xbf30_4189,
        0xbf1f_be77,
        0xbf0f_be77,
        0xbf00_4189,
        0xbee0_8312,
        0xbebf_7cef,
        0xbea0_82bb,
        0xbe80_8312,
        0xbe3e_f9db,
        0xbdfd_f3b6,
        0xbd82_0c4a,
        0x3a83_124b,
        0x3d82_0c3b,
        0x3dfd_f40e,
        0x3e3e_f9db,
        0x3e80_8312,
        0x3e9f_7cee,
        0x3ebf_7cee,
        0x3ee0_8312,
        0x3f00_0000,
        0x3f0f_be7d,
        0x3f20_4189,
        0x3f30_4189,
        0x3f3f_be77,
        0x3f50_4189,
        0x3f60_4189,
        0x3f6f_be79,
        0x3f7f_be7b,
        0x3f88_20c5,
        0x3f8f_df3b,
    ];
    const ADAMW_DECAY_THETA_STEP2: [u32; 37] = [
        0xbf8f_eefb,
        0xbf88_4954,
        0xbf7f_af84,
        0xbf6f_81f5,
        0xbf60_6af7,
        0xbf4f_f6f3,
        0xbf40_155f,
        0xbf30_3197,
        0xbf1f_63c7,
        0xbf0f_f7da,
        0xbeff_f4e0,
        0xbee1_4ecb,
        0xbebf_9d26,
        0xbe9f_acf8,
        0xbe81_12d6,
        0xbe3e_83b5,
        0xbdfa_0414,
        0xbd82_bd63,
        0x3b05_8a44,
        0x3d7e_fd52,
        0x3dff_1f01,
        0x3e3d_1d77,
        0x3e80_271b,
        0x3ea0_2412,
        0x3ebe_baab,
        0x3ee0_80f1,
        0x3f00_6e06,
        0x3f0f_8513,
        0x3f20_6bba,
        0x3f2f_daab,
        0x3f3f_be65,
        0x3f50_8c36,
        0x3f5f_f823,
        0x3f6f_f58e,
        0x3f7f_48a5,
        0x3f88_10b5,
        0x3f90_0cb0,
    ];
    const ADAMW_NODECAY_THETA_STEP2: [u32; 37] = [
        0xbf8f_f540,
        0xbf88_4f40,
        0xbf7f_baa6,
        0xbf6f_8c67,
        0xbf60_74b8,
        0xbf50_0000,
        0xbf40_1db8,
        0xbf30_3942,
        0xbf1f_6abb,
        0xbf0f_fe1c,
        0xbf00_0003,
        0xbee1_588e,
        0xbebf_a57d,
        0xbe9f_b3f2,
        0xbe81_186b,
        0xbe3e_8c08,
        0xbdfa_0f28,
        0xbd82_c306,
        0x3b05_8c48,
        0x3d7f_0896,
        0x3dff_2a15,
        0x3e3d_25ca,
        0x3e80_2cb0,
        0x3ea0_2b04,
        0x3ebe_c302,
        0x3ee0_8ab4,
        0x3f00_7398,
        0x3f0f_8b55,
        0x3f20_72b2,
        0x3f2f_e256,
        0x3f3f_c6be,
        0x3f50_9545,
        0x3f60_01e4,
        0x3f6f_fffe,
        0x3f7f_53c7,
        0x3f88_16a1,
        0x3f90_12f3,
    ];
    const ADAMW_DECAY_THETA_STEP3: [u32; 37] = [
        0xbf8f_ed6f,
        0xbf88_4516,
        0xbf7f_a4e9,
        0xbf6f_7469,
        0xbf60_7ef6,
        0xbf4f_f59f,
        0xbf40_2578,
        0xbf30_3f25,
        0xbf1f_4b90,
        0xbf0f_ff21,
        0xbeff_fc60,
        0xbee1_47ba,
        0xbebf_9522,
        0xbe9f_9e16,
        0xbe81_4169,
        0xbe3e_4b3e,
        0xbdf9_8080,
        0xbd83_5050,
        0x3b1a_5db9,
        0x3d7e_284e,
        0x3dfe_cd62,
        0x3e3d_1778,
        0x3e80_2143,
        0x3ea0_258d,
        0x3ebe_c6ee,
        0x3ee0_9175,
        0x3f00_7938,
        0x3f0f_6ebc,
        0x3f20_7c73,
        0x3f2f_c836,
        0x3f3f_ae7d,
        0x3f50_a213,
        0x3f5f_ee81,
        0x3f6f_ef74,
        0x3f7f_49d3,
        0x3f88_1189,
        0x3f90_0f3c,
    ];
    const ADAMW_NODECAY_THETA_STEP3: [u32; 37] = [
        0xbf8f_f4a0,
        0xbf88_4be1,
        0xbf7f_b1ad,
        0xbf6f_8063,
        0xbf60_8a26,
        0xbf50_0000,
        0xbf40_2f0b,
        0xbf30_47f0,
        0xbf1f_5389,
        0xbf10_064f,
        0xbf00_0494,
        0xbee1_52ee,
        0xbebf_9eb3,
        0xbe9f_a615,
        0xbe81_47d1,
        0xbe3e_54c9,
        0xbdf9_8d2d,
        0xbd83_56c9,
        0x3b1a_6098,
        0x3d7e_3533,
        0x3dfe_da18,
        0x3e3d_2101,
        0x3e80_27aa,
        0x3ea0_2d85,
        0x3ebe_d07d,
        0x3ee0_9ca7,
        0x3f00_7f9c,
        0x3f0f_75e9,
        0x3f20_8472,
        0x3f2f_d101,
        0x3f3f_b810,
        0x3f50_ac77,
        0x3f5f_f9b1,
        0x3f6f_fb6d,
        0x3f7f_5697,
        0x3f88_1854,
        0x3f90_166b,
    ];
    const ADAMW_M_STEP3: [u32; 37] = [
        0xbd6d_916b,
        0xbd6c_0831,
        0xbbda_9fbf,
        0xba99_999a,
        0x39a6_0419,
        0x0000_0000,
        0x366d_9169,
        0x3f41_47ae,
        0xbe41_6873,
        0x3bc5_a1ca,
        0x39da_1cab,
        0xb842_8f5c,
        0xb69f_be79,
        0xb5a8_72b2,
        0x3fc8_b439,
        0xbdb2_b021,
        0xbc5e_f9da,
        0x3b03_53f8,
        0xb99e_b852,
        0x37a8_3127,
        0x35f7_ced8,
        0x3da5_e354,
        0x3c6b_8523,
        0xba6d_916b,
        0xba6c_0831,
        0xb8da_9fbf,
        0xb799_999a,
        0x36a6_0419,
        0xbf78_1063,
        0x3ded_9169,
        0x3c41_47ae,
        0xbb41_6873,
        0x38c5_a1ca,
        0x36da_1cab,
        0xb542_8f5c,
        0xbe1f_be79,
        0xbd28_72b2,
    ];
    const ADAMW_V_STEP3: [u32; 37] = [
        0x408f_0e56,
        0x3e1c_0ac1,
        0x3a97_1375,
        0x37a6_6666,
        0x34f4_6f9e,
        0x0000_0000,
        0x2ebf_4bc7,
        0x40b0_8000,
        0x3e0d_9a1c,
        0x3a93_d2f2,
        0x3791_1375,
        0x3518_3333,
        0x318c_dd2f,
        0x2e96_29fd,
        0x4112_0c4a,
        0x3daa_6a7f,
        0x3abf_c396,
        0x37cd_e76d,
        0x34ec_7ae0,
        0x31a4_fef9,
        0x2e9c_3958,
        0x4118_ec08,
        0x3d8b_c7ad,
        0x3a8f_0e56,
        0x381c_0ac1,
        0x3497_1375,
        0x31a6_6666,
        0x2ef4_6f9e,
        0x40c6_e24e,
        0x3dbf_4bc7,
        0x3ab0_8000,
        0x380d_9a1c,
        0x3493_d2f2,
        0x3191_1375,
        0x2f18_3333,
        0x408c_dd2f,
        0x3d96_29fd,
    ];
    const EMA_OUT: [u32; 37] = [
        0xbf8d_7263,
        0xbf86_9058,
        0xbf80_23be,
        0xbf70_0000,
        0xbf5f_fee2,
        0xbf4f_ffff,
        0xbf40_0001,
        0xbf23_3bf0,
        0xbf23_82b7,
        0xbf10_28da,
        0xbeff_f857,
        0xbedf_fccf,
        0xbec0_003d,
        0xbe9f_ffff,
        0xbe2e_4c6a,
        0xbe4a_3672,
        0xbe00_28da,
        0xbd7f_8572,
        0xb7cc_40f4,
        0x3d7f_ff0b,
        0x3e00_000a,
        0x3e98_2b76,
        0x3e79_9df8,
        0x3ea0_28da,
        0x3ec0_16fa,
        0x3edf_fdc4,
        0x3f00_0000,
        0x3f10_0005,
        0x3f09_057e,
        0x3f2f_5c99,
        0x3f40_3310,
        0x3f4f_f1f4,
        0x3f5f_ff5d,
        0x3f70_000f,
        0x3f80_0003,
        0x3f80_572a,
        0x3f90_28da,
    ];
}
