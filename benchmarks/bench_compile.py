"""Compile time: bpcompile (graph build + autodiff + passes + codegen) vs jax.jit compile.

Usage: python benchmarks/bench_compile.py [--backend numpy] [--repeat 5]
Each of our compiles starts from a fresh graph build; each JAX compile jits a fresh function
(so its cache cannot help). Prints medians and the ratio JAX/ours (> 1: we compile faster).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from models import build  # noqa: E402

import bpcompile as bp  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--models", default="xor,mlp_mnist")
    a = ap.parse_args(argv)
    import jax
    import jax.numpy as jnp

    names = a.models.split(",")
    build(names)  # warm imports (sympy, jax) outside the timings
    print(f"{'model':10s} {'ours ms':>9s} {'jax ms':>9s} {'jax/ours':>9s}   backend={a.backend}")
    for name in names:
        ours, theirs = [], []
        for i in range(a.repeat):
            t0 = time.perf_counter()
            loss, wrt, inputs, params, jl = build([name], seed=i)[name]
            fn = bp.compile(loss, wrt=wrt, backend=a.backend)
            fn(**inputs, **params)
            ours.append(time.perf_counter() - t0)
            # a fresh Python function each time, so jax.jit's cache cannot serve it
            f = jax.jit(jax.value_and_grad(lambda p, *xs, _jl=jl: _jl(p, *xs)))
            jp = {k: jnp.asarray(v) for k, v in params.items()}
            xs = [jnp.asarray(v) for v in inputs.values()]
            t0 = time.perf_counter()
            jax.block_until_ready(f(jp, *xs))
            theirs.append(time.perf_counter() - t0)
        o, t = np.median(ours) * 1e3, np.median(theirs) * 1e3
        print(f"{name:10s} {o:9.1f} {t:9.1f} {t / o:9.2f}")


if __name__ == "__main__":
    main()
