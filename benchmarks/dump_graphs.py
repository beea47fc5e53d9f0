"""Dump the final graph (fn.graph()) and generated source of every benchmark model and every
examples/*.toml spec, to check that a refactoring leaves them unchanged.

Usage: python benchmarks/dump_graphs.py OUT.txt [--stages] [--backends numpy,jax]
Run it on two commits and `diff` the outputs. Source comments (the user's line a statement came
from) are kept; `diff <(sed 's/  *#.*//' a) <(sed 's/  *#.*//' b)` compares code only.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_ENABLE_X64", "1")  # the float64 examples on the jax backend
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from models import build  # noqa: E402

import bpcompile as bp  # noqa: E402
from bpcompile import spec  # noqa: E402


def _dump(fn, stages: bool) -> str:
    text = fn.graph()
    if stages:
        text += "".join(f"\n-- stage {s.name}\n{fn.graph(s.name)}" for s in fn.stages)
    return text + "\n-- source\n" + fn.source()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out")
    ap.add_argument("--stages", action="store_true", help="also every intermediate stage")
    ap.add_argument("--backends", default="numpy,jax")
    a = ap.parse_args(argv)
    parts = []
    for backend in a.backends.split(","):
        for name, (loss, wrt, *_) in build().items():
            fn = bp.compile(loss, wrt=wrt, backend=backend)
            parts.append(f"######## {backend} {name}\n{_dump(fn, a.stages)}")
        for path in sorted((ROOT / "examples").glob("*.toml")):
            fn = spec.load(path).compile(backend)
            parts.append(f"######## {backend} {path.name}\n{_dump(fn, a.stages)}")
    Path(a.out).write_text("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
