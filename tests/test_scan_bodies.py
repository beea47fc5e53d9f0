"""The rewrite pipeline owns scan bodies: it simplifies them (with the passes it runs on the
graph around them), `fn.graph()` prints them nested, and every backend runs that body."""

from __future__ import annotations

import re

import numpy as np
import pytest

import bpcompile as bp


def _truncated_rnn():
    xs, h0 = bp.input("xs", (5, 2, 3)), bp.param("h0", (2, 4))
    W, U = bp.param("W", (3, 4)), bp.param("U", (4, 4))

    def step(h, x):
        return bp.tanh(x @ W + h @ U), None

    hT, _ = bp.scan(step, h0, xs, truncate=2)
    return bp.sum(hT * hT), [W, U, h0]


def _bodies(graph: str) -> list[str]:
    """The lines of nested lambdas (scan bodies) in a graph dump."""
    return [ln for ln in graph.splitlines() if ln.startswith(" " * 6)]


@pytest.mark.parametrize("backend", ["numpy", "jax", "llvm"])
def test_every_backend_runs_the_body_the_graph_shows(backend):
    if backend == "jax":
        pytest.importorskip("jax")
    loss, wrt = _truncated_rnn()
    ref = bp.compile(loss, wrt, backend="numpy")
    fn = bp.compile(loss, wrt, backend=backend)
    graph = fn.graph()  # what runs: the shared passes' graph with its backend's marks
    assert re.sub(r" (unroll=True|accumulate=\d)", "", graph) == ref.graph()
    body = "\n".join(_bodies(graph))
    assert "{ lambda h:f32[2,4] ; x:f32[2,3] cut_gradient:bool[]" in body
    assert "= kernel" in body and "stop_gradient" not in body  # fused, simplified
    if backend == "jax":  # the body was emitted as traced before the pipeline owned it
        assert "stop_gradient" not in fn.source() and "kernel tanh" in fn.source()
    r = np.random.default_rng(0)
    vals = {"xs": r.standard_normal((5, 2, 3)), "h0": r.standard_normal((2, 4)),
            "W": r.standard_normal((3, 4)), "U": r.standard_normal((4, 4))}
    vals = {k: v.astype(np.float32) for k, v in vals.items()}
    (v, g), (v0, g0) = fn(**vals), ref(**vals)
    np.testing.assert_allclose(v, v0, rtol=1e-5)
    assert set(g) == set(g0) == {"W", "U", "h0"}
    for k in g0:
        np.testing.assert_allclose(np.asarray(g[k]), g0[k], rtol=1e-4, atol=1e-6)


def test_bodies_get_the_passes_of_the_graph_around_them():
    loss, wrt = _truncated_rnn()
    body = "\n".join(_bodies(bp.compile(loss, wrt, passes=[]).graph()))
    assert "stop_gradient" in body and "= kernel" not in body
