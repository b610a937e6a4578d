//! Map-loss checks (S5), forward and backward, for every [`cim_spec::loss::MapLoss`]
//! kind. Targets mix random maps with, optionally, an all-outside and an all-inside map
//! (the balanced loss's degenerate class shares), and may use 0.2 / 0.8 for outside /
//! inside, which the contract's "above 0.5 counts as inside" rule makes equivalent.

use cim_spec::backend::{Backend, MapLossArgs, Role};
use cim_spec::ops;
use cim_spec::tolerance::Op;

use crate::cases::MapLossCase;
use crate::harness::{Gen, Program, Setup, Slot, whole, whole_mut};
use crate::mismatch::Mismatch;

/// Runs the loss forward over `[loss, logits, target]` or backward over
/// `[dlogits, logits, target]`.
pub(crate) struct RunMapLoss {
    pub forward: bool,
    pub args: MapLossArgs,
}

impl Program for RunMapLoss {
    fn run<B: Backend>(&self, be: &B, bufs: &mut [B::Buffer]) -> Result<(), B::Error> {
        let [out, logits, target] = bufs else {
            unreachable!("3 slots")
        };
        let (out, logits, target) = (whole_mut(be, out), whole(be, logits), whole(be, target));
        if self.forward {
            ops::map_loss_forward(be, out, logits, target, &self.args)
        } else {
            ops::map_loss_backward(be, out, logits, target, &self.args)
        }
    }
}

/// Logits `logit_scale * N(0, 1)` and 0/1 targets (0.2/0.8 when soft), with one
/// uncertain pixel per map: pixel 0 gets logits in [-0.5, 0.5] and, unless the map is an
/// all-one-class edge map, the target of the map's minority class (the larger weight of
/// the balanced loss). Without it a small map whose pixels are all confidently right has a
/// loss and gradients of 1e-10 and less, and the normwise rule would compare rounding
/// noise: measured, cim-spec's own per-pixel formulas evaluated in f32 then miss the f32
/// tolerance by orders of magnitude (`lse - l1`, `p1 - 1`, `1 - s` all cancel).
pub(crate) fn map_loss_setup(case: &MapLossCase, forward: bool) -> (Setup, RunMapLoss) {
    let args = case.args();
    let (maps, pixels, channels) = (case.maps, case.pixels, args.kind.channels());
    let logits_len = maps * channels * pixels;
    let mut data = Gen::new(case.seed);
    let s = f64::from(case.logit_scale);
    let logits = data.with(logits_len, |r, i| {
        if i % pixels == 0 {
            r.uniform(-0.5, 0.5)
        } else {
            s * r.normal()
        }
    });
    let mut inside_mask: Vec<bool> = data
        .with(maps * pixels, |r, i| {
            let inside = match i / pixels {
                0 if case.edge_maps => false,
                1 if case.edge_maps => true,
                _ => r.bernoulli(case.density),
            };
            f64::from(u8::from(inside))
        })
        .into_iter()
        .map(|v| v > 0.5)
        .collect();
    for map in inside_mask.chunks_mut(pixels) {
        let positives = map[1..].iter().filter(|&&i| i).count();
        let negatives = pixels - 1 - positives;
        let one_class = (positives == 0 || negatives == 0) && pixels > 1;
        if !(one_class && case.edge_maps) {
            map[0] = positives < negatives;
        }
    }
    let (inside, outside) = if case.soft_targets {
        (0.8, 0.2)
    } else {
        (1.0, 0.0)
    };
    let target = inside_mask
        .iter()
        .map(|&i| if i { inside } else { outside })
        .collect();
    let (op, out) = if forward {
        (Op::MapLossForward, Slot::written("loss", Role::State, 1))
    } else {
        (
            Op::MapLossBackward,
            Slot::written("dlogits", Role::Activation, logits_len),
        )
    };
    let slots = vec![
        out,
        Slot::input("logits", Role::Activation, logits),
        Slot::input("target", Role::Activation, target),
    ];
    (Setup::new(op, case, slots), RunMapLoss { forward, args })
}

/// [`cim_spec::backend::MapLossOps::map_loss_forward`]: `loss` starts as NaN.
pub fn map_loss_forward_case<B: Backend>(backend: &B, case: &MapLossCase) -> Result<(), Mismatch> {
    let (setup, program) = map_loss_setup(case, true);
    setup.compare(backend, &program)
}

/// [`cim_spec::backend::MapLossOps::map_loss_backward`]: `dlogits` starts as NaN.
pub fn map_loss_backward_case<B: Backend>(backend: &B, case: &MapLossCase) -> Result<(), Mismatch> {
    let (setup, program) = map_loss_setup(case, false);
    setup.compare(backend, &program)
}
