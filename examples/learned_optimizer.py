"""Learning to learn by gradient descent by gradient descent (Andrychowicz et al., 2016).

A coordinate-wise 2-layer LSTM (20 hidden units, the paper's) is meta-trained with
`bp.train.meta_train` on two tasks and compared with SGD and Adam, each at the best learning
rate of a grid, on held-out problems:

- quadratic: f(θ) = ‖Wθ − y‖², θ ∈ R^10, W and y standard normal (the paper's task); 32
  problems are optimised at once (the LSTM is coordinate-wise, so a batch of problems is
  just more coordinates);
- mlp: a 64-20-10 sigmoid MLP on a random 128-image batch of sklearn's digits, from a
  random init (the paper's MNIST network, on the digits data the other examples use).

    python examples/learned_optimizer.py --task quadratic --meta-steps 300
    python examples/learned_optimizer.py --task mlp --meta-steps 100 --horizon 10
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import bpcompile as bp
from bpcompile.train.learned import meta_train, optimizee_losses

sys.path.insert(0, str(Path(__file__).parent))

B, D = 32, 10
N, HID = 128, 20


def quadratic_task():
    def loss(th, data):
        r = bp.reshape(data["W"] @ bp.reshape(th["theta"], (B, D, 1)), (B, D)) - data["y"]
        return bp.sum(r * r) / B

    def sample(rng):
        return ({"theta": rng.normal(size=(B, D)).astype(np.float32)},
                {"W": rng.normal(size=(B, D, D)).astype(np.float32),
                 "y": rng.normal(size=(B, D)).astype(np.float32)})

    shapes = ({"theta": (B, D)}, {"W": ((B, D, D), "float32"), "y": ((B, D), "float32")})
    grids = {"sgd": (0.003, 0.01, 0.03), "adam": (0.03, 0.1, 0.3)}
    return loss, shapes, sample, grids


def mlp_task():
    from digits_mlp import load

    train, _ = load(0)

    def loss(th, data):
        h = bp.sigmoid(data["x"] @ th["W1"] + th["b1"])
        return bp.cross_entropy(h @ th["W2"] + th["b2"], data["labels"])

    def sample(rng):
        idx = rng.choice(len(train["labels"]), N, replace=False)
        theta = {"W1": rng.normal(size=(64, HID)) / 8, "b1": np.zeros(HID),
                 "W2": rng.normal(size=(HID, 10)) / np.sqrt(HID), "b2": np.zeros(10)}
        return ({k: v.astype(np.float32) for k, v in theta.items()},
                {"x": train["x"][idx], "labels": train["labels"][idx]})

    shapes = ({"W1": (64, HID), "b1": (HID,), "W2": (HID, 10), "b2": (10,)},
              {"x": ((N, 64), "float32"), "labels": ((N,), "int32")})
    grids = {"sgd": (0.3, 1.0, 3.0, 10.0), "adam": (0.003, 0.01, 0.03, 0.1, 0.3)}
    return loss, shapes, sample, grids


def compare(task: str, meta_steps: int, steps: int, seed: int, backend: str,
            horizon: int = 20) -> list[str]:
    loss, shapes, sample, grids = {"quadratic": quadratic_task, "mlp": mlp_task}[task]()
    t0 = time.perf_counter()
    res = meta_train(loss, *shapes, sample, meta_steps=meta_steps, horizon=horizon, unrolls=5,
                     hidden=20, meta_lr=3e-3, seed=seed, backend=backend)
    meta_s = time.perf_counter() - t0
    ml = res.meta_losses
    print(f"{task}: meta-loss {np.mean(ml[:10]):.3f} (first 10) -> {np.mean(ml[-10:]):.3f} "
          f"(last 10) in {meta_s:.1f} s", flush=True)
    rng = np.random.default_rng(1000 + seed)  # held-out problems
    problems = [sample(rng) for _ in range(5)]
    rows = []
    curves = {"learned": optimizee_losses(loss, *shapes, res.optimizer, problems, steps,
                                          backend)}
    for name, lrs in grids.items():
        best = None
        for lr in lrs:
            c = optimizee_losses(loss, *shapes, getattr(bp.optim, name)(lr), problems, steps,
                                 backend)
            if best is None or c[:, -1].mean() < best[1][:, -1].mean():
                best = (lr, c)
        assert best is not None
        curves[f"{name}({best[0]:g})"] = best[1]
    for name, c in curves.items():
        m = c.mean(0)
        rows.append(f"| {task} | {name} | {m[steps // 4]:.3g} | {m[steps // 2]:.3g} | "
                    f"{m[-1]:.3g} |")
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", nargs="+", default=["quadratic", "mlp"])
    ap.add_argument("--meta-steps", type=int, default=300)
    ap.add_argument("--steps", type=int, default=100, help="optimizee steps when comparing")
    ap.add_argument("--horizon", type=int, default=20, help="unrolled steps per segment")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="numpy")
    args = ap.parse_args(argv)
    rows = []
    for task in args.task:
        rows += compare(task, args.meta_steps, args.steps, args.seed, args.backend, args.horizon)
    q = args.steps
    print(f"\n| task | optimizer | loss at step {q // 4} | at {q // 2} | at {q} |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
