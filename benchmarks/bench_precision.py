"""Mixed precision: time per loss-and-gradient call and planned activation memory of
mlp_mnist, cnn_digits and attention (benchmarks/BENCHMARKS.md) in float32, bfloat16-mixed and
float16-mixed (float32 params, 16-bit compute: docs/dtypes.md), on the LLVM and JAX backends,
against JAX with the same policy in the same process: jax.jit(jax.value_and_grad) of the model
on params and inputs cast to the 16-bit dtype (jmp's Policy(param=f32, compute=bf16)).

Saved bytes: the LLVM memory plan's saved-for-backward bytes (fn.memory()), and its peak bytes
(outputs + workspace); the ratios are against the same model's float32 plan. Times: median µs
per call (models.median_us), alternating nothing else; the machine is shared, so read the
ratios, not the absolutes.

    python benchmarks/bench_precision.py [--models mlp_mnist,cnn_digits,attention]
                                         [--budget 0.3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402  (benchmarks/models.py)

PRECISIONS = ("float32", "bfloat16", "float16")


def jax_policy(jl, precision: str):
    """jax.jit(value_and_grad) of jl with params and float inputs cast to `precision`."""
    import jax
    import jax.numpy as jnp

    dt = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[precision]

    def low(v):
        return v.astype(dt) if jnp.issubdtype(v.dtype, jnp.floating) else v

    def loss(p, **inputs):
        p16 = jax.tree_util.tree_map(low, p)
        return jl(p16, **{k: low(v) for k, v in inputs.items()}).astype(jnp.float32)

    return jax.jit(jax.value_and_grad(loss))


def _min_us(f, budget: float) -> float:
    """The fastest call in `budget` seconds (µs): under load the least disturbed one."""
    import time

    f()
    best, t0 = float("inf"), time.perf_counter()
    while time.perf_counter() - t0 < budget:
        s = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - s)
    return best * 1e6


def main() -> None:
    import jax

    import bpcompile as bp

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mlp_mnist,cnn_digits,attention")
    ap.add_argument("--budget", type=float, default=0.3, help="seconds of calls per timing")
    ap.add_argument("--rounds", type=int, default=3, help="round-robin rounds (median taken)")
    a = ap.parse_args()
    names = a.models.split(",")
    built = models.build(names)
    print(f"{'model':11s} {'precision':9s} {'llvm us':>9s} {'jax-be us':>9s} {'JAX us':>9s} "
          f"{'llvm/JAX':>8s} {'llvm min':>9s} {'JAX min':>9s} {'saved KB':>9s} {'vs f32':>6s} "
          f"{'peak KB':>8s} {'vs f32':>6s}")
    for name in names:
        loss, wrt, inputs, params, jl = built[name]
        jparams = {k: jax.numpy.asarray(v) for k, v in params.items()}
        jinputs = {k: jax.numpy.asarray(v) for k, v in inputs.items()}
        calls, saved, peak = {}, {}, {}
        for prec in PRECISIONS:
            llvm = bp.compile(loss, wrt, backend="llvm", precision=prec)
            jbe = bp.compile(loss, wrt, backend="jax", precision=prec)
            jref = jax_policy(jl, prec)
            saved[prec] = llvm.memory()["saved_for_backward_bytes"]
            peak[prec] = llvm.memory()["peak_bytes"]
            calls[prec, "llvm"] = lambda f=llvm: f(**inputs, **params)
            calls[prec, "jbe"] = lambda f=jbe: jax.block_until_ready(f(**inputs, **params))
            calls[prec, "jax"] = lambda f=jref: jax.block_until_ready(f(jparams, **jinputs))
        med: dict = {k: [] for k in calls}
        low: dict = {k: [] for k in calls}
        for _ in range(a.rounds):  # round-robin: load spikes hit every configuration alike
            for k, f in calls.items():
                med[k].append(models.median_us(f, a.budget))
                low[k].append(_min_us(f, a.budget / 3))
        t = {k: float(np.median(v)) for k, v in med.items()}
        m = {k: float(np.min(v)) for k, v in low.items()}
        for prec in PRECISIONS:
            print(f"{name:11s} {prec:9s} {t[prec, 'llvm']:9.0f} {t[prec, 'jbe']:9.0f} "
                  f"{t[prec, 'jax']:9.0f} {t[prec, 'llvm'] / t[prec, 'jax']:8.2f} "
                  f"{m[prec, 'llvm']:9.0f} {m[prec, 'jax']:9.0f} {saved[prec] / 1024:9.1f} "
                  f"{saved[prec] / saved['float32']:6.2f} {peak[prec] / 1024:8.1f} "
                  f"{peak[prec] / peak['float32']:6.2f}", flush=True)
    print(f"(numpy {np.__version__}, jax {jax.__version__}; us = median per call, median over "
          "rounds; min = fastest call; saved = LLVM plan's saved-for-backward bytes; peak = its "
          "peak_bytes, outputs + workspace)")


if __name__ == "__main__":
    main()
