"""cse is idempotent and its operand order is the same in every process (issue #14): the
simplify fixpoint stops after the round that confirms it, and generated code (so the on-disk
cache key) does not depend on the interpreter's string hash seed."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np

import bpcompile as bp
from bpcompile.ir.traverse import toposort
from bpcompile.rewrite.canonicalize import canonicalize, cse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def block(D: int = 8, T: int = 4):
    """A pre-norm attention block and a tanh MLP (the graph that took 4 simplify rounds)."""
    x, y = bp.input("x", (2, T, D)), bp.input("y", (2, T, D))
    names = dict(g1=(D,), c1=(D,), Wq=(D, D), Wk=(D, D), Wv=(D, D), Wo=(D, D), W1=(D, 2 * D),
                 W2=(2 * D, D))
    p = {k: bp.param(k, s) for k, s in names.items()}
    a = bp.layer_norm(x, p["g1"], p["c1"])
    h = x + bp.multi_head_attention(a, p["Wq"], p["Wk"], p["Wv"], p["Wo"], heads=2,
                                    causal=True)
    h = h + bp.tanh(h @ p["W1"]) @ p["W2"]
    return bp.mean((h - y) ** 2), list(p.values())


def commuted(n: int = 6):
    """Sums and products written in every operand order, with constants on either side."""
    a, b, c = (bp.param(k, (3,), "float64") for k in "abc")
    terms = [a * b + c, c + b * a, 2.0 * (b + a), (a + b) * 2.0, bp.maximum(c, a * b),
             bp.maximum(b * a, c)]
    return bp.sum(sum(bp.tanh(t) for t in terms[:n])), [a, b, c]


def assert_fixpoint(outputs):
    once = cse(outputs)
    twice = cse(once)
    assert all(p is q for p, q in zip(once, twice))
    return once


def test_cse_leaves_a_graph_without_commuted_twins_as_it_is():
    # nothing to merge: not rebuilt (a rebuild would cascade through everything above)
    x, w = bp.input("x", (4, 8)), bp.param("w", (8, 8))
    outs = canonicalize([bp.sum(bp.tanh(x @ w) + x)])
    assert cse(outs)[0] is outs[0]
    # a twin deep down: merged, and everything above rebuilt on it
    a, b = bp.param("a", (3,)), bp.param("b", (3,))
    (out,) = cse([bp.sum(bp.tanh(a * b) * bp.exp(b * a))])
    products = [n for n in toposort([out]) if n.op == "mul" and n.inputs[0].op == "param"]
    assert len(products) == 1


def test_cse_twice_is_cse_once():
    for loss, wrt in (block(), commuted()):
        grads = bp.grad(loss, wrt)
        outs = assert_fixpoint(canonicalize([loss, *grads]))
        # commuted spellings merged: a*b, b*a are one node; a+b, b+a too
        assert len(toposort(outs)) <= len(toposort([loss, *grads]))


def test_commuted_operands_merge_and_constants_stay_last():
    loss, _ = commuted()
    (out,) = assert_fixpoint([loss])
    ops = [n for n in toposort([out]) if n.op in ("mul", "add", "maximum")]
    products = [n for n in ops if n.op == "mul" and all(i.op == "param" for i in n.inputs)]
    assert len(products) == 1  # a*b and b*a
    assert all(n.inputs[0].op != "const" for n in ops if n.inputs[1].op != "const")
    assert len([n for n in ops if n.op == "maximum"]) == 1


def cofactor_det(A, n: int):
    """det(A) by cofactor expansion with memoised minors, in scalar ops (as
    benchmarks/bench_scalar_graphs.py): took 4 simplify rounds."""

    @functools.lru_cache(None)
    def det(rows: tuple, cols: tuple):
        if len(rows) == 1:
            return A[rows[0], cols[0]]
        acc = None
        for j, c in enumerate(cols):
            term = A[rows[0], c] * det(rows[1:], cols[:j] + cols[j + 1:])
            acc = term if acc is None else (acc + term if j % 2 == 0 else acc - term)
        return acc

    return det(tuple(range(n)), tuple(range(n)))


def test_simplify_stops_after_two_rounds_on_a_scalar_graph():
    A = bp.param("A", (8, 8), "float64")
    fn = bp.compile(cofactor_det(A, 8), wrt=[A], backend="numpy")
    assert [s.name for s in fn.stages if s.name.startswith("simplify")] == ["simplify x2"]
    a = np.random.default_rng(0).standard_normal((8, 8))
    v, g = fn(A=a)
    np.testing.assert_allclose(float(v), np.linalg.det(a), rtol=1e-12)
    np.testing.assert_allclose(g["A"], np.linalg.det(a) * np.linalg.inv(a).T, rtol=1e-10)


def test_simplify_stops_after_two_rounds():
    loss, wrt = block()
    fn = bp.compile(loss, wrt, backend="numpy")
    rounds = [s.name for s in fn.stages if s.name.startswith("simplify")]
    assert rounds in ([], ["simplify x2"])
    r = np.random.default_rng(0)
    args = {p.attr("name"): r.standard_normal(p.shape).astype(np.float32) * 0.3 for p in wrt}
    args.update(x=r.standard_normal((2, 4, 8)).astype(np.float32),
                y=r.standard_normal((2, 4, 8)).astype(np.float32))
    ref = bp.compile(loss, wrt, backend="numpy", passes=[])(**args)
    v, g = fn(**args)
    np.testing.assert_allclose(float(v), float(ref[0]), rtol=1e-5)
    for k in g:
        np.testing.assert_allclose(g[k], ref[1][k], rtol=2e-4, atol=1e-5, err_msg=k)


SCRIPT = """
import sys; sys.path.insert(0, {tests!r})
import bpcompile as bp
from test_cse_idempotent import block, commuted
for loss, wrt in (block(), commuted()):
    print(bp.compile(loss, wrt, backend="numpy").source())
"""


def test_operand_order_does_not_depend_on_the_hash_seed():
    def source(seed):
        env = dict(os.environ, PYTHONHASHSEED=str(seed), PYTHONPATH=ROOT)
        return subprocess.run([sys.executable, "-c", SCRIPT.format(tests=os.path.join(
            ROOT, "tests"))], env=env, capture_output=True, text=True, check=True).stdout

    first = source(1)
    assert "def " in first and first == source(2)


def test_identical_layers_order_operands_alike():
    """cse keeps the program's operand order: x_i @ W_i + b_i has one operand order in every
    layer (the deeper x_i must not change it), so the layers share one native kernel."""
    x = bp.input("x", (4, 8))
    h = x
    for i in range(8):
        h = h + bp.tanh(h @ bp.param(f"W{i}", (8, 8)) + bp.param(f"b{i}", (8,)))
    (out,) = assert_fixpoint(canonicalize([bp.sum(h)]))
    orders = {tuple(i.op for i in n.inputs) for n in toposort([out])
              if n.op == "add" and {i.op for i in n.inputs} == {"matmul", "param"}}
    assert len(orders) == 1
    residual = [tuple(i.op for i in n.inputs) for n in toposort([out])
                if n.op == "add" and "tanh" in {i.op for i in n.inputs}]
    assert len(residual) == 8 and len(set(residual[1:])) == 1
