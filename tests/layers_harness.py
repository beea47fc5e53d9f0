"""Shared harness for the layer tests (test_conv, test_attention, test_scan, test_layers_*).

`assert_matches_jax(build, jbuild, values, ...)` builds loss = sum(f * u) with a random
cotangent u in bpcompile and in jax.numpy, compiles our gradient on each available backend and
asserts value and gradients match JAX's value_and_grad; `fd_check` adds float64 central
differences.
"""

from __future__ import annotations

import numpy as np
import pytest

import bpcompile as bp
from bpcompile.errors import BackendError

jax = pytest.importorskip("jax")
jnp = jax.numpy

BACKENDS = ["numpy", "jax", "llvm"]


def available(backend: str) -> bool:
    try:
        bp.compiled.get_backend(backend)
    except BackendError:
        return False
    return True


def declare(values: dict, params: tuple, dtype="float64"):
    """bp params for names in `params`, bp inputs for the rest (ints stay int32)."""
    P, I = {}, {}
    for k, v in values.items():
        v = np.asarray(v)
        if k in params:
            P[k] = bp.param(k, v.shape, dtype)
        else:
            I[k] = bp.input(k, v.shape, dtype if v.dtype.kind == "f" else "int32")
    return P, I


def cast_values(values: dict, dtype="float64"):
    return {k: np.asarray(v, dtype if np.asarray(v).dtype.kind == "f" else np.int32)
            for k, v in values.items()}


def assert_matches_jax(build, jbuild, values: dict, params: tuple, backend="numpy", dtype="float64",
            rtol=None, seed=0, cotangent=True):
    """Assert bp and JAX agree on f's value (through sum(f*u)) and gradients w.r.t. params."""
    if not available(backend):
        pytest.skip(f"{backend} backend unavailable")
    rtol = rtol if rtol is not None else (1e-9 if dtype == "float64" else 2e-4)
    values = cast_values(values, dtype)
    P, I = declare(values, params, dtype)
    f = build({**P, **I})
    u = np.random.default_rng(seed + 99).standard_normal(f.shape).astype(dtype)
    if cotangent:
        values = {**values, "u_cot": u}
        loss = bp.sum(f * bp.input("u_cot", f.shape, dtype))
    else:
        loss = f
    fn = bp.compile(loss, wrt=[P[k] for k in params], backend=backend)
    value, grads = fn(**values)

    def jloss(p, rest):
        out = jbuild({**rest, **p})
        return jnp.sum(out * rest["u_cot"]) if cotangent else out

    pj = {k: jnp.asarray(values[k]) for k in params}
    rj = {k: jnp.asarray(v) for k, v in values.items() if k not in params}
    jv, jg = jax.jit(jax.value_and_grad(jloss))(pj, rj)
    scale = max(1.0, float(np.abs(np.asarray(jv))))
    np.testing.assert_allclose(value, np.asarray(jv), rtol=rtol, atol=rtol * scale,
                               err_msg=f"{backend}: loss value")
    for k in params:
        ref = np.asarray(jg[k])
        assert grads[k].shape == ref.shape, k
        atol = rtol * max(1.0, float(np.abs(ref).max(initial=0.0)))
        np.testing.assert_allclose(grads[k], ref, rtol=rtol, atol=atol,
                                   err_msg=f"{backend}: d{k}")
    return fn, value, grads


def fd_check(build, values: dict, params: tuple, samples=2, seed=0, tol=1e-6):
    """Directional central differences (float64) of sum(f*u) against our gradient."""
    values = cast_values(values)
    P, I = declare(values, params)
    f = build({**P, **I})
    rng = np.random.default_rng(seed)
    values["u_cot"] = rng.standard_normal(f.shape)
    loss = bp.sum(f * bp.input("u_cot", f.shape, "float64"))
    fn = bp.compile(loss, wrt=[P[k] for k in params])
    _, g = fn(**values)
    for k in params:
        for _ in range(samples):
            v = rng.standard_normal(values[k].shape)
            h = 1e-6
            fp, _ = fn(**{**values, k: values[k] + h * v})
            fm, _ = fn(**{**values, k: values[k] - h * v})
            fd = (float(fp) - float(fm)) / (2 * h)
            an = float(np.sum(g[k] * v))
            assert abs(fd - an) <= tol * max(1.0, abs(fd), abs(an)), (k, fd, an)
