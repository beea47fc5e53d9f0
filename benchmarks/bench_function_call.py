"""bp.function's call path on LLVM: the native checked caller (pycall.py, taken when the first
output is a float scalar, as `train.hvp` puts the loss) against the Python path it replaces
(`Signature.bind` + ctypes), on the mlp_mnist H·v with one BLAS thread, alternated rounds.

    PYTHONPATH=. python benchmarks/bench_function_call.py [--rounds 7]
"""

from __future__ import annotations

import argparse

import numpy as np
from models import build, median_us

from bpcompile.train.second_order import hvp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    loss, ps, inputs, P = build(["mlp_mnist"])["mlp_mnist"][:4]
    r = np.random.default_rng(1)
    v = {k: r.standard_normal(x.shape).astype(x.dtype) for k, x in P.items()}
    fn = hvp(loss, ps, backend="llvm", blas_threads=1).fn
    assert fn._native is not None, "the native path was not installed"
    kw = dict(inputs, **P, **{f"v_{k}": v[k] for k in P})

    def python_path():
        first, rest = fn.impl.run(fn.signature.bind(kw, ()))
        return dict(zip(fn.names, [first] + list(rest)))

    fast = {k: np.array(x) for k, x in fn(**kw).items()}
    slow = {k: np.array(x) for k, x in python_path().items()}
    assert all(np.array_equal(fast[k], slow[k]) for k in fast), "paths disagree"
    fns = {"native": lambda: fn(**kw), "bind+ctypes": python_path}
    runs: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(a.rounds):
        for k, f in fns.items():
            runs[k].append(median_us(f, budget=0.3))
    for k, t in runs.items():
        print(f"mlp_mnist llvm hvp, {k}: median {np.median(t):.1f} us, min {min(t):.1f} us")
    d = [s - n for s, n in zip(runs["bind+ctypes"], runs["native"])]
    print(f"saving per round: median {np.median(d):.1f} us ({[round(x) for x in d]})")


if __name__ == "__main__":
    main()
