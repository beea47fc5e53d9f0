"""Hessian-vector products on mlp_mnist (LLVM): forward-over-reverse (jvp of the gradient)
against reverse-over-reverse (gradient of <∇L, v>) and one gradient call, each compiled once,
and against JAX doing the same work: `hvp(..., with_grad=False)` (H·v alone) against
`jit(lambda p, v: jvp(grad(f), (p,), (v,))[1])`, and `hvp(...)` (gradient and H·v) against
the jit of the whole `jvp` (both outputs). The JAX rows print their ratio to ours.

    PYTHONPATH=. python benchmarks/bench_hvp.py [--backend llvm] [--model mlp_mnist]

On LLVM each is also compiled with one BLAS thread (`blas_threads=1`): on a loaded machine
threaded OpenBLAS calls wait for CPU time, and the H·v has ~3x the threaded GEMM calls of the
gradient, so the single-thread ratio, in process CPU time, is the one that measures the
generated code.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from models import build, median_us

import bpcompile as bp
from bpcompile.train.second_order import hvp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="llvm")
    ap.add_argument("--model", default="mlp_mnist")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    loss, ps, inputs, P, jf = build([a.model])[a.model][:5]
    r = np.random.default_rng(1)
    v = {k: r.standard_normal(x.shape).astype(x.dtype) for k, x in P.items()}
    g = bp.compile(loss, ps, backend=a.backend)
    fns = {"gradient": lambda: g(**inputs, **P)}
    res = {}
    for mode in ("fwd", "rev"):
        H = hvp(loss, ps, backend=a.backend, mode=mode)
        res[mode] = H(v, **inputs, **P)[1]
        fns[f"hvp {mode}"] = lambda H=H: H(v, **inputs, **P)
    Hv = hvp(loss, ps, backend=a.backend, mode="fwd", with_grad=False)
    res["hv only"] = Hv(v, **inputs, **P)
    fns["hvp fwd, H.v only"] = lambda: Hv(v, **inputs, **P)
    if a.backend == "llvm":
        g1 = bp.compile(loss, ps, backend="llvm", blas_threads=1)
        H1 = hvp(loss, ps, backend="llvm", mode="fwd", blas_threads=1)
        fns["gradient (1 BLAS thread)"] = lambda: g1(**inputs, **P)
        fns["hvp fwd (1 BLAS thread)"] = lambda: H1(v, **inputs, **P)
    import jax

    ji = [inputs[k] for k in inputs]
    jgrad = jax.jit(jax.grad(jf))
    jhvp = jax.jit(lambda p, v: jax.jvp(lambda q: jax.grad(jf)(q, *ji), (p,), (v,))[1])
    jboth = jax.jit(lambda p, v: jax.jvp(lambda q: jax.grad(jf)(q, *ji), (p,), (v,)))
    fns["jax gradient"] = lambda: jax.block_until_ready(jgrad(P, *ji))
    fns["jax hvp (jvp of grad)[1]"] = lambda: jax.block_until_ready(jhvp(P, v))
    fns["jax hvp (jvp of grad), both"] = lambda: jax.block_until_ready(jboth(P, v))
    vs_ours = {"jax gradient": "gradient", "jax hvp (jvp of grad)[1]": "hvp fwd, H.v only",
               "jax hvp (jvp of grad), both": "hvp fwd"}
    # interleaved rounds, best median: the machine is shared, the minimum is the signal
    runs: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(a.rounds):
        for k, f in fns.items():
            runs[k].append(median_us(f, budget=0.3))
    best = {k: min(t) for k, t in runs.items()}
    for k, t in best.items():
        base = best["gradient (1 BLAS thread)" if "1 BLAS" in k else "gradient"]
        vs = f"; {t / best[vs_ours[k]]:.2f}x ours ({vs_ours[k]})" if k in vs_ours else ""
        print(f"{a.model} {a.backend} {k}: {t:9.1f} us  ({t / base:.2f}x gradient{vs})")
    if a.backend == "llvm":
        # CPU time of the single-thread calls: what the code costs, whatever else runs
        cpu = {k: min(_cpu_us(fns[k]) for _ in range(a.rounds))
               for k in ("gradient (1 BLAS thread)", "hvp fwd (1 BLAS thread)")}
        g1t, h1t = cpu.values()
        print(f"{a.model} llvm CPU time, 1 BLAS thread: gradient {g1t:.1f} us, hvp fwd "
              f"{h1t:.1f} us ({h1t / g1t:.2f}x gradient)")
    err = max(float(np.max(np.abs(res["fwd"][k] - res["rev"][k]))) for k in P)
    only = max(float(np.max(np.abs(res["fwd"][k] - res["hv only"][k]))) for k in P)
    print(f"max |fwd - rev| = {err:.3g}, max |fwd - H.v only| = {only:.3g}")


def _cpu_us(f, calls: int = 20) -> float:
    f()
    t0 = time.process_time()
    for _ in range(calls):
        f()
    return (time.process_time() - t0) / calls * 1e6


if __name__ == "__main__":
    main()
