#!/usr/bin/env python3
"""Golden values for crates/cim-spec/src/geometry.rs, computed independently.

A plain transcription of CimRng (xoshiro256++ seeded by SplitMix64, see rng.rs) and of
the formulas in SPEC S2 (items 2, 4 and 6). Rerun with `python3 geometry_golden.py`;
its output is pasted into the `golden` tests of geometry.rs.
"""
import math

M64 = (1 << 64) - 1


class Rng:
    def __init__(self, seed):
        st = seed & M64
        s = []
        for _ in range(4):
            st = (st + 0x9E3779B97F4A7C15) & M64
            z = st
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            s.append(z ^ (z >> 31))
        self.s = s

    def word(self):
        s = self.s
        rotl = lambda x, k: ((x << k) | (x >> (64 - k))) & M64
        result = (rotl((s[0] + s[3]) & M64, 23) + s[0]) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result

    def unit(self):
        return (self.word() >> 11) * 2.0 ** -53

    def uniform(self, lo, hi):
        return lo + (hi - lo) * self.unit()

    def log_uniform(self, lo, hi):
        return math.exp(self.uniform(math.log(lo), math.log(hi)))

    def bernoulli(self, p):
        return self.unit() < p

    def below(self, n):
        zone = M64 - (M64 % n)
        while True:
            x = self.word()
            if x < zone:
                return x % n


def search_view(rng, W, H, min_scale, ratio):
    """torchvision RandomResizedCrop.get_params + flip; Python's round ties to even."""
    area = W * H
    box = None
    for _ in range(10):
        target_area = area * rng.uniform(min_scale, 1.0)
        aspect = rng.log_uniform(ratio[0], ratio[1])
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= W and 0 < h <= H:
            y0 = rng.below(H - h + 1)
            x0 = rng.below(W - w + 1)
            box = (x0, y0, w, h)
            break
    if box is None:
        in_ratio = W / H
        if in_ratio < min(ratio):
            w = W
            h = round(w / min(ratio))
        elif in_ratio > max(ratio):
            h = H
            w = round(h * max(ratio))
        else:
            w, h = W, H
        box = ((W - w) // 2, (H - h) // 2, w, h)
    flip = rng.bernoulli(0.5)
    return box + (flip,)


def exemplar(rng, S, scale=(0.05, 0.48), ratio=(1 / 3, 3.0), max_rot=45.0):
    for _ in range(10):
        r0 = rng.uniform(*scale)
        r1 = rng.log_uniform(*ratio)
        th = rng.uniform(-max_rot, max_rot)
        w = S * math.sqrt(r0 / r1)
        h = S * math.sqrt(r0 * r1)
        t = th * (math.pi / 180)
        ex = (w * abs(math.cos(t)) + h * abs(math.sin(t))) / 2
        ey = (w * abs(math.sin(t)) + h * abs(math.cos(t))) / 2
        if 2 * ex <= S and 2 * ey <= S:
            break
    else:
        f = min(S / (2 * ex), S / (2 * ey))
        w *= f
        h *= f
        ex = (w * abs(math.cos(t)) + h * abs(math.sin(t))) / 2
        ey = (w * abs(math.sin(t)) + h * abs(math.cos(t))) / 2
    ex, ey = min(ex, S / 2), min(ey, S / 2)
    cx = rng.uniform(ex, S - ex)
    cy = rng.uniform(ey, S - ey)
    return (cx, cy, w, h, th)


def gt_map(rect, S, m):
    cx, cy, w, h, th = rect
    t = th * (math.pi / 180)
    c, s = math.cos(t), math.sin(t)
    out = [[0] * m for _ in range(m)]
    for i in range(m):
        py = (i + 0.5) * S / m
        for j in range(m):
            px = (j + 0.5) * S / m
            dx, dy = px - cx, py - cy
            a = c * dx - s * dy  # along u = (cos, -sin)
            b = s * dx + c * dy  # along v = (sin, cos)
            out[i][j] = int(abs(a) <= w / 2 and abs(b) <= h / 2)
    return out


def main():
    for seed in (1, 2):
        print(f"search_view seed {seed} 500x375:", search_view(Rng(seed), 500, 375, 0.5, (3 / 4, 4 / 3)))
    print("search_view fallback seed 5 10x1000 min_scale 1:",
          search_view(Rng(5), 10, 1000, 1.0, (3 / 4, 4 / 3)))
    for seed in (1, 2):
        print(f"exemplar seed {seed} S=224:", "(%r, %r, %r, %r, %r)" % exemplar(Rng(seed), 224.0))
    print("exemplar shrink seed 3 scale (2,3):",
          "(%r, %r, %r, %r, %r)" % exemplar(Rng(3), 224.0, scale=(2.0, 3.0)))
    rect = exemplar(Rng(1), 224.0)
    g = gt_map(rect, 224.0, 160)
    print("gt seed 1 m=160 count:", sum(map(sum, g)))
    # A few cells on both sides of the boundary of the middle row of the rectangle.
    row = min(159, max(0, int(rect[1] * 160 / 224)))
    ones = [j for j in range(160) if g[row][j]]
    print("gt row", row, "first/last one:", ones[0], ones[-1],
          "cells", [(row, j, g[row][j]) for j in (ones[0] - 1, ones[0], ones[-1], ones[-1] + 1)])
    col = min(159, max(0, int(rect[0] * 160 / 224)))
    ones = [i for i in range(160) if g[i][col]]
    print("gt col", col, "first/last one:", ones[0], ones[-1],
          "cells", [(i, col, g[i][col]) for i in (ones[0] - 1, ones[0], ones[-1], ones[-1] + 1)])
    print("gt row hash:", [sum(r) for r in g][::16])


if __name__ == "__main__":
    main()
