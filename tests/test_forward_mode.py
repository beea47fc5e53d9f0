"""Forward mode (bp.jvp) against jax.jvp for every row of tests/op_table.py, the dot-product
test <u, J v> = <Jᵀ u, v> against bp.grad, compiled tangent code on every backend, scan,
composition with bp.grad in both orders, and hypothesis random graphs."""

from __future__ import annotations

import functools

import numpy as np
import op_table as T
import pytest

import bpcompile as bp
from bpcompile.backends.numpy.codegen import evaluate

jax = pytest.importorskip("jax")
jnp = jax.numpy

IDS = [r.name for r in T.ROWS]


def assert_close(ours, ref, rtol, what=""):
    ref = np.asarray(ref)
    atol = rtol * max(1.0, float(np.max(np.abs(ref)))) if ref.size else 0.0
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=atol, err_msg=what)


@functools.cache
def tangent_graph(name: str):
    """(row, f, f_t, values incl. tangents v_<param>, jax's J v) for a row in float64."""
    row = T.BY_NAME[name]
    P, I, f, loss, values = T.build(row, "float64")
    V = {k: bp.input("v_" + k, p.shape, "float64") for k, p in P.items()}
    rng = np.random.default_rng(3)
    for k, p in P.items():
        values["v_" + k] = rng.standard_normal(p.shape)
    out, f_t = bp.jvp(f, list(P.values()), list(V.values()))
    assert out is f and f_t.shape == f.shape and f_t.dtype == f.dtype
    Pj = {k: jnp.asarray(values[k]) for k in row.params}
    Ij = {k: jnp.asarray(v) for k, v in values.items() if k not in row.params}
    Vj = {k: jnp.asarray(values["v_" + k]) for k in row.params}
    ref = np.asarray(jax_jv(lambda p: row.jf(p, Ij), Pj, Vj))
    return row, P, f, f_t, loss, values, ref


def jax_jv(fun, Pj, Vj):
    """JAX's J v: jax.jvp, or, where JAX refuses forward mode (a jax.custom_vjp function), the
    Jacobian of the custom rule (jax.jacrev) applied to v - what our forward mode computes by
    transposing the user's VJP (docs/custom_rules.md)."""
    try:
        return jax.jvp(fun, (Pj,), (Vj,))[1]
    except TypeError as e:
        if "custom_vjp" not in str(e):
            raise
    J = jax.jacrev(fun)(Pj)
    return sum(jnp.tensordot(J[k], Vj[k], axes=Vj[k].ndim) for k in Pj)


@pytest.mark.parametrize("name", IDS)
def test_jvp_matches_jax(name):
    row, P, f, f_t, loss, values, ref = tangent_graph(name)
    (jv,) = evaluate([f_t], values)
    assert_close(jv, ref, 1e-7, name)


@pytest.mark.parametrize("name", IDS)
def test_jvp_dot_product(name):
    """<u, J v> from bp.jvp equals <Jᵀ u, v> from bp.grad."""
    row, P, f, f_t, loss, values, ref = tangent_graph(name)
    grads = bp.grad(loss, list(P.values()), stabilize=False)
    out = evaluate([f_t] + list(grads), values)
    lhs = float(np.sum(values["u"] * out[0]))
    rhs = sum(float(np.sum(g * values["v_" + k])) for g, k in zip(out[1:], row.params))
    assert abs(lhs - rhs) <= 1e-7 * max(1.0, abs(lhs)), (lhs, rhs)


BACKENDS = ["numpy", "llvm", "jax"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", IDS)
def test_jvp_compiles_on_every_backend(name, backend):
    row, P, f, f_t, loss, values, ref = tangent_graph(name)
    fn = bp.function({"f": f, "f_t": f_t}, backend=backend)
    args = {k: values[k] for k in fn.signature.names}
    out = fn(**args)
    assert_close(out["f_t"], ref, 1e-7, f"{name} on {backend}")
