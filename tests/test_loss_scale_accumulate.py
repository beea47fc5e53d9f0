"""Loss scaling with gradient accumulation: compile_train_step(accumulate=k, loss_scale=...).

Each micro-batch differentiates loss * scale inside the accumulation scan; the scaled sums are
unscaled in float32 after the loop, and a non-finite micro-batch skips the whole step. The model
is tests/test_loss_scale.py's: inputs ~2e-4, so float16 gradients (~1e-9) flush to zero
unless scaled. Bound against the float32 accumulated update: 2 float16 eps relative to the
largest entry (values rounded a few times by eps/2; the sums are float32).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import bpcompile as bp
from bpcompile.train import DynamicLossScale

BACKENDS = ["numpy", "llvm", "jax"]
EPS16 = float(ml_dtypes.finfo(np.float16).eps)
A = 2e-4
LR = 1e-2 / A ** 2


def _data():
    r = np.random.default_rng(0)
    x = (r.normal(size=(8, 4)) * A).astype(np.float32)
    W0 = (r.normal(size=(4, 2)) * 0.5).astype(np.float32)
    return x, W0


def _step(backend, precision="float16", loss_scale=None, k=2, **kw):
    x = bp.input("x", (8 // k, 4))  # declared per micro-batch
    W = bp.param("W", (4, 2))
    loss = bp.mean((x @ W) ** 2)
    _, W0 = _data()
    return bp.compile_train_step(loss, [W], bp.optim.sgd(LR), backend, init={"W": W0},
                                 precision=precision, loss_scale=loss_scale, accumulate=k,
                                 **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scaled_accumulated_update_matches_float32_and_unscaled_underflows(backend):
    x, W0 = _data()
    ref = _step(backend, precision=None)
    ref(x=x)
    d32 = ref.params["W"] - W0
    full = _step(backend, precision=None, k=1)  # accumulating a mean = the full batch
    full(x=x)
    np.testing.assert_allclose(ref.params["W"], full.params["W"], rtol=1e-6, atol=1e-7)
    plain = _step(backend)
    plain(x=x)
    np.testing.assert_array_equal(plain.params["W"], W0)  # float16 gradients flushed to zero
    for spec in (2.0 ** 14, DynamicLossScale(init=2.0 ** 14)):
        st = _step(backend, loss_scale=spec)
        st(x=x)
        d = st.params["W"] - W0
        rel = float(np.abs(d - d32).max() / np.abs(d32).max())
        assert rel < 2 * EPS16, (spec, rel)
        assert st.count == 1 and st.loss_scaler.scale == 2.0 ** 14


@pytest.mark.parametrize("backend", BACKENDS)
def test_overflowing_micro_batch_skips_the_accumulated_step(backend):
    x, W0 = _data()
    # 2**21 / 4 (a micro-batch mean's 1/4) = 2**19 > 65504: every micro-batch overflows
    st = _step(backend, loss_scale=DynamicLossScale(init=2.0 ** 21, growth_interval=2),
               diagnostics=True)
    st.warn = False
    loss = st(x=x)
    assert np.isfinite(loss)  # the loss is unscaled and float32
    np.testing.assert_array_equal(st.params["W"], W0)
    assert st.count == 0 and st.last["skipped"] and st.loss_scaler.scale == 2.0 ** 20
    while st.last["skipped"]:  # halves down to a finite scale, then trains
        st(x=x)
    assert st.count == 1 and st.loss_scaler.scale <= 2.0 ** 18
    assert not np.array_equal(st.params["W"], W0)
