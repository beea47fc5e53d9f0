"""Compile time on graphs of many small scalar ops (issue #14 item 5).

Usage: python benchmarks/bench_scalar_graphs.py [--sizes 6,8,10] [--backends numpy,llvm]
       [--no-jax] [--clock wall|cpu]
The graph: det(A) of an n x n float64 matrix by cofactor expansion along the first row with
memoised minors, written with indexing and scalar arithmetic (~n 2^(n-1) scalar products:
tens of thousands of nodes with the gradient at n = 10). Per size and backend it prints graph
build, the forward passes + autodiff, each rewrite pass (summed over the simplify rounds),
codegen and the first call, and the growth of the total against the node count; then
jax.jit(jax.value_and_grad) of the same scalar-written function (trace + compile + first call).
--clock cpu measures this process's CPU time instead of wall time (on a shared machine; XLA
compiles on several threads, so JAX's CPU time exceeds its wall time).
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bpcompile as bp  # noqa: E402

clock = time.perf_counter  # or time.process_time (--clock cpu)
from bpcompile import compiled  # noqa: E402
from bpcompile.rewrite import pipeline  # noqa: E402


def cofactor_det(A, n: int):
    """det(A) by cofactor expansion with memoised minors, for any A indexable as A[i, j]."""

    @functools.lru_cache(None)
    def det(rows: tuple, cols: tuple):
        if len(rows) == 1:
            return A[rows[0], cols[0]]
        acc = None
        for j, c in enumerate(cols):
            term = A[rows[0], c] * det(rows[1:], cols[:j] + cols[j + 1:])
            acc = term if acc is None else (acc + term if j % 2 == 0 else acc - term)
        return acc

    return det(tuple(range(n)), tuple(range(n)))


class _Timers:
    """Wraps the pipeline, its passes and the compile's autodiff to time each (seconds)."""

    def __init__(self) -> None:
        self.t: Counter = Counter()
        self._passes = list(pipeline.PASSES)
        self._grad = compiled._grad
        self._run, self._forward = pipeline.run, pipeline.run_forward

    def __enter__(self) -> _Timers:
        def timed(name, fn):
            def run(*args, **kwargs):
                t0 = clock()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.t[name] += clock() - t0

            return run

        pipeline.PASSES[:] = [(n, timed(n, f)) for n, f in self._passes]
        compiled._grad = timed("autodiff", self._grad)
        pipeline.run = timed("pipeline", self._run)
        pipeline.run_forward = timed("forward passes", self._forward)
        return self

    def __exit__(self, *exc) -> None:
        pipeline.PASSES[:] = self._passes
        compiled._grad = self._grad
        pipeline.run, pipeline.run_forward = self._run, self._forward


def ours(n: int, backend: str, a: np.ndarray) -> tuple[dict, int]:
    t0 = clock()
    A = bp.param("A", (n, n), dtype="float64")
    d = cofactor_det(A, n)
    build = clock() - t0
    with _Timers() as tm:
        t1 = clock()
        fn = bp.compile(d, wrt=[A], backend=backend)
        total = clock() - t1
    t2 = clock()
    v, grads = fn(A=a)
    g = grads["A"]
    first = clock() - t2
    assert np.isclose(v, np.linalg.det(a)), (v, np.linalg.det(a))
    assert np.allclose(g, np.linalg.det(a) * np.linalg.inv(a).T)
    nodes = fn.stages[1].nodes  # the adjoint graph, before any pass
    row = {"build": build, **tm.t, "first call": first}
    # other: the backend's own rules and the stage records; codegen: the rest of the compile
    row["other"] = tm.t["pipeline"] - sum(tm.t[p] for p, _ in pipeline.PASSES)
    row["codegen"] = total - tm.t["autodiff"] - tm.t["forward passes"] - tm.t["pipeline"]
    row["total"] = build + total + first
    return row, nodes


def theirs(n: int, a: np.ndarray) -> float:
    import jax

    jax.config.update("jax_enable_x64", True)
    t0 = clock()
    f = jax.jit(jax.value_and_grad(lambda A: cofactor_det(A, n)))
    jax.block_until_ready(f(a))
    return clock() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="6,8,10")
    ap.add_argument("--backends", default="numpy,llvm")
    ap.add_argument("--no-jax", action="store_true")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    a = ap.parse_args(argv)
    global clock
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    sizes = [int(s) for s in a.sizes.split(",")]
    rng = np.random.default_rng(0)
    ours(3, "numpy", np.eye(3) + 0.1)  # warm imports outside the timings
    cols = ["build", "forward passes", "autodiff"] + [p for p, _ in pipeline.PASSES] + [
        "other", "codegen", "first call", "total"]
    for backend in a.backends.split(","):
        print(f"backend={backend}: {a.clock} seconds per stage; "
              "growth = d log(total) / d log(nodes)")
        print(f"{'n':>3s} {'nodes':>7s} " + " ".join(f"{c[:8]:>8s}" for c in cols)
              + f" {'growth':>7s}")
        prev = None
        for n in sizes:
            m = rng.standard_normal((n, n)) + n * np.eye(n)
            row, nodes = ours(n, backend, m)
            growth = (f"{math.log(row['total'] / prev[1]) / math.log(nodes / prev[0]):7.2f}"
                      if prev else f"{'':>7s}")
            print(f"{n:3d} {nodes:7d} " + " ".join(f"{row.get(c, 0.0):8.3f}" for c in cols)
                  + f" {growth}")
            prev = (nodes, row["total"])
    if not a.no_jax:
        print("jax.jit(jax.value_and_grad) of the same function: trace + compile + first call")
        for n in sizes:
            m = rng.standard_normal((n, n)) + n * np.eye(n)
            print(f"{n:3d} {theirs(n, m):8.3f} s")


if __name__ == "__main__":
    main()
