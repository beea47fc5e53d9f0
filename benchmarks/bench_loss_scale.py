"""Per-step cost of float16 loss scaling: a 784-256-10 MLP train step (batch 64, Adam) in
float32, float16 without scaling, and float16 with a static and a dynamic scale.

    python benchmarks/bench_loss_scale.py [--backend numpy|llvm|jax] [--steps 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import bpcompile as bp


def _step(backend: str, precision: str | None, loss_scale):
    x, lab = bp.input("x", (64, 784)), bp.input("lab", (64,), "int32")
    W1, b1 = bp.param("W1", (784, 256)), bp.param("b1", (256,))
    W2, b2 = bp.param("W2", (256, 10)), bp.param("b2", (10,))
    loss = bp.cross_entropy(bp.tanh(x @ W1 + b1) @ W2 + b2, lab)
    return bp.compile_train_step(loss, None, bp.optim.adam(1e-3), backend,
                                 precision=precision, loss_scale=loss_scale)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    r = np.random.default_rng(0)
    batch = {"x": r.normal(size=(64, 784)).astype(np.float32),
             "lab": r.integers(0, 10, 64).astype(np.int32)}
    for name, prec, ls in [("float32", None, None), ("float16", "float16", None),
                           ("float16 static 1024", "float16", 1024.0),
                           ("float16 dynamic", "float16", "dynamic")]:
        st = _step(args.backend, prec, ls)
        for _ in range(5):
            st(**batch)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(args.steps):
                st(**batch)
            best = min(best, (time.perf_counter() - t0) / args.steps)
        print(f"{args.backend:6s} {name:22s} {best * 1e6:9.1f} us/step")


if __name__ == "__main__":
    main()
