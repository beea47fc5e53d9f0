"""MAML on sinusoid regression (Finn, Abbeel & Levine 2017, section 5.1), compiled end to end.

Each task is y = A sin(x - phase) with A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5]; a task
gives K = 10 support points to adapt on and K query points to score the adapted model. The
model is a 1-40-40-1 ReLU MLP. The inner loop is `bp.fori_loop` over SGD steps (alpha = 0.01)
whose body calls `bp.grad` of the support loss; the meta-loss is the query loss after
adaptation, averaged over a meta-batch of tasks, and its gradient - through the inner loop and
the inner gradients (second order), or with the inner gradients under `bp.stop_gradient`
(first-order MAML) - drives Adam. Loss, meta-gradient and Adam update are one compiled train
step on any backend.

The meta-batch is vectorised as `jax.vmap` would: every task adapts its own copy of the
parameters, stacked on a leading task axis, and the inner gradient is taken of the sum of the
task losses, which gives each copy its own task's gradient (the losses are independent).

    python examples/maml_sinusoid.py [--iterations 1000] [--inner-steps 1] [--first-order]
                                     [--backend numpy|llvm|jax] [--meta-batch 25]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import bpcompile as bp
from bpcompile import optim

HIDDEN = 40
SHAPES = {"W1": (1, HIDDEN), "b1": (HIDDEN,), "W2": (HIDDEN, HIDDEN), "b2": (HIDDEN,),
          "W3": (HIDDEN, 1), "b3": (1,)}


def mlp(p: dict, x: bp.Node) -> bp.Node:
    """The 1-H-H-1 ReLU MLP; p's arrays may carry a leading task axis (then x does too)."""
    h = bp.relu(x @ p["W1"] + p["b1"])
    h = bp.relu(h @ p["W2"] + p["b2"])
    return h @ p["W3"] + p["b3"]


def per_task(w: bp.Node, tasks: int) -> bp.Node:
    """One copy of a parameter per task: (tasks, ...) weights, (tasks, 1, n) biases."""
    lead = (1,) * (3 - w.ndim)
    return bp.broadcast_to(bp.reshape(w, lead + w.shape), (tasks,) + lead[1:] + w.shape)


def build(tasks: int, k: int = 10, inner_steps: int = 1, alpha: float = 0.01,
          first_order: bool = False, hidden: int = HIDDEN, dtype: str = "float32"):
    """(meta-loss, pre-adaptation query loss, params): the graph of one meta-batch.

    Inputs xs, ys (support) and xq, yq (query) are (tasks, k, 1).
    """
    shapes = {n: tuple(hidden if d == HIDDEN else d for d in s) for n, s in SHAPES.items()}
    params = {n: bp.param(n, s, dtype) for n, s in shapes.items()}
    xs, ys = bp.input("xs", (tasks, k, 1), dtype), bp.input("ys", (tasks, k, 1), dtype)
    xq, yq = bp.input("xq", (tasks, k, 1), dtype), bp.input("yq", (tasks, k, 1), dtype)
    names = sorted(params)

    def sgd_step(step, theta):
        # the sum of the tasks' mean-squared errors: its gradient w.r.t. task t's copy is
        # task t's own gradient
        support = bp.sum(bp.mean((mlp(theta, xs) - ys) ** 2, axis=(1, 2)))
        grads = bp.grad(support, [theta[n] for n in names])
        if first_order:  # first-order MAML: the meta-gradient ignores the inner Hessian
            grads = [bp.stop_gradient(g) for g in grads]
        return {n: theta[n] - alpha * g for n, g in zip(names, grads)}

    theta = {n: per_task(w, tasks) for n, w in params.items()}
    adapted = bp.fori_loop(0, inner_steps, sgd_step, theta)
    meta_loss = bp.mean((mlp(adapted, xq) - yq) ** 2)
    pre_loss = bp.mean((mlp(params, xq) - yq) ** 2)
    return meta_loss, pre_loss, params


def sample_tasks(rng: np.random.Generator, tasks: int, k: int = 10,
                 dtype: str = "float32") -> dict:
    """A meta-batch of sinusoid tasks: support (xs, ys) and query (xq, yq), (tasks, k, 1)."""
    amp = rng.uniform(0.1, 5.0, (tasks, 1, 1))
    phase = rng.uniform(0.0, np.pi, (tasks, 1, 1))
    out = {}
    for x, y in (("xs", "ys"), ("xq", "yq")):
        pts = rng.uniform(-5.0, 5.0, (tasks, k, 1))
        out[x], out[y] = pts.astype(dtype), (amp * np.sin(pts - phase)).astype(dtype)
    return out


def init_params(seed: int = 0, hidden: int = HIDDEN, dtype: str = "float32") -> dict:
    """Glorot-uniform weights, zero biases: the outputs start near 0, the loss near the
    targets' variance (~4.2)."""
    rng = np.random.default_rng(seed)
    out = {}
    for n, s in SHAPES.items():
        s = tuple(hidden if d == HIDDEN else d for d in s)
        lim = np.sqrt(6.0 / sum(s)) if n[0] == "W" else 0.0
        out[n] = rng.uniform(-lim, lim, s).astype(dtype)
    return out


def run(iterations: int = 1000, meta_batch: int = 25, inner_steps: int = 1,
        alpha: float = 0.01, meta_lr: float = 1e-3, first_order: bool = False,
        backend: str = "numpy", seed: int = 0, eval_every: int = 100, eval_tasks: int = 100,
        hidden: int = HIDDEN, dtype: str = "float32", progress: bool = True) -> list[tuple]:
    """Meta-train; returns [(iteration, pre-adaptation, post-adaptation query loss)] on a
    fixed set of held-out tasks, evaluated every `eval_every` iterations and at the end."""
    rng = np.random.default_rng(seed)
    meta_loss, _, params = build(meta_batch, 10, inner_steps, alpha, first_order, hidden, dtype)
    step = bp.compile_train_step(meta_loss, list(params.values()), optim.adam(meta_lr),
                                 backend=backend, init=init_params(seed, hidden, dtype))
    post, pre, _ = build(eval_tasks, 10, inner_steps, alpha, first_order, hidden, dtype)
    evaluate = bp.function({"post": post, "pre": pre}, backend=backend)
    held_out = sample_tasks(np.random.default_rng(seed + 1), eval_tasks, 10, dtype)
    rows = []

    def record(it):
        r = evaluate(**held_out, **step.params)
        rows.append((it, float(r["pre"]), float(r["post"])))
        if progress:
            print(f"iteration {it:5d}  query loss before adaptation {rows[-1][1]:.4f}  "
                  f"after {inner_steps} step(s) {rows[-1][2]:.4f}")

    for it in range(iterations):
        if it % eval_every == 0:
            record(it)
        step(**sample_tasks(rng, meta_batch, 10, dtype))
    record(iterations)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--meta-batch", type=int, default=25)
    ap.add_argument("--inner-steps", type=int, default=1)
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--meta-lr", type=float, default=1e-3)
    ap.add_argument("--first-order", action="store_true")
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=100)
    a = ap.parse_args()
    t0 = time.perf_counter()
    rows = run(a.iterations, a.meta_batch, a.inner_steps, a.alpha, a.meta_lr, a.first_order,
               a.backend, a.seed, a.eval_every)
    print(f"post-adaptation query loss {rows[0][2]:.4f} -> {rows[-1][2]:.4f} "
          f"({'first' if a.first_order else 'second'}-order MAML, {a.backend}, "
          f"{time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
