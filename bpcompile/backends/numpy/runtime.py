"""Helpers the generated NumPy code calls by name (numerically stable activations, pads).

Most are the constant evaluator's (rewrite/evaluate.py), so folding computes what this
backend computes."""

import numpy as np

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
    return np.where(x > 0, 1, 0).astype(np.result_type(x, np.float32))


NAMESPACE = {
    "np": np,
    "sigmoid": sigmoid,
    "softplus": softplus,
    "relu": relu,
    "step": step,
    "one_hot": one_hot,
    "take_in_range": take_in_range,
    "iota": iota,
    "pad": pad,
}
