"""JAX backend benchmark: bpcompile's jitted forward+backward vs jax.jit(jax.value_and_grad).

Same process, same inputs, median time per call after a warm-up, each call timed until its
results are ready: JAX's in jax.block_until_ready, ours as called (synchronous by default:
it blocks before it returns, checked once below). Calls alternate JAX, ours, JAX, ours, ...
in several rounds (the median of the round medians is reported), so load on a shared machine
hits both alike.
Three input conditions:
  device: both functions get JAX arrays already on the device (the program-vs-program figure);
  numpy:  both functions get host NumPy arrays (each call pays the host->device transfer);
  mixed:  JAX gets device arrays, ours NumPy ones, as in the scorecard (benchmarks/scorecard.py).

Models: the six of benchmarks/BENCHMARKS.md (float32), from benchmarks/models.py.

    python benchmarks/bench_jax.py [--budget 0.3] [--rounds 5] [--models xor,mlp_small,...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import ALL  # noqa: E402


def timed_rounds(fa, fb, budget, rounds):
    """Time fa and fb call by call in alternation (so load on a shared machine hits both
    alike) for `rounds` rounds of `budget` seconds; the median of the per-round medians (µs)."""
    for f in (fa, fb, fa, fb):
        f()
    ma, mb = [], []
    clock = time.perf_counter
    for _ in range(rounds):
        ta, tb, t0 = [], [], clock()
        while clock() - t0 < budget or len(ta) < 3:
            s = clock()
            fa()
            m = clock()
            fb()
            e = clock()
            ta.append(m - s)
            tb.append(e - m)
        ma.append(np.median(ta))
        mb.append(np.median(tb))
    return float(np.median(ma)) * 1e6, float(np.median(mb)) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=0.3, help="seconds per timing round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--models", default=",".join(ALL))
    a = ap.parse_args()
    import jax
    import jax.numpy as jnp
    from models import build

    import bpcompile as bp

    names = a.models.split(",")
    models = build(names)
    print(f"jax {jax.__version__}, devices {jax.devices()}")
    print(
        f"{'model':10s} {'inputs':6s} {'JAX us':>9s} {'ours us':>9s} {'JAX/ours':>8s}  "
        f"{'compile ours/JAX s':>18s}  max rel grad diff"
    )
    for name in names:
        try:
            loss, wrt, inputs, params, jloss = models[name]
        except KeyError:
            print(f"{name:10s} (not built)")
            continue
        jf = jax.jit(jax.value_and_grad(jloss))
        t0 = time.perf_counter()
        fn = bp.compile(loss, wrt=wrt, backend="jax")
        v, g = fn(**inputs, **params)
        # fn is synchronous by default: it returns once its results are computed, so it is
        # timed as called (JAX's function is wrapped in block_until_ready, as its users do).
        assert v.is_ready() and all(x.is_ready() for x in g.values()), "fn returned early"
        ours_compile = time.perf_counter() - t0
        t0 = time.perf_counter()
        rv, rg = jax.block_until_ready(jf(params, **inputs))
        jax_compile = time.perf_counter() - t0
        diff = max(
            float(
                np.max(np.abs(np.asarray(g[k]) - np.asarray(rg[k])))
                / max(float(np.max(np.abs(np.asarray(rg[k])))), 1e-30)
            )
            for k in rg
        )
        dev_p = {k: jnp.asarray(x) for k, x in params.items()}
        dev_i = {k: jnp.asarray(x) for k, x in inputs.items()}
        conditions = (
            ("device", (dev_p, dev_i), (dev_p, dev_i)),
            ("numpy", (params, inputs), (params, inputs)),
            ("mixed", (dev_p, dev_i), (params, inputs)),  # the scorecard's pairing
        )
        for cond, (P, I), (P2, I2) in conditions:
            tj, to = timed_rounds(
                lambda: jax.block_until_ready(jf(P, **I)),
                lambda: fn(**I2, **P2),
                a.budget,
                a.rounds,
            )
            print(
                f"{name:10s} {cond:6s} {tj:9.1f} {to:9.1f} {tj / to:8.2f}  "
                f"{ours_compile:8.3f} / {jax_compile:.3f}  {diff:.1e}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
