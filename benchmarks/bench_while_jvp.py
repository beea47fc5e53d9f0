"""while_loop forward mode: the primal read from the tangent loop (rewrite/loop_share.py)
against the primal loop run again, and jax.jit(jax.jvp) of lax.while_loop, in one process.

A 64-wide tanh recurrence h <- tanh(h W + b) run while a step counter < 200 (the count is a
runtime input); the program returns h and its tangent along (W, b). "shared" is the default
pipeline, "twice" the same program with the sharing turned off (`loop_share.SHARE`).
Interleaved, median of `--rounds` medians; timings under load are noisy, read the ratio.

    PYTHONPATH=. python benchmarks/bench_while_jvp.py [--backend llvm] [--rounds 5]
"""

from __future__ import annotations

import argparse

import numpy as np
from models import median_us

import bpcompile as bp
from bpcompile.rewrite import loop_share

D, STEPS = 64, 200


def build():
    W, b = bp.param("W", (D, D), "float64"), bp.param("b", (D,), "float64")
    h0, n = bp.input("h0", (8, D), "float64"), bp.input("n", (), "int32")
    _, h = bp.while_loop(lambda c: c[0] < n, lambda c: (c[0] + 1, bp.tanh(c[1] @ W + b)),
                         (bp.const(0, "int32"), h0))
    _, h_t = bp.jvp(h, [W, b], [bp.input("tW", (D, D), "float64"),
                                bp.input("tb", (D,), "float64")])
    return {"h": h, "h_t": h_t}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="llvm")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args(argv)
    r = np.random.default_rng(0)
    v = {"W": r.standard_normal((D, D)) / np.sqrt(D), "b": 0.1 * r.standard_normal(D),
         "h0": r.standard_normal((8, D)), "n": np.int32(STEPS),
         "tW": r.standard_normal((D, D)), "tb": r.standard_normal(D)}
    shared = bp.function(build(), backend=a.backend)
    loop_share.SHARE = False  # the unshared program: two loops (a setting the cache keys)
    try:
        twice = bp.function(build(), backend=a.backend)
    finally:
        loop_share.SHARE = True
    for k in ("h", "h_t"):
        np.testing.assert_allclose(shared(**v)[k], twice(**v)[k], rtol=1e-12)

    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)

    def jf(W, b, h0, n):
        return jax.lax.while_loop(lambda c: c[0] < n, lambda c: (c[0] + 1, jnp.tanh(
            c[1] @ W + b)), (0, h0))[1]

    jj = jax.jit(lambda W, b, h0, n, tW, tb: jax.jvp(lambda W, b: jf(W, b, h0, n), (W, b),
                                                       (tW, tb)))
    args = [jnp.asarray(v[k]) for k in ("W", "b", "h0", "n", "tW", "tb")]
    jj(*args)[1].block_until_ready()
    runs = {"shared": lambda: shared(**v), "twice": lambda: twice(**v),
            "jax": lambda: jj(*args)[1].block_until_ready()}
    meds: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(a.rounds):
        for k, f in runs.items():
            meds[k].append(median_us(f))
    best = {k: float(np.median(m)) for k, m in meds.items()}
    print(f"backend {a.backend}: h and its tangent through a {STEPS}-step while_loop, "
          f"width {D}, batch 8")
    for k, us in best.items():
        print(f"  {k:7s} {us / 1e3:8.2f} ms")
    print(f"  twice / shared = {best['twice'] / best['shared']:.2f}, "
          f"shared / jax = {best['shared'] / best['jax']:.2f}")


if __name__ == "__main__":
    main()
