//! The S5 map losses summed over maps and pixels: the per-pixel formulas of
//! [`cim_spec::loss`] evaluated in f64, with the contract's reduction
//! `loss = scale * sum_n (1/P) sum_p l(logits[n, :, p], target[n, p])`.
//!
//! Logits are `[maps, C, P]` (C = `kind.channels()`: 2 for the softmax cross-entropy,
//! channel 1 = inside; 1 otherwise), targets `[maps, P]`. A target above 0.5 counts as
//! inside (so a NaN target counts as outside: targets are labels, not values that carry
//! gradients). The balanced BCE first counts each map's inside pixels, which fixes that
//! map's class weights (they depend on the targets only).

use cim_spec::backend::MapLossArgs;
use cim_spec::loss::{
    MapLoss, balanced_weights, bce_pixel, focal_pixel, mse_pixel, softmax_ce_pixel,
};

/// Whether a target value marks an inside pixel (S2 step 6 maps hold 0 or 1).
pub fn inside(target: f64) -> bool {
    target > 0.5
}

/// Inside pixels of one map's targets.
pub fn positives(map_target: &[f64]) -> usize {
    map_target.iter().filter(|&&t| inside(t)).count()
}

/// Loss of pixel `p` of one map and its derivatives with respect to the map's logits of
/// that pixel (channel 0, channel 1; the second is 0 for single-logit kinds).
/// `map_logits` is the map's `[C, P]` block and `weights` the balanced-BCE class weights
/// (inside, outside) of the map.
fn pixel_loss(
    kind: MapLoss,
    map_logits: &[f64],
    map_target: &[f64],
    pixels: usize,
    p: usize,
    weights: (f64, f64),
) -> (f64, [f64; 2]) {
    let is_inside = inside(map_target[p]);
    let z = map_logits[p];
    match kind {
        MapLoss::SoftmaxCrossEntropy => {
            let (l, d0, d1) = softmax_ce_pixel(z, map_logits[pixels + p], is_inside);
            (l, [d0, d1])
        }
        MapLoss::BinaryCrossEntropy => {
            let (l, d) = bce_pixel(z, is_inside, 1.0);
            (l, [d, 0.0])
        }
        MapLoss::BalancedBinaryCrossEntropy => {
            let weight = if is_inside { weights.0 } else { weights.1 };
            let (l, d) = bce_pixel(z, is_inside, weight);
            (l, [d, 0.0])
        }
        MapLoss::MeanSquaredError => {
            let (l, d) = mse_pixel(z, is_inside);
            (l, [d, 0.0])
        }
        MapLoss::Focal { alpha, gamma } => {
            let (l, d) = focal_pixel(z, is_inside, alpha, gamma);
            (l, [d, 0.0])
        }
    }
}

/// The class weights of map `n`: the balanced-BCE weights from its inside count, (1, 1)
/// for the other kinds (unused there).
fn map_weights(kind: MapLoss, map_target: &[f64]) -> (f64, f64) {
    match kind {
        MapLoss::BalancedBinaryCrossEntropy => {
            balanced_weights::<f64>(positives(map_target), map_target.len())
        }
        _ => (1.0, 1.0),
    }
}

fn check(op: &str, logits: &[f64], target: &[f64], args: &MapLossArgs) {
    assert!(args.pixels > 0, "{op}: pixels");
    assert_eq!(
        logits.len(),
        args.maps * args.kind.channels() * args.pixels,
        "{op}: logits"
    );
    assert_eq!(target.len(), args.maps * args.pixels, "{op}: target");
}

/// Implements [`cim_spec::backend::MapLossOps::map_loss_forward`]: returns
/// `scale * sum_n (1/P) sum_p l_n,p` (the trait writes it to `loss[0]`). Pixels are summed
/// in order within a map, then the per-map means in map order.
pub fn map_loss_forward(logits: &[f64], target: &[f64], args: &MapLossArgs) -> f64 {
    check("map_loss_forward", logits, target, args);
    let (channels, pixels) = (args.kind.channels(), args.pixels);
    let mut total = 0.0;
    for n in 0..args.maps {
        let map_logits = &logits[n * channels * pixels..(n + 1) * channels * pixels];
        let map_target = &target[n * pixels..(n + 1) * pixels];
        let weights = map_weights(args.kind, map_target);
        let mut map_sum = 0.0;
        for p in 0..pixels {
            map_sum += pixel_loss(args.kind, map_logits, map_target, pixels, p, weights).0;
        }
        total += map_sum / pixels as f64;
    }
    f64::from(args.scale) * total
}

/// Implements [`cim_spec::backend::MapLossOps::map_loss_backward`]:
/// `dlogits[n, c, p] = (scale / P) * dl_n,p / dlogits[n, c, p]` (writes).
pub fn map_loss_backward(dlogits: &mut [f64], logits: &[f64], target: &[f64], args: &MapLossArgs) {
    check("map_loss_backward", logits, target, args);
    assert_eq!(dlogits.len(), logits.len(), "map_loss_backward: dlogits");
    let (channels, pixels) = (args.kind.channels(), args.pixels);
    let factor = f64::from(args.scale) / pixels as f64;
    for n in 0..args.maps {
        let map_logits = &logits[n * channels * pixels..(n + 1) * channels * pixels];
        let map_target = &target[n * pixels..(n + 1) * pixels];
        let weights = map_weights(args.kind, map_target);
        for p in 0..pixels {
            let (_, grad) = pixel_loss(args.kind, map_logits, map_target, pixels, p, weights);
            for c in 0..channels {
                dlogits[(n * channels + c) * pixels + p] = factor * grad[c];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{fd_check, rand_vec, rng};

    const ALL: [MapLoss; 5] = [
        MapLoss::SoftmaxCrossEntropy,
        MapLoss::BinaryCrossEntropy,
        MapLoss::BalancedBinaryCrossEntropy,
        MapLoss::MeanSquaredError,
        MapLoss::Focal {
            alpha: 0.25,
            gamma: 2.0,
        },
    ];

    fn case(kind: MapLoss, seed: u64) -> (Vec<f64>, Vec<f64>, MapLossArgs) {
        let args = MapLossArgs {
            kind,
            maps: 3,
            pixels: 7,
            scale: 0.5,
        };
        let mut r = rng(seed);
        let logits: Vec<f64> = rand_vec(&mut r, args.maps * kind.channels() * args.pixels)
            .iter()
            .map(|v| 3.0 * v)
            .collect();
        // Maps with 2, 5 and 0 inside pixels (the last one exercises a zero weight).
        let mut target = vec![0.0; args.maps * args.pixels];
        for p in [1, 4] {
            target[p] = 1.0;
        }
        for p in [0, 2, 3, 5, 6] {
            target[args.pixels + p] = 1.0;
        }
        (logits, target, args)
    }

    #[test]
    fn backward_matches_finite_differences_for_every_kind() {
        for (i, kind) in ALL.into_iter().enumerate() {
            let (logits, target, args) = case(kind, 500 + i as u64);
            let mut dlogits = vec![f64::NAN; logits.len()];
            map_loss_backward(&mut dlogits, &logits, &target, &args);
            fd_check(|l| map_loss_forward(l, &target, &args), &logits, &dlogits);
        }
        let (logits, target, args) = case(
            MapLoss::Focal {
                alpha: 0.6,
                gamma: 1.5,
            },
            510,
        );
        let mut dlogits = vec![0.0; logits.len()];
        map_loss_backward(&mut dlogits, &logits, &target, &args);
        fd_check(|l| map_loss_forward(l, &target, &args), &logits, &dlogits);
    }

    #[test]
    fn reduction_by_hand() {
        let ln2 = core::f64::consts::LN_2;
        // Zero logits: every softmax CE / BCE pixel costs ln 2, so the loss is
        // scale * maps * ln 2.
        for kind in [MapLoss::SoftmaxCrossEntropy, MapLoss::BinaryCrossEntropy] {
            let args = MapLossArgs {
                kind,
                maps: 2,
                pixels: 4,
                scale: 0.25,
            };
            let logits = vec![0.0; 2 * kind.channels() * 4];
            let target = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0];
            let loss = map_loss_forward(&logits, &target, &args);
            assert!((loss - 0.25 * 2.0 * ln2).abs() < 1e-15);
        }
        // Balanced BCE at zero logits, a map with 1 of 4 inside: inside weight 3/4,
        // outside 1/4: mean = (3/4 + 3 * 1/4) ln2 / 4 = 0.375 ln 2.
        let args = MapLossArgs {
            kind: MapLoss::BalancedBinaryCrossEntropy,
            maps: 1,
            pixels: 4,
            scale: 1.0,
        };
        let loss = map_loss_forward(&[0.0; 4], &[0.0, 0.9, 0.2, 0.5], &args);
        assert!((loss - 0.375 * ln2).abs() < 1e-15);
        // Its gradient: (sigmoid(0) - y) * weight / P.
        let mut d = [0.0; 4];
        map_loss_backward(&mut d, &[0.0; 4], &[0.0, 0.9, 0.2, 0.5], &args);
        assert_eq!(
            d,
            [
                0.5 * 0.25 / 4.0,
                -0.5 * 0.75 / 4.0,
                0.5 * 0.25 / 4.0,
                0.5 * 0.25 / 4.0
            ]
        );
    }

    #[test]
    fn nan_logit_reaches_the_loss_and_its_own_gradient() {
        for (i, kind) in ALL.into_iter().enumerate() {
            let (mut logits, target, args) = case(kind, 520 + i as u64);
            logits[args.pixels + 2] = f64::NAN;
            assert!(
                map_loss_forward(&logits, &target, &args).is_nan(),
                "{kind:?}"
            );
            let mut d = vec![0.0; logits.len()];
            map_loss_backward(&mut d, &logits, &target, &args);
            assert!(d[args.pixels + 2].is_nan(), "{kind:?}");
            let nan_count = d.iter().filter(|v| v.is_nan()).count();
            // The pixel's own derivatives only (both channels for the softmax CE).
            assert_eq!(nan_count, kind.channels(), "{kind:?}");
        }
    }
}
