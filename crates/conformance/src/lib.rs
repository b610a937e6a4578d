//! Conformance of a CIM backend to the contract of `cim_spec::backend`, measured against
//! the f64 oracle `cim-reference` (DESIGN.md, "Conformance").
//!
//! For every op direction there is a generic check, `checks::<op>_case(backend, case)`
//! (all re-exported at the root), which generates the op's inputs from the case's seed,
//! runs the op through the checked wrappers of `cim_spec::ops` on the backend and on
//! [`cim_reference::Reference`], and compares each output under the tolerance table
//! (`cim_spec::tolerance`). Outputs an op writes start as NaN and outputs it accumulates
//! into start nonzero, so both halves of the contract's write/accumulate rule are tested.
//! [`strategies`] generates cases for proptest; [`determinism`] reruns ops and demands
//! identical bits; [`nan_propagation`] checks the NaN rule.
//!
//! A backend crate gets the whole suite, one `#[test]` per property, with one line in a
//! test file:
//!
//! ```ignore
//! conformance::suite!(my_backend::MyBackend, my_backend::MyBackend::new());
//! ```
//!
//! `CIM_CONFORMANCE_CASES` sets the cases per property (default [`DEFAULT_CASES`]);
//! `PROPTEST_RNG_SEED` fixes proptest's seed. A failure prints the property, the minimal
//! case proptest shrank to, and the [`Mismatch`]: op, output tensor, element, both values
//! and the error in units of the tolerance.
#![deny(missing_docs)]

#[cfg(feature = "candle")]
pub mod candle_check;
pub mod cases;
pub mod checks;
mod harness;
mod mismatch;
mod property;
pub mod step;
pub mod strategies;

pub use checks::*;
pub use mismatch::{Mismatch, Problem};
pub use property::{DEFAULT_CASES, Property, RunConfig, properties, run_property};
pub use proptest;
pub use step::training_steps;

#[doc(hidden)]
pub use cim_spec as __cim_spec;

/// The property list, in one place: `name => strategy, check;` for every op direction.
/// Calls back `$crate::$callback!` with `{ extra tokens }` and the list, so the `suite!`
/// tests and [`properties`] cannot drift apart.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_properties {
    ($callback:ident { $($extra:tt)* }) => {
        $crate::$callback! {
            { $($extra)* }
            gemm => $crate::strategies::gemm_cases(), $crate::checks::gemm_case;
            linear_forward => $crate::strategies::linear_cases(),
                $crate::checks::linear_forward_case;
            linear_backward_params => $crate::strategies::linear_cases(),
                $crate::checks::linear_backward_params_case;
            add_assign => $crate::strategies::vector_cases(), $crate::checks::add_assign_case;
            scale => $crate::strategies::scale_cases(), $crate::checks::scale_case;
            add_broadcast => $crate::strategies::broadcast_cases(),
                $crate::checks::add_broadcast_case;
            sum_broadcast => $crate::strategies::broadcast_cases(),
                $crate::checks::sum_broadcast_case;
            repeat_forward => $crate::strategies::repeat_cases(),
                $crate::checks::repeat_forward_case;
            repeat_backward => $crate::strategies::repeat_cases(),
                $crate::checks::repeat_backward_case;
            gelu_forward => $crate::strategies::vector_cases(), $crate::checks::gelu_forward_case;
            gelu_backward => $crate::strategies::vector_cases(),
                $crate::checks::gelu_backward_case;
            layernorm_forward => $crate::strategies::layernorm_cases(),
                $crate::checks::layernorm_forward_case;
            layernorm_backward => $crate::strategies::layernorm_cases(),
                $crate::checks::layernorm_backward_case;
            self_attention_forward => $crate::strategies::self_attention_cases(),
                $crate::checks::self_attention_forward_case;
            self_attention_backward => $crate::strategies::self_attention_cases(),
                $crate::checks::self_attention_backward_case;
            cross_attention_forward => $crate::strategies::cross_attention_cases(),
                $crate::checks::cross_attention_forward_case;
            cross_attention_backward => $crate::strategies::cross_attention_cases(),
                $crate::checks::cross_attention_backward_case;
            patchify => $crate::strategies::patchify_cases(), $crate::checks::patchify_case;
            prepend_cls_forward => $crate::strategies::prepend_cls_cases(),
                $crate::checks::prepend_cls_forward_case;
            prepend_cls_backward => $crate::strategies::prepend_cls_cases(),
                $crate::checks::prepend_cls_backward_case;
            mean_pool_forward => $crate::strategies::mean_pool_cases(),
                $crate::checks::mean_pool_forward_case;
            mean_pool_backward => $crate::strategies::mean_pool_cases(),
                $crate::checks::mean_pool_backward_case;
            upsample_forward => $crate::strategies::upsample_cases(),
                $crate::checks::upsample_forward_case;
            upsample_backward => $crate::strategies::upsample_cases(),
                $crate::checks::upsample_backward_case;
            depthwise_xcorr_forward => $crate::strategies::xcorr_cases(),
                $crate::checks::depthwise_xcorr_forward_case;
            depthwise_xcorr_backward => $crate::strategies::xcorr_cases(),
                $crate::checks::depthwise_xcorr_backward_case;
            conv_transpose_forward => $crate::strategies::conv_transpose_cases(),
                $crate::checks::conv_transpose_forward_case;
            conv_transpose_backward => $crate::strategies::conv_transpose_cases(),
                $crate::checks::conv_transpose_backward_case;
            map_loss_forward_softmax_ce => $crate::strategies::map_loss_cases(
                $crate::__cim_spec::loss::MapLoss::SoftmaxCrossEntropy),
                $crate::checks::map_loss_forward_case;
            map_loss_backward_softmax_ce => $crate::strategies::map_loss_cases(
                $crate::__cim_spec::loss::MapLoss::SoftmaxCrossEntropy),
                $crate::checks::map_loss_backward_case;
            map_loss_forward_bce => $crate::strategies::map_loss_cases(
                $crate::__cim_spec::loss::MapLoss::BinaryCrossEntropy),
                $crate::checks::map_loss_forward_case;
            map_loss_backward_bce => $crate::strategies::map_loss_cases(
                $crate::__cim_spec::loss::MapLoss::BinaryCrossEntropy),
                $crate::checks::map_loss_backward_case;
            map_loss_forward_balanced_bce => $crate::strategies::map_loss_cases(
                $crate::__cim_spec::loss::MapLoss::BalancedBinaryCrossEntropy),
                $crate::checks::map_loss_forward_case;
            map_loss_backward_balanced_bce => $crate::strategies::map_loss_cases(
                $crate::__cim_spec::loss::MapLoss::BalancedBinaryCrossEntropy),
                $crate::checks::map_loss_backward_case;
            map_loss_forward_mse => $crate::strategies::map_loss_cases(
                $crate::__cim_spec::loss::MapLoss::MeanSquaredError),
                $crate::checks::map_loss_forward_case;
            map_loss_backward_mse => $crate::strategies::map_loss_cases(
                $crate::__cim_spec::loss::MapLoss::MeanSquaredError),
                $crate::checks::map_loss_backward_case;
            map_loss_forward_focal => $crate::strategies::focal_loss_cases(),
                $crate::checks::map_loss_forward_case;
            map_loss_backward_focal => $crate::strategies::focal_loss_cases(),
                $crate::checks::map_loss_backward_case;
            adamw => $crate::strategies::adamw_cases(), $crate::checks::adamw_case;
            ema => $crate::strategies::ema_cases(), $crate::checks::ema_case;
            sum_squares => $crate::strategies::vector_cases(), $crate::checks::sum_squares_case;
            clip_by_norm => $crate::strategies::clip_cases(), $crate::checks::clip_by_norm_case;
        }
    };
}

/// [`properties`]' body: a `Vec<Property<B>>` from the list.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_registry {
    ({} $($name:ident => $strategy:expr, $check:path;)*) => {
        vec![$(
            $crate::Property {
                name: stringify!($name),
                run: |backend, config| {
                    $crate::run_property(backend, stringify!($name), config, $strategy, $check)
                },
            },
        )*]
    };
}

/// `suite!`'s body: one `#[test]` per property of the list.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_suite_tests {
    ({ $backend:ty, $make:expr } $($name:ident => $strategy:expr, $check:path;)*) => {
        $(
            #[test]
            fn $name() {
                let backend: $backend = $make;
                let config = $crate::RunConfig::from_env();
                let name = stringify!($name);
                if let Err(message) = $crate::run_property(&backend, name, &config, $strategy, $check)
                {
                    panic!("{message}");
                }
            }
        )*
    };
}

/// Expands to the whole conformance suite for a backend: one `#[test]` per op direction
/// (each a proptest property over its strategy; every map-loss kind separately), plus
/// `determinism`, `nan_propagation` and `training_steps` (whole CIM steps). `$make` is evaluated once per test.
///
/// ```ignore
/// conformance::suite!(cim_cpu::Cpu, cim_cpu::Cpu::new());
/// ```
#[macro_export]
macro_rules! suite {
    ($backend:ty, $make:expr $(,)?) => {
        $crate::__conformance_properties!(__conformance_suite_tests { $backend, $make });

        #[test]
        fn determinism() {
            let backend: $backend = $make;
            if let Err(mismatch) = $crate::determinism(&backend) {
                panic!("{mismatch}");
            }
        }

        #[test]
        fn nan_propagation() {
            let backend: $backend = $make;
            if let Err(mismatch) = $crate::nan_propagation(&backend) {
                panic!("{mismatch}");
            }
        }

        #[test]
        fn training_steps() {
            let backend: $backend = $make;
            if let Err(mismatch) = $crate::training_steps(&backend) {
                panic!("{mismatch}");
            }
        }
    };
}
