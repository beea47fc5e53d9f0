"""Jacobians and Hessians against JAX in the same process (issue #16, performance):
the Jacobian of a 1000-residual least-squares model (reverse and forward), the Hessian of a
100-parameter function and the MAML meta-gradient on the sinusoid task (examples/
maml_sinusoid.py: 25 tasks, K=10, 1-40-40-1 ReLU MLP, one inner SGD step, second order,
against jax.jit(jax.grad) of vmap over tasks of the inner fori_loop), each compiled once;
best of `--rounds` interleaved medians.

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
    ap.add_argument("--batched-gemm", action="store_true",
                    help="only time batched products inline vs BLAS (llvm/blas.py BATCHED_MIN)")
    a = ap.parse_args()
    if a.batched_gemm:
        return batched_gemm_rows(a.rounds)
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
    cases.update(maml_cases(a.backend, rng))
    for name, (ours, theirs) in cases.items():
        t_o = min(median_us(ours, 0.3) for _ in range(a.rounds))
        t_j = min(median_us(theirs, 0.3) for _ in range(a.rounds))
        print(f"{name:34s} {a.backend} {t_o:9.1f} us   jax.jit {t_j:9.1f} us   "
              f"ratio {t_o / t_j:5.2f}")


def maml_cases(backend: str, rng, tasks: int = 25, inner_steps: int = 1) -> dict:
    """{name: (ours, jax's)}: the MAML meta-gradient of examples/maml_sinusoid.py."""
    import importlib.util
    from pathlib import Path

    import jax
    import jax.numpy as jnp

    spec = importlib.util.spec_from_file_location(
        "_maml", Path(__file__).resolve().parent.parent / "examples" / "maml_sinusoid.py")
    maml = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maml)
    alpha = 0.01
    meta, _, params = maml.build(tasks, 10, inner_steps, alpha, dtype="float64")
    names = sorted(params)
    fn = bp.function({n: g for n, g in zip(names, bp.grad(meta, [params[n] for n in names]))},
                     backend=backend)
    p = maml.init_params(0, dtype="float64")
    batch = maml.sample_tasks(rng, tasks, 10, "float64")

    def mlp(p, x):
        h = jax.nn.relu(x @ p["W1"] + p["b1"])
        return jax.nn.relu(h @ p["W2"] + p["b2"]) @ p["W3"] + p["b3"]

    def jmeta(p, xs, ys, xq, yq):
        def task(xs, ys, xq, yq):
            def sgd(_, q):
                g = jax.grad(lambda q: jnp.mean((mlp(q, xs) - ys) ** 2))(q)
                return jax.tree.map(lambda a, b: a - alpha * b, q, g)
            return jnp.mean((mlp(jax.lax.fori_loop(0, inner_steps, sgd, p), xq) - yq) ** 2)
        return jnp.mean(jax.vmap(task)(xs, ys, xq, yq))

    jg = jax.jit(jax.grad(jmeta))
    jargs = (p, batch["xs"], batch["ys"], batch["xq"], batch["yq"])
    got, ref = fn(**p, **batch), jg(*jargs)
    assert all(np.allclose(got[n], ref[n]) for n in names)
    return {f"maml meta-grad {tasks} tasks": (
        lambda: fn(**p, **batch), lambda: jax.block_until_ready(jg(*jargs)))}


def batched_gemm_rows(rounds: int) -> None:
    """A batched product (B, M, K) @ (B, K, N) (or a transposed (B, N, K) right operand, as a
    backward pass has), inline loops (gemm_threshold=inf) vs one BLAS call per matrix."""
    rng = np.random.default_rng(0)
    for dt in ("float32", "float64"):
        for B, M, K, N, tb in [(25, 10, 40, 40, False), (25, 10, 40, 40, True),
                               (16, 32, 32, 16, True), (8, 16, 16, 16, False),
                               (8, 16, 16, 16, True), (64, 8, 8, 8, False)]:
            a = bp.input("a", (B, M, K), dt)
            b = bp.input("b", (B, N, K) if tb else (B, K, N), dt)
            y = bp.matmul(a, bp.transpose(b, (0, 2, 1)) if tb else b)
            args = {"a": rng.standard_normal((B, M, K)).astype(dt),
                    "b": rng.standard_normal((B, N, K) if tb else (B, K, N)).astype(dt)}
            fns = [bp.function({"y": y}, backend="llvm", gemm_threshold=th)
                   for th in (2**62, 0)]
            t = [min(median_us(lambda f=f: f(**args), 0.2) for _ in range(rounds))
                 for f in fns]
            print(f"{dt} ({B}, {M}x{K} @ {K}x{N}{', b transposed' if tb else ''}): "
                  f"inline {t[0]:7.1f} us  BLAS {t[1]:7.1f} us  ratio {t[1] / t[0]:4.2f}")


if __name__ == "__main__":
    main()
