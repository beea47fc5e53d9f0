"""Logistic regression by Newton's method with `bp.hessian`.

An L2-regularised logistic regression (5 features and a bias, 400 samples) is fitted by
Newton's method: the compiler builds the loss, its gradient and its Hessian (forward-over-
reverse, `bp.hessian`, one batched pass) as one compiled function, and each step solves
H δ = −∇L. Near the optimum the gradient norm falls quadratically (the digits of accuracy
roughly double per step), which the printout shows.

    python examples/newton_fit.py [--n 400] [--backend llvm]
"""

from __future__ import annotations

import argparse

import numpy as np

import bpcompile as bp

FEATURES = 5
L2 = 1e-2


def compile_newton(n: int, backend: str = "numpy"):
    """One compiled function: (X, y, w) -> {"loss", "g": ∇L [6], "H": ∇²L [6, 6]}; w holds
    the 5 weights and the bias."""
    X = bp.input("X", (n, FEATURES), "float64")
    y = bp.input("y", (n,), "float64")
    w = bp.input("w", (FEATURES + 1,), "float64")
    z = (X @ w[:FEATURES] + w[FEATURES]).named("z")
    # mean binary cross-entropy from logits: softplus(z) - y·z, stable for any z
    loss = (bp.mean(bp.softplus(z) - y * z) + 0.5 * L2 * bp.sum(w[:FEATURES] ** 2)).named("loss")
    g = bp.grad(loss, wrt=w)
    H = bp.hessian(loss, w)
    return bp.function({"loss": loss, "g": g, "H": H}, backend=backend)


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, FEATURES))
    w_true = np.array([1.5, -2.0, 0.5, 0.0, 1.0])
    p = 1.0 / (1.0 + np.exp(-(X @ w_true - 0.3)))
    return X, (rng.uniform(size=n) < p).astype(np.float64)


def newton(fn, X, y, steps: int = 20, tol: float = 1e-12,
           verbose: bool = True) -> tuple[np.ndarray, list[float]]:
    """Newton's method from w = 0; returns (w, the gradient norm before each step)."""
    w = np.zeros(FEATURES + 1)
    norms = []
    for it in range(steps):
        out = fn(X=X, y=y, w=w)
        g, H = np.asarray(out["g"]), np.asarray(out["H"])
        norms.append(float(np.linalg.norm(g)))
        if verbose:
            print(f"step {it:2d}  loss {float(out['loss']):.12f}  |∇L| {norms[-1]:.3e}")
        if norms[-1] <= tol:
            break
        w = w - np.linalg.solve(H, g)
    return w, norms


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    if a.backend == "jax":  # the fit is in float64, which JAX computes only with x64 enabled
        import jax

        jax.config.update("jax_enable_x64", True)
    X, y = data(a.n)
    w, norms = newton(compile_newton(a.n, a.backend), X, y, verbose=not a.quiet)
    if not a.quiet:
        print(f"weights {np.round(w[:FEATURES], 4)}, bias {w[FEATURES]:.4f}")
    return {"w": w, "norms": norms, "X": X, "y": y}


if __name__ == "__main__":
    main()
