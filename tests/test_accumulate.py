"""Gradient accumulation (train/accumulate.py): `compile_train_step(..., accumulate=k)` and
`fit(..., micro_batches=k)` equal the full-batch step in float64, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import bpcompile as bp
from bpcompile.ir.traverse import toposort

D, H, C = 5, 8, 3


def model(batch, reduce="mean"):
    x = bp.input("x", (batch, D), "float64")
    y = bp.input("y", (batch,), "int32")
    W1 = bp.param("W1", (D, H), "float64")
    b1 = bp.param("b1", (H,), "float64")
    W2 = bp.param("W2", (H, C), "float64")
    logits = bp.tanh(x @ W1 + b1) @ W2
    loss = bp.cross_entropy(logits, y)
    if reduce == "sum":
        loss = loss * float(batch)
    return loss


def data(n, seed=0):
    r = np.random.default_rng(seed)
    return {"x": r.standard_normal((n, D)), "y": r.integers(0, C, n).astype(np.int32)}


def init():
    r = np.random.default_rng(1)
    return {"W1": 0.5 * r.standard_normal((D, H)), "b1": 0.1 * r.standard_normal(H),
            "W2": 0.5 * r.standard_normal((H, C))}


@pytest.mark.parametrize("backend", ["numpy", "llvm", "jax"])
@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_accumulated_step_equals_full_batch_step(backend, reduce):
    if backend == "jax":
        jax = pytest.importorskip("jax")
        jax.config.update("jax_enable_x64", True)
    k, micro = 4, 3
    full = bp.compile_train_step(model(k * micro, reduce), optimizer=bp.optim.adam(0.05),
                                 backend=backend, init=init())
    acc = bp.compile_train_step(model(micro, reduce), optimizer=bp.optim.adam(0.05),
                                backend=backend, init=init(), accumulate=k,
                                accumulate_reduce=reduce)
    for s in range(3):
        batch = data(k * micro, seed=s)
        l_full, l_acc = full(**batch), acc(**batch)
        assert l_acc == pytest.approx(l_full, rel=1e-12)
    for name in ("W1", "b1", "W2"):
        np.testing.assert_allclose(acc.params[name], full.params[name], rtol=1e-10, err_msg=name)
    assert acc.evaluate(**data(k * micro, 9)) == pytest.approx(
        full.evaluate(**data(k * micro, 9)), rel=1e-12)


def test_one_micro_batch_is_alive_at_a_time():
    """The micro-batch forward/backward runs in a scan body: its activations are the body's,
    shaped for one micro-batch, never for the whole batch."""
    k, micro = 4, 3
    acc = bp.compile_train_step(model(micro), backend="numpy", init=init(), accumulate=k)
    scans = [n for n in toposort(acc.fn.outputs) if n.op == "scan"]
    assert len(scans) == 1 and scans[0].attr("length") == k
    body = scans[0].attr("body")
    sizes = {n.shape[0] for n in toposort(list(body.outputs)) if n.ndim and n.shape[0] > C}
    assert k * micro not in sizes


def test_llvm_workspace_is_one_micro_batch():
    k, micro = 8, 16
    full = bp.compile_train_step(model(k * micro), backend="llvm", init=init())
    acc = bp.compile_train_step(model(micro), backend="llvm", init=init(), accumulate=k)
    w_full, w_acc = full.fn.memory()["workspace_bytes"], acc.fn.memory()["workspace_bytes"]
    assert w_acc < w_full / 2, (w_acc, w_full)


def test_fit_micro_batches_equals_full_batches():
    d = data(24, seed=3)
    kw = dict(epochs=2, optimizer=bp.optim.sgd(0.1), init=init(), progress=False, seed=0,
              diagnostics=False)
    h_full = bp.train.fit(model(12), d, batch_size=12, **kw)
    h_acc = bp.train.fit(model(4), d, micro_batches=3, **kw)
    for name in ("W1", "b1", "W2"):
        np.testing.assert_allclose(h_acc.step.params[name], h_full.step.params[name],
                                   rtol=1e-10, err_msg=name)
    np.testing.assert_allclose(h_acc.loss, h_full.loss, rtol=1e-12)
    assert len(h_acc.loss) == 2


def test_bad_arguments_are_named():
    with pytest.raises(bp.ArgumentError, match="accumulate"):
        bp.compile_train_step(model(3), init=init(), accumulate=0)
    with pytest.raises(bp.ArgumentError, match="accumulate_reduce"):
        bp.compile_train_step(model(3), init=init(), accumulate=2, accumulate_reduce="max")
    with pytest.raises(bp.ArgumentError, match="micro_batches"):
        bp.train.fit(model(4), data(24), batch_size=12, micro_batches=5, progress=False)
    step = bp.compile_train_step(model(3), init=init(), accumulate=2)
    with pytest.raises(bp.ArgumentError):
        step(**data(3))  # 3 rows where 2 micro-batches of 3 are declared


def test_fit_with_micro_batches_and_a_budget():
    """fit passes memory_budget on to the step; a generous budget changes nothing."""
    d = data(24, seed=4)
    kw = dict(epochs=1, optimizer=bp.optim.sgd(0.1), init=init(), progress=False, seed=0,
              diagnostics=False, micro_batches=2)
    a = bp.train.fit(model(6), d, **kw)
    b = bp.train.fit(model(6), d, memory_budget="1GB", **kw)
    assert b.step.remat_report["recomputed_segments"] == 0
    for name in ("W1", "b1", "W2"):
        np.testing.assert_allclose(b.step.params[name], a.step.params[name], rtol=1e-12)
