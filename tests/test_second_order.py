"""Hessian-vector products from the differentiable adjoint, the full Hessian, and SciPy-driven
second-order minimisation, checked against jax.jvp(jax.grad(f)) and jax.hessian."""

import numpy as np
import pytest

import bpcompile as bp
from bpcompile import train

jax = pytest.importorskip("jax")
jnp = jax.numpy

SH = {"W1": (3, 4), "b1": (4,), "W2": (4, 2), "b2": (2,)}


def _model():
    x = bp.input("x", (5, 3), "float64")
    y = bp.input("y", (5, 2), "float64")
    ps = {k: bp.param(k, s, "float64") for k, s in SH.items()}
    h = bp.tanh(x @ ps["W1"] + ps["b1"])
    o = bp.sigmoid(h @ ps["W2"] + ps["b2"])
    return bp.mse(o, y), ps


def _jax_loss(p, x, y):
    h = jnp.tanh(x @ p["W1"] + p["b1"])
    o = jax.nn.sigmoid(h @ p["W2"] + p["b2"])
    return jnp.mean((o - y) ** 2)


def _values(seed=0):
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s) for k, s in SH.items()}
    data = {"x": rng.standard_normal((5, 3)), "y": rng.random((5, 2))}
    return params, data


def test_hvp_matches_jax_jvp_of_grad():
    loss, ps = _model()
    params, data = _values()
    rng = np.random.default_rng(1)
    v = {k: rng.standard_normal(s) for k, s in SH.items()}
    H = train.hvp(loss, list(ps.values()))
    grads, hv = H(v, **params, **data)
    f = lambda p: _jax_loss(p, data["x"], data["y"])
    g_ref, hv_ref = jax.jit(lambda p, t: jax.jvp(jax.grad(f), (p,), (t,)))(params, v)
    for k in SH:
        np.testing.assert_allclose(grads[k], g_ref[k], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(hv[k], hv_ref[k], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
@pytest.mark.parametrize("mode", ["fwd", "rev"])
def test_hvp_without_grad_returns_hv_only_and_drops_the_gradient_products(backend, mode):
    loss, ps = _model()
    params, data = _values(5)
    rng = np.random.default_rng(6)
    v = {k: rng.standard_normal(s) for k, s in SH.items()}
    full = train.hvp(loss, list(ps.values()), backend=backend, mode=mode)
    alone = train.hvp(loss, list(ps.values()), backend=backend, mode=mode, with_grad=False)
    hv = alone(v, **params, **data)
    assert set(hv) == set(SH)
    f = lambda p: _jax_loss(p, data["x"], data["y"])
    hv_ref = jax.jit(lambda p, t: jax.jvp(jax.grad(f), (p,), (t,))[1])(params, v)
    for k in SH:
        np.testing.assert_allclose(hv[k], hv_ref[k], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(hv[k], full(v, **params, **data)[1][k], rtol=1e-12,
                                   atol=1e-14)
    # W1's gradient x^T delta1 is needed by nothing else: without it, one product fewer
    assert alone.fn.stages[-1].ops["matmul"] < full.fn.stages[-1].ops["matmul"]


def test_hvp_is_the_documented_graph_expression():
    # bp.grad(bp.sum(bp.grad(loss, W) * v), W), written by hand, gives the same numbers
    loss, ps = _model()
    params, data = _values(2)
    W = ps["W1"]
    v = bp.input("v", SH["W1"], "float64")
    hv = bp.grad(bp.sum(bp.grad(loss, W) * v), W)
    vv = np.random.default_rng(3).standard_normal(SH["W1"])
    out = bp.function({"hv": hv})(**params, **data, v=vv)["hv"]
    f = lambda w: _jax_loss({**params, "W1": w}, data["x"], data["y"])
    ref = jax.jvp(jax.grad(f), (params["W1"],), (vv,))[1]
    np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-12)


def test_full_hessian_matches_jax_hessian():
    loss, ps = _model()
    params, data = _values(4)
    H = train.hessian(loss, list(ps.values()), **params, **data)
    n = sum(int(np.prod(s)) for s in SH.values())
    assert H.shape == (n, n)
    names = list(SH)

    def flat_f(theta):
        p, i = {}, 0
        for k in names:
            m = int(np.prod(SH[k]))
            p[k] = theta[i:i + m].reshape(SH[k])
            i += m
        return _jax_loss(p, data["x"], data["y"])

    theta = np.concatenate([params[k].ravel() for k in names])
    ref = np.asarray(jax.jit(jax.hessian(flat_f))(theta))
    np.testing.assert_allclose(H, ref, rtol=1e-8, atol=1e-11)
    np.testing.assert_allclose(H, H.T, atol=1e-12)


def _logistic():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    t = (X @ np.array([1.5, -2.0, 0.5]) + 0.3 * rng.standard_normal(40) > 0).astype(float)
    x = bp.input("x", (40, 3), "float64")
    y = bp.input("y", (40,), "float64")
    w = bp.param("w", (3,), "float64")
    b = bp.param("b", (), "float64")
    z = bp.reshape(x @ bp.reshape(w, (3, 1)), (40,)) + b
    loss = bp.binary_cross_entropy_with_logits(z, y) + 0.05 * bp.sum(w * w)  # strictly convex
    return loss, [w, b], {"x": X, "y": t}


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # scipy, krylov
@pytest.mark.parametrize("method", ["L-BFGS-B", "Newton-CG", "trust-exact", "trust-krylov"])
def test_second_order_minimizers_agree_on_a_convex_problem(method):
    loss, wrt, data = _logistic()
    init = {"w": np.zeros(3), "b": np.zeros(())}
    res = train.minimize(loss, wrt, init=init, inputs=data, method=method, tol=1e-12)
    assert res.grad_norm < 1e-6, (method, res.message)
    ref = train.minimize(loss, wrt, init=init, inputs=data, method="BFGS", tol=1e-12)
    np.testing.assert_allclose(res.params["w"], ref.params["w"], rtol=1e-5, atol=1e-6)
    assert res.fun == pytest.approx(ref.fun, rel=1e-10)


def test_newton_converges_in_few_iterations():
    loss, wrt, data = _logistic()
    init = {"w": np.zeros(3), "b": np.zeros(())}
    newton = train.minimize(loss, wrt, init=init, inputs=data, method="trust-exact", tol=1e-10)
    lbfgs = train.minimize(loss, wrt, init=init, inputs=data, method="L-BFGS-B", tol=1e-10)
    assert newton.nit < lbfgs.nit and newton.nit <= 10


def test_hessian_refuses_large_models():
    W = bp.param("Wbig", (100, 100), "float64")
    with pytest.raises(bp.ArgumentError, match="too many"):
        train.hessian(bp.sum(W * W), [W], Wbig=np.zeros((100, 100)))
