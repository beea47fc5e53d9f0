"""Gradients of graphs that contain gradients: adjoints are ordinary IR, so bp.grad composes.

Oracles: Hessian-vector products against jax.jvp(jax.grad(f)), gradient of a gradient norm
against nested jax.grad, a full Hessian against jax.hessian; every op-table row gets an HVP.
"""

from __future__ import annotations

import numpy as np
import op_table as T
import pytest

import bpcompile as bp
from bpcompile.backends.numpy.codegen import evaluate

jax = pytest.importorskip("jax")
jnp = jax.numpy


def _tiny_mlp(dtype="float64"):
    x = bp.input("x", (5, 3), dtype)
    y = bp.input("y", (5, 2), dtype)
    W1 = bp.param("W1", (3, 4), dtype)
    W2 = bp.param("W2", (4, 2), dtype)
    loss = bp.mean((bp.tanh(x @ W1) @ W2 - y) ** 2)
    r = np.random.default_rng(0)
    vals = {k: r.standard_normal(s).astype(dtype)
            for k, s in dict(x=(5, 3), y=(5, 2), W1=(3, 4), W2=(4, 2)).items()}
    return loss, (W1, W2), vals


def _jax_mlp(P, x, y):
    return jnp.mean((jnp.tanh(x @ P["W1"]) @ P["W2"] - y) ** 2)


def test_hessian_vector_product_matches_jax_jvp_of_grad():
    loss, (W1, W2), vals = _tiny_mlp()
    v1, v2 = bp.input("v1", W1.shape, "float64"), bp.input("v2", W2.shape, "float64")
    g1, g2 = bp.grad(loss, [W1, W2])
    hvp_loss = bp.sum(g1 * v1) + bp.sum(g2 * v2)
    fn = bp.compile(hvp_loss, wrt=[W1, W2])
    r = np.random.default_rng(1)
    vals.update(v1=r.standard_normal(W1.shape), v2=r.standard_normal(W2.shape))
    value, (hv) = fn(**vals)

    P = {"W1": vals["W1"], "W2": vals["W2"]}
    V = {"W1": vals["v1"], "W2": vals["v2"]}
    gradf = jax.grad(lambda p: _jax_mlp(p, vals["x"], vals["y"]))
    g_ref, hv_ref = jax.jit(lambda p, v: jax.jvp(gradf, (p,), (v,)),
                            compiler_options=T.FAST_COMPILE)(P, V)
    dot_ref = sum(np.sum(np.asarray(g_ref[k]) * V[k]) for k in P)
    np.testing.assert_allclose(value, dot_ref, rtol=1e-10)
    for k in P:
        np.testing.assert_allclose(hv[k], np.asarray(hv_ref[k]), rtol=1e-9, atol=1e-12)


def test_hvp_wrt_one_param_of_gradient_of_another():
    """Mixed second derivative d/dW2 <dL/dW1, v>."""
    loss, (W1, W2), vals = _tiny_mlp()
    v1 = bp.input("v1", W1.shape, "float64")
    fn = bp.compile(bp.sum(bp.grad(loss, W1) * v1), wrt=[W2])
    vals["v1"] = np.random.default_rng(3).standard_normal(W1.shape)
    _, g = fn(**vals)

    def mixed(w2):
        d1 = jax.grad(lambda w1: _jax_mlp({"W1": w1, "W2": w2}, vals["x"], vals["y"]))(vals["W1"])
        return jnp.sum(d1 * vals["v1"])

    np.testing.assert_allclose(g["W2"], np.asarray(jax.grad(mixed)(vals["W2"])), rtol=1e-9,
                               atol=1e-12)


def test_gradient_of_gradient_norm():
    loss, (W1, W2), vals = _tiny_mlp()
    g1, g2 = bp.grad(loss, [W1, W2])
    penalty = bp.sum(g1 * g1) + bp.sum(g2 * g2)
    fn = bp.compile(loss + 0.1 * penalty, wrt=[W1, W2])
    value, grads = fn(**vals)

    def ref(P):
        g = jax.grad(lambda p: _jax_mlp(p, vals["x"], vals["y"]))(P)
        return _jax_mlp(P, vals["x"], vals["y"]) + 0.1 * sum(jnp.sum(t * t) for t in g.values())

    P = {"W1": vals["W1"], "W2": vals["W2"]}
    rv, rg = jax.jit(jax.value_and_grad(ref), compiler_options=T.FAST_COMPILE)(P)
    np.testing.assert_allclose(value, float(rv), rtol=1e-10)
    for k in P:
        np.testing.assert_allclose(grads[k], np.asarray(rg[k]), rtol=1e-9, atol=1e-12)


def test_gradient_of_gradient_norm_float32():
    loss, (W1, W2), vals = _tiny_mlp("float32")
    g1 = bp.grad(loss, W1)
    fn = bp.compile(bp.sqrt(bp.sum(g1 * g1)), wrt=[W1, W2])
    value, grads = fn(**vals)
    assert grads["W1"].dtype == np.float32 and np.asarray(value).dtype == np.float32

    def ref(P):
        g = jax.grad(lambda p: _jax_mlp(p, vals["x"], vals["y"]))(P)["W1"]
        return jnp.sqrt(jnp.sum(g * g))

    P = {"W1": vals["W1"], "W2": vals["W2"]}
    rv, rg = jax.jit(jax.value_and_grad(ref), compiler_options=T.FAST_COMPILE)(P)
    np.testing.assert_allclose(value, float(rv), rtol=1e-5)
    for k in P:
        np.testing.assert_allclose(grads[k], np.asarray(rg[k]), rtol=2e-4, atol=2e-5)


def test_full_hessian_matches_jax_hessian():
    x = bp.input("x", (6, 3), "float64")
    t = bp.input("t", (6,), "float64")
    w = bp.param("w", (3,), "float64")
    loss = bp.binary_cross_entropy_with_logits(x @ w, t) + 0.5 * bp.sum(bp.exp(w) * w)
    g = bp.grad(loss, w)
    rows = [bp.grad(g[i], w) for i in range(3)]
    r = np.random.default_rng(4)
    vals = {"x": r.standard_normal((6, 3)), "t": r.uniform(0, 1, 6), "w": r.standard_normal(3)}
    H = np.stack(evaluate(rows, vals))

    def f(w):
        z = vals["x"] @ w
        bce = jnp.mean(jnp.logaddexp(0.0, z) - z * vals["t"])
        return bce + 0.5 * jnp.sum(jnp.exp(w) * w)

    H_ref = np.asarray(jax.jit(jax.hessian(f), compiler_options=T.FAST_COMPILE)(vals["w"]))
    np.testing.assert_allclose(H, H_ref, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(H, H.T, rtol=1e-12, atol=1e-14)  # symmetric, as it must be


def test_third_derivative_of_scalar_function():
    w = bp.param("w", (4,), "float64")
    loss = bp.sum(bp.sin(w) * bp.exp(w))
    g = bp.grad(loss, w)
    gg = bp.grad(bp.sum(g), w)
    ggg = bp.grad(bp.sum(gg), w)
    wv = np.linspace(-1, 1, 4)
    (out,) = evaluate([ggg], {"w": wv})
    f = lambda w: jnp.sin(w) * jnp.exp(w)
    d3 = jax.vmap(jax.grad(jax.grad(jax.grad(f))))(wv)
    np.testing.assert_allclose(out, np.asarray(d3), rtol=1e-12)


@pytest.mark.parametrize("name", [r.name for r in T.ROWS])
def test_hvp_for_every_table_row(name):
    """Differentiating each op's VJP graph again: HVP of sum(f * u) against JAX."""
    row = T.BY_NAME[name]
    P, I, f, loss, values = T.build(row, "float64")
    params = list(P.values())
    V = T.directions(row)
    vs = {k: bp.input("v_" + k, s, "float64") for k, s in row.params.items()}
    grads = bp.grad(loss, params)
    inner = None
    for g, k in zip(grads, row.params):
        term = bp.sum(g * vs[k])
        inner = term if inner is None else inner + term
    fn = bp.compile(inner, wrt=params)
    vals = dict(values, **{"v_" + k: v for k, v in V.items()})
    _, hv = fn(**vals)
    _, _, hv_ref = T.jax_oracle(row, "float64")
    for k in row.params:
        ref = hv_ref[k]
        atol = 1e-9 * max(1.0, float(np.max(np.abs(ref))))
        np.testing.assert_allclose(hv[k], ref, rtol=max(row.rtol64, 1e-9), atol=atol,
                                   err_msg=f"{name}: HVP d{k}")
