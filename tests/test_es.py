"""Evolution strategies (train/es.py): the antithetic estimate converges to the true gradient
on a quadratic, rank shaping, and ES reduces a tiny model's loss with the compiled forward."""

import numpy as np
import pytest

import bpcompile as bp
from bpcompile import optim
from bpcompile.errors import ArgumentError
from bpcompile.train import EvolutionStrategy, centered_ranks


def _quadratic():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((4, 3))
    w = bp.param("w", (3, 2), "float64")
    loss = bp.sum(bp.square(bp.const(A) @ w - 1.0)) * 0.5
    return loss, w, A


def test_estimate_converges_to_gradient_on_quadratic():
    loss, w, A = _quadratic()
    w0 = np.random.default_rng(1).standard_normal((3, 2))
    pairs = 4000
    es = EvolutionStrategy(loss, sigma=0.3, pairs=pairs, rank_shaping=False, init={"w": w0})
    est = es.estimate()["w"]
    exact = A.T @ (A @ w0 - 1.0)
    np.testing.assert_allclose(bp.compile(loss, [w])(w=w0)[1]["w"], exact, rtol=1e-12)
    # antithetic pairs of a quadratic give (∇f·ε)ε exactly, so the relative error is the
    # Monte Carlo one, sqrt((d + 1) / n) ≈ 0.042 here; allow 3x that
    rel = np.linalg.norm(est - exact) / np.linalg.norm(exact)
    assert rel < 3 * np.sqrt((w0.size + 1) / pairs), rel
    few = EvolutionStrategy(loss, sigma=0.3, pairs=4, rank_shaping=False, init={"w": w0})
    assert np.linalg.norm(few.estimate()["w"] - exact) > np.linalg.norm(est - exact)


def test_centered_ranks():
    r = centered_ranks(np.array([[3.0, -1.0], [10.0, 0.5]]))
    np.testing.assert_allclose(r, [[1 / 6, -0.5], [0.5, -1 / 6]])


@pytest.mark.parametrize("shaping", [True, False])
def test_es_reduces_tiny_model_loss(shaping):
    rng = np.random.default_rng(2)
    x = bp.input("x", (16, 3), "float64")
    y = bp.input("y", (16, 1), "float64")
    W = bp.param("W", (3, 1), "float64")
    b = bp.param("b", (1,), "float64")
    loss = bp.mean(bp.square(x @ W + b - y))
    xs = rng.standard_normal((16, 3))
    ys = xs @ np.array([[1.0], [-2.0], [0.5]]) + 0.3
    es = EvolutionStrategy(loss, sigma=0.05, pairs=8, optimizer=optim.adam(0.1), seed=3,
                           rank_shaping=shaping, backend="llvm")
    before = es.evaluate(x=xs, y=ys)
    for _ in range(60):
        es.step(x=xs, y=ys)
    after = es.evaluate(x=xs, y=ys)
    assert after < 0.05 * before, (before, after)
    assert es.count == 60 and set(es.params) == {"W", "b"}


def test_bad_arguments():
    loss, w, _ = _quadratic()
    with pytest.raises(ArgumentError, match="sigma"):
        EvolutionStrategy(loss, sigma=0.0)
    with pytest.raises(ArgumentError, match="pairs"):
        EvolutionStrategy(loss, pairs=0)
    with pytest.raises(ArgumentError, match="not a param"):
        EvolutionStrategy(loss, params=["v"])


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_population_scan_equals_loop(backend):
    """One compiled call over the population (a scan) computes what 2n calls do."""
    rng = np.random.default_rng(4)
    x = bp.input("x", (5, 3), "float64")
    W = bp.param("W", (3, 2), "float64")
    loss = bp.mean(bp.tanh(x @ W))
    xs, w0 = rng.standard_normal((5, 3)), rng.standard_normal((3, 2))
    est = {m: EvolutionStrategy(loss, pairs=6, seed=5, init={"W": w0}, backend=backend,
                                rank_shaping=False,
                                population=m).estimate(x=xs)["W"] for m in ("scan", "loop")}
    np.testing.assert_allclose(est["scan"], est["loop"], rtol=1e-12, atol=1e-15)
    with pytest.raises(ArgumentError, match="population"):
        EvolutionStrategy(loss, population="vmap")
