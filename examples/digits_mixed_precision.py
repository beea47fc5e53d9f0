"""The digits MLP of digits_mlp.py trained in float32 and in bfloat16 mixed precision.

Mixed precision (docs/dtypes.md): float32 master weights, the forward and backward passes in
bfloat16 on casts of them, sums, logs and the loss head in float32. The claim of issue 15:
the bfloat16 run reaches the float32 run's test accuracy within 1 point. Same data, split,
init, optimizer and batch order for both runs; test accuracy is measured by each run's own
forward pass (bfloat16 for the mixed run).

    python examples/digits_mixed_precision.py [--epochs 30] [--backend numpy|llvm|jax]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import bpcompile as bp
from bpcompile import optim, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digits_mlp  # noqa: E402  (the model, data and init of the float32 example)


def accuracy(params: dict, data: dict, backend: str, precision: str | None) -> float:
    logits = digits_mlp.build(len(data["labels"]), logits_only=True)
    fn = bp.function({"logits": logits}, backend=backend, precision=precision)
    out = np.asarray(fn(x=data["x"], **params)["logits"], np.float32)
    return float((out.argmax(axis=1) == data["labels"]).mean())


def run(epochs: int = 30, batch_size: int = 32, lr: float = 3e-3, seed: int = 0,
        backend: str = "numpy", progress: bool = False) -> dict:
    """{precision: (history, test accuracy)} for "float32" and "bfloat16"."""
    train_data, test_data = digits_mlp.load(seed)
    steps = epochs * (len(train_data["labels"]) // batch_size)
    out = {}
    for precision in ("float32", "bfloat16"):
        hist = train.fit(digits_mlp.build, train_data, epochs=epochs, batch_size=batch_size,
                         optimizer=optim.adam(optim.cosine_decay(lr, steps, alpha=0.05)),
                         seed=seed, init=digits_mlp.init_params(seed), progress=progress,
                         backend=backend, precision=precision)
        out[precision] = (hist, accuracy(hist.params, test_data, backend, precision))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="numpy")
    a = ap.parse_args()
    t0 = time.perf_counter()
    res = run(a.epochs, a.batch_size, seed=a.seed, backend=a.backend)
    for precision, (hist, acc) in res.items():
        print(f"{precision:9s} final train loss {hist.loss[-1]:.4f}  test accuracy {acc:.4f}")
    gap = 100 * (res["float32"][1] - res["bfloat16"][1])
    print(f"bfloat16 - float32: {-gap:+.2f} points ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
