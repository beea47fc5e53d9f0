"""Attention, normalisation, residual, dropout and embedding composites vs JAX, incl. extremes."""

from __future__ import annotations

import numpy as np
import pytest
from layers_harness import BACKENDS, assert_matches_jax, fd_check, jax, jnp

import bpcompile as bp
from bpcompile.layers import (
    batch_norm,
    dropout,
    dropout_masks,
    embedding,
    layer_norm,
    multi_head_attention,
    residual,
    scaled_dot_product_attention,
)

rng = np.random.default_rng(1)


def _jsdpa(q, k, v, causal=False, scale=None):
    s = q @ jnp.swapaxes(k, -1, -2) * (scale if scale else 1.0 / np.sqrt(q.shape[-1]))
    if causal:
        tq, tk = s.shape[-2:]
        s = jnp.where(jnp.tril(jnp.ones((tq, tk), bool), tk - tq), s, -1e30)
    return jax.nn.softmax(s, axis=-1) @ v


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_matches_jax(causal):
    values = {
        "q": rng.standard_normal((2, 5, 4)),
        "k": rng.standard_normal((2, 5, 4)),
        "v": rng.standard_normal((2, 5, 3)),
    }
    assert_matches_jax(
        lambda V: scaled_dot_product_attention(V["q"], V["k"], V["v"], causal),
        lambda V: _jsdpa(V["q"], V["k"], V["v"], causal),
        values,
        ("q", "k", "v"),
    )


def test_sdpa_causal_first_query_sees_only_first_key():
    q, k, v = (bp.input(n, (1, 4, 2), "float64") for n in "qkv")
    fn = bp.function({"o": scaled_dot_product_attention(q, k, v, causal=True)})
    vals = {n: rng.standard_normal((1, 4, 2)) for n in "qkv"}
    o = fn(**vals)["o"]
    np.testing.assert_allclose(o[0, 0], vals["v"][0, 0], rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sdpa_large_logits_stable(backend):
    """Scores of order 1e4: softmax saturates to one-hot; values and gradients stay finite."""
    dtype = "float64" if backend == "numpy" else "float32"
    values = {
        "q": rng.standard_normal((2, 6, 4)) * 100,
        "k": rng.standard_normal((2, 6, 4)) * 100,
        "v": rng.standard_normal((2, 6, 4)),
    }
    fn, value, grads = assert_matches_jax(
        lambda V: scaled_dot_product_attention(V["q"], V["k"], V["v"], causal=True),
        lambda V: _jsdpa(V["q"], V["k"], V["v"], causal=True),
        values,
        ("q", "k", "v"),
        backend=backend,
        dtype=dtype,
        rtol=1e-3 if dtype == "float32" else 1e-9,
    )
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads.values())


@pytest.mark.parametrize("backend,causal", [("numpy", False)] + [(b, True) for b in BACKENDS])
def test_multi_head_attention_matches_jax(backend, causal):
    B, T, D, H = 2, 5, 8, 2
    values = {
        "x": rng.standard_normal((B, T, D)),
        **{n: rng.standard_normal((D, D)) * 0.4 for n in ("Wq", "Wk", "Wv", "Wo")},
    }

    def jbuild(V):
        def heads(a):
            return a.reshape(B, T, H, D // H).transpose(0, 2, 1, 3)

        o = _jsdpa(
            heads(V["x"] @ V["Wq"]), heads(V["x"] @ V["Wk"]), heads(V["x"] @ V["Wv"]), causal
        )
        return o.transpose(0, 2, 1, 3).reshape(B, T, D) @ V["Wo"]

    dtype = "float64" if backend == "numpy" else "float32"
    assert_matches_jax(
        lambda V: multi_head_attention(V["x"], V["Wq"], V["Wk"], V["Wv"], V["Wo"], H, causal),
        jbuild,
        values,
        ("x", "Wq", "Wk", "Wv", "Wo"),
        backend=backend,
        dtype=dtype,
    )


def _jln(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps) * g + b


def test_layer_norm_matches_jax_and_fd():
    values = {
        "x": rng.standard_normal((3, 4, 6)),
        "g": rng.standard_normal(6),
        "b": rng.standard_normal(6),
    }
    assert_matches_jax(
        lambda V: layer_norm(V["x"], V["g"], V["b"]),
        lambda V: _jln(V["x"], V["g"], V["b"]),
        values,
        ("x", "g", "b"),
    )
    fd_check(lambda V: layer_norm(V["x"], V["g"], V["b"]), values, ("x", "g", "b"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_norm_near_zero_variance(backend):
    """Rows that are constant up to 1e-7 (float32 rounding level) around a 1e3 offset."""
    dtype = "float64" if backend == "numpy" else "float32"
    x = 1e3 + rng.standard_normal((4, 8)) * 1e-7
    x[0] = 1e3  # exactly zero variance
    values = {"x": x, "g": rng.standard_normal(8), "b": rng.standard_normal(8)}
    fn, value, grads = assert_matches_jax(
        lambda V: layer_norm(V["x"], V["g"], V["b"]),
        lambda V: _jln(V["x"], V["g"], V["b"]),
        values,
        ("x", "g", "b"),
        backend=backend,
        dtype=dtype,
        rtol=1e-6 if dtype == "float64" else 1e-3,
    )
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads.values())


@pytest.mark.parametrize("shape", [(6, 4), (4, 3, 5, 5)])
def test_batch_norm_training_matches_jax(shape):
    c = shape[1]
    values = {
        "x": rng.standard_normal(shape) * 3 + 1,
        "g": rng.standard_normal(c),
        "b": rng.standard_normal(c),
    }
    axes = tuple(a for a in range(len(shape)) if a != 1)
    bsh = tuple(c if a == 1 else 1 for a in range(len(shape)))

    def jbuild(V):
        mu = V["x"].mean(axes, keepdims=True)
        var = V["x"].var(axes, keepdims=True)
        return (V["x"] - mu) / jnp.sqrt(var + 1e-5) * V["g"].reshape(bsh) + V["b"].reshape(bsh)

    assert_matches_jax(
        lambda V: batch_norm(V["x"], V["g"], V["b"]), jbuild, values, ("x", "g", "b")
    )


def test_batch_norm_returns_batch_stats():
    x = bp.input("x", (5, 3), "float64")
    y, mu, var = batch_norm(x, return_stats=True)
    xv = rng.standard_normal((5, 3))
    out = bp.function({"y": y, "mu": mu, "var": var})(x=xv)
    np.testing.assert_allclose(out["mu"], xv.mean(0), rtol=1e-12)
    np.testing.assert_allclose(out["var"], xv.var(0), rtol=1e-12)


def test_residual_block_matches_jax():
    values = {
        "x": rng.standard_normal((3, 6)),
        "W1": rng.standard_normal((6, 10)) * 0.3,
        "W2": rng.standard_normal((10, 6)) * 0.3,
    }
    assert_matches_jax(
        lambda V: residual(V["x"], lambda h: bp.tanh(h @ V["W1"]) @ V["W2"]),
        lambda V: V["x"] + jnp.tanh(V["x"] @ V["W1"]) @ V["W2"],
        values,
        ("x", "W1", "W2"),
    )
    with pytest.raises(bp.ShapeError, match="residual"):
        residual(bp.input("x", (3, 6)), lambda h: h @ bp.param("W", (6, 2)))


def test_embedding_matches_jax_incl_repeated_ids():
    values = {"E": rng.standard_normal((7, 4)), "tok": np.array([[1, 3, 3], [0, 6, 1]], np.int32)}
    assert_matches_jax(
        lambda V: bp.tanh(embedding(V["tok"], V["E"])),
        lambda V: jnp.tanh(V["E"][V["tok"]]),
        values,
        ("E",),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_mask_is_reproducible_and_backend_independent(backend):
    from layers_harness import available

    if not available(backend):
        pytest.skip(backend)
    x = bp.param("x", (64, 32), "float32")
    loss = bp.sum(dropout(bp.tanh(x), 0.25, "drop1"))
    fn = bp.compile(loss, [x], backend=backend)
    ref = bp.compile(loss, [x], backend="numpy")
    xv = rng.standard_normal((64, 32)).astype(np.float32)
    m1, m1b, m2 = (dropout_masks(loss, k) for k in (7, 7, 8))
    np.testing.assert_array_equal(m1["drop1"], m1b["drop1"])
    assert not np.array_equal(m1["drop1"], m2["drop1"])
    kept = m1["drop1"] != 0
    assert 0.65 < kept.mean() < 0.85 and np.allclose(m1["drop1"][kept], 1 / 0.75)
    v, g = fn(x=xv, **m1)
    v0, g0 = ref(x=xv, **m1)
    np.testing.assert_allclose(v, v0, rtol=1e-5)
    np.testing.assert_allclose(g["x"], (1 - np.tanh(xv) ** 2) * m1["drop1"], atol=1e-6)
    np.testing.assert_allclose(g["x"], g0["x"], atol=1e-6)
    np.testing.assert_array_equal(g["x"] == 0, ~kept)  # the same positions dropped


def test_dropout_identity_when_not_training():
    x = bp.input("x", (3,))
    assert dropout(x, 0.5, training=False) is x and dropout(x, 0.0) is x
