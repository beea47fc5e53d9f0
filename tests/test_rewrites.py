"""Each rewrite, asserted on graph structure and on values (extreme inputs for stabilisation).

Structure is read from the compiled function's stages (`fn.stages`, the graphs `fn.graph(stage)`
prints) or from a pass applied directly; values come from the NumPy backend and from JAX.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import sympy as sp
from op_table import FAST_COMPILE

import bpcompile as bp
from bpcompile.backends.numpy.codegen import evaluate
from bpcompile.ir.traverse import toposort
from bpcompile.rewrite.algebraic import algebraic
from bpcompile.rewrite.canonicalize import canonicalize, cse
from bpcompile.rewrite.fold import fold_constants
from bpcompile.rewrite.fuse import fuse
from bpcompile.rewrite.stabilize import stabilize

FLOATS = ["float32", "float64"]


def ops_of(outputs) -> list[str]:
    return [n.op for n in toposort(outputs) if n.op not in ("input", "param", "const")]


def stage(fn, name):
    (st,) = [s for s in fn.stages if s.name == name]
    return st.outputs


def graph_ops(text: str) -> list[str]:
    """Op names in fn.graph(...) text: `  name:type = op attrs args`."""
    return re.findall(r"^\s+\w+:\S+ = (\w+)", text, flags=re.M)


def edges(outputs):
    """(consumer op, producer op) pairs of a graph."""
    return {(n.op, i.op) for n in toposort(outputs) for i in n.inputs}


# ---- numerical stabilisation ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
def test_log_sigmoid_becomes_softplus_and_is_stable(dtype):
    x = bp.param("x", (4,), dtype)
    fn = bp.compile(bp.sum(bp.log(bp.sigmoid(x))), wrt=[x])
    ops = graph_ops(fn.graph("stabilize"))
    assert "softplus" in ops and "log" not in ops
    assert "softplus" in graph_ops(fn.graph("final"))
    xv = np.array([-800.0, -30.0, 0.0, 800.0], dtype)
    value, g = fn(x=xv)
    assert np.isfinite(value) and np.all(np.isfinite(g["x"]))
    np.testing.assert_allclose(value, -800.0 - 30.0 - np.log(2.0), rtol=1e-6)
    # d/dx log σ(x) = 1 - σ(x) = σ(-x)
    np.testing.assert_allclose(g["x"], [1.0, 1.0, 0.5, 0.0], atol=1e-6)
    assert g["x"].dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", FLOATS)
def test_log_one_minus_sigmoid_becomes_softplus(dtype):
    x = bp.param("x", (3,), dtype)
    fn = bp.compile(bp.sum(bp.log(1.0 - bp.sigmoid(x))), wrt=[x])
    assert "log" not in graph_ops(fn.graph("stabilize"))
    value, g = fn(x=np.array([800.0, 0.0, -800.0], dtype))
    np.testing.assert_allclose(value, -800.0 - np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(g["x"], [-1.0, -0.5, 0.0], atol=1e-6)


@pytest.mark.parametrize("dtype", FLOATS)
def test_log_of_softmax_is_log_softmax(dtype):
    z = bp.param("z", (2, 3), dtype)
    fn = bp.compile(bp.sum(bp.log(bp.softmax(z)) * bp.const(np.eye(2, 3), dtype)), wrt=[z])
    st = stage(fn, "stabilize")
    assert ("log", "exp") not in edges(st), "exp-then-log survived stabilisation"
    zv = np.array([[1000.0, 0.0, 1.0], [-1000.0, 3.0, 2.0]], dtype)
    value, g = fn(z=zv)
    ref = zv.astype(np.float64) - np.log(np.sum(np.exp(zv - zv.max(1, keepdims=True)), 1,
                                                keepdims=True)) - zv.max(1, keepdims=True)
    np.testing.assert_allclose(value, ref[0, 0] + ref[1, 1], rtol=1e-6)
    sm = np.exp(ref)
    np.testing.assert_allclose(g["z"], np.eye(2, 3) - sm, atol=1e-6)


@pytest.mark.parametrize("dtype", FLOATS)
def test_log_sum_exp_becomes_logsumexp(dtype):
    z = bp.param("z", (2, 3), dtype)
    loss = bp.sum(bp.log(bp.sum(bp.exp(z), axis=1)))
    fn = bp.compile(loss, wrt=[z])
    st = stage(fn, "stabilize")
    assert "max" in ops_of(st), "logsumexp subtracts the max"
    assert ("log", "sum") in edges(st) and ("exp", "sub") in edges(st)
    zv = np.array([[1000.0, 999.0, 0.0], [1.0, 2.0, 3.0]], dtype)
    value, g = fn(z=zv)
    z64 = zv.astype(np.float64)
    m = z64.max(1, keepdims=True)
    lse = (m + np.log(np.exp(z64 - m).sum(1, keepdims=True)))
    np.testing.assert_allclose(value, lse.sum(), rtol=1e-6)
    np.testing.assert_allclose(g["z"], np.exp(z64 - lse), atol=1e-6)


@pytest.mark.parametrize("dtype", FLOATS)
def test_user_written_softmax_is_stable_at_large_logits(dtype):
    z = bp.param("z", (2, 3), dtype)
    e = bp.exp(z)
    sm = e / bp.sum(e, axis=1, keepdims=True)
    w = bp.const(np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]), dtype)
    fn = bp.compile(bp.sum(sm * w), wrt=[z])
    zv = np.array([[1000.0, 999.0, 0.0], [-1000.0, -999.0, -1001.0]], dtype)
    value, g = fn(z=zv)
    z64 = zv.astype(np.float64)
    p = np.exp(z64 - z64.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    wv = np.asarray(w.attr("value").array, np.float64)
    # float32 resolves logits near 1000 to ~6e-5 absolute, so z - logsumexp(z) carries that
    tol = 2e-4 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(value, np.sum(p * wv), rtol=tol)
    ref_g = p * (wv - np.sum(p * wv, 1, keepdims=True))
    np.testing.assert_allclose(g["z"], ref_g, atol=tol)


@pytest.mark.parametrize("dtype", FLOATS)
def test_log1p_and_expm1_rewrites_are_accurate_near_zero(dtype):
    x = bp.param("x", (3,), dtype)
    fn = bp.compile(bp.sum(bp.log(1.0 + x)), wrt=[x])
    assert "log1p" in graph_ops(fn.graph("stabilize"))
    fn2 = bp.compile(bp.sum(bp.exp(x) - 1.0), wrt=[x])
    assert "expm1" in graph_ops(fn2.graph("stabilize"))
    xv = np.array([1e-10, 1e-12, 2e-10], dtype)
    v1, g1 = fn(x=xv)
    v2, g2 = fn2(x=xv)
    x64 = xv.astype(np.float64)
    # naive log(1 + 1e-10) is off by ~1e-7 relative in float64 and is 0 in float32
    tol = 1e-6 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(v1, np.sum(np.log1p(x64)), rtol=tol)
    np.testing.assert_allclose(v2, np.sum(np.expm1(x64)), rtol=tol)
    np.testing.assert_allclose(g1["x"], 1.0 / (1.0 + xv.astype(np.float64)), rtol=1e-6)
    np.testing.assert_allclose(g2["x"], np.exp(xv.astype(np.float64)), rtol=1e-6)


def test_log_one_plus_exp_becomes_softplus():
    x = bp.param("x", (3,), "float64")
    fn = bp.compile(bp.sum(bp.log(1.0 + bp.exp(x))), wrt=[x])
    assert "softplus" in graph_ops(fn.graph("stabilize"))
    value, g = fn(x=np.array([800.0, 0.0, -800.0]))
    np.testing.assert_allclose(value, 800.0 + np.log(2.0), rtol=1e-12)
    np.testing.assert_allclose(g["x"], [1.0, 0.5, 0.0], atol=1e-12)


def test_stabilize_pass_directly_rewrites_structure():
    x = bp.param("x", (3,), "float64")
    (out,) = stabilize([bp.log(bp.sigmoid(x))])
    assert "softplus" in ops_of([out]) and "sigmoid" not in ops_of([out])
    (out,) = stabilize([bp.log(1.0 + x)])
    assert ops_of([out]) == ["log1p"]
    (out,) = stabilize([bp.exp(x) - 1.0])
    assert ops_of([out]) == ["expm1"]


# ---- algebraic simplification ---------------------------------------------------------------


def _simplified(node):
    (out,) = algebraic([node])
    return out


def test_algebraic_identities():
    x = bp.param("x", (2, 3), "float64")
    y = bp.param("y", (3, 2), "float64")
    assert _simplified(x * 1.0) is x  # x*1 -> x
    assert _simplified(1.0 * x) is x
    assert _simplified(x + 0.0) is x  # x+0 -> x
    assert _simplified(x - 0.0) is x
    assert _simplified(x / 1.0) is x
    assert _simplified(bp.neg(bp.neg(x))) is x  # --x -> x
    assert _simplified(x.T.T) is x  # transpose of transpose
    assert _simplified(bp.transpose(bp.transpose(y, (1, 0)), (1, 0))) is y
    rr = bp.reshape(bp.reshape(x, (3, 2)), (6,))
    assert ops_of([_simplified(rr)]) == ["reshape"]  # reshape of reshape
    assert _simplified(bp.reshape(bp.reshape(x, (6,)), (2, 3))) is x
    assert _simplified(bp.where(x > 0.0, x, x)) is x
    assert ops_of([_simplified(x ** 2)]) == ["mul"]
    assert ops_of([_simplified(x ** 0.5)]) == ["sqrt"]


def test_sum_of_broadcast_becomes_multiplication():
    x = bp.param("x", (3,), "float64")
    s = bp.sum(bp.broadcast_to(x, (4, 3)), axis=0)
    out = _simplified(s)
    assert "broadcast_to" not in ops_of([out]) and "sum" not in ops_of([out])
    xv = np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(evaluate([out], {"x": xv})[0], 4 * xv)
    np.testing.assert_allclose(evaluate([s], {"x": xv})[0], 4 * xv)


def test_algebraic_rewrites_keep_values():
    x = bp.param("x", (2, 3), "float64")
    b = bp.param("b", (3,), "float64")
    expr = bp.sum((bp.neg(-x) * 1.0 + 0.0).T.T * bp.broadcast_to(b, (2, 3)) / 1.0) \
        + bp.sum(bp.reshape(bp.reshape(x, (3, 2)), (6,)) ** 2)
    out = _simplified(expr)
    assert len(ops_of([out])) < len(ops_of([expr]))
    env = {"x": np.arange(6.0).reshape(2, 3) - 2, "b": np.array([1.0, 2.0, -1.0])}
    np.testing.assert_allclose(evaluate([out], env)[0], evaluate([expr], env)[0], rtol=1e-14)


# ---- folding, CSE, fusion -------------------------------------------------------------------


def test_constant_folding_collapses_constant_subgraphs():
    x = bp.param("x", (3,), "float64")
    c = bp.exp(bp.const(np.array([0.0, 1.0, 2.0]), "float64")) * 2.0 + 1.0
    (out,) = fold_constants([x * c])
    assert ops_of([out]) == ["mul"], ops_of([out])
    (k,) = [n for n in out.inputs if n.op == "const"]
    np.testing.assert_allclose(k.attr("value").array, np.exp([0.0, 1.0, 2.0]) * 2 + 1)
    fn = bp.compile(bp.sum(x * c), wrt=[x])
    assert "exp" not in graph_ops(fn.graph("fold"))
    _, g = fn(x=np.ones(3))
    np.testing.assert_allclose(g["x"], np.exp([0.0, 1.0, 2.0]) * 2 + 1, rtol=1e-14)


def test_cse_merges_commuted_operands():
    a = bp.param("a", (3,), "float64")
    b = bp.param("b", (3,), "float64")
    expr = bp.exp(a + b) * bp.exp(b + a)
    assert ops_of([expr]).count("add") == 2 and ops_of([expr]).count("exp") == 2
    (out,) = cse(canonicalize([expr]))
    assert ops_of([out]).count("add") == 1
    assert ops_of([out]).count("exp") == 1
    env = {"a": np.array([0.1, 0.2, 0.3]), "b": np.array([1.0, -1.0, 0.5])}
    np.testing.assert_allclose(evaluate([out], env)[0], evaluate([expr], env)[0])


def test_cse_node_counts_in_compiled_stages():
    a = bp.param("a", (3,), "float64")
    b = bp.param("b", (3,), "float64")
    fn = bp.compile(bp.sum(bp.tanh(a * b) + bp.tanh(b * a)), wrt=[a, b], passes=["cse"])
    counts = {s.name: s.ops for s in fn.stages}
    assert counts["forward"]["tanh"] == 2 and counts["forward"]["mul"] == 2
    assert counts["cse"]["tanh"] == 1


def test_identical_subexpressions_are_shared_at_construction():
    x = bp.param("x", (3,), "float64")
    assert bp.exp(x) is bp.exp(x)  # hash-consing
    assert (x + 1.0) is (x + 1.0)


def test_fusion_makes_one_sympy_kernel_from_an_elementwise_chain():
    x = bp.param("x", (4,), "float64")
    y = bp.tanh(bp.exp(x) * 2.0 + 1.0) * bp.sin(x)
    (out,) = fuse([y])
    assert ops_of([out]) == ["kernel"]
    expr = out.attr("expr")
    assert isinstance(expr, sp.Expr)
    assert expr.has(sp.tanh) and expr.has(sp.exp) and expr.has(sp.sin)
    xv = np.array([-1.0, 0.0, 0.5, 2.0])
    np.testing.assert_allclose(evaluate([out], {"x": xv})[0],
                               np.tanh(np.exp(xv) * 2 + 1) * np.sin(xv), rtol=1e-14)


def test_fusion_in_compiled_function_and_generated_source():
    x = bp.param("x", (4,), "float64")
    fn = bp.compile(bp.sum(bp.tanh(bp.exp(x) * 2.0 + 1.0)), wrt=[x])
    final = graph_ops(fn.graph("final"))
    assert "kernel" in final and "tanh" not in final and "add" not in final
    bodies = [n.attr("expr") for n in toposort(fn.outputs) if n.op == "kernel"]
    assert any(b.has(sp.tanh) for b in bodies)  # forward tanh(2e + 1) is one kernel
    src = fn.source()
    assert "np.tanh" in src and "kernel" in src
    xv = np.array([-1.0, 0.0, 0.5, 0.2])
    v, g = fn(x=xv)
    np.testing.assert_allclose(v, np.sum(np.tanh(np.exp(xv) * 2 + 1)), rtol=1e-14)
    t = np.tanh(np.exp(xv) * 2 + 1)
    np.testing.assert_allclose(g["x"], (1 - t * t) * 2 * np.exp(xv), rtol=1e-12)


def test_fusion_does_not_cross_broadcasts_or_reductions():
    x = bp.param("x", (3,), "float64")
    w = bp.param("w", (2, 3), "float64")
    y = bp.sum(bp.exp(w * bp.tanh(x)), axis=1)
    (out,) = fuse([y])
    ops = ops_of([out])
    assert ops.count("sum") == 1
    # tanh(x) (shape (3,)) feeds a (2, 3) op: it must not be inlined into the consumer kernel
    kernels = [n for n in toposort([out]) if n.op == "kernel"]
    assert all(k.shape == (2, 3) for k in kernels)
    assert "tanh" in ops
    env = {"x": np.array([0.1, 0.2, 0.3]), "w": np.arange(6.0).reshape(2, 3) / 6}
    np.testing.assert_allclose(evaluate([out], env)[0], evaluate([y], env)[0], rtol=1e-14)


def test_stats_report_node_counts_per_stage():
    x = bp.param("x", (4,), "float64")
    fn = bp.compile(bp.sum(bp.tanh(bp.exp(x) * 2.0 + 1.0) * 1.0), wrt=[x])
    text = fn.stats()
    counts = {}
    for line in text.splitlines()[1:]:
        m = re.match(r"(\w[\w ]*?)\s+(\d+)\s", line)
        if m:
            counts[m.group(1)] = int(m.group(2))
    for name in ("forward", "adjoint", "canonicalize", "algebraic", "stabilize", "fold", "cse",
                 "fuse"):
        assert name in counts, (name, text)
    assert counts["forward"] == 6  # exp mul add tanh mul sum
    assert counts["fuse"] < counts["adjoint"]
    assert {s.name: s.nodes for s in fn.stages}["fuse"] == counts["fuse"]


# ---- every stage computes the same thing ----------------------------------------------------


def _rich_model(dtype="float64"):
    x = bp.input("x", (5, 4), dtype)
    labels = bp.input("labels", (5,), "int32")
    W1 = bp.param("W1", (4, 6), dtype)
    b1 = bp.param("b1", (6,), dtype)
    W2 = bp.param("W2", (6, 3), dtype)
    h = bp.tanh(x @ W1 + b1) * 1.0 + 0.0
    h = bp.concatenate([h[:, :3], bp.sigmoid(h[:, 3:])], axis=1)
    logits = h @ W2
    reg = bp.sum(bp.log(1.0 + W1 * W1)) + bp.sum(bp.exp(b1) - 1.0)
    loss = bp.cross_entropy(logits, labels) + 0.01 * reg + bp.mean(bp.log(bp.softmax(logits)))
    r = np.random.default_rng(0)
    vals = {"x": r.standard_normal((5, 4)), "labels": np.array([0, 2, 1, 1, 0], np.int32),
            "W1": r.standard_normal((4, 6)), "b1": r.standard_normal(6),
            "W2": r.standard_normal((6, 3))}
    return loss, [W1, b1, W2], vals


ALL_PASSES = ["canonicalize", "algebraic", "stabilize", "fold", "cse", "fuse"]
SUBSETS = [[], ["canonicalize"], ["algebraic"], ["stabilize"], ["fold"], ["cse"], ["fuse"],
           ["algebraic", "fuse"], ["canonicalize", "cse", "fuse"], None]


def test_every_stage_graph_evaluates_to_the_same_values():
    loss, wrt, vals = _rich_model()
    fn = bp.compile(loss, wrt=wrt)
    v, g = fn(**vals)
    ref = [v] + [g[w.name] for w in wrt]
    names = [s.name for s in fn.stages]
    for name in ["adjoint"] + ALL_PASSES:
        assert name in names
    for st in fn.stages[1:]:  # every stage after autodiff holds (loss, grads...)
        outs = evaluate(st.outputs, vals)
        for o, r in zip(outs, ref):
            np.testing.assert_allclose(o, r, rtol=1e-10, atol=1e-12, err_msg=st.name)
    (fwd,) = evaluate(fn.stages[0].outputs, vals)
    np.testing.assert_allclose(fwd, v, rtol=1e-12)
    for name in names + ["final"]:
        assert "loss" in fn.graph(name)


@pytest.mark.parametrize("passes", SUBSETS, ids=lambda p: "default" if p is None else
                         "+".join(p) or "none")
def test_pass_subsets_give_the_same_values(passes):
    loss, wrt, vals = _rich_model()
    ref_v, ref_g = bp.compile(loss, wrt=wrt, passes=[])(**vals)
    fn = bp.compile(loss, wrt=wrt, passes=passes)
    v, g = fn(**vals)
    np.testing.assert_allclose(v, ref_v, rtol=1e-12)
    for w in wrt:
        np.testing.assert_allclose(g[w.name], ref_g[w.name], rtol=1e-10, atol=1e-12)
    if passes is not None and "fuse" not in passes:
        assert "kernel" not in graph_ops(fn.graph("final"))


def test_pass_subsets_match_jax():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    loss, wrt, vals = _rich_model()
    v, g = bp.compile(loss, wrt=wrt)(**vals)

    def ref(P):
        h = jnp.tanh(vals["x"] @ P["W1"] + P["b1"])
        h = jnp.concatenate([h[:, :3], jax.nn.sigmoid(h[:, 3:])], axis=1)
        lg = h @ P["W2"]
        lsm = jax.nn.log_softmax(lg)
        ce = -jnp.mean(lsm[jnp.arange(5), vals["labels"]])
        reg = jnp.sum(jnp.log1p(P["W1"] ** 2)) + jnp.sum(jnp.expm1(P["b1"]))
        return ce + 0.01 * reg + jnp.mean(lsm)

    P = {w.name: vals[w.name] for w in wrt}
    rv, rg = jax.jit(jax.value_and_grad(ref), compiler_options=FAST_COMPILE)(P)
    np.testing.assert_allclose(v, float(rv), rtol=1e-10)
    for k in P:
        np.testing.assert_allclose(g[k], np.asarray(rg[k]), rtol=1e-9, atol=1e-12)


def test_unknown_pass_name_is_refused():
    loss, wrt, vals = _rich_model()
    with pytest.raises(ValueError, match="bogus"):
        bp.compile(loss, wrt=wrt, passes=["bogus"])


def test_fusion_that_cancels_inputs_keeps_the_shape():
    """Regression: SymPy cancels (a0 - a0)*a1 to 0; the kernel must still have a0's shape
    (it became a 0-d constant and the sum over axes (0, 1) failed at run time)."""
    p = bp.param("p", (1, 1), "float64")
    q = bp.param("q", (3, 4), "float64")
    a = bp.param("a", (4,), "float64")
    (k,) = fuse([(q - q) * 2.0 + a])
    assert k.shape == (3, 4)
    u = bp.input("u", (1, 1), "float64")
    fn = bp.compile(bp.sum((p - p) * u) + bp.sum((q - q) * 2.0 + a), wrt=[p, q, a])
    v, g = fn(p=np.ones((1, 1)), q=np.ones((3, 4)), a=np.arange(4.0), u=np.ones((1, 1)))
    assert float(v) == 18.0
    np.testing.assert_array_equal(g["p"], np.zeros((1, 1)))
    np.testing.assert_array_equal(g["q"], np.zeros((3, 4)))
    np.testing.assert_array_equal(g["a"], np.full(4, 3.0))


def test_softmax_over_a_size_one_axis_then_matmul():
    """Regression: softmax over one element folds to the constant 1; the matmul consuming it
    needs it 2-d (a 0-d constant raised 'matmul: operands must be at least 2-d')."""
    z = bp.param("z", (1, 1), "float64")
    Q = bp.param("Q", (1, 1), "float64")
    fn = bp.compile(bp.sum(bp.softmax(z) @ Q), wrt=[z, Q])
    v, g = fn(z=np.array([[3.0]]), Q=np.array([[2.0]]))
    assert float(v) == 2.0
    np.testing.assert_allclose(g["Q"], [[1.0]])
    np.testing.assert_allclose(g["z"], [[0.0]], atol=1e-15)


# ---- composites and naive formulas at extreme logits, against a float64 JAX reference --------


def _extreme_cases():
    def t_eye(dt):
        return np.eye(2, 3)[[0, 1]].astype(dt)

    return {
        "cross_entropy": (lambda z, t, lab: bp.cross_entropy(z, lab),
                          lambda jnp, jax, z, t, lab: -jnp.mean(
                              jax.nn.log_softmax(z)[jnp.arange(2), lab])),
        "bce": (lambda z, t, lab: bp.binary_cross_entropy_with_logits(z, t),
                lambda jnp, jax, z, t, lab: jnp.mean(jnp.logaddexp(0.0, z) - z * t)),
        "naive_bce": (lambda z, t, lab: bp.mean(-t * bp.log(bp.sigmoid(z))
                                                - (1.0 - t) * bp.log(1.0 - bp.sigmoid(z))),
                      lambda jnp, jax, z, t, lab: jnp.mean(jnp.logaddexp(0.0, z) - z * t)),
        "naive_xent": (lambda z, t, lab: -bp.mean(bp.sum(t * bp.log(
            bp.exp(z) / bp.sum(bp.exp(z), axis=1, keepdims=True)), axis=1)),
            lambda jnp, jax, z, t, lab: -jnp.mean(jnp.sum(t * jax.nn.log_softmax(z), axis=1))),
        "naive_lse": (lambda z, t, lab: bp.sum(bp.log(bp.sum(bp.exp(z), axis=1))),
                      lambda jnp, jax, z, t, lab: jnp.sum(
                          jax.scipy.special.logsumexp(z, axis=1))),
        "softplus_sigmoid": (lambda z, t, lab: bp.sum(bp.softplus(z) * bp.sigmoid(-z)),
                             lambda jnp, jax, z, t, lab: jnp.sum(
                                 jnp.logaddexp(0.0, z) * jax.nn.sigmoid(-z))),
    }, t_eye


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("case", sorted(_extreme_cases()[0]))
def test_extreme_logits_are_finite_and_correct(case, dtype):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    cases, t_eye = _extreme_cases()
    build, ref = cases[case]
    z = bp.param("z", (2, 3), dtype)
    t = bp.input("t", (2, 3), dtype)
    lab = bp.input("lab", (2,), "int32")
    loss = build(z, t, lab)
    fn = bp.compile(loss, wrt=[z])
    zv = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 999.0]])
    kw = {"z": zv.astype(dtype)}
    names = {n.name for n in toposort([loss]) if n.op == "input"}
    if "t" in names:
        kw["t"] = t_eye(dtype)
    if "lab" in names:
        kw["lab"] = np.array([0, 2], np.int32)
    v, g = fn(**kw)
    assert np.isfinite(v) and np.all(np.isfinite(g["z"])), (v, g["z"])
    rv, rg = jax.jit(jax.value_and_grad(lambda zz: ref(jnp, jax, zz, t_eye("float64"),
                                                       np.array([0, 2]))),
                     compiler_options=FAST_COMPILE)(zv)
    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(v, float(rv), rtol=tol)
    np.testing.assert_allclose(g["z"], np.asarray(rg), rtol=tol, atol=tol)


def test_batched_matmul_with_shared_weight_is_one_gemm():
    """(B, M, K) @ (K, N) runs as one (B*M, K) @ (K, N) product, and its weight gradient as
    one product of the flattened batches (no batched matmul + batch reduction); values agree."""
    x = bp.input("x_bm", (3, 4, 5), "float64")
    W = bp.param("W_bm", (5, 2), "float64")
    loss = bp.sum(bp.tanh(x @ W))
    fn = bp.compile(loss, wrt=[W])
    mats = [n for n in toposort(fn.outputs) if n.op == "matmul"]
    assert mats and all(n.inputs[0].ndim == 2 and n.inputs[1].ndim == 2 for n in mats)
    r = np.random.default_rng(0)
    xv, wv = r.standard_normal((3, 4, 5)), r.standard_normal((5, 2))
    _, g = fn(x_bm=xv, W_bm=wv)
    t = np.tanh(xv @ wv)
    ref = np.einsum("bmk,bmn->kn", xv, 1 - t * t)
    np.testing.assert_allclose(g["W_bm"], ref, rtol=1e-12)


def test_softmax_computes_one_exponential_and_stays_stable():
    """softmax = exp(x - logsumexp(x)) reuses logsumexp's exp(x - max): one exp pass, and the
    result is still exact at logits of ±1000."""
    x = bp.param("x_sm1", (2, 3), "float64")
    y = bp.input("y_sm1", (2, 3), "float64")
    fn = bp.compile(bp.sum(bp.softmax(x) * y), wrt=[x])
    assert sum(n.op == "exp" or (n.op == "kernel" and "exp" in str(n.attr("expr")))
               for n in toposort(fn.outputs)) == 1
    xv = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    yv = np.arange(6.0).reshape(2, 3)
    v, g = fn(x_sm1=xv, y_sm1=yv)
    jax = pytest.importorskip("jax")
    f = lambda a: jax.numpy.sum(jax.nn.softmax(a) * yv)  # noqa: E731
    np.testing.assert_allclose(v, float(f(xv)), rtol=1e-12)
    np.testing.assert_allclose(g["x_sm1"], np.asarray(jax.grad(f)(xv)), rtol=1e-10, atol=1e-300)


def test_transposed_product_is_computed_in_the_layout_it_is_read():
    """(A B)ᵀ -> Bᵀ Aᵀ: the product is written transposed instead of copied afterwards (the
    attention VJP's dK = (Qᵀ dS)ᵀ); batch axes stay put; other permutations are left alone."""
    rng = np.random.default_rng(3)
    a, b = bp.input("a", (3, 4, 5), "float64"), bp.input("b", (3, 5, 6), "float64")
    t = bp.transpose(a @ b, (0, 2, 1))
    (r,) = algebraic([t])
    assert r.op == "matmul" and [i.op for i in r.inputs] == ["transpose", "transpose"]
    va, vb = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 5, 6))
    want = np.transpose(va @ vb, (0, 2, 1))
    np.testing.assert_allclose(evaluate([r], {"a": va, "b": vb})[0], want, rtol=1e-12)
    other = bp.transpose(a @ b, (1, 0, 2))  # moves a batch axis: not a matrix transpose
    assert algebraic([other])[0].op == "transpose"
    x, w = bp.input("x", (4, 5)), bp.input("w", (5, 6))
    (r2,) = algebraic([bp.transpose(x @ w, (1, 0))])
    assert r2.op == "matmul" and r2.shape == (6, 4)
