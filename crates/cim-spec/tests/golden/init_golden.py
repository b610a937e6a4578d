#!/usr/bin/env python3
"""Golden values for crates/cim-spec/src/init.rs (SPEC S8).

Run: python3 crates/cim-spec/tests/golden/init_golden.py
Needs only the standard library (numpy if present is not used).  An independent
transcription of CimRng (xoshiro256++ seeded by SplitMix64, unit() = (next >> 11) * 2^-53,
Box-Muller normal() drawing u1 then u2 and keeping the cosine branch, derive() as in
rng.rs) produces the first values of each initialiser for fixed streams; values are
printed as f32 literals (the Rust code draws in f64 and stores f32).
"""
import math
import struct

M64 = (1 << 64) - 1


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return state, z ^ (z >> 31)


def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & M64


class Rng:
    def __init__(self, seed):
        st = seed & M64
        self.s = []
        for _ in range(4):
            st, w = splitmix64(st)
            self.s.append(w)

    @classmethod
    def derive(cls, seed, path):
        st, h = splitmix64(seed & M64)
        for p in path:
            mix = h ^ ((p * 0xD6E8FEB86659FD93) & M64)
            _, h = splitmix64(mix)
        return cls(h)

    def next_word(self):
        s = self.s
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
        return (self.next_word() >> 11) * (1.0 / (1 << 53))

    def uniform(self, lo, hi):
        return lo + (hi - lo) * self.unit()

    def normal(self):
        u1 = 1.0 - self.unit()
        u2 = self.unit()
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def f32(v):
    return struct.unpack("<f", struct.pack("<f", v))[0]


def lit(v):
    # shortest decimal that round-trips the f32
    x = f32(v)
    for digits in range(1, 18):
        s = f"{x:.{digits}g}"
        if f32(float(s)) == x:
            break
    return s + "_f32"


def show(name, values):
    print(f"const {name}: [f32; {len(values)}] = [{', '.join(lit(v) for v in values)}];")


def main():
    # sanity: the words rng.rs pins
    r = Rng(0)
    assert [r.next_word() for _ in range(3)] == [
        0x53175D61490B23DF, 0x61DA6F3DC380D507, 0x5C0FDF91EC9A7BFC]
    assert Rng(42).next_word() == 0xD0764D4F4476689F

    # Xavier-uniform on a [6, 4] weight (fan_in 4, fan_out 6), stream derive(42, [7]).
    r = Rng.derive(42, [7])
    b = math.sqrt(6.0 / (4 + 6))
    show("XAVIER_6X4_SEED42_7", [r.uniform(-b, b) for _ in range(8)])
    # Xavier-uniform on a conv-like [8, 3, 2, 2] weight: fan_in 12, fan_out 32.
    r = Rng.derive(42, [8])
    b = math.sqrt(6.0 / (12 + 32))
    show("XAVIER_8X3X2X2_SEED42_8", [r.uniform(-b, b) for _ in range(6)])
    # Class token N(0, 0.02), shape [1, 1, 8], CimRng::new(5).
    r = Rng(5)
    show("NORMAL_002_SEED5", [0.02 * r.normal() for _ in range(8)])
    # Patch-embedding bound for p = 16, D = 768: U(+-sqrt(6/(3*256 + 768))), new(9).
    r = Rng(9)
    b = math.sqrt(6.0 / (3 * 16 * 16 + 768))
    print(f"const PATCH_BOUND_16_768: f64 = {b!r};")
    show("UNIFORM_PATCH_SEED9", [r.uniform(-b, b) for _ in range(6)])


if __name__ == "__main__":
    main()
