"""XOR learned by a 2-2-1 sigmoid network, as in Rumelhart, Hinton & Williams (1986).

The network: h = σ(x W1 + b1), o = σ(h W2 + b2), error E = ½ Σ (o − y)² over the four
patterns, trained full-batch by gradient descent with momentum (Δw(t) = −ε ∂E/∂w + α Δw(t−1),
ε = 0.5, α = 0.9, the values used in the PDP chapter), from uniform random weights in [−1, 1].
A run has converged when every output is within 0.1 of its target. The paper notes that such a
network can settle in a local minimum; over 20 seeds we report how many epochs each run takes
and the fraction that never converge.

    python examples/xor_1986.py [--seeds 20] [--max-epochs 10000] [--backend numpy]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import bpcompile as bp
from bpcompile import optim
from bpcompile.train import compile_train_step

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
Y = np.array([[0], [1], [1], [0]], dtype=np.float64)
SHAPES = {"W1": (2, 2), "b1": (2,), "W2": (2, 1), "b2": (1,)}


def build():
    """The 2-2-1 network: (error E, output o, params)."""
    x = bp.input("x", (4, 2), "float64")
    y = bp.input("y", (4, 1), "float64")
    p = {k: bp.param(k, s, "float64") for k, s in SHAPES.items()}
    h = bp.dense(x, p["W1"], p["b1"], "sigmoid", name="1")
    o = bp.dense(h, p["W2"], p["b2"], "sigmoid", name="2")
    E = (0.5 * bp.sum(bp.square(o - y))).named("E")
    return E, o, list(p.values())


def init_params(seed: int, scale: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    return {k: rng.uniform(-scale, scale, s) for k, s in SHAPES.items()}


def run(seeds: int = 20, max_epochs: int = 10000, lr: float = 0.5, momentum: float = 0.9,
        tol: float = 0.1, backend: str = "numpy", check_every: int = 10, verbose: bool = True):
    """Train one network per seed; return {seed: epochs to converge, or None if stuck}."""
    E, o, params = build()
    step = compile_train_step(E, params, optim.momentum(lr, momentum), backend=backend,
                              init=init_params(0), check_finite=False)
    forward = bp.function({"o": o}, backend=backend)
    results = {}
    for seed in range(seeds):
        step.reset(init_params(seed))
        epochs = None
        for epoch in range(1, max_epochs + 1):
            step(x=X, y=Y)
            if epoch % check_every == 0:
                out = forward(x=X, **step.params)["o"]
                if np.abs(out - Y).max() < tol:
                    epochs = epoch
                    break
        results[seed] = epochs
        if verbose:
            out = forward(x=X, **step.params)["o"].ravel()
            status = f"converged in {epochs:5d} epochs" if epochs else "stuck (local minimum)"
            print(f"seed {seed:2d}: {status}   outputs {np.round(out, 3)}")
    return results


def summarize(results: dict) -> dict:
    done = [e for e in results.values() if e is not None]
    return {"seeds": len(results), "converged": len(done),
            "stuck_fraction": 1.0 - len(done) / len(results),
            "median_epochs": float(np.median(done)) if done else None,
            "min_epochs": min(done) if done else None, "max_epochs": max(done) if done else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--max-epochs", type=int, default=10000)
    ap.add_argument("--backend", default="numpy")
    a = ap.parse_args()
    t0 = time.perf_counter()
    s = summarize(run(a.seeds, a.max_epochs, backend=a.backend))
    print(f"\n{s['converged']}/{s['seeds']} converged; median {s['median_epochs']} epochs "
          f"(range {s['min_epochs']}..{s['max_epochs']}); stuck fraction "
          f"{s['stuck_fraction']:.2f}; {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
