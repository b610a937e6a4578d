#!/usr/bin/env python3
"""Golden values for crates/cim-spec/src/schedule.rs (SPEC S6, S7).

Run: python3 crates/cim-spec/tests/golden/schedule_golden.py
Needs torch (CPU is enough).  Prints Rust constants that the tests in schedule.rs pin.

- Learning rate: MAE's lr_sched.adjust_learning_rate formula, transcribed (Python floats).
- EMA momentum: the release's cosine momentum formula, transcribed (Python floats).
- AdamW: torch.optim.AdamW(foreach=False) itself, 3 steps, one group with weight decay
  0.05 and one without, on 37-element tensors (on an AVX2/AVX-512 machine PyTorch
  handles the first 32 elements in its vectorised loop and the last 5 in its scalar
  loop, so both code paths are covered).  Inputs are exact binary fractions so the Rust
  test rebuilds them without any rounding question.
- EMA update: `param_k.data * m + param_q.data * (1. - m)` on float32 tensors.
"""
import math

import numpy as np
import torch

N = 37


def mae_lr(epoch, lr, min_lr, warmup, epochs):
    if epoch < warmup:
        return lr * epoch / warmup
    return min_lr + (lr - min_lr) * 0.5 * (
        1.0 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup))
    )


def momentum(m0, it, total):
    return 1.0 - (1.0 - m0) * (math.cos(math.pi * it / total) + 1) / 2.0


def theta0(i):
    return np.float32((i - 18) / 16.0)


def grad(i, step):
    # exact in float32: small integer times a power of two; element 5 is always zero
    k = (i * 7 + step * 13) % 23 - 11
    if i == 5:
        k = 0
    return np.float32(k * 2.0 ** (-3 * (i % 7)))


def hexes(a):
    return [f"0x{int(w):08x}" for w in np.asarray(a, np.float32).view(np.uint32)]


def print_words(name, words):
    print(f"const {name}: [u32; {len(words)}] = [")
    for k in range(0, len(words), 8):
        print("    " + ", ".join(words[k : k + 8]) + ",")
    print("];")


def main():
    print(f"// torch {torch.__version__}")
    blr, beff, epochs, warmup = 1.5e-4, 4096, 300.0, 40.0
    peak = blr * beff / 256
    print(f"const PEAK_LR: f64 = {peak!r};")
    # epoch fractions: plain ones plus epoch_fraction(e, i, I) = i / I + e (as MAE writes it)
    fr = [0.0, 0.5, 17 / 1251 + 3, 39.999, 40.0, 40.0 + 1 / 1251, 41.3, 150.0, 170.0,
          299.99, 1250 / 1251 + 299]
    print("// (epoch fraction, lr): blr 1.5e-4, B_eff 4096, 300 epochs, 40 warmup, min_lr 0")
    print("const LR_GOLDEN: [(f64, f64); %d] = [" % len(fr))
    for e in fr:
        print(f"    ({e!r}, {mae_lr(e, peak, 0.0, warmup, epochs)!r}),")
    print("];")
    e = 123.4
    print(f"// min_lr 1e-6 at epoch {e}")
    print(f"const LR_MIN_GOLDEN: f64 = {mae_lr(e, peak, 1e-6, warmup, epochs)!r};")

    total = 300 * 1251
    its = [0, 1, 12345, total // 2, total - 1, total]
    print(f"// (i, momentum), m0 0.99, I = {total}")
    print("const MOMENTUM_GOLDEN: [(u64, f64); %d] = [" % len(its))
    for it in its:
        print(f"    ({it}, {momentum(0.99, it, total)!r}),")
    print("];")

    # AdamW, three steps, two groups.
    lrs = [1.0e-3, 2.4e-3, 5.0e-4]
    p_dec = torch.nn.Parameter(torch.tensor([theta0(i) for i in range(N)]))
    p_nod = torch.nn.Parameter(torch.tensor([theta0(i) for i in range(N)]))
    opt = torch.optim.AdamW(
        [{"params": [p_dec], "weight_decay": 0.05}, {"params": [p_nod], "weight_decay": 0.0}],
        lr=lrs[0], betas=(0.9, 0.95), eps=1e-8, foreach=False,
    )
    print(f"const ADAMW_LRS: [f64; 3] = {lrs!r};")
    for step, lr in enumerate(lrs, start=1):
        for grp in opt.param_groups:
            grp["lr"] = lr
        g = torch.tensor([grad(i, step) for i in range(N)])
        p_dec.grad = g.clone()
        p_nod.grad = g.clone()
        opt.step()
        print_words(f"ADAMW_DECAY_THETA_STEP{step}", hexes(p_dec.detach().numpy()))
        print_words(f"ADAMW_NODECAY_THETA_STEP{step}", hexes(p_nod.detach().numpy()))
    for tag, p in [("DECAY", p_dec), ("NODECAY", p_nod)]:
        st = opt.state[p]
        print_words(f"ADAMW_{tag}_M_STEP3", hexes(st["exp_avg"].numpy()))
        print_words(f"ADAMW_{tag}_V_STEP3", hexes(st["exp_avg_sq"].numpy()))

    # EMA update as the release writes it.
    m = momentum(0.99, 12345, total)
    tk = torch.tensor([theta0(i) for i in range(N)])
    tq = torch.tensor([grad(i, 1) + theta0(i) for i in range(N)])
    out = tk * m + tq * (1.0 - m)
    print(f"const EMA_M: f64 = {m!r};")
    print_words("EMA_OUT", hexes(out.numpy()))


if __name__ == "__main__":
    main()
