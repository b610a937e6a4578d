#!/usr/bin/env python3
"""Golden values for crates/cim-spec/src/pos_embed.rs (SPEC S3, S4).

Run: python3 crates/cim-spec/tests/golden/pos_embed_golden.py
Needs numpy and torch (CPU is enough).  Prints Rust constants that the tests in
pos_embed.rs pin.  Three independent sources are used:

1. MAE's 2-D sin-cos embedding, transcribed from its formula with numpy (meshgrid(w, h),
   "emb_h" built from grid[0]), checked here against the SPEC wording (first half of the
   channels = column x, second half = row y).
2. torch.nn.functional.interpolate(scale_factor=(g + 0.1)/g0, mode='bicubic',
   align_corners=False), the operation SPEC S3 names.
3. A plain float32 transcription of PyTorch's CPU bicubic source order (no fused
   multiply-adds), which is what the Rust code computes; it must equal torch to within the
   tolerance and the Rust code bit for bit.
"""
import math

import numpy as np
import torch

F32 = np.float32


def mae_sincos_2d(dim, grid):
    """MAE get_2d_sincos_pos_embed(dim, grid, cls_token=True), from its formula."""
    gh = np.arange(grid, dtype=np.float32)
    gw = np.arange(grid, dtype=np.float32)
    mesh = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, 1, grid, grid)

    def one_d(d, pos):
        omega = np.arange(d // 2, dtype=np.float64) / (d / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_d(dim // 2, mesh[0]), one_d(dim // 2, mesh[1])], axis=1)
    emb = np.concatenate([np.zeros([1, dim]), emb], axis=0)
    return emb.astype(np.float32)  # MAE: torch.from_numpy(...).float()


def spec_sincos_2d(dim, grid):
    """The SPEC S3 wording: first half = column x, second half = row y."""
    q = dim // 4
    omega = [1.0 / 10000 ** (k / q) for k in range(q)]
    out = np.zeros((1 + grid * grid, dim), np.float64)
    for y in range(grid):
        for x in range(grid):
            row = []
            for pos in (x, y):
                row += [math.sin(pos * w) for w in omega] + [math.cos(pos * w) for w in omega]
            out[1 + y * grid + x] = row
    return out.astype(np.float32)


def test_input(dim, g0):
    """Unit-variance input without an RNG: patch token i, channel c -> sin(1.3 i + 0.7 c);
    the class row is cos(0.3 c) and must come through unchanged."""
    x = np.zeros((1 + g0 * g0, dim), np.float32)
    for c in range(dim):
        x[0, c] = math.cos(0.3 * c)
        for i in range(g0 * g0):
            x[1 + i, c] = math.sin(1.3 * i + 0.7 * c)
    return x


def torch_resize(src, dim, g0, g):
    grid = torch.from_numpy(src[1:].copy()).reshape(1, g0, g0, dim).permute(0, 3, 1, 2)
    out = torch.nn.functional.interpolate(
        grid, scale_factor=(g + 0.1) / g0, mode="bicubic", align_corners=False
    )
    assert out.shape[-1] == g and out.shape[-2] == g, out.shape
    out = out.permute(0, 2, 3, 1).reshape(g * g, dim).numpy()
    return np.concatenate([src[:1], out], axis=0)


def cubic1(x, a):
    return ((a + F32(2)) * x - (a + F32(3))) * x * x + F32(1)


def cubic2(x, a):
    return ((a * x - F32(5) * a) * x + F32(8) * a) * x - F32(4) * a


def axis_taps(g0, g):
    """Per output index: 4 clamped source indices and 4 float32 weights."""
    scale = F32(1.0 / ((g + 0.1) / g0))
    a = F32(-0.75)
    taps = []
    for t in range(g):
        s = F32(scale * (F32(t) + F32(0.5)) - F32(0.5))
        i0 = min(int(np.floor(s)), g0 - 1)
        lam = F32(min(max(s - F32(i0), F32(0)), F32(1)))
        w = [cubic2(F32(lam + F32(1)), a), cubic1(lam, a)]
        x2 = F32(F32(1) - lam)
        w += [cubic1(x2, a), cubic2(F32(x2 + F32(1)), a)]
        idx = [min(max(i0 - 1 + j, 0), g0 - 1) for j in range(4)]
        taps.append((idx, [F32(v) for v in w]))
    return taps


def plain_resize(src, dim, g0, g):
    taps = axis_taps(g0, g)
    out = np.zeros((1 + g * g, dim), np.float32)
    out[0] = src[0]
    for ty in range(g):
        iy, wy = taps[ty]
        for tx in range(g):
            ix, wx = taps[tx]
            for c in range(dim):
                acc = None
                for a in range(4):
                    inner = None
                    for b in range(4):
                        p = F32(src[1 + iy[a] * g0 + ix[b], c] * wx[b])
                        inner = p if inner is None else F32(inner + p)
                    p = F32(inner * wy[a])
                    acc = p if acc is None else F32(acc + p)
                out[1 + ty * g + tx, c] = acc
    return out


def checksum(a):
    """Sum and sum of squares in f64, sequentially in row-major order (as the Rust test)."""
    s = 0.0
    s2 = 0.0
    for v in a.reshape(-1):
        v = float(v)
        s += v
        s2 += v * v
    return s, s2


def f32lit(v):
    return repr(float(np.float32(v))) if np.isfinite(v) else "nan"


def short(v):
    return np.format_float_positional(np.float32(v), unique=True, trim="-") + "_f32"


def main():
    print(f"// torch {torch.__version__}, numpy {np.__version__}")
    # 1. sin-cos layout: MAE == SPEC wording.
    for dim, grid in [(16, 4), (16, 14), (768, 14), (512, 10)]:
        mae = mae_sincos_2d(dim, grid)
        spec = spec_sincos_2d(dim, grid)
        ulps = np.abs(mae.view(np.int32).astype(np.int64) - spec.view(np.int32)).max()
        print(f"// sincos dim={dim} grid={grid}: MAE vs SPEC wording max ulp diff {ulps}")
        assert ulps <= 1
    e = mae_sincos_2d(16, 4)
    print("// sincos_2d(16, 4): rows of tokens 0, 1, 2, 6, 16 (MAE transcription, numpy)")
    print("const SINCOS_16_4_ROWS: [(usize, [f32; 16]); 5] = [")
    for tok in [0, 1, 2, 6, 16]:
        print(f"    ({tok}, [{', '.join(short(v) for v in e[tok])}]),")
    print("];")
    for dim, grid in [(768, 14), (512, 10)]:
        s, s2 = checksum(mae_sincos_2d(dim, grid))
        print(f"// sincos_2d({dim}, {grid}) checksum (sum, sum of squares)")
        print(f"const SINCOS_{dim}_{grid}_SUM: (f64, f64) = ({s!r}, {s2!r});")

    # 2./3. bicubic resize.
    cases = [(16, 14, 10, "input"), (16, 14, 14, "input"), (8, 4, 7, "input"),
             (16, 14, 10, "sincos")]
    picks = {
        (16, 14, 10): [(1, 0), (1, 5), (2, 3), (11, 7), (37, 15), (55, 8), (100, 2), (100, 15)],
        (16, 14, 14): [(1, 0), (2, 3), (15, 1), (100, 9), (150, 4), (196, 15), (196, 0), (97, 12)],
        (8, 4, 7): [(1, 0), (1, 7), (4, 2), (8, 3), (25, 5), (40, 6), (49, 0), (49, 7)],
    }
    for dim, g0, g, kind in cases:
        src = test_input(dim, g0) if kind == "input" else mae_sincos_2d(dim, g0)
        ref = torch_resize(src, dim, g0, g)
        mine = plain_resize(src, dim, g0, g)
        diff = np.abs(ref.astype(np.float64) - mine).max()
        exact = int((ref == mine).sum())
        name = f"{kind.upper()}_{dim}_{g0}_{g}"
        print(f"// resize {kind} dim={dim} g0={g0} g={g}: torch vs plain-f32 max abs diff "
              f"{diff:.3e}, {exact}/{ref.size} bit-equal")
        if g == g0:
            print(f"//   (g == g0: torch output differs from its input by up to "
                  f"{np.abs(ref - src).max():.3e}, so it is not the identity)")
        sel = picks[(dim, g0, g)]
        print(f"const TORCH_{name}: [(usize, usize, f32); {len(sel)}] = [")
        for tok, c in sel:
            print(f"    ({tok}, {c}, {short(ref[tok, c])}),")
        print("];")
        print(f"const PLAIN_{name}: [(usize, usize, f32); {len(sel)}] = [")
        for tok, c in sel:
            print(f"    ({tok}, {c}, {short(mine[tok, c])}),")
        print("];")
        ts, ts2 = checksum(ref)
        ps, ps2 = checksum(mine)
        print(f"const TORCH_{name}_SUM: (f64, f64) = ({ts!r}, {ts2!r});")
        print(f"const PLAIN_{name}_SUM: (f64, f64) = ({ps!r}, {ps2!r});")


if __name__ == "__main__":
    main()
