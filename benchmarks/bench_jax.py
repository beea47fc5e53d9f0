"""JAX backend benchmark: bpcompile's jitted forward+backward vs jax.jit(jax.value_and_grad).

Same process, same inputs, median time per call after a warm-up, every call blocked until its
results are ready (`jax.block_until_ready`) on both sides. Two input conditions:
  device: both functions get JAX arrays already on the device (the kernel-vs-kernel comparison);
  numpy:  both functions get host NumPy arrays (each call pays the host->device transfer).
The scorecard (../shared/scorecard.py) mixes the two: JAX gets device arrays, ours NumPy arrays.
Models are defined exactly as in ../shared/scorecard.py (float32).

    python benchmarks/bench_jax.py [--budget 1.0] [--models xor,mlp_small,mlp_mnist]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared")


def median_us(f, budget: float) -> float:
    f()
    f()
    ts: list[float] = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < budget:
        s = time.perf_counter()
        f()
        ts.append(time.perf_counter() - s)
    return float(np.median(ts)) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--models", default="xor,mlp_small,mlp_mnist")
    a = ap.parse_args()
    import jax
    import jax.numpy as jnp

    import bpcompile as bp

    sys.path.insert(0, SHARED)
    from scorecard import build  # the public-API model definitions shared with the scorecard

    models = build(bp, jnp, jax)
    print(f"jax {jax.__version__}, devices {jax.devices()}")
    print(
        f"{'model':10s} {'inputs':6s} {'JAX us':>9s} {'ours us':>9s} {'ours/JAX':>8s}  "
        f"compile ours / JAX (s)"
    )
    for name in a.models.split(","):
        loss, wrt, inputs, params, jloss = models[name]
        jf = jax.jit(jax.value_and_grad(jloss))
        t0 = time.perf_counter()
        fn = bp.compile(loss, wrt=wrt, backend="jax")
        jax.block_until_ready(fn(**inputs, **params))
        ours_compile = time.perf_counter() - t0
        t0 = time.perf_counter()
        jax.block_until_ready(jf(params, **inputs))
        jax_compile = time.perf_counter() - t0
        dev_p = {k: jnp.asarray(v) for k, v in params.items()}
        dev_i = {k: jnp.asarray(v) for k, v in inputs.items()}
        for cond, (P, I) in (("device", (dev_p, dev_i)), ("numpy", (params, inputs))):
            tj = median_us(lambda: jax.block_until_ready(jf(P, **I)), a.budget)
            to = median_us(lambda: jax.block_until_ready(fn(**I, **P)), a.budget)
            print(
                f"{name:10s} {cond:6s} {tj:9.1f} {to:9.1f} {to / tj:8.3f}  "
                f"{ours_compile:.3f} / {jax_compile:.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
