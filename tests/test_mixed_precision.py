"""Mixed precision as a compiler pass (rewrite/precision.py): float32 master weights, 16-bit
compute, float32 for the ops of KEEP_FLOAT32 and the loss.

Bound: a 2-layer tanh/softmax network computed in a 16-bit dtype gives float32 gradients
within 4 eps (relative to the largest gradient entry) of the float32 computation: every value
is rounded a few times by eps/2 and the float32 reductions add no error of their own; and it
must differ from float32 by more than eps/100 (the low precision is really used).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import bpcompile as bp
from bpcompile.errors import DTypeError
from bpcompile.rewrite.precision import KEEP_FLOAT32, Policy


def _mlp():
    x, lab = bp.input("x", (16, 8)), bp.input("lab", (16,), "int32")
    W1, b1, W2 = bp.param("W1", (8, 32)), bp.param("b1", (32,)), bp.param("W2", (32, 4))
    loss = bp.cross_entropy(bp.tanh(x @ W1 + b1) @ W2, lab)
    r = np.random.default_rng(0)
    values = dict(x=r.normal(size=(16, 8)), lab=r.integers(0, 4, 16),
                  W1=r.normal(size=(8, 32)) * 0.3, b1=r.normal(size=32) * 0.1,
                  W2=r.normal(size=(32, 4)) * 0.3)
    return loss, [W1, b1, W2], values


@pytest.mark.parametrize("backend", ["numpy", "llvm", "jax"])
@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_gradients_are_float32_and_close(precision, backend):
    loss, wrt, values = _mlp()
    v32, g32 = bp.compile(loss, wrt, backend=backend)(**values)
    fn = bp.compile(loss, wrt, backend=backend, precision=precision)
    v, g = fn(**values)
    eps = float(ml_dtypes.finfo(precision).eps)
    assert np.asarray(v).dtype == np.float32
    for k in g:
        assert g[k].dtype == np.float32, k
    rel = max(float(np.max(np.abs(g[k] - g32[k])) / np.max(np.abs(g32[k]))) for k in g)
    assert eps / 100 < rel < 4 * eps, rel
    assert ("f16[" if precision == "float16" else "bf16[") in fn.graph()
    assert "cast" in fn.source()
    stats = str(fn.stats())
    assert "precision.cast" in stats


def test_kept_ops_run_in_float32_and_the_rest_in_16_bits():
    loss, wrt, values = _mlp()
    fn = bp.compile(loss, wrt, precision=Policy(compute="bfloat16"))
    fwd = fn.graph("forward")  # the forward stage is recorded before the policy pass
    assert "bf16" not in fwd
    seen = set()
    for line in fn.graph().splitlines():  # "name:type = op attrs operands"
        if " = " not in line:
            continue
        lhs, rhs = line.strip().split(" = ", 1)
        op, typ = rhs.split()[0], lhs.split(":")[1]
        if op == "kernel" and "log(" in rhs:  # log fuses with the loss head's adds
            op = "log"
        if op in ("sum", "log"):
            assert typ.startswith("f32"), line
        elif op in ("matmul", "tanh", "max") and not lhs.startswith("dW"):
            assert typ.startswith("bf16"), line
        elif op == "matmul":  # a float32 param's gradient: float32 product of bf16 values
            assert typ.startswith("f32") and "cast" in rhs, line
        seen.add(op)
    assert {"sum", "log", "matmul", "max"} <= seen
    assert set(KEEP_FLOAT32) >= {"sum", "log"}


def test_float32_policy_is_the_identity_and_bad_policies_are_refused():
    loss, wrt, values = _mlp()
    a = bp.compile(loss, wrt, precision="float32").source()
    assert a == bp.compile(loss, wrt).source()
    with pytest.raises(DTypeError, match="master weights"):
        Policy(param="bfloat16", compute="bfloat16")
    with pytest.raises(DTypeError, match="compute"):
        Policy(compute="float64")


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_train_step_in_bfloat16_mixed_precision(backend):
    """float32 master weights updated by gradients computed in bfloat16: the loss falls as in
    float32, and the trajectory differs from the float32 one (bfloat16 is really used)."""
    loss, wrt, values = _mlp()
    data = {k: values[k] for k in ("x", "lab")}
    runs = {}
    for prec in (None, "bfloat16"):
        step = bp.compile_train_step(loss, wrt, bp.optim.adam(0.02), backend=backend,
                                     init={k: values[k] for k in ("W1", "b1", "W2")},
                                     precision=prec)
        runs[prec] = [float(step(**data)) for _ in range(40)]
        assert {v.dtype for v in step.params.values()} == {np.dtype(np.float32)}
    assert runs["bfloat16"][-1] < 0.3 * runs["bfloat16"][0]
    assert abs(runs["bfloat16"][-1] - runs[None][-1]) < 0.05 * runs[None][0]
    assert runs["bfloat16"] != runs[None]


def test_function_with_a_policy():
    x, W = bp.input("x", (4, 3)), bp.param("W", (3, 2))
    out = {"y": bp.tanh(x @ W), "n": bp.sum(x * x)}
    fn = bp.function(out, backend="llvm", precision="bfloat16")
    r = np.random.default_rng(1)
    vals = {"x": r.normal(size=(4, 3)), "W": r.normal(size=(3, 2))}
    got, ref = fn(**vals), bp.function(out, backend="llvm")(**vals)
    assert got["y"].dtype == np.float32 and "bf16[" in fn.graph()
    np.testing.assert_allclose(got["y"], ref["y"], atol=4 * 2.0**-7)
    assert not np.array_equal(got["y"], ref["y"])
