"""Write `fn.source()` of many graphs on every backend to a directory, to diff two trees.

Usage: python benchmarks/dump_sources.py OUT_DIR [--rows]
Graphs: the benchmark models (models.py), examples/*.toml, every unary/binary elementwise op
alone before a matmul (its primitive lowering) in float32 and float64, and with --rows every
row of tests/op_table.py in both dtypes. Files: <graph>.<backend>.<stage>.txt (LLVM: optimised
and unoptimised IR), or .ERR.txt with the error. A refactoring that must not change generated
code (issue #12) shows no difference: `diff -r BEFORE AFTER`.
"""

from __future__ import annotations

import gc
import glob
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import bpcompile as bp  # noqa: E402
from bpcompile import spec  # noqa: E402
from bpcompile.ops import elementwise as ew  # noqa: E402

BACKENDS = {"numpy": ["default"], "llvm": ["default", "llvm-unoptimized"], "jax": ["default"]}


def dump(out: Path, name: str, loss, wrt) -> None:
    # Nodes are interned weakly and keep their first creator's source line, so whether an
    # earlier graph's nodes are still alive shows in comments: collect them first.
    gc.collect()
    for backend, stages in BACKENDS.items():
        try:
            fn = bp.compile(loss, wrt=wrt, backend=backend)
            for st in stages:
                src = fn.source() if st == "default" else fn.source(st)
                (out / f"{name}.{backend}.{st}.txt").write_text(src)
        except Exception as e:  # recorded, so a new failure shows up in the diff
            (out / f"{name}.{backend}.ERR.txt").write_text(repr(e))


def main(argv: list[str]) -> None:
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    import models

    for name, (loss, wrt, *_) in models.build().items():
        dump(out, f"model_{name}", loss, wrt)
    for path in sorted(glob.glob(str(ROOT / "examples" / "*.toml"))):
        m = spec.load_toml(path)
        dump(out, f"example_{Path(path).stem}", m.loss, list(m.params))
    for dt in ("float32", "float64"):
        for op in ew.UNARY:
            x, W = bp.param("x", (3, 4), dt), bp.param("W", (4, 2), dt)
            smooth = op not in ("floor", "round")
            y = ew.unary(op, x if smooth else bp.stop_gradient(x))
            dump(out, f"prim_{op}_{dt}", bp.sum(y @ W), [x, W] if smooth else [W])
        for op in ("maximum", "minimum", "pow"):
            x, y, W = (bp.param(k, s, dt) for k, s in (("x", (3, 4)), ("y", (3, 4)), ("W", (4, 2))))
            dump(out, f"prim_{op}_{dt}", bp.sum(ew.binary(op, x, y) @ W), [x, y, W])
    if "--rows" in argv:
        import op_table as T

        for row in T.ROWS:
            for dt in ("float32", "float64"):
                P, _, _, loss, _ = T.build(row, dt)
                dump(out, f"row_{row.name}_{dt}", loss, list(P.values()))
    print(f"{len(os.listdir(out))} files in {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
