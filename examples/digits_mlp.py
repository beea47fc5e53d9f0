"""The 8×8 handwritten digits that ship with scikit-learn, classified by a 64-64-10 MLP.

1797 images (no download: `sklearn.datasets.load_digits`), pixels scaled to [0, 1], a seeded
80/20 split, a tanh hidden layer and softmax cross-entropy, trained with Adam in minibatches by
`bp.train.fit`. The model is written as a function of the batch size because graph shapes are
static: `fit` trains at `batch_size` and the test accuracy is computed by the same network
built at the test-set size.

    python examples/digits_mlp.py [--epochs 30] [--batch-size 32] [--backend numpy] [--plot F]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import bpcompile as bp
from bpcompile import optim, train

HIDDEN = 64


def build(batch_size: int, dtype: str = "float32", logits_only: bool = False):
    """The MLP at `batch_size`: the mean cross-entropy loss (or the logits)."""
    x = bp.input("x", (batch_size, 64), dtype)
    labels = bp.input("labels", (batch_size,), "int32")
    W1 = bp.param("W1", (64, HIDDEN), dtype)
    b1 = bp.param("b1", (HIDDEN,), dtype)
    W2 = bp.param("W2", (HIDDEN, 10), dtype)
    b2 = bp.param("b2", (10,), dtype)
    h = bp.dense(x, W1, b1, "tanh", name="1")
    logits = bp.dense(h, W2, b2, name="2")
    return logits if logits_only else bp.cross_entropy(logits, labels)


def load(seed: int = 0, dtype: str = "float32"):
    """(train, test) dicts of {"x", "labels"} from sklearn's digits, split 80/20 by `seed`."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(dtype)
    y = d.target.astype(np.int32)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = len(y) // 5
    te, tr = perm[:n_test], perm[n_test:]
    return {"x": x[tr], "labels": y[tr]}, {"x": x[te], "labels": y[te]}


def init_params(seed: int = 0, dtype: str = "float32") -> dict:
    """Glorot-uniform weights, zero biases."""
    rng = np.random.default_rng(seed)

    def glorot(fan_in, fan_out):
        lim = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-lim, lim, (fan_in, fan_out)).astype(dtype)

    return {"W1": glorot(64, HIDDEN), "b1": np.zeros(HIDDEN, dtype),
            "W2": glorot(HIDDEN, 10), "b2": np.zeros(10, dtype)}


def accuracy(params: dict, data: dict, backend: str = "numpy") -> float:
    n = len(data["labels"])
    logits = build(n, str(data["x"].dtype), logits_only=True)
    out = bp.function({"logits": logits}, backend=backend)(x=data["x"], **params)["logits"]
    return float((out.argmax(axis=1) == data["labels"]).mean())


def run(epochs: int = 30, batch_size: int = 32, lr: float = 3e-3, seed: int = 0,
        backend: str = "numpy", progress: bool = True, plot: str | None = None):
    train_data, test_data = load(seed)
    hist = train.fit(build, train_data, epochs=epochs, batch_size=batch_size,
                     optimizer=optim.adam(optim.cosine_decay(lr, epochs * (len(
                         train_data["labels"]) // batch_size), alpha=0.05)),
                     seed=seed, validation=test_data, init=init_params(seed),
                     progress=progress, backend=backend)
    acc = accuracy(hist.params, test_data, backend)
    if plot:
        hist.plot(plot)
    return hist, acc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--plot", default=None)
    a = ap.parse_args()
    t0 = time.perf_counter()
    hist, acc = run(a.epochs, a.batch_size, a.lr, a.seed, a.backend, True, a.plot)
    print(f"test accuracy {acc:.4f} ({len(hist.epoch)} epochs, "
          f"{time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
