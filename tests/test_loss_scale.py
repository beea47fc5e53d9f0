"""Loss scaling for float16 training (train/loss_scale.py, compile_train_step(loss_scale=)).

The inputs are ~2e-4, so the gradient x^T (2 x W / 16) has products ~1e-9: below float16's
smallest subnormal (6e-8), so under a float16 policy every gradient flushes to zero unless the
loss is scaled. Bound for the scaled update against the float32 one: 2 float16 eps relative to
the largest entry (every value is rounded a few times by eps/2; a few inputs are subnormal).
The loss and the mean's 1/16 run in float32 (rank-0 values, rewrite/precision.py), so the first
float16 cotangent is scale/16: scales of 16 x 65504 and above overflow it at once (the overflow
tests use 2**21 and 2**20; 2**18 cannot overflow).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import bpcompile as bp
from bpcompile.errors import ArgumentError
from bpcompile.train import DynamicLossScale, StaticLossScale
from bpcompile.train.loss_scale import loss_scale_of

BACKENDS = ["numpy", "llvm", "jax"]
EPS16 = float(ml_dtypes.finfo(np.float16).eps)
A = 2e-4  # the inputs' magnitude
LR = 1e-2 / A ** 2  # SGD: the update -LR * gradient is ~1e-2


def _data():
    r = np.random.default_rng(0)
    x = (r.normal(size=(8, 4)) * A).astype(np.float32)
    W0 = (r.normal(size=(4, 2)) * 0.5).astype(np.float32)
    return x, W0


def _step(backend, precision="float16", loss_scale=None, **kw):
    x = bp.input("x", (8, 4))
    W = bp.param("W", (4, 2))
    loss = bp.mean((x @ W) ** 2)
    _, W0 = _data()
    return bp.compile_train_step(loss, [W], bp.optim.sgd(LR), backend, init={"W": W0},
                                 precision=precision, loss_scale=loss_scale, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float16_gradients_underflow_without_scaling_and_are_correct_with_it(backend):
    x, W0 = _data()
    ref = _step(backend, precision=None)
    ref(x=x)
    d32 = ref.params["W"] - W0
    assert np.abs(d32).max() > 1e-3  # the float32 update is visible
    plain = _step(backend)
    plain(x=x)
    np.testing.assert_array_equal(plain.params["W"], W0)  # every gradient flushed to zero
    for spec in (2.0 ** 14, DynamicLossScale(init=2.0 ** 14)):
        st = _step(backend, loss_scale=spec)
        st(x=x)
        d = st.params["W"] - W0
        rel = float(np.abs(d - d32).max() / np.abs(d32).max())
        assert rel < 2 * EPS16, (spec, rel)
        assert st.count == 1 and st.loss_scaler.scale == 2.0 ** 14


@pytest.mark.parametrize("backend", BACKENDS)
def test_dynamic_scale_skips_overflow_steps_and_grows_after_good_ones(backend):
    x, W0 = _data()
    st = _step(backend, loss_scale=DynamicLossScale(init=2.0 ** 21, growth_interval=3),
               diagnostics=True)
    st.warn = False  # the tiny gradients trip the "vanishing" warning
    state0 = {k: np.array(v) for k, v in st.opt_state.items()}
    loss = st(x=x)
    assert np.isfinite(loss)
    np.testing.assert_array_equal(st.params["W"], W0)  # the step was skipped
    for k, v in state0.items():
        np.testing.assert_array_equal(st.opt_state[k], v)
    assert st.count == 0 and st.loss_scaler.scale == 2.0 ** 20
    assert st.last["skipped"] and st.last["skipped_steps"] == 1
    # 2**20 still overflows; 2**19 may (2 * cotangent = 2**16, depending on the order a
    # backend's fused kernel multiplies in), 2**18 cannot. Then 3 good steps double it.
    while st.last["skipped"]:
        st(x=x)
    ok = st.last["loss_scale"]
    assert ok in (2.0 ** 19, 2.0 ** 18) and st.count == 1
    assert st.loss_scaler.skipped == (2 if ok == 2.0 ** 19 else 3)
    for i in range(2):
        st(x=x)
        assert st.count == i + 2 and not st.last["skipped"]
    assert st.loss_scaler.scale == 2 * ok and st.loss_scaler.good_steps == 0
    assert not np.array_equal(st.params["W"], W0)
    skipped = st.loss_scaler.skipped
    st(x=x)  # the doubled scale overflowed before and overflows again: skipped, params stay
    assert st.count == 3 and st.last["skipped"] and st.loss_scaler.skipped == skipped + 1


def test_static_scale_never_skips_and_checkpoint_round_trips_the_dynamic_state():
    x, W0 = _data()
    st = _step("numpy", loss_scale=DynamicLossScale(init=2.0 ** 21, growth_interval=5))
    st(x=x)
    d = st.state_dict()
    assert float(d["meta/loss_scale_scale"]) == 2.0 ** 20
    other = _step("numpy", loss_scale="dynamic")
    other.load_state_dict(d)
    assert other.loss_scaler.scale == 2.0 ** 20 and other.loss_scaler.skipped == 1
    st.reset({"W": W0})
    assert st.loss_scaler.scale == 2.0 ** 21 and st.loss_scaler.skipped == 0
    static = _step("numpy", loss_scale=2.0 ** 21, check_finite=False)
    static(x=x)  # inf gradients are applied: a static scale does not skip
    assert static.count == 1 and not np.isfinite(static.params["W"]).all()


def test_scaler_rules_and_bad_arguments():
    s = DynamicLossScale(init=4.0, growth_interval=2, min_scale=2.0)
    for finite, want in [(False, 2.0), (False, 2.0), (True, 2.0), (True, 4.0), (True, 4.0)]:
        s.update(finite)
        assert s.scale == want
    assert s.skipped == 2 and s.good_steps == 1
    assert isinstance(loss_scale_of("dynamic"), DynamicLossScale)
    assert loss_scale_of(8).scale == 8.0 and loss_scale_of(None) is None
    for bad in ("static", -1.0, True, float("inf")):
        with pytest.raises(ArgumentError, match="loss_scale"):
            loss_scale_of(bad)
    with pytest.raises(ArgumentError, match="factor"):
        DynamicLossScale(factor=1.0)
    with pytest.raises(ArgumentError, match="growth_interval"):
        DynamicLossScale(growth_interval=0)
    with pytest.raises(ArgumentError, match="StaticLossScale|scale"):
        StaticLossScale(0.0)


SPEC = """
[model]
name = "tiny16"
[[inputs]]
name = "x"
shape = [8, 3]
[[inputs]]
name = "labels"
shape = [8]
dtype = "int32"
[[layers]]
type = "dense"
units = 6
activation = "tanh"
[[layers]]
type = "dense"
units = 3
[loss]
type = "cross_entropy"
target = "labels"
"""


def _labelled(n=64):
    r = np.random.default_rng(1)
    x = r.normal(size=(n, 3)).astype(np.float32)
    return {"x": x, "labels": (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5)}


def test_fit_records_scale_and_skipped_steps_and_checkpoints_them(tmp_path):
    p = tmp_path / "m.toml"
    p.write_text(SPEC)
    scaler = DynamicLossScale(init=2.0 ** 17, growth_interval=4)  # 2**17 > 65504: skipped
    h = bp.train.fit(str(p), _labelled(), epochs=2, batch_size=8, progress=False,
                     precision="float16", loss_scale=scaler, checkpoint_dir=tmp_path / "ck",
                     optimizer=bp.optim.sgd(0.1))
    assert h.skipped_steps[0] >= 1 and sum(h.skipped_steps) == scaler.skipped
    assert h.loss_scale[-1] == scaler.scale and all(np.isfinite(h.loss))
    assert all(np.isfinite(v).all() for v in h.grad_norm.values())  # skipped steps left out
    assert h.step.count == 16 - scaler.skipped
    with np.load(tmp_path / "ck" / "last.npz") as z:
        assert float(z["meta/loss_scale_scale"]) == scaler.scale


def test_cli_train_takes_precision_and_loss_scale(tmp_path, capsys):
    from bpcompile.train.cli import main

    p, data = tmp_path / "m.toml", tmp_path / "d.npz"
    p.write_text(SPEC)
    np.savez(data, **_labelled())
    assert main(["train", str(p), "--data", str(data), "--epochs", "1", "--batch-size", "8",
                 "--precision", "float16", "--loss-scale", "dynamic", "--no-progress"]) == 0
    assert "loss scale 32768 (0 steps skipped)" in capsys.readouterr().out
    assert main(["train", str(p), "--loss-scale", "-3"]) == 2
    assert "expected 'dynamic' or a positive number" in capsys.readouterr().err
