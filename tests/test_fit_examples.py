"""examples/gauss_newton_fit.py and examples/newton_fit.py run and converge to the optimum an
independent solver finds (scipy.optimize), with the convergence rate their methods promise;
examples/ode_rk4_fit.py's gradient through bp.fori_loop matches jax.grad and its fit recovers
the ODE's parameters."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
scipy_optimize = pytest.importorskip("scipy.optimize")


def _example(name):
    spec = importlib.util.spec_from_file_location(f"_ex_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_gauss_newton_fit_matches_scipy_least_squares(backend):
    ex = _example("gauss_newton_fit")
    res = ex.main(["--n", "80", "--backend", backend, "--quiet"])
    t, y = res["t"], res["y"]

    def resid(th):
        return th[0] * np.exp(-th[1] * t) + th[2] * np.exp(-th[3] * t) - y

    ref = scipy_optimize.least_squares(resid, ex.START, xtol=1e-14, ftol=1e-14, gtol=1e-14)
    np.testing.assert_allclose(res["theta"], ref.x, rtol=1e-6)
    assert res["history"][-1] <= ref.cost * (1 + 1e-10)
    assert all(b <= a for a, b in zip(res["history"], res["history"][1:]))
    # the compiled Jacobian is the one scipy's finite differences estimate
    fn = ex.compile_residuals(len(t), backend)
    J = np.asarray(fn(t=t, y=y, theta=ref.x)["J"])
    np.testing.assert_allclose(J, ref.jac, rtol=1e-5, atol=1e-7)


def test_newton_fit_matches_scipy_and_converges_quadratically():
    ex = _example("newton_fit")
    res = ex.main(["--n", "200", "--quiet"])
    X, y = res["X"], res["y"]

    def f(w):
        z = X @ w[:-1] + w[-1]
        return np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * ex.L2 * np.sum(w[:-1] ** 2)

    def g(w):
        z = X @ w[:-1] + w[-1]
        e = (1.0 / (1.0 + np.exp(-z)) - y) / len(y)
        return np.concatenate([X.T @ e + ex.L2 * w[:-1], [e.sum()]])

    ref = scipy_optimize.minimize(f, np.zeros(X.shape[1] + 1), jac=g, method="BFGS",
                                  options={"gtol": 1e-12})
    np.testing.assert_allclose(res["w"], ref.x, rtol=1e-6, atol=1e-8)
    norms = res["norms"]
    assert norms[-1] <= 1e-12 and len(norms) <= 10
    # quadratic convergence: once small, each gradient norm is below C·(previous)² (until
    # it reaches the round-off floor)
    tail = [(a, b) for a, b in zip(norms, norms[1:]) if a < 1e-2 and b > 1e-14]
    assert tail and all(b <= 10.0 * a * a for a, b in tail), norms


def test_ode_rk4_fit_gradient_matches_jax_and_the_fit_recovers_theta():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    ex = _example("ode_rk4_fit")
    steps = 60
    obs = ex.simulate(ex.TRUE, steps) + 0.01 * np.random.default_rng(1).standard_normal(
        (steps, 2))
    fn = ex.compile_fit(steps, "numpy", checkpoint=5)

    def jloss(w):
        th = jnp.exp(w)

        def body(i, c):
            u = ex.rk4_step(lambda v: ex.lotka_volterra(v, th, jnp.stack), c[0], ex.DT)
            return u, c[1] + jnp.sum((u - jnp.asarray(obs)[i]) ** 2)
        return jax.lax.fori_loop(0, steps, body, (jnp.asarray(ex.U0), 0.0))[1] / steps

    w = np.log(np.array([0.7, 0.4, 0.7, 1.3]))
    loss, g = fn(log_theta=w, obs=obs)
    jl, jg = jax.jit(jax.value_and_grad(jloss))(jnp.asarray(w))
    np.testing.assert_allclose(loss, jl, rtol=1e-10)
    np.testing.assert_allclose(g["log_theta"], jg, rtol=1e-7)
    theta, losses = ex.fit(ex.compile_fit(steps, "llvm"), obs, iters=200, verbose=False)
    assert losses[-1] < 0.01 * losses[0], losses[::20]
    np.testing.assert_allclose(theta, ex.TRUE, rtol=0.03)
