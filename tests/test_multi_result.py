"""Nodes with several results (JAX's `multiple_results`): a scan is a tuple node whose final
carries, stacked ys and saved carries are `result` projections with their own shapes and
dtypes; one reverse sweep (ops/sweep.py) serves bp.grad and the scan VJP."""

from __future__ import annotations

import re

import numpy as np
import pytest
from layers_harness import BACKENDS, available, jax, jnp

import bpcompile as bp
from bpcompile.autodiff import reverse
from bpcompile.backends.llvm.codegen import Program
from bpcompile.errors import ShapeError
from bpcompile.ir.node import TUPLE, make
from bpcompile.ir.traverse import toposort
from bpcompile.ops import sweep
from bpcompile.ops.results import result
from bpcompile.ops.scan import scan, scan_results

lax = jax.lax
rng = np.random.default_rng(7)


def _rnn(T=4, B=2, H=3, dtype="float64"):
    xs = bp.input("xs", (T, B, H), dtype)
    W = bp.param("W", (H, H), dtype)

    def step(h, x):
        h = bp.tanh(h @ W + x)
        return h, h

    hT, hs = scan(step, bp.broadcast_to(bp.const(0.0, dtype), (B, H)), xs)
    return xs, W, hT, hs


def test_a_scan_is_a_tuple_node_read_through_result_projections():
    _, W, hT, hs = _rnn()
    assert hT.op == hs.op == "result" and hT.inputs[0] is hs.inputs[0]
    node = hT.inputs[0]
    assert node.op == "scan" and node.dtype == TUPLE and node.shape == ()
    # final carry, stacked y, saved carries (T + 1 of them), each with its own type
    assert node.results == (((2, 3), "float64"), ((4, 2, 3), "float64"),
                            ((5, 2, 3), "float64"))
    assert (hT.shape, hs.shape) == ((2, 3), (4, 2, 3))
    assert result(node, 0) is hT  # projections are interned like every node
    fin, ys, saved = scan_results(node)
    assert (fin, ys) == ([hT], [hs]) and saved[0].shape == (5, 2, 3)
    with pytest.raises(ShapeError, match="index 3 out of range"):
        result(node, 3)
    with pytest.raises(ShapeError, match="single result"):
        result(W, 0)


def test_no_slicing_of_a_packed_output_anywhere():
    _, W, hT, hs = _rnn()
    loss = bp.sum(hT * hT) + bp.sum(hs)
    raw = bp.grad(loss, [W], stabilize=False)
    for n in toposort([loss] + raw):
        assert not any(i.op == "scan" for i in n.inputs) or n.op == "result", n


def test_the_sweep_is_one_function_and_accumulates_per_result_cotangents():
    assert reverse.backward is sweep.backward
    _, W, hT, hs = _rnn()
    # cotangents on two results of the same scan, and twice on one of them
    (g,) = sweep.backward({hT: bp.const(np.full((2, 3), 2.0)), hs: bp.const(np.ones((4, 2, 3)))},
                          [W])
    loss = bp.sum(hT) + bp.sum(hT) + bp.sum(hs)
    ref = bp.grad(loss, W)
    xs = rng.standard_normal((4, 2, 3))
    Wv = rng.standard_normal((3, 3)) * 0.5
    got = bp.function({"g": g, "r": ref}, backend="numpy")(xs=xs, W=Wv)
    np.testing.assert_allclose(got["g"], got["r"], rtol=1e-12)
    # nothing reads ys: the scan VJP gets None for them and builds no dy input
    (g_c,) = sweep.backward({hT: bp.const(np.ones((2, 3)))}, [W])
    bptt = [n for n in toposort([g_c]) if n.op == "scan" and n.attr("body").name.endswith("bptt")]
    assert bptt and all(not p.attr("name").startswith("dy") for p in bptt[0].attr("body").xs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_carries_and_ys_of_different_dtypes_and_shapes(backend):
    """A float32 carry, a float64 carry, a float64 y of another shape and an int32 y (a step
    counter, no gradient) in one scan: nothing is packed, so nothing is cast to a common type."""
    if not available(backend):
        pytest.skip(backend)
    T, H = 5, 3
    xs = bp.input("xs", (T, H), "float32")
    W = bp.param("W", (H, H), "float32")
    V = bp.param("V", (H,), "float64")

    def step(carry, x):
        h, acc = carry
        h = bp.tanh(h @ W + x)
        acc = acc + bp.sum(bp.cast(h, "float64") * V)
        return (h, acc), (bp.reshape(bp.cast(h, "float64"), (1, H)), bp.cast(acc * 0, "int32"))

    (hT, accT), (hs, zeros) = scan(step, (bp.broadcast_to(bp.const(0.0, "float32"), (H,)),
                                          bp.const(0.0, "float64")), xs)
    assert (hT.dtype, accT.dtype, hs.dtype, zeros.dtype) == ("float32", "float64", "float64",
                                                             "int32")
    assert hs.shape == (T, 1, H)
    loss = bp.cast(bp.sum(hT), "float64") + accT + bp.sum(hs * hs) + bp.cast(bp.sum(zeros),
                                                                              "float64")
    vals = {"xs": rng.standard_normal((T, H)).astype(np.float32),
            "W": (rng.standard_normal((H, H)) * 0.5).astype(np.float32),
            "V": rng.standard_normal(H)}
    v, g = bp.compile(loss, [W, V], backend=backend)(**vals)

    def jl(W, V, xs):
        def st(c, x):
            h = jnp.tanh(c[0] @ W + x)
            acc = c[1] + jnp.sum(h.astype(jnp.float64) * V)
            return (h, acc), h.astype(jnp.float64).reshape(1, H)
        (h, acc), hs = lax.scan(st, (jnp.zeros(H, jnp.float32), jnp.float64(0.0)), xs)
        return jnp.sum(h).astype(jnp.float64) + acc + jnp.sum(hs * hs)

    jv, (jW, jV) = jax.value_and_grad(jl, (0, 1))(vals["W"], vals["V"], vals["xs"])  # (x64)
    assert np.asarray(g["W"]).dtype == np.float32 and np.asarray(g["V"]).dtype == np.float64
    np.testing.assert_allclose(v, jv, rtol=1e-5)
    np.testing.assert_allclose(g["W"], jW, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g["V"], jV, rtol=1e-5, atol=1e-6)


def test_dumps_and_generated_source_unpack_results():
    xs, W, hT, hs = _rnn()
    fn = bp.compile(bp.sum(hT * hT) + bp.sum(hs), [W], backend="numpy")
    graph = fn.graph()
    assert re.search(r"h_final:f64\[2,3\], ys:f64\[4,2,3\], h_saved:f64\[5,2,3\] = scan", graph)
    assert re.search(r"\n +\{ lambda h:f64\[2,3\] ; x:f64\[2,3\] ; W:f64\[3,3\] \.", graph)
    src = fn.source()
    assert "h_final, ys, h_saved = step_loop(" in src
    assert re.search(r"\n    _, dW_final = step_bptt_loop\(", src)  # unread: `_`
    assert "forward_backward" in src and "scan1[" not in src


def test_unread_results_are_pruned_and_projections_renumbered():
    xs, W, hT, hs = _rnn()
    inf = bp.function({"h": hT})
    (node,) = [n for n in toposort(inf.outputs) if n.op == "scan"]
    assert len(node.results) == 1 and node.attr("save") == 0 and not node.attr("body").ys
    keep_ys = bp.function({"hs": hs})
    (node,) = [n for n in toposort(keep_ys.outputs) if n.op == "scan"]
    assert [r.attr("index") for r in keep_ys.outputs] == [1] and len(node.results) == 2
    x = rng.standard_normal((4, 2, 3))
    Wv = rng.standard_normal((3, 3))
    h = np.zeros((2, 3))
    ref = []
    for t in range(4):
        h = np.tanh(h @ Wv + x[t])
        ref.append(h)
    np.testing.assert_allclose(inf(xs=x, W=Wv)["h"], ref[-1], rtol=1e-12)
    np.testing.assert_allclose(keep_ys(xs=x, W=Wv)["hs"], np.stack(ref), rtol=1e-12)


def test_llvm_writes_each_result_into_its_own_buffer():
    """Results are buffers of their own; a result that is an output is written in place."""
    xs, W, hT, hs = _rnn()
    fn = bp.function({"h": hT, "hs": hs})
    p = Program(list(fn.outputs), list(fn.args), 0)
    (step,) = [s for s in p.steps if s.node is not None and s.node.op == "scan"]
    written = (step.writes, *step.more_writes)
    assert len(written) == 2 and {b.kind for b in written} == {"out"}
    assert not [s for s in p.steps if s.kind == "copy"]
    h, hs_ = fn.outputs  # the graph bp.function rewrote (its projections are new nodes)
    assert p.views[h].buf is written[0] and p.views[hs_].buf is written[1]


def test_a_projection_of_a_single_result_node_is_refused_at_construction():
    x = bp.param("x", (2,), "float64")
    with pytest.raises(ShapeError, match="single result"):
        make("result", (x,), index=0)
