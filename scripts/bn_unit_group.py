"""Per-unit BN's fused kernels (kernels/bnunits.py) by how many images their loops take side by side
(G: bnunits.GROUP; 8 = a whole shard) and by register tile (AVX-512's "wide", AVX2's "narrow"; both
run on any machine), per 8-image shard, on arrays in cache (one shard over and over) and out of L2
(the shards of a batch in turn, as a training step meets them).

    python scripts/bn_unit_group.py [--batch 256] [--repeats 7]

Prints microseconds per shard (best of the repeats) and each time as a fraction of the wide tile's
at G = 8, for the forward (pool of ELU(BN)), the backward's sums and the backward's dz,
conv1's 32x32 maps and conv2's 16x16. Every G and tile gives the same bits in the forward and dz,
and both tiles the same sums at a G (checked); the sums add each group's images in the dtype, so G
changes their rounding (checked to agree within 1e-5). Prints numbers and exits with an error when
a check fails; no timing is asserted.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from numba import njit

from cnncli.kernels import bncoef, bnunits

SHARD = 8
GROUPS = (1, 2, 4, 8)


def kernels(G, tile):
    """(forward, sums, backward) per-unit kernels taking G images at a time, in tile ("wide" or
    "narrow")."""
    forward_units = getattr(bnunits, f"forward_units_{tile}")
    unit_sums = getattr(bnunits, f"unit_sums_{tile}")
    backward_units = getattr(bnunits, f"backward_units_{tile}")

    @njit(nogil=True)
    def forward(z, coef, pp, o, arg):
        if z.shape[3] == 32:
            forward_units(z, coef, pp, o, arg, 32, G)
        else:
            forward_units(z, coef, pp, o, arg, 16, G)

    @njit(nogil=True)
    def sums(dp, pp, o, arg, z, coef, out):
        if z.shape[3] == 32:
            unit_sums(dp, pp, o, arg, z, coef, out, 32, G)
        else:
            unit_sums(dp, pp, o, arg, z, coef, out, 16, G)

    @njit(nogil=True)
    def backward(dp, pp, o, arg, z, coef, dz):
        if z.shape[3] == 32:
            backward_units(dp, pp, o, arg, z, coef, dz, 32, G)
        else:
            backward_units(dp, pp, o, arg, z, coef, dz, 16, G)
    return forward, sums, backward


def per_shard(cases, repeats):
    """{key: (fn, [argument tuples])} -> {key: best over repeats of the mean microseconds of fn(*a)
    over its argument tuples}; each repeat runs every case once, in turn (the machine's drift
    then falls on all of them alike)."""
    best = {}
    for fn, args in cases.values():
        fn(*args[0])
    for _ in range(repeats):
        for key, (fn, args) in cases.items():
            t = time.perf_counter()
            for a in args:
                fn(*a)
            best[key] = min(best.get(key, float("inf")), (time.perf_counter() - t) / len(args) * 1e6)
    return best


def layer(W, C, o, B, repeats, variants):
    rng = np.random.default_rng(0)
    D, Hp = C * W * W, W // 2 + 2 * o
    z = rng.standard_normal((B, C, W, W)).astype(np.float32)                   # (B,C,W,W)
    dp = rng.standard_normal((B, C, W // 2, W // 2)).astype(np.float32)        # (B,C,W/2,W/2)
    coef = np.zeros((6, D), np.float32)                                        # (6,D)
    g = rng.uniform(-1, 1, D).astype(np.float32)
    bncoef.bn_coef_forward_into(rng.standard_normal(D), rng.random(D) + 0.5, g, rng.random(D).astype(np.float32),
                                coef)
    bncoef.bn_coef_backward_into(rng.random(D) + 0.5, g, rng.standard_normal(2 * D), float(B), coef)
    rows = {}
    for where, n in (("in cache", SHARD), ("out of L2", B)):
        sl = [slice(j, j + SHARD) for j in range(0, n, SHARD)]
        cases, arrays = {}, {}
        for key, (fwd, sums, bwd) in variants.items():
            pp = np.zeros((B, C, Hp, Hp), np.float32)                          # (B,C,Hp,Hp)
            arg = np.zeros((B, C, W // 2, W // 2), np.int8)                    # (B,C,W/2,W/2)
            out = np.zeros((len(sl), 2 * D))                                   # (shards,2D) float64
            dz = np.zeros_like(z)                                              # (B,C,W,W)
            arrays[key] = (pp, arg, out, dz)
            cases[key + (0,)] = (fwd, [(z[s], coef, pp[s], o, arg[s]) for s in sl])
            cases[key + (1,)] = (sums, [(dp[s], pp[s], o, arg[s], z[s], coef, out[j]) for j, s in enumerate(sl)])
            cases[key + (2,)] = (bwd, [(dp[s], pp[s], o, arg[s], z[s], coef, dz[s]) for s in sl])
        best = per_shard(cases, repeats)
        first = next(iter(variants))
        for G, tile in variants:
            (pp0, arg0, out0, dz0), (pp, arg, out, dz) = arrays[first], arrays[(G, tile)]
            if not all(np.array_equal(a, b) for a, b in ((pp0, pp), (arg0, arg), (dz0, dz))):
                raise SystemExit(f"G={G} {tile} gives other bits than G={first[0]} in the forward or dz")
            if not np.array_equal(out, arrays[(G, "wide")][2]):
                raise SystemExit(f"G={G}: the narrow tile's sums have other bits than the wide tile's")
            if not np.allclose(out, out0, rtol=1e-5, atol=1e-5):
                raise SystemExit(f"G={G}'s sums differ from G={first[0]}'s by more than rounding")
            rows[(where, G, tile)] = tuple(best[(G, tile, k)] for k in range(3))
    print(f"\n{W}x{W} maps, {C} channels ({D} units); us per {SHARD}-image shard, fraction of the wide G=8's")
    print(f"{'arrays':10s} {'G':>2s} {'tile':6s}  {'forward':>14s}  {'sums':>14s}  {'backward':>14s}")
    for (where, G, tile), t in rows.items():
        base = rows[(where, 8, "wide")]
        cells = "  ".join(f"{a:7.1f} ({a / b:.2f})" for a, b in zip(t, base))
        print(f"{where:10s} {G:2d} {tile:6s}  {cells}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256, help="images cycled through for 'out of L2'")
    ap.add_argument("--repeats", type=int, default=7, help="passes; the best is shown")
    a = ap.parse_args()
    variants = {(G, tile): kernels(G, tile) for G in GROUPS for tile in ("wide", "narrow")}
    print(f"bnunits.GROUP = {bnunits.GROUP}, NARROW_BACKWARD_GROUP = {bnunits.NARROW_BACKWARD_GROUP}, "
          f"this machine's tile: {'wide' if bnunits.WIDE else 'narrow'}")
    for W, C, o in ((32, 6, 2), (16, 16, 0)):
        layer(W, C, o, a.batch, a.repeats, variants)


if __name__ == "__main__":
    main()
