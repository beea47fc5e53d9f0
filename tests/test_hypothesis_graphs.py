"""Random expression graphs: one random recipe is interpreted twice, once with bpcompile and once
with jax.numpy, and the compiled float64 gradient (NumPy backend, all passes) must agree with
jax.grad. Recipes compose elementwise ops on broadcast-compatible shapes, keepdims reductions,
matmul, reshape/transpose and softmax-style composites over a few params.

Every shape in a recipe broadcasts to the base shape (m, n), so any two subexpressions combine.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from op_table import FAST_COMPILE

import bpcompile as bp

jax = pytest.importorskip("jax")
jnp = jax.numpy


# (bp fn, jnp fn): each is defined on all reals (domains kept safe by construction)
UNARY = {
    "tanh": (bp.tanh, jnp.tanh),
    "sin": (bp.sin, jnp.sin),
    "cos": (bp.cos, jnp.cos),
    "sigmoid": (bp.sigmoid, jax.nn.sigmoid),
    "softplus": (bp.softplus, lambda x: jnp.logaddexp(0.0, x)),
    "neg": (lambda x: -x, lambda x: -x),
    "square": (lambda x: x * x, lambda x: x * x),
    "exp_tanh": (lambda x: bp.exp(bp.tanh(x)), lambda x: jnp.exp(jnp.tanh(x))),
    "log_1_sq": (lambda x: bp.log(1.0 + x * x), lambda x: jnp.log1p(x * x)),
    "sqrt_1_sq": (lambda x: bp.sqrt(x * x + 1.0), lambda x: jnp.sqrt(x * x + 1.0)),
    "relu": (bp.relu, jax.nn.relu),
    "abs": (bp.abs, jnp.abs),
    "scale": (lambda x: 0.5 * x - 1.0, lambda x: 0.5 * x - 1.0),
    "pow3": (lambda x: x ** 3, lambda x: x ** 3),
}
BINARY = {
    "add": (lambda a, b: a + b, lambda a, b: a + b),
    "sub": (lambda a, b: a - b, lambda a, b: a - b),
    "mul": (lambda a, b: a * b, lambda a, b: a * b),
    "div": (lambda a, b: a / (1.0 + b * b), lambda a, b: a / (1.0 + b * b)),
    "maximum": (bp.maximum, jnp.maximum),
    "minimum": (bp.minimum, jnp.minimum),
    "pow_pos": (lambda a, b: (a * a + 0.5) ** bp.tanh(b),
                lambda a, b: (a * a + 0.5) ** jnp.tanh(b)),
}


def _shapes(m, n):
    return [(m, n), (n,), (m, 1), (1, n), (), (1, 1)]


@st.composite
def recipes(draw):
    m = draw(st.integers(1, 4))
    n = draw(st.integers(1, 4))
    n_params = draw(st.integers(1, 3))
    params = {f"p{i}": draw(st.sampled_from(_shapes(m, n))) for i in range(n_params)}
    params["Q"] = (n, n)  # for matmul nodes

    def expr(depth):
        choices = ["leaf"] if depth == 0 else [
            "leaf", "unary", "unary", "binary", "binary", "reduce", "matmul", "movement",
            "softmax", "where"]
        kind = draw(st.sampled_from(choices))
        if kind == "leaf":
            return ("leaf", draw(st.sampled_from(sorted(k for k in params if k != "Q"))))
        if kind == "unary":
            return ("unary", draw(st.sampled_from(sorted(UNARY))), expr(depth - 1))
        if kind == "binary":
            return ("binary", draw(st.sampled_from(sorted(BINARY))), expr(depth - 1),
                    expr(depth - 1))
        if kind == "reduce":
            how = draw(st.sampled_from(["sum", "max", "mean"]))
            axis = draw(st.sampled_from([0, 1, None]))
            return ("reduce", how, axis, expr(depth - 1))
        if kind == "movement":
            return ("movement", draw(st.sampled_from(
                ["reshape_t", "transpose2", "slice", "pad_slice", "concat_slice", "take_rev"])),
                expr(depth - 1))
        if kind == "where":
            return ("where", expr(depth - 1), expr(depth - 1), expr(depth - 1))
        if kind == "softmax":
            return ("softmax", draw(st.sampled_from(["softmax", "log_softmax", "lse"])),
                    expr(depth - 1))
        return ("matmul", expr(depth - 1))

    return (m, n), params, expr(draw(st.integers(1, 4)))


class Interp:
    """Interpret a recipe with a tensor library: `lib` is "bp" or "jax"."""

    def __init__(self, lib, base, P):
        self.lib, self.base, self.P = lib, base, P
        self.k = 0 if lib == "bp" else 1

    def full(self, x):
        return (bp.broadcast_to(x, self.base) if self.lib == "bp"
                else jnp.broadcast_to(x, self.base))

    def __call__(self, r):
        kind = r[0]
        if kind == "leaf":
            return self.P[r[1]]
        if kind == "unary":
            return UNARY[r[1]][self.k](self(r[2]))
        if kind == "binary":
            return BINARY[r[1]][self.k](self(r[2]), self(r[3]))
        if kind == "reduce":
            x = self.full(self(r[3]))
            how, axis = r[1], r[2]
            if self.lib == "bp":
                f = {"sum": bp.sum, "max": bp.max, "mean": bp.mean}[how]
            else:
                f = {"sum": jnp.sum, "max": jnp.max, "mean": jnp.mean}[how]
            return f(x, axis=axis, keepdims=True)
        if kind == "matmul":
            return self.full(self(r[1])) @ self.P["Q"]
        if kind == "movement":
            x = self.full(self(r[2]))
            m, n = self.base
            if r[1] == "reshape_t":  # (m, n) -> (n, m) row-major, then transpose back
                return x.reshape((n, m)).T
            if r[1] == "transpose2":  # xᵀ xᵀᵀ-style round trip through a 3-d view
                y = x.reshape((m, n, 1))
                y = bp.transpose(y, (2, 1, 0)) if self.lib == "bp" else jnp.transpose(
                    y, (2, 1, 0))
                return y.reshape((n, m)).T * 1.0
            if r[1] == "pad_slice":  # zero-pad both axes, then slice the interior back out
                if self.lib == "bp":
                    y = bp.pad(x, (1, 2), (2, 0), (0, 1))
                else:
                    y = jax.lax.pad(x, jnp.zeros((), x.dtype), ((1, 2, 0), (2, 0, 1)))
                return y[1:1 + m, 2::2] * 1.5
            if r[1] == "concat_slice":  # [x; tanh(x)] along rows, keep the tanh half
                if self.lib == "bp":
                    y = bp.concatenate([x, bp.tanh(x)], axis=0)
                else:
                    y = jnp.concatenate([x, jnp.tanh(x)], axis=0)
                return y[m:] + y[:m]
            if r[1] == "take_rev":  # gather rows in reverse order (twice the last one)
                idx = np.array([m - 1] + list(range(m - 1, 0, -1)), np.int32)
                if self.lib == "bp":
                    return bp.take(x, bp.const(idx), axis=0)
                return jnp.take(x, idx, axis=0)
            y = x[:, ::2]  # slice with a step (shape (m, ceil(n/2))), summed back to (m, 1)
            if self.lib == "bp":
                return bp.sum(y * 2.0, axis=1, keepdims=True)
            return jnp.sum(y * 2.0, axis=1, keepdims=True)
        if kind == "where":
            a, b = self(r[1]), self(r[2])
            if self.lib == "bp":
                return bp.where(a > b, self(r[3]), a * b)
            return jnp.where(a > b, self(r[3]), a * b)
        if kind == "softmax":
            x = self.full(self(r[2]))
            if self.lib == "bp":
                f = {"softmax": bp.softmax, "log_softmax": bp.log_softmax,
                     "lse": lambda z: bp.logsumexp(z, axis=-1, keepdims=True)}[r[1]]
            else:
                f = {"softmax": jax.nn.softmax, "log_softmax": jax.nn.log_softmax,
                     "lse": lambda z: jax.scipy.special.logsumexp(z, axis=-1, keepdims=True)}[
                         r[1]]
            return f(x)
        raise AssertionError(kind)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(recipes())
def test_random_graph_gradients_match_jax(recipe):
    base, params, r = recipe
    P = {k: bp.param(k, s, "float64") for k, s in params.items()}
    out = Interp("bp", base, P)(r)
    u = bp.input("u", out.shape, "float64")
    loss = bp.sum(out * u) + bp.sum(P["Q"] * 0.0)  # every param is reached
    fn = bp.compile(loss, wrt=list(P.values()))

    rng = np.random.default_rng(zlib.crc32(repr(recipe).encode()))
    vals = {k: rng.standard_normal(s) for k, s in params.items()}
    vals["u"] = rng.standard_normal(out.shape)
    value, grads = fn(**vals)

    def jloss(Pj):
        o = Interp("jax", base, Pj)(r)
        assert o.shape == out.shape, (o.shape, out.shape)
        return jnp.sum(o * vals["u"])

    Pj = {k: jnp.asarray(v) for k, v in vals.items() if k in params}
    rv, rg = jax.jit(jax.value_and_grad(jloss), compiler_options=FAST_COMPILE)(Pj)
    scale = max(1.0, abs(float(rv)))
    np.testing.assert_allclose(value, float(rv), rtol=1e-9, atol=1e-12 * scale)
    for k in params:
        ref = np.asarray(rg[k])
        atol = 1e-9 * max(1.0, float(np.max(np.abs(ref))))
        np.testing.assert_allclose(grads[k], ref, rtol=1e-8, atol=atol,
                                   err_msg=f"d{k} for recipe {r}")


PASS_SETS = [[], ["canonicalize", "algebraic"], ["stabilize", "fold"], ["cse", "fuse"],
             ["algebraic", "fuse"], None]


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(recipes(), st.sampled_from(PASS_SETS[1:]))
def test_random_graphs_give_the_same_values_under_any_pass_subset(recipe, passes):
    """Rewrites are semantics-preserving: every pass subset agrees with no passes at all."""
    base, params, r = recipe
    P = {k: bp.param(k, s, "float64") for k, s in params.items()}
    out = Interp("bp", base, P)(r)
    u = bp.input("u", out.shape, "float64")
    loss = bp.sum(out * u) + bp.sum(P["Q"] * 0.0)
    rng = np.random.default_rng(zlib.crc32(repr(recipe).encode()))
    vals = {k: rng.standard_normal(s) for k, s in params.items()}
    vals["u"] = rng.standard_normal(out.shape)
    ref_v, ref_g = bp.compile(loss, wrt=list(P.values()), passes=[])(**vals)
    value, grads = bp.compile(loss, wrt=list(P.values()), passes=passes)(**vals)
    np.testing.assert_allclose(value, ref_v, rtol=1e-10, atol=1e-12)
    for k in params:
        assert grads[k].shape == params[k]
        atol = 1e-10 * max(1.0, float(np.max(np.abs(ref_g[k]))))
        np.testing.assert_allclose(grads[k], ref_g[k], rtol=1e-9, atol=atol,
                                   err_msg=f"d{k} with passes {passes} for recipe {r}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend", ["llvm", "jax"])
def test_random_graphs_agree_across_backends(backend, dtype, tmp_path, monkeypatch):
    """Every backend runs the same compiled graph as the NumPy reference backend: random
    recipes, float64 to 1e-10 and float32 to 2e-5 of each gradient's largest entry (float32
    LLVM exp/tanh are inline polynomials; XLA sums in other orders)."""
    pytest.importorskip("llvmlite" if backend == "llvm" else "jax")
    monkeypatch.setenv("BPCOMPILE_CACHE_DIR", str(tmp_path / "cache"))
    tol = 1e-10 if dtype == "float64" else 2e-5

    @settings(max_examples=25, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(recipes())
    def check(recipe):
        base, params, r = recipe
        P = {k: bp.param(k, s, dtype) for k, s in params.items()}
        out = Interp("bp", base, P)(r)
        u = bp.input("u", out.shape, dtype)
        loss = bp.sum(out * u) + bp.sum(P["Q"] * 0.0)
        rng = np.random.default_rng(zlib.crc32(repr(recipe).encode()))
        vals = {k: rng.standard_normal(s).astype(dtype) for k, s in params.items()}
        vals["u"] = rng.standard_normal(out.shape).astype(dtype)
        ref_v, ref_g = bp.compile(loss, wrt=list(P.values()), backend="numpy")(**vals)
        value, grads = bp.compile(loss, wrt=list(P.values()), backend=backend)(**vals)
        scale = max(1.0, abs(float(ref_v)))
        np.testing.assert_allclose(float(value), float(ref_v), rtol=tol, atol=tol * scale)
        for k in params:
            g = np.asarray(grads[k])
            assert g.shape == params[k] and g.dtype == np.dtype(dtype)
            atol = tol * max(1.0, float(np.max(np.abs(ref_g[k]))))
            np.testing.assert_allclose(g, ref_g[k], rtol=tol, atol=atol,
                                       err_msg=f"{backend} d{k} for recipe {r}")

    check()


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(recipes())
def test_random_graphs_jvp_and_jacobians_match_jax(recipe):
    """The random graph's tensor output through bp.jvp and bp.jacobian (rev and fwd), compiled
    with every pass, against jax.jvp / jax.jacrev / jax.jacfwd of the same recipe."""
    base, params, r = recipe
    P = {k: bp.param(k, s, "float64") for k, s in params.items()}
    out = Interp("bp", base, P)(r) + bp.sum(P["Q"] * 0.0)  # every param is reached
    ws = list(P.values())
    T = {k: bp.input(f"t_{k}", s, "float64") for k, s in params.items()}
    _, out_t = bp.jvp(out, ws, list(T.values()))
    outs = {"y": out, "y_t": out_t}
    for mode in ("rev", "fwd"):
        outs.update({f"{mode}_{k}": j for k, j in zip(P, bp.jacobian(out, ws, mode=mode))})
    fn = bp.function(outs, backend="numpy")

    rng = np.random.default_rng(zlib.crc32(repr(recipe).encode()))
    vals = {k: rng.standard_normal(s) for k, s in params.items()}
    vals.update({f"t_{k}": rng.standard_normal(s) for k, s in params.items()})
    got = fn(**{k: vals[k] for k in fn.signature.names})

    def jf(Pj):
        return Interp("jax", base, Pj)(r) + jnp.sum(Pj["Q"] * 0.0)

    def oracle(Pj, Tj):  # one jitted program: eager JAX transforms cost seconds here
        y, y_t = jax.jvp(jf, (Pj,), (Tj,))
        want = {"y": y, "y_t": y_t}
        for mode, jac in (("rev", jax.jacrev), ("fwd", jax.jacfwd)):
            want.update({f"{mode}_{k}": v for k, v in jac(jf)(Pj).items()})
        return want

    want = jax.jit(oracle, compiler_options=FAST_COMPILE)(
        {k: jnp.asarray(vals[k]) for k in params},
        {k: jnp.asarray(vals[f"t_{k}"]) for k in params})
    for key, ref in want.items():
        ref = np.asarray(ref)
        assert np.shape(got[key]) == ref.shape, (key, np.shape(got[key]), ref.shape, r)
        atol = 1e-9 * max(1.0, float(np.max(np.abs(ref), initial=0.0)))
        np.testing.assert_allclose(got[key], ref, rtol=1e-7, atol=atol,
                                   err_msg=f"{key} for recipe {r}")
