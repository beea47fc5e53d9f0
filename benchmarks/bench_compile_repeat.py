"""Median process-CPU seconds of `bp.compile` (graph build + compile, the compile-cache store
included) of one model of bench_compile_scale.py, repeated in one process, each repeat on a
freshly built graph with a fresh empty BPCOMPILE_CACHE_DIR. For before/after comparisons on a
loaded machine: run it from two checkouts alternately and compare medians.

    python benchmarks/bench_compile_repeat.py --family cnn --depth 32 --backend numpy --repeats 7
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="cnn", choices=("mlp", "transformer", "cnn"))
    ap.add_argument("--depth", type=int, default=32)
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args(argv)
    import bench_compile_scale as B
    import jax
    import jax.numpy as jnp

    import bpcompile as bp

    seconds, parts = [], {}
    for _ in range(a.repeats):
        os.environ["BPCOMPILE_CACHE_DIR"] = tempfile.mkdtemp()
        gc.collect()
        t0 = time.process_time()
        loss, wrt, _, _ = B.BUILDERS[a.family](a.depth, bp, jax, jnp)
        fn = bp.compile(loss, wrt, backend=a.backend)
        seconds.append(time.process_time() - t0)
        for k, v in fn.timings.items():
            parts.setdefault(k, []).append(v)
        del fn, loss, wrt
    med = {k: round(statistics.median(v), 3) for k, v in parts.items()}
    print(f"{a.family}-{a.depth} {a.backend}: median {statistics.median(seconds):.3f} CPU s, "
          f"min {min(seconds):.3f}; wall medians {med}")


if __name__ == "__main__":
    main()
