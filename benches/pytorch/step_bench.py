"""Times the full CIM training step in PyTorch (the speed baseline of the Rust benches).

    python3 benches/pytorch/step_bench.py --model vit-tiny --batch 16 --threads 2 [--mode eager|compile|sdpa-bf16]

The step is what cim-rs times: target encoder on the contexts (no grad), online encoder
on the K exemplars of every context, decoder, loss, backward, AdamW, EMA. `eager` is the
public release's way (plain f32 eager); the others are the strongest PyTorch recipes.
Prints one JSON line: {"ms_per_step": ..., "steps": ..., ...}.
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
        logits = model(ctx, ex, sdpa=sdpa)
        loss = model.loss(logits, masks)
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
    print(json.dumps({"ms_per_step": ms, "steps": args.steps, "model": args.model, "batch": b,
                      "threads": args.threads, "mode": args.mode, "torch": torch.__version__, "loss": loss}))


if __name__ == "__main__":
    main()
