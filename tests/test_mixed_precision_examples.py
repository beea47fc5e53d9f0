"""Issue 15 item 5 as tests: the bfloat16 digits MLP matches float32's accuracy within 1 point
(examples/digits_mixed_precision.py, shortened), and float16 gradients underflow without loss
scaling and match float32 with it (examples/float16_loss_scaling.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _example(name):
    spec = importlib.util.spec_from_file_location(f"_ex_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_bfloat16_digits_mlp_reaches_float32_accuracy_within_one_point():
    ex = _example("digits_mixed_precision")
    res = ex.run(epochs=8)
    (h32, acc32), (h16, acc16) = res["float32"], res["bfloat16"]
    assert acc32 > 0.93  # it learned (30 epochs reach ~0.98)
    assert abs(acc16 - acc32) <= 0.01, (acc16, acc32)
    assert "bf16[" in h16.step.fn.graph() and "bf16[" not in h32.step.fn.graph()
    assert h16.loss[-1] != h32.loss[-1]  # the low precision is really used


def test_float16_underflow_example():
    res = _example("float16_loss_scaling").updates("numpy")
    ref = res["float32"]
    assert np.abs(ref).max() > 1e-3
    assert not res["float16"].any()  # every float16 gradient flushed to zero
    eps = float(ml_dtypes.finfo(np.float16).eps)
    for k in ("float16, static 2**14", "float16, dynamic"):
        assert np.abs(res[k] - ref).max() < 2 * eps * np.abs(ref).max(), k
