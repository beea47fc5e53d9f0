"""Hessian-vector products on mlp_mnist (LLVM): forward-over-reverse (jvp of the gradient)
against reverse-over-reverse (gradient of <∇L, v>) and one gradient call, each compiled once.

    PYTHONPATH=. python benchmarks/bench_hvp.py [--backend llvm] [--model mlp_mnist]
"""

from __future__ import annotations

import argparse

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
    import jax

    ji = [inputs[k] for k in inputs]
    jgrad = jax.jit(jax.grad(jf))
    jhvp = jax.jit(lambda p, v: jax.jvp(lambda q: jax.grad(jf)(q, *ji), (p,), (v,))[1])
    fns["jax gradient"] = lambda: jax.block_until_ready(jgrad(P, *ji))
    fns["jax hvp (jvp of grad)"] = lambda: jax.block_until_ready(jhvp(P, v))
    # interleaved rounds, best median: the machine is shared, the minimum is the signal
    best = {k: min(median_us(f, budget=0.3) for _ in range(a.rounds)) for k, f in fns.items()}
    for k, t in best.items():
        print(f"{a.model} {a.backend} {k}: {t:9.1f} us  ({t / best['gradient']:.2f}x gradient)")
    err = max(float(np.max(np.abs(res["fwd"][k] - res["rev"][k]))) for k in P)
    print(f"max |fwd - rev| = {err:.3g}")


if __name__ == "__main__":
    main()
