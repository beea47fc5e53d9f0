"""Helpers the generated NumPy code calls by name (numerically stable activations, pads).

Most are the constant evaluator's (rewrite/evaluate.py), so folding computes what this
backend computes."""

import ml_dtypes
import numpy as np

from ...ir.dtypes import FLOATS
from ...rewrite.evaluate import (  # noqa: F401
    _check,
    iota,
    one_hot,
    pad,
    relu,
    sigmoid,
    softplus,
    take_in_range,
)


def step(x):
    # a float x keeps its dtype (float16, ml_dtypes' bfloat16 too); int/bool -> float32
    dt = x.dtype if x.dtype.name in FLOATS else np.result_type(x, np.float32)
    return np.where(x > 0, 1, 0).astype(dt)


NAMESPACE = {
    "np": np,
    "ml_dtypes": ml_dtypes,
    "sigmoid": sigmoid,
    "softplus": softplus,
    "relu": relu,
    "step": step,
    "one_hot": one_hot,
    "take_in_range": take_in_range,
    "iota": iota,
    "pad": pad,
}
