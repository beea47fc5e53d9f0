"""Evolution strategies step time: the population as one compiled scan vs one call per member.

The digits MLP of examples/feedback_alignment_digits.py (64-64-64-10 tanh, batch 32), 50
antithetic pairs; both EvolutionStrategy objects in one process, steps alternated, medians.

    python benchmarks/bench_es.py [--backend llvm] [--pairs 50] [--steps 7]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

from bpcompile.train import EvolutionStrategy

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "feedback_alignment_digits.py"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="llvm")
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--steps", type=int, default=7)
    a = ap.parse_args()
    spec = importlib.util.spec_from_file_location("_fa_digits", EXAMPLE)
    ex = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = ex
    spec.loader.exec_module(ex)
    train, _ = ex.load(0)
    batch = {k: v[:32] for k, v in train.items()}
    runs = {m: EvolutionStrategy(ex.build(32), pairs=a.pairs, init=ex.init_params(0),
                                 backend=a.backend, population=m) for m in ("scan", "loop")}
    times: dict[str, list[float]] = {m: [] for m in runs}
    for _ in range(a.steps + 1):  # the first round warms up
        for m, es in runs.items():
            t = time.perf_counter()
            es.step(**batch)
            times[m].append(time.perf_counter() - t)
    es = runs["scan"]
    rng = np.random.default_rng(0)
    kw = {**batch, **es.values, **{f"eps_{k}": rng.standard_normal(
        (a.pairs, *v.shape), dtype=np.float32) for k, v in es.params.items()}}
    calls = []
    for _ in range(a.steps):
        t = time.perf_counter()
        es.population_fn(**kw)
        calls.append(time.perf_counter() - t)
    for m, ts in times.items():
        print(f"population={m}: median step {1e3 * np.median(ts[1:]):.1f} ms")
    print(f"population scan call alone ({2 * a.pairs} forward passes): "
          f"{1e3 * np.median(calls):.2f} ms")


if __name__ == "__main__":
    main()
