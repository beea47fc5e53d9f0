"""compress_activations= (rewrite/compress.py): the activations saved for the backward pass
are stored in bfloat16 or int8 (per-tensor scale); the loss is exact, the gradient moves by a
bounded, non-zero amount, the same on every backend, and the saved bytes shrink."""

from __future__ import annotations

import numpy as np
import pytest
from test_checkpoint import VALS, mlp

import bpcompile as bp

# max |g - g_exact| / max |g_exact| over the params of test_checkpoint's MLP (float64):
# measured 0.0085 (bfloat16) and 0.023 (int8); docs/memory.md states these bounds
BOUND = {"bfloat16": 0.02, "int8": 0.05}


def _rel_err(g, g0):
    return max(float(np.max(np.abs(np.asarray(g[k]) - g0[k])) / np.max(np.abs(g0[k])))
               for k in g0)


@pytest.fixture(scope="module")
def exact():
    loss, wrt = mlp(None)
    v, g = bp.compile(loss, wrt, backend="numpy")(**VALS)
    return float(v), {k: np.asarray(a) for k, a in g.items()}


@pytest.fixture(scope="module")
def numpy_compressed():
    loss, wrt = mlp(None)
    return {m: bp.compile(loss, wrt, backend="numpy", compress_activations=m)(**VALS)[1]
            for m in BOUND}


@pytest.mark.parametrize("mode", list(BOUND))
@pytest.mark.parametrize("backend", ["numpy", "llvm", "jax"])
def test_gradient_error_is_bounded_and_the_same_on_every_backend(backend, mode, exact,
                                                                  numpy_compressed):
    if backend == "jax":
        jax = pytest.importorskip("jax")
        jax.config.update("jax_enable_x64", True)
    loss, wrt = mlp(None)
    v, g = bp.compile(loss, wrt, backend=backend, compress_activations=mode)(**VALS)
    assert float(v) == pytest.approx(exact[0], rel=1e-12)  # the forward is exact
    err = _rel_err(g, exact[1])
    assert 0 < err <= BOUND[mode], err
    for k, ref in numpy_compressed[mode].items():
        np.testing.assert_allclose(np.asarray(g[k]), np.asarray(ref), rtol=1e-7, atol=1e-12,
                                   err_msg=k)


@pytest.mark.parametrize("mode,ratio", [("bfloat16", 4), ("int8", 8)])
def test_saved_bytes_shrink(mode, ratio):
    loss, wrt = mlp(None)
    plain = bp.compile(loss, wrt, backend="llvm").memory()
    m = bp.compile(loss, wrt, backend="llvm", compress_activations=mode).memory()
    rep = m["compress"]
    assert rep["mode"] == mode and rep["tensors"] > 0
    assert rep["exact_bytes"] == plain["saved_for_backward_bytes"]
    # float64 -> 2 bytes (bfloat16) or 1 byte + one float64 scale per tensor (int8)
    assert m["saved_for_backward_bytes"] == rep["stored_bytes"]
    assert rep["stored_bytes"] <= rep["exact_bytes"] // ratio + 8 * rep["tensors"]


def test_int8_of_an_all_zero_activation_is_finite():
    x = bp.input("x", (4, 8), "float64")
    W = bp.param("W", (8, 8), "float64")
    loss = bp.sum(bp.relu(x @ W) * x)
    vals = {"x": np.zeros((4, 8)), "W": np.ones((8, 8))}
    for backend in ("numpy", "llvm"):
        v, g = bp.compile(loss, [W], backend=backend, compress_activations="int8")(**vals)
        assert np.isfinite(float(v)) and np.all(np.isfinite(g["W"]))


def test_bad_mode_names_the_argument():
    loss, wrt = mlp(None)
    with pytest.raises(bp.BPError, match="compress_activations.*'int4'"):
        bp.compile(loss, wrt, compress_activations="int4")


def test_train_step_with_compression_stays_close():
    loss, wrt = mlp(None)
    init = {k: v for k, v in VALS.items() if k != "x"}
    kw = dict(optimizer=bp.optim.sgd(0.1), backend="llvm", init=init)
    a = bp.compile_train_step(loss, **kw)
    b = bp.compile_train_step(loss, compress_activations="bfloat16", **kw)
    assert b.compress_report["tensors"] > 0
    assert b(x=VALS["x"]) == pytest.approx(a(x=VALS["x"]), rel=1e-12)  # same params, exact loss
    moved = [np.max(np.abs(b.params[k] - a.params[k])) for k in a.params]
    assert 0 < max(moved) < 0.1 * 0.02 * max(np.max(np.abs(init[k])) for k in init) + 1e-3


def test_spec_memory_table(tmp_path):
    from bpcompile.spec import load_toml as load

    spec = tmp_path / "m.toml"
    spec.write_text("""
[[inputs]]
name = "x"
shape = [64, 8]
[[inputs]]
name = "y"
shape = [64, 1]
[[layers]]
type = "dense"
units = 16
activation = "tanh"
[[layers]]
type = "dense"
units = 1
[loss]
type = "mse"
target = "y"
[memory]
budget = "1GB"
compress_activations = "bfloat16"
""")
    model = load(str(spec))
    assert model.memory == {"memory_budget": 10**9, "compress_activations": "bfloat16"}
    fn = model.compile("llvm")
    m = fn.memory()
    assert m["remat"]["budget_bytes"] == 10**9 and m["compress"]["mode"] == "bfloat16"
    step = bp.compile_train_step(model, backend="numpy")
    assert step.compress_report["mode"] == "bfloat16" and step.remat_report is not None
    spec.write_text(spec.read_text().replace('"bfloat16"', '"fp4"'))
    with pytest.raises(bp.BPError, match=r"\[memory\].*compress_activations"):
        load(str(spec))


def test_cli_compress_activations(capsys):
    from pathlib import Path

    from bpcompile.cli import main

    spec = Path(__file__).resolve().parent.parent / "examples" / "mnist_mlp.toml"
    assert main(["compile", str(spec), "--compress-activations", "int8"]) == 0
    assert "int8" in capsys.readouterr().out
