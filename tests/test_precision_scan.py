"""Scan bodies under a 16-bit policy (rewrite/precision.py `_policy_body`): the carries stay
float32 between steps (KEEP_FLOAT32["scan"]), the body's matmuls and activations run in the
compute dtype, on every backend.

Bound: each step rounds its products and activations to the compute dtype (eps: 2**-7 for
bfloat16, 2**-10 for float16); over T steps these roundings add up like a random walk, so the
gradients' error relative to the float32 run, max|g - g32| / max|g32|, stays below
2·sqrt(T)·eps, and above eps/100 (the 16 bits are really used).
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

import bpcompile as bp

T, B, D, H = 6, 4, 8, 16


def _rnn():
    xs, lab = bp.input("xs", (T, B, D)), bp.input("lab", (B,), "int32")
    W, U = bp.param("W", (D, H)), bp.param("U", (H, H))
    b, V = bp.param("b", (H,)), bp.param("V", (H, 3))

    def step(h, x):
        h = bp.tanh(x @ W + h @ U + b)
        return h, h

    hT, _ = bp.scan(step, bp.const(np.zeros((B, H), np.float32)), xs)
    r = np.random.default_rng(0)
    vals = dict(xs=r.standard_normal((T, B, D)).astype(np.float32),
                lab=r.integers(0, 3, B).astype(np.int32),
                W=(r.standard_normal((D, H)) / 3).astype(np.float32),
                U=(r.standard_normal((H, H)) / 4).astype(np.float32),
                b=(r.standard_normal(H) / 10).astype(np.float32),
                V=r.standard_normal((H, 3)).astype(np.float32))
    return bp.cross_entropy(hT @ V, lab), [W, U, b, V], vals


@pytest.fixture(scope="module")
def rnn():
    loss, wrt, vals = _rnn()
    return loss, wrt, vals, bp.compile(loss, wrt, backend="numpy")(**vals)


@pytest.mark.parametrize("backend,precision", [
    ("numpy", "bfloat16"), ("llvm", "bfloat16"), ("jax", "bfloat16"), ("llvm", "float16")])
def test_scan_body_runs_in_16_bits_with_float32_carries(rnn, backend, precision):
    loss, wrt, vals, (v32, g32) = rnn
    fn = bp.compile(loss, wrt, backend=backend, precision=precision)
    body = fn.graph().split("{ lambda h:", 1)
    assert len(body) == 2, "the forward body's carry h is float32"
    tag = "bf16[" if precision == "bfloat16" else "f16["
    assert f"matmul:{tag}" in body[1].split("}")[0], "the body's matmuls run in 16 bits"
    v, g = fn(**vals)
    eps = float(ml_dtypes.finfo(precision).eps)
    bound = 2 * math.sqrt(T) * eps
    assert abs(float(v) - float(v32)) <= bound * abs(float(v32))
    rel = {k: float(np.max(np.abs(g[k] - g32[k])) / np.max(np.abs(g32[k]))) for k in g32}
    assert all(r < bound for r in rel.values()), (rel, bound)
    assert max(rel.values()) > eps / 100, rel
    assert all(g[k].dtype == np.float32 for k in g)
