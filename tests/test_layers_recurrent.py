"""RNN / LSTM / GRU layers (scan-based) against the same cells written with jax.lax.scan."""

from __future__ import annotations

import numpy as np
import pytest
from layers_harness import BACKENDS, available, jax, jnp

import bpcompile as bp
from bpcompile.layers import gru, lstm, rnn

lax = jax.lax
rng = np.random.default_rng(3)
T, B, I, H = 6, 2, 3, 4


def _jlstm(p, xs):
    def step(hc, x):
        h, c = hc
        z = x @ p["Wx"] + p["b"] + h @ p["Wh"]
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    (h, c), hs = lax.scan(step, (p["h0"], p["c0"]), xs)
    return jnp.sum(jnp.sin(hs)) + jnp.sum(c * c)


def _jgru(p, xs):
    def step(h, x):
        xr, xz, xn = jnp.split(x @ p["Wx"] + p["bx"], 3, axis=-1)
        hr, hz, hn = jnp.split(h @ p["Wh"] + p["bh"], 3, axis=-1)
        r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        return h, h

    h, hs = lax.scan(step, p["h0"], xs)
    return jnp.sum(jnp.sin(hs)) + jnp.sum(h * h)


def _jrnn(p, xs):
    h, hs = lax.scan(lambda h, x: (jnp.tanh(x @ p["Wx"] + h @ p["Wh"] + p["b"]),) * 2,
                     p["h0"], xs)
    return jnp.sum(jnp.sin(hs)) + jnp.sum(h * h)


def _bp_model(kind, P, xs, **opts):
    if kind == "lstm":
        (h, c), hs = lstm(xs, P["h0"], P["c0"], P["Wx"], P["Wh"], P["b"], **opts)
        return bp.sum(bp.sin(hs)) + bp.sum(c * c)
    if kind == "gru":
        h, hs = gru(xs, P["h0"], P["Wx"], P["Wh"], P["bx"], P["bh"], **opts)
    else:
        h, hs = rnn(xs, P["h0"], P["Wx"], P["Wh"], P["b"], **opts)
    return bp.sum(bp.sin(hs)) + bp.sum(h * h)


SHAPES = {
    "rnn": {"h0": (B, H), "Wx": (I, H), "Wh": (H, H), "b": (H,)},
    "lstm": {"h0": (B, H), "c0": (B, H), "Wx": (I, 4 * H), "Wh": (H, 4 * H), "b": (4 * H,)},
    "gru": {"h0": (B, H), "Wx": (I, 3 * H), "Wh": (H, 3 * H), "bx": (3 * H,), "bh": (3 * H,)},
}
JAX = {"rnn": _jrnn, "lstm": _jlstm, "gru": _jgru}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_recurrent_layers_match_jax(kind, backend):
    if not available(backend):
        pytest.skip(backend)
    dtype = "float64" if backend == "numpy" else "float32"
    vals = {k: (rng.standard_normal(s) * 0.5).astype(dtype) for k, s in SHAPES[kind].items()}
    xsv = rng.standard_normal((T, B, I)).astype(dtype)
    P = {k: bp.param(k, s, dtype) for k, s in SHAPES[kind].items()}
    loss = _bp_model(kind, P, bp.input("xs", (T, B, I), dtype))
    try:
        fn = bp.compile(loss, list(P.values()), backend=backend)
    except bp.BackendError as e:
        assert backend == "llvm" and "scan" in str(e)
        pytest.xfail(f"llvm backend has no scan lowering: {e}")
    v, g = fn(xs=xsv, **vals)
    jv, jg = jax.jit(jax.value_and_grad(JAX[kind]))(vals, xsv)
    rtol = 1e-10 if dtype == "float64" else 2e-4
    np.testing.assert_allclose(v, jv, rtol=rtol)
    for k in P:
        np.testing.assert_allclose(g[k], jg[k], rtol=rtol,
                                   atol=rtol * max(1.0, float(np.abs(jg[k]).max())), err_msg=k)


def test_lstm_checkpointed_and_finite_differences():
    vals = {k: rng.standard_normal(s) * 0.5 for k, s in SHAPES["lstm"].items()}
    xsv = rng.standard_normal((T, B, I))
    P = {k: bp.param(k, s, "float64") for k, s in SHAPES["lstm"].items()}
    xs = bp.input("xs", (T, B, I), "float64")
    plain = bp.compile(_bp_model("lstm", P, xs), list(P.values()))
    ck_loss = _bp_model("lstm", P, xs, checkpoint=2)
    ck = bp.compile(ck_loss, list(P.values()))
    _, g1 = plain(xs=xsv, **vals)
    _, g2 = ck(xs=xsv, **vals)
    for k in P:
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-12, atol=1e-14)
    report = bp.check(ck_loss, list(P.values()), {"xs": xsv}, vals, fd_samples=1)
    assert report.ok, str(report)


def test_shape_errors_name_the_layer():
    with pytest.raises(bp.ShapeError, match="lstm"):
        lstm(bp.input("xs", (3, 4)), bp.input("h", (4, 2)), bp.input("c", (4, 2)),
             bp.param("Wx", (4, 8)), bp.param("Wh", (2, 8)))
