"""Backprop vs feedback alignment vs direct feedback alignment vs evolution strategies on digits.

The 8×8 digits of examples/digits_mlp.py (sklearn, seeded 80/20 split), a 64-64-64-10 tanh MLP
with softmax cross-entropy. Four ways to train the same network from the same initialisation:

- backprop: the exact gradient (`bp.compile_train_step`);
- alignment: feedback alignment (Lillicrap et al. 2016), `feedback="alignment"`: each layer's
  error goes back through a fixed random B instead of Wᵀ;
- direct: direct feedback alignment (Nøkland 2016), `feedback="direct"`: the output error goes
  to every hidden layer through its own fixed random matrix;
- es: OpenAI evolution strategies (`bp.train.EvolutionStrategy`), no backward pass at all.

It prints test accuracy after a fixed number of epochs and the wall time per method, and for
FA/DFA the angle between their update and the true gradient per layer over training (the
paper's signature figure: it falls below 90°, the updates "align"). With matplotlib
(optional) `--plot FILE.png` draws accuracy and angles per epoch.

    python examples/feedback_alignment_digits.py [--epochs 20] [--backend llvm] [--plot F]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import bpcompile as bp
from bpcompile import optim
from bpcompile.ir.traverse import leaves
from bpcompile.train import EvolutionStrategy

HIDDEN = (64, 64)
METHODS = ("backprop", "alignment", "direct", "es")
PROBE = 256  # examples of the fixed batch the alignment angles are measured on


def build(batch_size: int, hidden=HIDDEN, logits_only: bool = False, dtype: str = "float32"):
    """The tanh MLP at `batch_size`: mean cross-entropy (or the logits)."""
    x = bp.input("x", (batch_size, 64), dtype)
    labels = bp.input("labels", (batch_size,), "int32")
    sizes, h = (64, *hidden, 10), x
    for i in range(len(sizes) - 1):
        W = bp.param(f"W{i + 1}", (sizes[i], sizes[i + 1]), dtype)
        b = bp.param(f"b{i + 1}", (sizes[i + 1],), dtype)
        last = i == len(sizes) - 2
        h = bp.dense(h, W, b, None if last else "tanh", name=str(i + 1))
    return h if logits_only else bp.cross_entropy(h, labels)


def load(seed: int = 0, dtype: str = "float32"):
    """(train, test) dicts of {"x", "labels"}: sklearn's digits, split 80/20 by `seed`."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16.0).astype(dtype), d.target.astype(np.int32)
    perm = np.random.default_rng(seed).permutation(len(y))
    te, tr = perm[:len(y) // 5], perm[len(y) // 5:]
    return {"x": x[tr], "labels": y[tr]}, {"x": x[te], "labels": y[te]}


def init_params(seed: int = 0, hidden=HIDDEN, dtype: str = "float32") -> dict:
    """Glorot-uniform weights, zero biases: every method starts from these."""
    rng, sizes, out = np.random.default_rng(seed), (64, *hidden, 10), {}
    for i in range(len(sizes) - 1):
        lim = np.sqrt(6.0 / (sizes[i] + sizes[i + 1]))
        out[f"W{i + 1}"] = rng.uniform(-lim, lim, (sizes[i], sizes[i + 1])).astype(dtype)
        out[f"b{i + 1}"] = np.zeros(sizes[i + 1], dtype)
    return out


class Accuracy:
    """Test-set accuracy of params, by the network built at the test-set size."""

    def __init__(self, data: dict, hidden, backend: str):
        self.data = data
        logits = build(len(data["labels"]), hidden, logits_only=True)
        self.fn = bp.function({"logits": logits}, backend=backend)

    def __call__(self, params: dict) -> float:
        out = np.asarray(self.fn(x=self.data["x"], **params)["logits"])
        return float((out.argmax(axis=1) == self.data["labels"]).mean())


class Angles:
    """Per-layer angle (degrees) between a feedback-alignment update and the true gradient,
    both at the same params on one fixed probe batch (same seed: the train step's B)."""

    def __init__(self, probe: dict, mode: str, seed: int, hidden, backend: str):
        loss = build(len(probe["labels"]), hidden)
        wrt = leaves([loss], ops=("param",))
        self.names = [w.name for w in wrt if w.name.startswith("W")]
        self.exact = bp.compile(loss, wrt, backend)
        self.fa = bp.compile(loss, wrt, backend, feedback=mode, feedback_seed=seed)
        self.probe = probe

    def __call__(self, params: dict) -> dict[str, float]:
        g = self.exact(**self.probe, **params)[1]
        f = self.fa(**self.probe, **params)[1]
        return {k: angle(np.asarray(f[k]), np.asarray(g[k])) for k in self.names}


def angle(a: np.ndarray, b: np.ndarray) -> float:
    """The angle between two arrays as vectors, in degrees."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    c = a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300)
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def train_method(method: str, train: dict, test: dict, epochs: int = 20, batch_size: int = 32,
                 lr: float = 2e-3, seed: int = 0, backend: str = "numpy", hidden=HIDDEN,
                 es_pairs: int = 50, es_sigma: float = 0.02, es_lr: float = 0.02) -> dict:
    """Train one method for `epochs`; returns its accuracy per epoch, final test accuracy,
    compile and training wall time, and (FA/DFA) the alignment angles per epoch."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: choose from {METHODS}")
    t0 = time.perf_counter()
    loss, init = build(batch_size, hidden), init_params(seed, hidden)
    accuracy = Accuracy(test, hidden, backend)
    angles = None
    if method == "es":
        runner = EvolutionStrategy(loss, sigma=es_sigma, pairs=es_pairs, init=init,
                                   optimizer=optim.adam(es_lr), seed=seed, backend=backend)
        step = runner.step
    else:
        feedback = None if method == "backprop" else method
        runner = bp.compile_train_step(loss, optimizer=optim.adam(lr), backend=backend,
                                       init=init, feedback=feedback, feedback_seed=seed)
        step = runner
        if feedback:
            probe = {k: v[:PROBE] for k, v in train.items()}
            angles = Angles(probe, feedback, seed, hidden, backend)
    compile_s = time.perf_counter() - t0
    out: dict = {"method": method, "accuracy": [], "angles": [], "compile_s": compile_s}
    n, rng, train_s = len(train["labels"]), np.random.default_rng(seed), 0.0
    for _ in range(epochs):
        perm = rng.permutation(n)
        t1 = time.perf_counter()
        for i in range(0, n - batch_size + 1, batch_size):
            idx = perm[i:i + batch_size]
            step(x=train["x"][idx], labels=train["labels"][idx])
        train_s += time.perf_counter() - t1
        params = {k: np.array(v) for k, v in runner.params.items()}
        out["accuracy"].append(accuracy(params))
        if angles is not None:
            out["angles"].append(angles(params))
    out["train_s"], out["test_accuracy"] = train_s, out["accuracy"][-1]
    return out


def table(results: list[dict], epochs: int) -> str:
    rows = [f"| method | test accuracy after {epochs} epochs | train s | compile s | "
            "final angle to gradient (W1, W2) |", "|---|---|---|---|---|"]
    for r in results:
        ang = ", ".join(f"{r['angles'][-1][k]:.0f}°" for k in ("W1", "W2")) if r["angles"] \
            else "—"
        rows.append(f"| {r['method']} | {r['test_accuracy']:.3f} | {r['train_s']:.2f} | "
                    f"{r['compile_s']:.2f} | {ang} |")
    return "\n".join(rows)


def plot(results: list[dict], path: str) -> str | None:
    """Accuracy per epoch and FA/DFA alignment angles per layer; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        ax1.plot(range(1, len(r["accuracy"]) + 1), r["accuracy"], label=r["method"])
        for k in (r["angles"][0] if r["angles"] else {}):
            ax2.plot(range(1, len(r["angles"]) + 1), [a[k] for a in r["angles"]],
                     label=f"{r['method']} {k}")
    ax1.set(xlabel="epoch", ylabel="test accuracy", title="digits, 64-64-64-10 tanh MLP")
    ax2.axhline(90, color="gray", lw=0.8, ls="--")
    ax2.set(xlabel="epoch", ylabel="angle to the true gradient (°)",
            title="alignment of the feedback updates")
    ax1.legend()
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--plot", default=None, metavar="FILE.png")
    a = ap.parse_args()
    train, test = load(a.seed)
    results = []
    for m in a.methods.split(","):
        results.append(train_method(m, train, test, a.epochs, a.batch_size, a.lr, a.seed,
                                    a.backend))
        print(f"{m}: test accuracy {results[-1]['test_accuracy']:.3f}", flush=True)
    print(table(results, a.epochs))
    if a.plot:
        done = plot(results, a.plot)
        print(f"wrote {done}" if done else "matplotlib is not installed: no plot")


if __name__ == "__main__":
    main()
