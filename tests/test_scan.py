"""bp.scan: BPTT, truncated BPTT and checkpointing against jax.lax.scan, on every backend."""

from __future__ import annotations

import re

import numpy as np
import pytest
from layers_harness import BACKENDS, available, jax, jnp

import bpcompile as bp
from bpcompile.errors import BackendError
from bpcompile.ops.scan import scan, scan_stats, sqrt_segment

lax = jax.lax
rng = np.random.default_rng(2)
F64 = "float64"


def _rnn_graph(T, B=3, I=4, H=5, checkpoint=None, truncate=None, reverse=False, dtype=F64):
    xs = bp.input("xs", (T, B, I), dtype)
    y = bp.input("y", (B, 1), dtype)
    P = {"Wx": bp.param("Wx", (I, H), dtype), "Wh": bp.param("Wh", (H, H), dtype),
         "b": bp.param("b", (H,), dtype), "Wo": bp.param("Wo", (H, 1), dtype)}

    def rnn_step(h, x):
        h = bp.tanh(x @ P["Wx"] + h @ P["Wh"] + P["b"])
        return h, h

    h0 = bp.broadcast_to(bp.const(0.0, dtype), (B, H))
    hT, hs = scan(rnn_step, h0, xs, checkpoint=checkpoint, truncate=truncate, reverse=reverse)
    loss = bp.mean((hT @ P["Wo"] - y) ** 2) + 0.1 * bp.mean(bp.sin(hs))
    return loss, P


def _rnn_values(T, B=3, I=4, H=5):
    return {"xs": rng.standard_normal((T, B, I)), "y": rng.standard_normal((B, 1)),
            "Wx": rng.standard_normal((I, H)) * 0.5, "Wh": rng.standard_normal((H, H)) * 0.5,
            "b": rng.standard_normal(H) * 0.1, "Wo": rng.standard_normal((H, 1))}


def _jrnn(p, xs, y, truncate=None, reverse=False):
    T, B = xs.shape[:2]
    H = p["Wh"].shape[0]
    order = np.arange(T)[::-1] if reverse else np.arange(T)
    cut = np.zeros(T, bool)
    if truncate:
        cut[order[np.arange(T) % truncate == 0][1:]] = True

    def step(h, inp):
        x, c = inp
        h = jnp.where(c, lax.stop_gradient(h), h)
        h = jnp.tanh(x @ p["Wx"] + h @ p["Wh"] + p["b"])
        return h, h

    hT, hs = lax.scan(step, jnp.zeros((B, H), xs.dtype), (xs, jnp.asarray(cut)), reverse=reverse)
    return jnp.mean((hT @ p["Wo"] - y) ** 2) + 0.1 * jnp.mean(jnp.sin(hs))


def _check(loss, P, vals, backend="numpy", rtol=1e-9, **jkw):
    if not available(backend):
        pytest.skip(backend)
    dtype = loss.dtype
    vals = {k: np.asarray(v, dtype) for k, v in vals.items()}
    fn = bp.compile(loss, list(P.values()), backend=backend)
    v, g = fn(**vals)
    p = {k: vals[k] for k in P}
    jv, jg = jax.jit(jax.value_and_grad(lambda p, xs, y: _jrnn(p, xs, y, **jkw)))(
        p, vals["xs"], vals["y"])
    np.testing.assert_allclose(v, jv, rtol=rtol)
    for k in P:
        scale = max(1.0, float(np.abs(jg[k]).max()))
        np.testing.assert_allclose(g[k], jg[k], rtol=rtol, atol=rtol * scale, err_msg=k)
    return fn, g


def _maybe_llvm_gap(backend, fn, *args, **kw):
    """The llvm backend either runs scan or refuses it with a BackendError naming `scan`."""
    if backend != "llvm":
        return fn(*args, **kw)
    try:
        return fn(*args, **kw)
    except BackendError as e:
        assert "scan" in str(e)
        pytest.xfail(f"llvm backend has no scan lowering: {e}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_rnn_bptt_matches_lax_scan(backend):
    loss, P = _rnn_graph(7)
    dtype_vals = _rnn_values(7)
    if backend == "numpy":
        _check(loss, P, dtype_vals)
    else:
        loss32, P32 = _rnn_graph(7, dtype="float32")
        _maybe_llvm_gap(backend, _check, loss32, P32, dtype_vals, backend, rtol=2e-4)


def test_reverse_scan_and_sequence_of_length_one():
    for T, rev in ((6, True), (1, False)):
        loss, P = _rnn_graph(T, reverse=rev)
        _check(loss, P, _rnn_values(T), reverse=rev)


def test_bptt_through_200_steps():
    loss, P = _rnn_graph(200, B=2, I=3, H=4)
    fn, _ = _check(loss, P, _rnn_values(200, B=2, I=3, H=4), rtol=1e-8)
    assert fn.source().count("for t in range(") == 2  # one forward loop, one backward loop


@pytest.mark.parametrize("k", [1, 3])
def test_truncated_bptt_matches_stop_gradient_every_k(k):
    loss, P = _rnn_graph(10, truncate=k)
    _, g = _check(loss, P, _rnn_values(10), truncate=k)
    full, Pf = _rnn_graph(10)
    vals = _rnn_values(10)
    _, gt = bp.compile(loss, list(P.values()))(**vals)
    _, gf = bp.compile(full, list(Pf.values()))(**vals)
    assert not np.allclose(gt["Wh"], gf["Wh"])  # truncation changes the gradient


@pytest.mark.parametrize("T,k", [(12, 3), (13, 4), (10, True), (5, 5)])
def test_checkpointed_scan_equals_plain_bptt(T, k):
    vals = _rnn_values(T)
    loss, P = _rnn_graph(T, checkpoint=k)
    if T == 13:  # against JAX once; the other cases against plain BPTT (itself JAX-checked)
        fn, g = _check(loss, P, vals)
    else:
        _, g = bp.compile(loss, list(P.values()))(**vals)
    plain, Pp = _rnn_graph(T)
    _, gp = bp.compile(plain, list(Pp.values()))(**vals)
    for name in P:
        np.testing.assert_allclose(g[name], gp[name], rtol=1e-12, atol=1e-14)
    fwd = scan_stats([loss])[0]
    kk = sqrt_segment(T) if k is True else k
    assert fwd["save"] == kk and fwd["saved_carries"] == -(-T // kk)


@pytest.mark.parametrize("backend", ["jax", "llvm"])
def test_checkpointed_scan_other_backends(backend):
    loss, P = _rnn_graph(9, checkpoint=4, dtype="float32")
    _maybe_llvm_gap(backend, _check, loss, P, _rnn_values(9), backend, rtol=2e-4)


def test_code_size_does_not_grow_with_T():
    def src(T, ck=None):
        loss, P = _rnn_graph(T, checkpoint=ck)
        s = bp.compile(loss, list(P.values())).source()
        return [re.sub(r"[\d.e+-]+|\s+", "", line.split("#")[-1]) for line in s.splitlines()]

    # the same statements (same ops, shapes aside) whether the loop runs 5 or 1000 times
    assert src(5) == src(1000)
    assert src(16, 4) == src(1024, 32)


def test_weight_tying_across_time_and_layers():
    """One Wh shared by two stacked RNN layers and by the readout; a tuple carry; xs tuple."""
    T, B, H = 6, 2, 4
    xs = bp.input("xs", (T, B, H), F64)
    ms = bp.input("ms", (T, B, 1), F64)
    Wh = bp.param("Wh", (H, H), F64)
    W2 = bp.param("W2", (H, H), F64)

    def layer1(carry, x):
        h, acc = carry
        xt, m = x
        h = bp.tanh(xt + h @ Wh) * m
        return (h, acc + bp.sum(h * h)), h

    def layer2(h, x):
        h = bp.tanh(x @ W2 + h @ Wh)
        return h, None

    z = bp.broadcast_to(bp.const(0.0, F64), (B, H))
    (h1, acc), hs1 = scan(layer1, (z, bp.const(0.0, F64)), (xs, ms))
    h2, none = scan(layer2, h1, hs1)
    assert none is None
    loss = bp.sum(h2 @ Wh) + 0.01 * acc

    def jl(p, xs, ms):
        def l1(c, x):
            h, a = c
            h = jnp.tanh(x[0] + h @ p["Wh"]) * x[1]
            return (h, a + jnp.sum(h * h)), h

        def l2(h, x):
            return jnp.tanh(x @ p["W2"] + h @ p["Wh"]), None

        (h1, a), hs1 = lax.scan(l1, (jnp.zeros((B, H)), 0.0), (xs, ms))
        h2, _ = lax.scan(l2, h1, hs1)
        return jnp.sum(h2 @ p["Wh"]) + 0.01 * a

    vals = {"xs": rng.standard_normal((T, B, H)), "ms": (rng.random((T, B, 1)) > 0.3) * 1.0,
            "Wh": rng.standard_normal((H, H)) * 0.5, "W2": rng.standard_normal((H, H)) * 0.5}
    v, g = bp.compile(loss, [Wh, W2])(**vals)
    jv, jg = jax.value_and_grad(jl)({"Wh": vals["Wh"], "W2": vals["W2"]}, vals["xs"], vals["ms"])
    np.testing.assert_allclose(v, jv, rtol=1e-10)
    for k in ("Wh", "W2"):
        np.testing.assert_allclose(g[k], jg[k], rtol=1e-9, atol=1e-12)


def test_gradient_wrt_init_and_xs_and_finite_differences():
    T, B, H = 5, 2, 3
    h0 = bp.param("h0", (B, H), F64)
    xs = bp.param("xsp", (T, B, H), F64)
    W = bp.param("W", (H, H), F64)

    def step(h, x):
        h = bp.sigmoid(h @ W + x) * 1.5
        return h, h * x

    hT, ys = scan(step, h0, xs)
    loss = bp.sum(hT * hT) + bp.sum(bp.tanh(ys))
    report = bp.check(loss, [h0, xs, W], {}, fd_samples=2)
    assert report.ok, str(report)


def test_python_unrolling_matches_scan():
    T, B, I, H = 4, 2, 3, 4
    vals = _rnn_values(T, B, I, H)
    loss, P = _rnn_graph(T, B, I, H)
    xs = bp.input("xs", (T, B, I), F64)
    h = bp.broadcast_to(bp.const(0.0, F64), (B, H))
    hs = []
    for t in range(T):  # a plain Python loop: T copies of the step in the graph
        h = bp.tanh(xs[t] @ P["Wx"] + h @ P["Wh"] + P["b"])
        hs.append(bp.reshape(h, (1, B, H)))
    y = bp.input("y", (B, 1), F64)
    unrolled = bp.mean((h @ P["Wo"] - y) ** 2) + 0.1 * bp.mean(bp.sin(bp.concatenate(hs, 0)))
    v1, g1 = bp.compile(loss, list(P.values()))(**vals)
    v2, g2 = bp.compile(unrolled, list(P.values()))(**vals)
    np.testing.assert_allclose(v1, v2, rtol=1e-12)
    for k in P:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-10, atol=1e-14)


def test_integer_xs_embedding_inside_the_step():
    T, B, V, H = 5, 2, 7, 3
    tok = bp.input("tok", (T, B), "int32")
    E = bp.param("E", (V, H), F64)
    Wh = bp.param("Wh", (H, H), F64)

    def step(h, t):
        h = bp.tanh(bp.take(E, t) + h @ Wh)
        return h, None

    hT, _ = scan(step, bp.broadcast_to(bp.const(0.0, F64), (B, H)), tok)
    loss = bp.sum(hT)
    toks = rng.integers(0, V, (T, B)).astype(np.int32)
    vals = {"tok": toks, "E": rng.standard_normal((V, H)), "Wh": rng.standard_normal((H, H))}
    _, g = bp.compile(loss, [E, Wh])(**vals)

    def jl(p):
        def st(h, t):
            return jnp.tanh(p["E"][t] + h @ p["Wh"]), None
        return jnp.sum(lax.scan(st, jnp.zeros((B, H)), toks)[0])

    jg = jax.grad(jl)({"E": vals["E"], "Wh": vals["Wh"]})
    for k in ("E", "Wh"):
        np.testing.assert_allclose(g[k], jg[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("checkpoint", [None, 3])
def test_second_order_through_scan(checkpoint):
    """Hessian-vector product: grad of <grad, v> through the reverse scan (and through the
    nested scans of checkpointed BPTT)."""
    T, H = 7, 3
    xs = bp.input("xs", (T, 1, H), F64)
    W = bp.param("W", (H, H), F64)
    v = bp.input("v", (H, H), F64)

    def step(h, x):
        h = bp.tanh(h @ W + x)
        return h, None

    hT, _ = scan(step, bp.broadcast_to(bp.const(0.0, F64), (1, H)), xs, checkpoint=checkpoint)
    loss = bp.sum(hT * hT)
    gW = bp.grad(loss, W)
    hv = bp.grad(bp.sum(gW * v), W)
    vals = {"xs": rng.standard_normal((T, 1, H)), "W": rng.standard_normal((H, H)) * 0.7,
            "v": rng.standard_normal((H, H))}
    out = bp.function({"hv": hv})(**vals)["hv"]

    def jl(W, xs):
        return jnp.sum(lax.scan(lambda h, x: (jnp.tanh(h @ W + x), None),
                                jnp.zeros((1, H)), xs)[0] ** 2)

    jhv = jax.jvp(jax.grad(jl), (vals["W"], vals["xs"]), (vals["v"], jnp.zeros_like(vals["xs"])))[1]
    np.testing.assert_allclose(out, jhv, rtol=1e-9, atol=1e-12)


def test_nested_scan():
    T, S, H = 3, 4, 2
    xs = bp.input("xs", (T, S, H), F64)
    W = bp.param("W", (H, H), F64)

    def inner(h, x):
        return bp.tanh(h @ W + x), None

    def outer(h, seq):
        h2, _ = scan(inner, h, bp.reshape(seq, (S, 1, H)))
        return h2 * 0.9 + h * 0.1, None

    hT, _ = scan(outer, bp.broadcast_to(bp.const(0.1, F64), (1, H)), xs)
    loss = bp.sum(hT)
    vals = {"xs": rng.standard_normal((T, S, H)), "W": rng.standard_normal((H, H))}
    v, g = bp.compile(loss, [W])(**vals)

    def jl(W, xs):
        def jo(h, seq):
            h2 = lax.scan(lambda h, x: (jnp.tanh(h @ W + x), None), h, seq.reshape(S, 1, H))[0]
            return h2 * 0.9 + h * 0.1, None
        return jnp.sum(lax.scan(jo, jnp.full((1, H), 0.1), xs)[0])

    jv, jg = jax.value_and_grad(jl)(vals["W"], vals["xs"])
    np.testing.assert_allclose(v, jv, rtol=1e-12)
    np.testing.assert_allclose(g["W"], jg, rtol=1e-10)


def test_scan_errors_are_clear():
    x = bp.input("x", (4, 2), F64)
    h = bp.broadcast_to(bp.const(0.0, F64), (2,))
    with pytest.raises(TypeError, match="new_carry, y"):
        scan(lambda c, x: c + x, h, x)
    with pytest.raises(bp.ShapeError, match="leading axis"):
        scan(lambda c, x: (c, None), h, (x, bp.input("z", (3, 2), F64)))
    with pytest.raises(bp.ShapeError, match="carr"):
        scan(lambda c, x: ((c, c), None), h, x)


def test_check_oracle_keeps_truncation():
    """bp.check's JAX oracle translates the scan body as traced, so JAX sees stop_gradient."""
    loss, P = _rnn_graph(6, truncate=2)
    vals = _rnn_values(6)
    report = bp.check(loss, list(P.values()), {k: vals[k] for k in ("xs", "y")},
                      {k: vals[k] for k in P}, fd=False)
    assert report.ok, str(report)


@pytest.mark.parametrize("backend", BACKENDS)
def test_passthrough_carry_constant_y_and_inference(backend):
    """A carry returned unchanged, a y that is the x itself, a constant y; and inference
    through bp.function stores no carries (the scan_outputs pass turns saving off)."""
    if not available(backend):
        pytest.skip(backend)
    T, H = 4, 3
    xs = bp.input("xs", (T, H), "float32")
    W = bp.param("W", (H, H), "float32")

    def step(carry, x):
        fixed, h = carry
        h = bp.tanh(h @ W + x * fixed)
        return (fixed, h), (x, bp.broadcast_to(bp.const(2.0), (H,)), h)

    init = (bp.broadcast_to(bp.const(0.5), (H,)), bp.broadcast_to(bp.const(0.0), (H,)))
    (fixed, hT), (xcopy, twos, hs) = scan(step, init, xs)
    loss = bp.sum(hT) + bp.sum(xcopy * twos) + bp.sum(hs * hs) + bp.sum(fixed)
    vals = {"xs": rng.standard_normal((T, H)).astype(np.float32),
            "W": rng.standard_normal((H, H)).astype(np.float32)}
    v, g = bp.compile(loss, [W], backend=backend)(**vals)

    def jl(W, xs):
        def st(c, x):
            h = jnp.tanh(c[1] @ W + x * c[0])
            return (c[0], h), (x, jnp.full((H,), 2.0), h)
        (f, h), (xc, tw, hs) = lax.scan(st, (jnp.full((H,), 0.5), jnp.zeros(H)), xs)
        return jnp.sum(h) + jnp.sum(xc * tw) + jnp.sum(hs * hs) + jnp.sum(f)

    jv, jg = jax.value_and_grad(jl)(vals["W"], vals["xs"])
    np.testing.assert_allclose(v, jv, rtol=2e-5)
    np.testing.assert_allclose(g["W"], jg, rtol=2e-4, atol=1e-5)
    inf = bp.function({"h": hT}, backend=backend)
    np.testing.assert_allclose(inf(xs=vals["xs"], W=vals["W"])["h"],
                               lax.scan(lambda c, x: ((c[0], jnp.tanh(c[1] @ vals["W"] + x * c[0])),
                                                      None),
                                        (jnp.full((H,), 0.5), jnp.zeros(H)), vals["xs"])[0][1],
                               rtol=2e-5)
    assert all(s["save"] == 0 for s in scan_stats(inf.outputs))


@pytest.mark.parametrize("backend", ["jax", "llvm"])
def test_reverse_truncated_and_checkpointed_truncated_other_backends(backend):
    for kw in (dict(reverse=True, truncate=2), dict(truncate=3, checkpoint=2)):
        loss, P = _rnn_graph(6, dtype="float32", **kw)
        jkw = {k: v for k, v in kw.items() if k != "checkpoint"}
        _maybe_llvm_gap(backend, _check, loss, P, _rnn_values(6), backend, rtol=2e-4, **jkw)


# -- loop-invariant hoisting (rewrite/scan_hoist.py) -----------------------------------------


def _scans(outputs):
    from bpcompile.ir.traverse import toposort

    return [n for n in toposort(outputs) if n.op == "scan"]


def _body_ops(scan_node):
    from bpcompile.ir.traverse import toposort

    body = scan_node.attr("body")
    return [n.op for n in toposort(body.outputs) if n not in set(body.params)]


def test_hoist_moves_loop_invariants_out_of_the_loop():
    """The BPTT body's Wh.T leaves its loop (one contiguous copy before it); per-step work
    (x @ Wx, h @ Wh) stays, so no scan stores more than before."""
    from bpcompile.rewrite.scan_hoist import hoist_scans

    loss, P = _rnn_graph(6)
    outs = [loss] + bp.grad(loss, list(P.values()))
    before, after = _scans(outs), _scans(hoist_scans(outs))
    assert len(before) == len(after) == 2
    (fwd0, bwd0), (fwd1, bwd1) = (sorted(s, key=lambda n: n.attr("reverse"))
                                  for s in (before, after))
    n0, n1 = _body_ops(bwd0).count("transpose"), _body_ops(bwd1).count("transpose")
    assert n1 == n0 - 1  # Wh.T left; x.T and h.T read per-step values and stay
    consts = bwd1.attr("body").consts
    assert "Wh_T" in [c.attr("name") for c in consts]
    assert "Wh" not in [c.attr("name") for c in consts]  # unread constants are dropped
    assert _body_ops(fwd1) == _body_ops(fwd0) and fwd1.shape == fwd0.shape
    once = hoist_scans(outs)
    assert all(a is b for a, b in zip(once, hoist_scans(once)))  # a fixpoint


@pytest.mark.parametrize("backend", BACKENDS)
def test_hoisted_invariants_give_the_jax_gradient(backend):
    if not available(backend):
        pytest.skip(backend)
    T, B, H = 5, 2, 3
    dtype = F64 if backend == "numpy" else "float32"
    xs = bp.input("xs", (T, B, H), dtype)
    W, U = bp.param("W", (H, H), dtype), bp.param("U", (H, H), dtype)

    def step(h, x):
        h = bp.tanh(x @ W + h @ (bp.transpose(U, (1, 0)) * bp.sigmoid(W)))
        return h, bp.exp(-bp.sum(W * W)) * h

    hT, hs = scan(step, bp.broadcast_to(bp.const(0.1, dtype), (B, H)), xs)
    loss = bp.sum(hT) + bp.mean(hs)
    vals = {"xs": rng.standard_normal((T, B, H)), "W": rng.standard_normal((H, H)) * 0.5,
            "U": rng.standard_normal((H, H)) * 0.5}
    vals = {k: v.astype(dtype) for k, v in vals.items()}

    def jl(W, U, xs):
        def js(h, x):
            h = jnp.tanh(x @ W + h @ (U.T * jax.nn.sigmoid(W)))
            return h, jnp.exp(-jnp.sum(W * W)) * h
        hT, hs = lax.scan(js, jnp.full((B, H), 0.1, dtype), xs)
        return jnp.sum(hT) + jnp.mean(hs)

    v, g = bp.compile(loss, [W, U], backend=backend)(**vals)
    jv, (gW, gU) = jax.value_and_grad(jl, (0, 1))(vals["W"], vals["U"], vals["xs"])
    rtol = 1e-10 if dtype == F64 else 2e-4
    np.testing.assert_allclose(v, jv, rtol=rtol)
    np.testing.assert_allclose(g["W"], gW, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(g["U"], gU, rtol=rtol, atol=rtol)
