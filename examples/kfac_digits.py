"""SGD, Adam and K-FAC on the digits task: steps and wall time to 95 % train accuracy.

The 64-64-10 tanh MLP of `examples/digits_mlp.py`, minibatches of 64 drawn by a seeded
permutation per epoch, one compiled train step per optimizer (`bp.train.compile_train_step`);
the train accuracy over all 1437 training images is checked every `--every` steps by one
compiled logits function. Wall time counts the steps and K-FAC's host inverse refreshes, not
compilation or the accuracy checks. K-FAC uses the true Fisher (targets sampled from the
model's softmax, a second backward sweep in the same compiled step).

    python examples/kfac_digits.py [--backend llvm] [--max-steps 3000] [--seeds 0 1 2]
    python examples/kfac_digits.py --step-cost    # ms per step of each optimizer
    python examples/kfac_digits.py --seeds 0 --plot kfac_digits.png   # accuracy curves
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import bpcompile as bp
from bpcompile import optim
from bpcompile.train import compile_train_step

sys.path.insert(0, str(Path(__file__).parent))
from digits_mlp import HIDDEN, init_params, load  # noqa: E402

BATCH = 64
TARGET = 0.95


def build(batch: int):
    x = bp.input("x", (batch, 64), "float32")
    labels = bp.input("labels", (batch,), "int32")
    W1, b1 = bp.param("W1", (64, HIDDEN)), bp.param("b1", (HIDDEN,))
    W2, b2 = bp.param("W2", (HIDDEN, 10)), bp.param("b2", (10,))
    logits = bp.dense(bp.dense(x, W1, b1, "tanh", name="1"), W2, b2, name="2")
    return bp.cross_entropy(logits, labels), logits


def optimizers(logits) -> dict:
    """Each optimizer at the best learning rate of a grid (docs/training.md): sgd {0.1, 0.3,
    1, 2, 3}, momentum {0.03, 0.1, 0.3, 0.6, 1}, adam {1e-3, 3e-3, 0.01, 0.02, 0.03}, kfac
    {0.1, 0.3, 1} x damping {0.01, 0.03, 0.1}; seeds 0 and 1."""
    return {"sgd": optim.sgd(1.0), "momentum": optim.sgd(0.3, momentum=0.9),
            "adam": optim.adam(3e-2),
            "kfac": optim.kfac(0.3, damping=3e-2, decay=0.95, inverse_every=10,
                               output=logits),
            "kfac-emp": optim.kfac(0.3, damping=3e-2, decay=0.95, inverse_every=10,
                                   fisher="empirical")}


def race(name: str, opt, loss, data: dict, acc_fn, backend: str, seed: int,
         max_steps: int, every: int) -> dict:
    """Train until the train accuracy reaches TARGET; steps and seconds spent stepping."""
    t0 = time.perf_counter()
    step = compile_train_step(loss, optimizer=opt, backend=backend, init=init_params(seed))
    compile_s = time.perf_counter() - t0
    n = len(data["labels"])
    rng = np.random.default_rng(seed)
    spent, t, acc = 0.0, 0, 0.0
    curve: list[tuple[int, float, float]] = []  # (step, seconds, train accuracy)
    while t < max_steps:
        perm = rng.permutation(n)
        for i in range(n // BATCH):
            idx = perm[i * BATCH:(i + 1) * BATCH]
            x, y = data["x"][idx], data["labels"][idx]
            t1 = time.perf_counter()
            step(x=x, labels=y)
            spent += time.perf_counter() - t1
            t += 1
            if t % every == 0:
                logits = acc_fn(x=data["x"], **step.params)["logits"]
                acc = float((logits.argmax(1) == data["labels"]).mean())
                curve.append((t, spent, acc))
                if acc >= TARGET or t >= max_steps:
                    return {"optimizer": name, "steps": t, "seconds": spent, "acc": acc,
                            "compile_s": compile_s, "reached": acc >= TARGET,
                            "curve": curve}
    return {"optimizer": name, "steps": t, "seconds": spent, "acc": acc,
            "compile_s": compile_s, "reached": False, "curve": curve}


def plot(rows: list[dict], path: str) -> None:
    """Train accuracy against steps and against seconds, one line per optimizer (seed 0 of
    the run's seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    seed = rows[0]["seed"]
    for r in (r for r in rows if r["seed"] == seed):
        c = np.array(r["curve"])
        axes[0].plot(c[:, 0], c[:, 2], label=r["optimizer"])
        axes[1].plot(c[:, 1], c[:, 2], label=r["optimizer"])
    for ax, xl in zip(axes, ("steps", "seconds stepping")):
        ax.axhline(TARGET, color="gray", lw=0.5)
        ax.set_xlabel(xl)
        ax.set_ylabel("train accuracy")
        ax.set_ylim(0.5, 1.0)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def step_cost(backend: str, rounds: int = 20, per_round: int = 20) -> dict[str, float]:
    """Median ms per compiled step of each optimizer on one fixed batch, the optimizers
    alternating in rounds in one process (so machine load hits them alike); K-FAC's
    include its host inverse refreshes (every 10 steps)."""
    data, _ = load(0)
    loss, logits = build(BATCH)
    x, y = data["x"][:BATCH], data["labels"][:BATCH]
    steps = {n: compile_train_step(loss, optimizer=o, backend=backend, init=init_params(0))
             for n, o in optimizers(logits).items()}
    times: dict[str, list[float]] = {n: [] for n in steps}
    for _ in range(rounds):
        for n, st in steps.items():
            t0 = time.perf_counter()
            for _ in range(per_round):
                st(x=x, labels=y)
            times[n].append(1e3 * (time.perf_counter() - t0) / per_round)
    return {n: float(np.median(t)) for n, t in times.items()}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="llvm")
    ap.add_argument("--max-steps", type=int, default=3000)
    ap.add_argument("--every", type=int, default=5, help="check train accuracy every N steps")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="*", default=None, help="optimizer names to run")
    ap.add_argument("--plot", default=None, help="write accuracy curves to this PNG")
    ap.add_argument("--step-cost", action="store_true",
                    help="only measure ms per step of each optimizer (alternating)")
    args = ap.parse_args(argv)
    if args.step_cost:
        for name, ms in step_cost(args.backend).items():
            print(f"{name:8s} {ms:.3f} ms / step (median of 20 rounds of 20 steps)")
        return []
    data, _ = load(0)
    full_logits = build(len(data["labels"]))[1]
    acc_fn = bp.function({"logits": full_logits}, backend=args.backend)
    rows = []
    for seed in args.seeds:
        loss, logits = build(BATCH)
        for name, opt in optimizers(logits).items():
            if args.only and name not in args.only:
                continue
            r = race(name, opt, loss, data, acc_fn, args.backend, seed, args.max_steps,
                     args.every)
            r["seed"] = seed
            rows.append(r)
            print(f"seed {seed} {name:8s} steps {r['steps']:5d}  {r['seconds']:7.3f} s  "
                  f"train acc {r['acc']:.3f}{'' if r['reached'] else ' (not reached)'}  "
                  f"(compile {r['compile_s']:.2f} s)", flush=True)
    print("\n| optimizer | steps to 95 % (median) | step time to 95 % (median) | "
          "ms / step |")
    print("|---|---|---|---|")
    for name in dict.fromkeys(r["optimizer"] for r in rows):
        rs = [r for r in rows if r["optimizer"] == name]
        steps = float(np.median([r["steps"] for r in rs]))
        secs = float(np.median([r["seconds"] for r in rs]))
        ms = 1e3 * float(np.median([r["seconds"] / r["steps"] for r in rs]))
        miss = sum(not r["reached"] for r in rs)
        note = f" ({miss} of {len(rs)} not reached)" if miss else ""
        print(f"| {name} | {steps:.0f}{note} | {secs:.3f} s | {ms:.3f} |")
    if args.plot:
        plot(rows, args.plot)
    return rows


if __name__ == "__main__":
    main()
