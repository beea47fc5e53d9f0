"""The simplify fixpoint (rewrite/pipeline.py) stops at the pass that last changed the graph,
and gives the graph that running every pass to a full unchanged round gives; the NumPy
compile cache stores the backend's own code object, renamed (backends/numpy/warm.py)."""

from __future__ import annotations

import marshal

import numpy as np

import bpcompile as bp
from bpcompile.backends.numpy import warm
from bpcompile.ir.traverse import memoized
from bpcompile.rewrite import pipeline


def _mlp(depth=3):
    x = bp.input("x", (4, 5))
    h, ps = x, []
    for i in range(depth):
        W, b = bp.param(f"W{i}", (5, 5)), bp.param(f"b{i}", (5,))
        ps += [W, b]
        h = h + bp.tanh(b + h @ W)  # b first: cse orders the operands (a change in round 0)
    return bp.mean(h * h), ps


def _full_rounds(outputs):
    """The fixpoint before the early stop: whole rounds until one changes nothing."""
    passes = [(n, f) for n, f in pipeline.PASSES if n != "fuse"]
    for _ in range(pipeline.SIMPLIFY_ROUNDS):
        start = outputs
        for _, fn in passes:
            outputs = fn(outputs)
        if all(a is b for a, b in zip(start, outputs)):
            break
    return outputs


def check_same_graph_fewer_calls(loss, ps):
    grads = bp.grad(loss, ps)
    outs = [loss, *grads]
    calls = []

    def counted(name, fn):
        def run(o):
            calls.append(name)
            return fn(o)
        return run

    chosen = [(n, counted(n, f)) for n, f in pipeline.PASSES if n != "fuse"]
    with memoized():
        got, _ = pipeline.run(outs, chosen)
        want = _full_rounds(outs)
    assert all(a is b for a, b in zip(got, want)), "early stop changed the simplified graph"
    n = len(chosen)
    assert len(calls) < 2 * n, calls  # the confirming round stopped early
    return calls


def test_confirming_round_stops_at_last_change():
    loss, ps = _mlp()
    calls = check_same_graph_fewer_calls(loss, ps)
    names = [n for n, _ in pipeline.PASSES if n != "fuse"]
    assert calls[: len(names)] == names  # round 0 runs every pass
    assert calls[-1] != "cse" or calls.count("cse") == 1


def test_graph_without_changes_runs_one_round():
    x = bp.param("x", (3,))
    loss = bp.sum(bp.tanh(x))
    outs = [loss, *bp.grad(loss, [x])]
    settled, _ = pipeline.run(outs)  # a simplified graph: the next run changes nothing
    calls = []
    chosen = [(n, (lambda f, n=n: lambda o: (calls.append(n), f(o))[1])(f))
              for n, f in pipeline.PASSES if n != "fuse"]
    pipeline.run(settled, chosen)
    assert calls == [n for n, _ in chosen]


def test_warm_code_is_the_backends_own_renamed(tmp_path, monkeypatch):
    monkeypatch.setenv("BPCOMPILE_CACHE_DIR", str(tmp_path))
    loss, ps = _mlp(2)
    fn = bp.compile(loss, ps, backend="numpy", cache=False)
    be = fn.impl
    st = warm.state(be, "abc")
    assert st is not None
    code = marshal.loads(st[1][warm.CODE].tobytes())
    inner = [c for c in code.co_consts if hasattr(c, "co_filename")]
    assert inner and all(c.co_filename == warm._filename("abc") for c in [code, *inner])
    assert code.co_code == be.code.co_code
    ns = dict(warm.NAMESPACE)
    ns.update(be.consts)
    exec(code, ns)
    r = np.random.default_rng(0)
    args = [r.standard_normal(a.shape).astype(a.dtype) for a in be.args]
    v1, g1 = ns["forward_backward"](*args)
    v2, g2 = be.fn(*args)
    np.testing.assert_array_equal(v1, v2)
    for a, b in zip(g1, g2):
        np.testing.assert_array_equal(a, b)
