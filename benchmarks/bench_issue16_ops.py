"""Issue 16 item 5 measurements: (1) a polynomial least-squares fit whose power matrix
`t ** arange(d)` is built from iota - computed once at compile time by the fold pass, vs
recomputed per call with `fold` left out; (2) a k-means centroid update (scatter_add of points
into their clusters, plus its gradient) on LLVM against jax.jit of the same in JAX; (3) an
embedding gradient on LLVM as take's VJP gives it (a scatter_add from ops.index.SCATTER_MIN
rows on) against the one_hot(idx)ᵀ @ g product it used before.

    python benchmarks/bench_issue16_ops.py [--budget 0.5]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import bpcompile as bp  # noqa: E402
from bpcompile.rewrite.pipeline import PASSES  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import median_us as med  # noqa: E402


def power_fit(budget: float) -> None:
    n, d = 128, 24  # n*d <= fold.MAX_FOLD_ELEMENTS (4096): larger results stay computed
    t = np.linspace(-1, 1, n)
    c = bp.param("c", (d,), "float64")
    y = bp.input("y", (n,), "float64")
    V = bp.const(t, "float64").reshape(n, 1) ** bp.arange(d).astype("float64")  # (n, d)
    loss = bp.mean((V @ c - y) ** 2)
    vals = {"c": np.zeros(d), "y": np.sin(3 * t)}
    no_fold = [name for name, _ in PASSES if name != "fold"]
    for backend in ("numpy", "llvm"):
        folded = bp.compile(loss, wrt=[c], backend=backend)
        plain = bp.compile(loss, wrt=[c], backend=backend, passes=no_fold)
        a, b = med(lambda: folded(**vals), budget), med(lambda: plain(**vals), budget)
        print(f"power fit n={n} d={d} {backend:5s}: folded {a:8.1f} us, "
              f"without fold {b:8.1f} us ({b / a:.1f}x)")


def kmeans(budget: float) -> None:
    n, k, dim = 20000, 64, 8
    r = np.random.default_rng(0)
    pts = r.standard_normal((n, dim)).astype(np.float32)
    lab = r.integers(0, k, n).astype(np.int32)
    X = bp.param("X", (n, dim), "float32")
    L = bp.input("lab", (n,), "int32")
    sums = bp.scatter_add(bp.const(np.zeros((k, dim), np.float32)), L, X)
    loss = bp.sum(sums * sums)
    ours = bp.compile(loss, wrt=[X], backend="llvm")

    def jloss(X, lab):
        s = jnp.zeros((k, dim), jnp.float32).at[lab].add(X)
        return jnp.sum(s * s)

    jf = jax.jit(jax.value_and_grad(jloss))
    jl = jnp.asarray(lab)
    jx = jnp.asarray(pts)
    a = med(lambda: ours(X=pts, lab=lab), budget)
    b = med(lambda: jax.block_until_ready(jf(jx, jl)), budget)
    v, g = ours(X=pts, lab=lab)
    jv, jg = jf(jx, jl)
    assert np.allclose(g["X"], jg, rtol=1e-4, atol=1e-3)
    print(f"k-means scatter_add n={n} k={k} d={dim} value+grad: llvm {a:8.1f} us, "
          f"jax.jit {b:8.1f} us ({b / a:.2f}x of ours)")


def embedding_grad(budget: float) -> None:
    from bpcompile.ops import index

    for V, k, d in [(50, 64, 16), (1024, 64, 16), (10000, 512, 64)]:
        r = np.random.default_rng(0)
        vals = {"E": r.standard_normal((V, d)).astype(np.float32),
                "idx": r.integers(0, V, k).astype(np.int32),
                "u": r.standard_normal((k, d)).astype(np.float32)}
        times = {}
        for label, lo in (("scatter_add", 1), ("one_hot @ g", 10**9)):
            saved, index.SCATTER_MIN = index.SCATTER_MIN, lo
            try:
                E = bp.param("E", (V, d), "float32")
                loss = bp.sum(bp.take(E, bp.input("idx", (k,), "int32"))
                              * bp.input("u", (k, d), "float32"))
                fn = bp.compile(loss, wrt=[E], backend="llvm")
            finally:
                index.SCATTER_MIN = saved
            times[label] = med(lambda: fn(**vals), budget)
        print(f"embedding grad V={V} k={k} d={d} llvm: " + ", ".join(
            f"{k_} {v:9.1f} us" for k_, v in times.items()))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=0.5)
    args = ap.parse_args()
    power_fit(args.budget)
    kmeans(args.budget)
    embedding_grad(args.budget)
