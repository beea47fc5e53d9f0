"""Per-loop unroll decision on the LLVM backend (issue #14): outer loops that run more than
loops.UNROLL_OUTER_MAX times, in nests of more than UNROLL_NEST_MIN iterations, carry
`llvm.loop.unroll.disable`; inner loops and small outer loops or nests stay LLVM's choice.
The decision shrinks the code and never changes an elementwise or matmul result; reductions
(reassociable by design) agree to rounding."""

from __future__ import annotations

import re

import numpy as np
import pytest

import bpcompile as bp
from bpcompile.backends.llvm import loops

pytest.importorskip("llvmlite")

DISABLE = "llvm.loop.unroll.disable"


def program(rows: int, cols: int = 64):
    """An elementwise map, sums (loop nests: rows outer, cols inner) and a product."""
    x, w = bp.input("x", (rows, cols)), bp.param("w", (cols, 4))
    h = bp.tanh(x) * 2.0 + 1.0
    outputs = {"h": h, "colsum": bp.sum(h, axis=0), "total": bp.sum(h), "p": h @ w}
    r = np.random.default_rng(rows)
    args = {"x": r.standard_normal((rows, cols)).astype(np.float32),
            "w": r.standard_normal((cols, 4)).astype(np.float32)}
    return outputs, args


def compiled(monkeypatch, outputs, limit):
    monkeypatch.setattr(loops, "UNROLL_OUTER_MAX", limit)
    return bp.function(outputs, backend="llvm", cache=False)


def function_lines(ir_text: str) -> int:
    return sum(1 for line in ir_text.splitlines() if line.startswith("  "))


def check_marks(ir_text: str, expected: int):
    marked = re.findall(r"^\s*br i1 .*!llvm\.loop (!\d+)", ir_text, re.M)
    assert len(marked) == expected, marked
    for ref in marked:  # a self-referencing, distinct loop ID naming the option
        m = re.search(rf"^{ref} = distinct !{{ {ref}, (!\d+) }}", ir_text, re.M)
        assert m, ref
        assert re.search(rf'^{m.group(1)} = !{{ !"{DISABLE}" }}', ir_text, re.M)


def test_outer_loops_over_the_limit_are_marked(monkeypatch):
    outputs, _ = program(32)
    fn = compiled(monkeypatch, outputs, 8)
    text = fn.source("llvm-unoptimized")
    # the outer loops of nests over 1024 iterations: each sum's 32 rows (of 64) and the
    # product's 32 rows (m); its k loop (64 x 4 n) is small, the elementwise map one flat
    # loop, and no innermost loop is marked
    assert DISABLE in text
    check_marks(text, 3)
    # 4 x 8 nests stay LLVM's choice, as does every loop with the decision off
    small, _ = program(4, 8)
    assert DISABLE not in compiled(monkeypatch, small, 8).source("llvm-unoptimized")
    assert DISABLE not in compiled(monkeypatch, outputs, None).source("llvm-unoptimized")


def test_decision_shrinks_code_and_keeps_results(monkeypatch):
    outputs, args = program(32)
    free = compiled(monkeypatch, outputs, None)
    kept = compiled(monkeypatch, outputs, 8)
    # LLVM honoured the marks: the outer loops were fully unrolled without them
    assert function_lines(kept.source("llvm")) < function_lines(free.source("llvm"))
    a, b = free(**args), kept(**args)
    ref = bp.function(outputs, backend="numpy")(**args)
    for k in ("h", "p"):  # no reassociation allowed: bit-identical
        assert np.array_equal(a[k], b[k]), k
    for k in ("colsum", "total"):  # reductions are reassociable (loops.REDUCE_FLAGS)
        np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-4)
    for k in ref:
        np.testing.assert_allclose(b[k], ref[k], rtol=1e-5, atol=1e-5)


def test_gradients_unchanged_by_the_decision(monkeypatch):
    x, y = bp.input("x", (32, 16)), bp.input("y", (32, 16))
    W, c = bp.param("W", (16, 16)), bp.param("c", (16,))
    loss = bp.mean((x + bp.tanh(x @ W + c) - y) ** 2)
    r = np.random.default_rng(0)
    args = {k: r.standard_normal(s).astype(np.float32)
            for k, s in (("x", (32, 16)), ("y", (32, 16)), ("W", (16, 16)), ("c", (16,)))}
    results = []
    for limit in (None, 8):
        monkeypatch.setattr(loops, "UNROLL_OUTER_MAX", limit)
        results.append(bp.compile(loss, [W, c], backend="llvm", cache=False)(**args))
    (v0, g0), (v1, g1) = results
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    for k in g0:
        np.testing.assert_allclose(g1[k], g0[k], rtol=1e-5, atol=1e-6)
