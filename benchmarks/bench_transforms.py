"""Jacobians and Hessians against JAX in the same process (issue #16, performance):
the Jacobian of a 1000-residual least-squares model (reverse and forward) and the Hessian of a
100-parameter function, each compiled once; best of `--rounds` interleaved medians.

    PYTHONPATH=. python benchmarks/bench_transforms.py [--backend llvm] [--rounds 3]
        [--batch-elements 12 16 18]     # also batched reverse mode at other chunk sizes
"""

from __future__ import annotations

import argparse

import numpy as np
from models import median_us

import bpcompile as bp
from bpcompile.autodiff import jacobian as jac_mod
from bpcompile.autodiff.jacobian import jacobian_rev


def residual_model(bp, xnp, m: int, k: int):
    """r_i = sum_j theta_j * tanh(a_j x_i) - y_i (m residuals, 2k parameters)."""
    x, y = bp.input("x", (m, 1), "float64"), bp.input("y", (m,), "float64")
    th, a = bp.param("theta", (k,), "float64"), bp.param("a", (k,), "float64")
    r = bp.sum(bp.tanh(x * a) * th, axis=1) - y

    def jr(p, x, y):
        return xnp.sum(xnp.tanh(x * p["a"]) * p["theta"], axis=1) - y
    return r, [th, a], jr


def main() -> None:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="llvm")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-elements", type=int, nargs="*", default=[],
                    help="also time rev batched with BATCH_ELEMENTS = 2**E for each E")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    m, k = 1000, 5
    r, ps, jr = residual_model(bp, jnp, m, k)
    vals = {"x": rng.standard_normal((m, 1)), "y": rng.standard_normal(m),
            "theta": rng.standard_normal(k), "a": rng.standard_normal(k)}
    P = {"theta": vals["theta"], "a": vals["a"]}
    cases = {}
    default_chunk = jac_mod.BATCH_ELEMENTS
    for mode in ["rev", "fwd", "rev batched"] + [f"rev batched 2^{e}" for e in a.batch_elements]:
        # "rev batched": batched VJPs over chunks of seed rows (opt-in, jacobian_rev)
        e = mode.split("^")[1] if "^" in mode else None
        jac_mod.BATCH_ELEMENTS = 2 ** int(e) if e else default_chunk
        J = (jacobian_rev(r, ps, batched=True) if mode.startswith("rev batched")
             else bp.jacobian(r, ps, mode=mode))
        fn = bp.function({"Jt": J[0], "Ja": J[1]}, backend=a.backend)
        jj = jax.jit((jax.jacfwd if mode == "fwd" else jax.jacrev)(jr))
        ref = jj(P, vals["x"], vals["y"])
        args = {k: v for k, v in vals.items() if k in fn.signature.names}
        got = fn(**args)
        assert np.allclose(got["Jt"], ref["theta"]) and np.allclose(got["Ja"], ref["a"])
        cases[f"jacobian {m}x{2 * k} {mode}"] = (
            lambda fn=fn, args=args: fn(**args),
            lambda jj=jj: jax.block_until_ready(jj(P, vals["x"], vals["y"])))
    n = 100
    w = bp.param("w", (n,), "float64")
    A = rng.standard_normal((n, n)) / n
    f = bp.sum(bp.tanh(bp.matmul(bp.const(A, "float64"), w)) ** 2) + bp.sum(w ** 4)
    fn = bp.function({"H": bp.hessian(f, w)}, backend=a.backend)

    def jf(w):
        return jnp.sum(jnp.tanh(A @ w) ** 2) + jnp.sum(w ** 4)
    jh = jax.jit(jax.hessian(jf))
    w0 = rng.standard_normal(n)
    assert np.allclose(fn(w=w0)["H"], jh(w0))
    cases[f"hessian {n}"] = (lambda: fn(w=w0), lambda: jax.block_until_ready(jh(w0)))
    for name, (ours, theirs) in cases.items():
        t_o = min(median_us(ours, 0.3) for _ in range(a.rounds))
        t_j = min(median_us(theirs, 0.3) for _ in range(a.rounds))
        print(f"{name:34s} {a.backend} {t_o:9.1f} us   jax.jit {t_j:9.1f} us   "
              f"ratio {t_o / t_j:5.2f}")


if __name__ == "__main__":
    main()
