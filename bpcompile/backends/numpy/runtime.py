"""Helpers the generated NumPy code calls by name (numerically stable activations, pads).

Most are the constant evaluator's (rewrite/evaluate.py), so folding computes what this
backend computes: its namespace (NumPy and the stable helpers printed SymPy forms call) is the
start of this one, plus ml_dtypes (bfloat16 in generated code)."""

import ml_dtypes

from ...rewrite.evaluate import NAMESPACE as _FORMS
from ...rewrite.evaluate import (  # noqa: F401
    _check,
    iota,
    one_hot,
    pad,
    relu,
    scatter_add,
    sigmoid,
    softplus,
    step,
    take_in_range,
)

NAMESPACE = {
    **_FORMS,
    "ml_dtypes": ml_dtypes,
    "one_hot": one_hot,
    "take_in_range": take_in_range,
    "scatter_add": scatter_add,
    "iota": iota,
    "pad": pad,
}
