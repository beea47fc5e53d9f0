"""Memory options of the training step (docs/memory.md): `bpcompile train --memory-budget /
--compress-activations / --micro-batches`, compression inside gradient accumulation, and the
step's budget checked against its own plan (params, optimizer state, gradients, activations)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import bpcompile as bp
from bpcompile.train.cli import main as train_main

SPEC = """
[model]
name = "deep"
dtype = "float64"
[[inputs]]
name = "x"
shape = [16, 4]
[[inputs]]
name = "labels"
shape = [16]
dtype = "int32"
[[layers]]
type = "dense"
units = 24
activation = "tanh"
[[layers]]
type = "dense"
units = 24
activation = "tanh"
[[layers]]
type = "dense"
units = 24
activation = "tanh"
[[layers]]
type = "dense"
units = 3
[loss]
type = "cross_entropy"
target = "labels"
[init]
method = "glorot"
seed = 0
"""


@pytest.fixture()
def spec_data(tmp_path):
    spec = tmp_path / "deep.toml"
    spec.write_text(SPEC)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4))
    data = tmp_path / "d.npz"
    np.savez(data, x=x, labels=(x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5))
    return str(spec), str(data)


def _loss_of(out: str) -> float:
    return float(re.search(r"loss ([0-9.e+-]+)", out).group(1))


def test_cli_train_memory_flags(spec_data, capsys):
    spec, data = spec_data
    base = ["train", spec, "--data", data, "--epochs", "2", "--no-progress", "--lr", "0.05"]
    assert train_main(base) == 0
    plain = _loss_of(capsys.readouterr().out)
    assert train_main(base + ["--memory-budget", "lots"]) == 2
    assert "--memory-budget" in capsys.readouterr().err
    assert train_main(base + ["--memory-budget", "1kB"]) == 2
    err = capsys.readouterr().err
    need = int(re.search(r"memory_budget >= (\d+)", err).group(1))
    # the smallest feasible budget recomputes segments and trains to the same loss
    assert train_main(base + ["--memory-budget", str(need)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"memory: planned peak \d+ B <= budget \d+ B, [1-9]\d* segments", out)
    assert _loss_of(out) == pytest.approx(plain, rel=1e-10)
    assert train_main(base + ["--compress-activations", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "saved activations stored as bfloat16" in out
    assert _loss_of(out) == pytest.approx(plain, rel=1e-2)
    assert train_main(base + ["--compress-activations", "fp4"]) == 2
    # micro-batches: the model is one micro-batch, so --batch-size is 2 x the spec's
    assert train_main(base + ["--micro-batches", "2", "--batch-size", "32"]) == 0
    assert "trained 2 epochs" in capsys.readouterr().out


# ---- compression inside gradient accumulation ------------------------------------------------
def _accumulated_grads(backend, mode, k=2, lr=0.5):
    """(loss, gradients) of one SGD step over k micro-batches, read back from the update."""
    from test_checkpoint import VALS, mlp

    loss, _ = mlp(None)
    init = {n: v for n, v in VALS.items() if n != "x"}
    x = np.concatenate([VALS["x"], np.cos(VALS["x"])] * (k // 2))
    step = bp.compile_train_step(loss, optimizer=bp.optim.sgd(lr), backend=backend, init=init,
                                 accumulate=k, compress_activations=mode)
    value = step(x=x)
    grads = {n: (init[n] - step.params[n]) / lr for n in init}
    return step, value, grads


@pytest.fixture(scope="module")
def exact_accumulated():
    return _accumulated_grads("numpy", None)[1:]


@pytest.mark.parametrize("mode", ["bfloat16", "int8"])
@pytest.mark.parametrize("backend", ["numpy", "llvm", "jax"])
def test_compression_inside_accumulation(backend, mode, exact_accumulated):
    from test_compress import BOUND, _rel_err

    if backend == "jax":
        jax = pytest.importorskip("jax")
        jax.config.update("jax_enable_x64", True)
    v0, g0 = exact_accumulated
    step, v, g = _accumulated_grads(backend, mode)
    rep = step.compress_report
    assert rep["mode"] == mode and rep["tensors"] > 0 and rep["stored_bytes"] < rep["exact_bytes"]
    assert v == pytest.approx(v0, rel=1e-12)  # the forward stays exact
    err = _rel_err(g, g0)
    assert 0 < err <= BOUND[mode], err  # the bound documented for one batch (docs/memory.md)
    if backend != "numpy":  # every backend rounds the same saved values
        _, _, ref = _accumulated_grads("numpy", mode)
        for n in ref:
            np.testing.assert_allclose(g[n], ref[n], rtol=1e-7, atol=1e-12, err_msg=n)


# ---- the train step's budget is its own plan -------------------------------------------------
@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_train_step_budget_is_checked_on_the_steps_own_plan(backend):
    from test_budget import _deep_mlp

    loss, wrt, vals = _deep_mlp(blocks=6, batch=64)
    init = {k: v for k, v in vals.items() if k != "x"}
    kw = dict(optimizer=bp.optim.adam(0.01), backend=backend, init=init)
    with pytest.raises(bp.BPError, match="infeasible") as e:
        bp.compile_train_step(loss, memory_budget=1000, **kw)
    msg = str(e.value)
    params = sum(v.nbytes for v in init.values())  # adam: two state slots per param
    assert f"updated params ({params} B)" in msg and f"optimizer state ({2 * params} B)" in msg
    assert f"on the {backend} backend" in msg and "gradients (all of them" in msg
    need = int(re.search(r"memory_budget >= (\d+)", msg).group(1))
    plain = bp.compile_train_step(loss, **kw)
    step = bp.compile_train_step(loss, memory_budget=need, **kw)
    rep = step.remat_report
    # the step's own planned peak (params, state, gradients, activations) is what fits
    assert step.fn.memory(timeline=True)["peak_bytes"] == rep["planned_peak_bytes"] <= need
    assert rep["plan"] == "train step" and rep["optimizer_state_bytes"] == 2 * params
    assert rep["recomputed_segments"] >= 1 and need >= 3 * params
    for _ in range(2):
        assert step(x=vals["x"]) == pytest.approx(plain(x=vals["x"]), rel=1e-12)
    for k in plain.params:
        np.testing.assert_allclose(step.params[k], plain.params[k], rtol=1e-10, err_msg=k)


def test_budget_and_compression_inside_accumulation_llvm():
    """All three remedies at once: the budget is fitted on the LLVM plan of the step, whose
    scan body (one micro-batch) is where recomputation and compression act. The kept cuts are
    stored compressed too, so the recomputation starts from rounded values: the gradient
    stays within the compression bound of the exact one."""
    from test_budget import _deep_mlp
    from test_compress import BOUND, _rel_err

    loss, _, vals = _deep_mlp(blocks=4, batch=32)
    init = {k: v for k, v in vals.items() if k != "x"}
    x = np.concatenate([vals["x"], np.cos(vals["x"])])
    kw = dict(optimizer=bp.optim.sgd(0.5), backend="llvm", init=init, accumulate=2)
    exact = bp.compile_train_step(loss, **kw)
    budget = bp.compile_train_step(loss, compress_activations="int8", **kw).fn.memory()[
        "peak_bytes"] - 1
    step = bp.compile_train_step(loss, memory_budget=budget, compress_activations="int8", **kw)
    assert step.remat_report["recomputed_segments"] >= 1
    assert step.fn.memory()["peak_bytes"] <= budget and step.compress_report["tensors"] > 0
    assert step(x=x) == pytest.approx(exact(x=x), rel=1e-12)  # the forward stays exact
    grads = {k: (init[k] - step.params[k]) / 0.5 for k in init}
    g0 = {k: (init[k] - exact.params[k]) / 0.5 for k in init}
    assert 0 < _rel_err(grads, g0) <= BOUND["int8"]


def test_numpy_budget_sees_inside_the_accumulation_scan():
    """The NumPy estimate counts a loop body's own peak while the loop runs, so a budget
    below the plain accumulated step recomputes inside the micro-batch body."""
    from test_budget import _deep_mlp

    loss, _, vals = _deep_mlp(blocks=4, batch=32)
    init = {k: v for k, v in vals.items() if k != "x"}
    x = np.concatenate([vals["x"], np.cos(vals["x"])])
    kw = dict(optimizer=bp.optim.adam(0.01), backend="numpy", init=init, accumulate=2)
    plain = bp.compile_train_step(loss, **kw)
    peak = plain.fn.memory(timeline=True)["peak_bytes"]
    # the body's activations are in it: the top level alone is params, state and carries
    assert peak > 3 * sum(v.nbytes for v in init.values()) + 2 * x.nbytes
    step = bp.compile_train_step(loss, memory_budget=peak - 1, **kw)
    assert step.remat_report["recomputed_segments"] >= 1
    assert step.fn.memory(timeline=True)["peak_bytes"] <= peak - 1
    for _ in range(2):
        assert step(x=x) == pytest.approx(plain(x=x), rel=1e-12)
    for k in plain.params:
        np.testing.assert_allclose(step.params[k], plain.params[k], rtol=1e-10, err_msg=k)
