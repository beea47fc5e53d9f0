"""Constant folding's evaluator (rewrite/evaluate.py) computes, bit for bit, what the NumPy
backend computes for the same node: folded values end up in generated code."""

from __future__ import annotations

import numpy as np
import op_table as T
import pytest

import bpcompile as bp
from bpcompile.backends.numpy.codegen import evaluate as backend_evaluate
from bpcompile.ir.node import make
from bpcompile.ir.traverse import toposort
from bpcompile.ops.leaves import const
from bpcompile.rewrite.evaluate import EVAL, can_evaluate, evaluate


def assert_same(n):
    ours = evaluate(n)
    (ref,) = backend_evaluate([n], {})
    assert ours.dtype == ref.dtype and ours.shape == ref.shape, n
    assert ours.tobytes() == ref.tobytes(), f"{n.op}: {ours} != {ref}"


def on_constants(n, values):
    return make(n.op, [const(values[i], i.dtype) for i in n.inputs], **dict(n.attrs))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_folded_op_of_the_op_table_matches_the_numpy_backend(dtype):
    seen = set()
    for row in T.ROWS:
        _, _, f, loss, values = T.build(row, dtype)
        # a tuple node (scan, custom_jvp) is no output: its result projections are
        order = [n for n in toposort([loss]) if n.results is None and n.size <= 4096]
        inner = [n for n in order if n.inputs]
        computed = dict(zip(inner, backend_evaluate(inner, values)))
        computed.update({n: np.asarray(values[n.attr("name")], n.dtype)
                         for n in order if n.op in ("input", "param")})
        computed.update({n: n.attr("value").array for n in order if n.op == "const"})
        for n in inner:
            if can_evaluate(n) and all(i in computed for i in n.inputs):
                assert_same(on_constants(n, computed))
                seen.add(n.op)
    assert len(seen) > 30, sorted(set(EVAL) - seen)


@pytest.mark.parametrize(
    "build",
    [  # a 0-d constant next to an array is a weak Python scalar in the generated source
        lambda: const(np.float32(0.1)) * const(np.linspace(0, 1, 5).astype(np.float32)),
        lambda: const(np.int32(3)) + const(np.arange(5, dtype=np.int32)),
        lambda: const(np.float32(3.5)) / const(np.linspace(1, 2, 5).astype(np.float32)),
        lambda: const(np.float32(1.7)) ** const(np.float32(0.3)),
        lambda: bp.exp(const(np.float32(0.1))),
        lambda: bp.where(const(True), const(np.ones(3, np.float32)), const(np.float32(2.0))),
        lambda: bp.sigmoid(const(np.array([-800.0, 0.0, 30.0], np.float32))),
        lambda: bp.one_hot(const(np.array([0, 2, 1], np.int32)), 3),
    ],
)
def test_mixed_and_scalar_constants_match_the_numpy_backend(build):
    n = build()
    assert all(i.op == "const" for i in n.inputs) and can_evaluate(n)
    assert_same(n)
