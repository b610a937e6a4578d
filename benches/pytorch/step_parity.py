"""Checks a cim-rs step dump against the same step rebuilt in PyTorch + timm.

    python3 benches/pytorch/step_parity.py DIR

DIR is what `cim-cpu step-dump --out DIR` wrote. The script loads params.safetensors
into cim_torch.Cim with a strict load_state_dict (so names and shapes must be exactly
S12's), runs the forward pass on inputs.safetensors in float64 (the oracle) and in
float32 (what a PyTorch user runs), backpropagates, takes one AdamW step and one EMA
update, and compares loss, logits, every gradient and every parameter after the step
with the dump. Differences are normwise: max|ours - theirs| / max|theirs| per tensor.
Thresholds are the f32 rows of cim-spec's tolerance table (StepLoss 1e-4, StepGradients
1e-3, StepParameters 1e-5), applied against the float64 run; the exit status is non-zero
when one is exceeded. The AdamW and EMA step is rebuilt from the dump's own gradients
(see run_step), so "after" checks the optimizer and the target update themselves. The
float32 run is printed for information.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cim_torch import Cim  # noqa: E402

LIMITS = {"loss": 1e-4, "logits": 1e-4, "grad": 1e-3, "after": 1e-5}


def normwise(ours, theirs):
    ours, theirs = ours.double(), theirs.double()
    scale = theirs.abs().max().item()
    err = (ours - theirs).abs().max().item()
    return err / scale if scale > 0 else err


def run_step(dump, step, dtype, ours_grads):
    c = step["config"]
    model = Cim(c).to(dtype)
    params = {k: v.to(dtype) for k, v in load_file(dump / "params.safetensors").items()}
    missing, unexpected = model.load_state_dict(params, strict=False)
    # Every model tensor must come from the dump, and the dump must hold nothing else.
    assert not missing and not unexpected, (missing, unexpected)
    inputs = {k: v.to(dtype) for k, v in load_file(dump / "inputs.safetensors").items()}
    logits = model(inputs["context"], inputs["exemplars"])
    loss = model.loss(logits, inputs["masks"])
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    # The optimizer step is checked on OUR gradients: gradients are compared above, and
    # AdamW's first step, about lr * g / (|g| + eps), is discontinuous at g = 0, where
    # some gradients sit exactly (the attention key biases: softmax ignores a constant
    # added to every score), so rounding noise alone would decide those updates.
    for n, p in model.named_parameters():
        if p.grad is not None:
            p.grad.copy_(ours_grads[n].to(dtype))
    opt = torch.optim.AdamW(
        model.param_groups(step["weight_decay"]),
        lr=step["lr"],
        betas=tuple(step["betas"]),
        eps=step["eps"],
        foreach=False,
    )
    opt.step()
    model.ema(step["momentum"])
    after = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return loss.detach(), logits.detach(), grads, after


def main():
    dump = Path(sys.argv[1])
    step = json.loads((dump / "step.json").read_text())
    outputs = load_file(dump / "outputs.safetensors")
    after_ours = load_file(dump / "params_after.safetensors")
    ours_grads = {k[len("grad."):]: v for k, v in outputs.items() if k.startswith("grad.")}
    worst = {}
    failed = False
    for dtype in (torch.float64, torch.float32):
        loss, logits, grads, after = run_step(dump, step, dtype, ours_grads)
        assert set(grads) == set(ours_grads), set(grads) ^ set(ours_grads)
        rows = {
            "loss": normwise(outputs["loss"], loss),
            "logits": normwise(outputs["logits"], logits),
            "grad": max(normwise(ours_grads[n], g) for n, g in grads.items()),
            "after": max(normwise(after_ours[n], p) for n, p in after.items()),
        }
        worst_grad = max(grads, key=lambda n: normwise(ours_grads[n], grads[n]))
        worst_after = max(after, key=lambda n: normwise(after_ours[n], after[n]))
        name = str(dtype).replace("torch.", "")
        worst[name] = rows
        print(f"against PyTorch {name}: loss {loss.item():.9g} (ours {outputs['loss'].item():.9g})")
        for key, value in rows.items():
            ok = value <= LIMITS[key]
            failed |= dtype == torch.float64 and not ok
            print(f"  {key:7s} largest normwise relative difference {value:.3e}  (limit {LIMITS[key]:.0e}) {'ok' if ok else 'EXCEEDED'}")
        print(f"  worst gradient: {worst_grad}; worst parameter after the step: {worst_after}")
    print(json.dumps({"model": step["model"], "backend": step["backend"], "worst": worst}))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
