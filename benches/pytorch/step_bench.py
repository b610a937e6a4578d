"""Times the full CIM training step in PyTorch (the speed baseline of the Rust benches).

    python3 benches/pytorch/step_bench.py --model vit-tiny --batch 16 --threads 2 [--mode eager|sdpa|compile] [--amp bf16] [--device cuda]

The step is what cim-rs times: target encoder on the contexts (no grad), online encoder
on the K exemplars of every context, decoder, loss, backward, AdamW, EMA. `eager` is the
public release's way (plain f32 eager); `compile` with `--amp bf16` (autocast, SDPA,
torch.compile) is the strongest PyTorch recipe. Prints one JSON line: {"ms_per_step": ...,
"images_per_s": ..., ...}; with --flops-per-image (from `cim-cuda bench --json`, so both
sides count the same FLOPs) and --peak-tflops also "tflops" and "mfu".
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cim_torch import Cim  # noqa: E402

PRESETS = {
    "micro": dict(dim=32, depth=2, heads=2, patch=8, pos_embed_size=48, decoder_width=24, decoder_heads=2,
                  context_size=32, exemplar_size=16, exemplars=2),
    "vit-tiny": dict(dim=192, depth=12, heads=3),
    "vit-small": dict(dim=384, depth=12, heads=6),
    "vit-base": dict(dim=768, depth=12, heads=12),
}


def config(name):
    c = dict(dim=768, depth=12, heads=12, patch=16, mlp_ratio=4, pos_embed_size=224, frozen_patch_embed=True,
             decoder_width=512, decoder_depth=1, decoder_heads=16, context_size=160, exemplar_size=64,
             exemplars=6, loss="softmax_ce")
    c.update(PRESETS[name])
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit-tiny", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--mode", default="eager", choices=["eager", "sdpa", "compile"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default="none", choices=["none", "bf16"])
    ap.add_argument("--flops-per-image", type=float, default=None)
    ap.add_argument("--peak-tflops", type=float, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c = config(args.model)
    dev = torch.device(args.device)
    model = Cim(c).to(dev)
    b, k, m, n = args.batch, c["exemplars"], c["context_size"], c["exemplar_size"]
    ctx = torch.randn(b, 3, m, m, device=dev)
    ex = torch.randn(b, k, 3, n, n, device=dev)
    masks = (torch.rand(b, k, m, m, device=dev) > 0.7).float()
    opt = torch.optim.AdamW(model.param_groups(0.05), lr=1e-4, betas=(0.9, 0.95), eps=1e-8)
    sdpa = args.mode != "eager"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.amp == "bf16"):
            logits = model(ctx, ex, sdpa=sdpa)
            loss = model.loss(logits.float(), masks)
        loss.backward()
        opt.step()
        model.ema(0.99)
        return loss.detach()

    run = torch.compile(step) if args.mode == "compile" else step
    for _ in range(args.warmup):
        run()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = run()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    loss = loss.item()
    ms = (time.perf_counter() - t0) / args.steps * 1e3
    report = {"ms_per_step": ms, "images_per_s": b / ms * 1e3, "steps": args.steps, "model": args.model,
              "batch": b, "threads": args.threads, "mode": args.mode, "amp": args.amp, "device": str(dev),
              "torch": torch.__version__, "loss": loss}
    if dev.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(dev)
    if args.flops_per_image:
        report["tflops"] = args.flops_per_image * report["images_per_s"] / 1e12
        if args.peak_tflops:
            report["mfu"] = report["tflops"] / args.peak_tflops
    print(json.dumps(report))


if __name__ == "__main__":
    main()
