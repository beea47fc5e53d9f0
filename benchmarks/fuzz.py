"""Differential fuzzing at scale: random graphs on every backend, against each other and JAX.

Usage: python benchmarks/fuzz.py [--n 1000] [--start 0] [--out fuzz-out] [--shrink 3]

Graph i is `graph_recipes.generate(start + i)`: one recipe, built once, compiled on the numpy,
llvm and jax backends and differentiated by jax.grad of its forward graph (the `bp.check`
oracle); every pair of the four is compared (value, gradient shapes, dtypes and values; crashes
count too). The run prints graphs tried per backend, feature coverage and disagreements by
class, and writes under --out, per disagreeing graph, `seed-<seed>.json` (recipe, seed,
findings) and `seed-<seed>.py` (a reproducer), plus for the first --shrink graphs of each class
a minimised reproducer `min-<class>-<seed>.py`, and `summary.json`. Exit status 1 when anything
disagreed. Run it niced: it compiles ~4 programs per graph (about 1 s a graph on one core).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import graph_recipes as gr  # noqa: E402


def _slug(cls: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", cls.lower()).strip("-")[:60]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="graphs (each on every backend)")
    ap.add_argument("--start", type=int, default=0, help="first seed")
    ap.add_argument("--out", default="fuzz-out", help="directory for reproducers")
    ap.add_argument("--shrink", type=int, default=3,
                    help="minimise this many graphs per disagreement class (0: none)")
    ap.add_argument("--budget", type=int, default=40, help="shrinking tries per graph")
    ap.add_argument("--backends", default=",".join(gr.BACKENDS))
    a = ap.parse_args(argv)
    backends = tuple(b for b in a.backends.split(",") if b)
    # A private object cache: the run neither reads nor fills the user's.
    os.environ.setdefault("BPCOMPILE_CACHE_DIR", tempfile.mkdtemp(prefix="bpfuzz-cache-"))
    import jax

    jax.config.update("jax_enable_x64", True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    tried = collections.Counter()  # backend -> graphs compiled and run (or attempted)
    crashed = collections.Counter()
    by_class = collections.defaultdict(list)  # class -> seeds
    coverage = collections.Counter()
    dtypes = collections.Counter()
    t0 = time.perf_counter()
    for i in range(a.n):
        seed = a.start + i
        recipe = gr.generate(seed)
        res = gr.run_recipe(recipe, backends)
        dtypes[recipe["dtype"]] += 1
        coverage.update(gr.features(recipe))
        for name, o in res["outcomes"].items():
            tried[name] += 1
            crashed[name] += not o.ok
        if res["findings"]:
            for cls in dict.fromkeys(c for c, _ in res["findings"]):
                by_class[cls].append(seed)
            rec = {"seed": seed, "recipe": repr(recipe),
                   "findings": [list(f) for f in res["findings"]]}
            (out / f"seed-{seed}.json").write_text(json.dumps(rec, indent=1))
            (out / f"seed-{seed}.py").write_text(gr.reproducer(recipe))
        if (i + 1) % 50 == 0 or i + 1 == a.n:
            dt = time.perf_counter() - t0
            print(f"[{i + 1}/{a.n}] {dt:.0f} s, {sum(len(v) for v in by_class.values())} "
                  f"findings in {len({s for v in by_class.values() for s in v})} graphs",
                  flush=True)

    print(f"\ngraphs: {a.n} (seeds {a.start}..{a.start + a.n - 1}; "
          + ", ".join(f"{k} {v}" for k, v in sorted(dtypes.items()))
          + f") in {time.perf_counter() - t0:.0f} s")
    print("graphs tried per backend (crashed):")
    for name in list(backends) + ["jax.grad"]:
        print(f"  {name:9s} {tried[name]:6d}  ({crashed[name]})")
    print("feature coverage (graphs using it):")
    for feat, k in sorted(coverage.items()):
        print(f"  {feat:24s} {k:6d}")
    print(f"disagreements by class ({len({s for v in by_class.values() for s in v})} graphs):")
    for cls, seeds in sorted(by_class.items(), key=lambda kv: -len(kv[1])):
        print(f"  {len(seeds):5d}  {cls}   e.g. seeds {seeds[:5]}")
    if not by_class:
        print("  none")
    summary = {"graphs": a.n, "start": a.start, "tried": dict(tried), "crashed": dict(crashed),
               "dtypes": dict(dtypes), "coverage": dict(coverage),
               "classes": {k: v for k, v in by_class.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    # Minimise a few graphs per class, re-running only the backends the class names (and the
    # jax.grad oracle, the other side of most comparisons).
    minimal = {}
    for cls, seeds in sorted(by_class.items()):
        sides = [b for b in backends if re.search(rf"\b{b}\b(?!\.grad)", cls)]
        if "(all)" in cls or not sides:
            sides = list(backends)
        for seed in seeds[: a.shrink]:
            def still_fails(cand, cls=cls, sides=sides):
                found = gr.run_recipe(cand, sides)["findings"]
                return any(c == cls for c, _ in found)

            small = gr.shrink(gr.generate(seed), still_fails, budget=a.budget)
            path = out / f"min-{_slug(cls)}-{seed}.py"
            path.write_text(gr.reproducer(small))
            m = {"seed": seed, "tree": repr(small["tree"]), "base": small["base"],
                 "dtype": small["dtype"], "ce_labels": small["ce_labels"], "file": path.name}
            minimal.setdefault(cls, []).append(m)
            print(f"minimal for {cls!r} (seed {seed}): {m['dtype']} base "
                  f"{tuple(m['base'])} tree {m['tree']}  ({path})", flush=True)
    summary["minimal"] = minimal
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 1 if by_class else 0


if __name__ == "__main__":
    sys.exit(main())
