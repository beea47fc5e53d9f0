"""The dtypes the IR knows: two floats, one integer type for labels/indices, and bool for masks."""

import numpy as np

from ..errors import DTypeError

FLOATS = ("float32", "float64")
INTS = ("int32",)
DTYPES = FLOATS + INTS + ("bool",)
SHORT = {"float32": "f32", "float64": "f64", "int32": "i32", "bool": "bool"}


def canonical(dtype) -> str:
    """Normalise a dtype given as a string, numpy dtype or numpy type to one of DTYPES."""
    try:
        name = np.dtype(dtype).name
    except TypeError as e:
        raise DTypeError(f"unknown dtype {dtype!r}; expected one of {DTYPES}") from e
    if name not in DTYPES:
        raise DTypeError(f"unsupported dtype {name!r}; expected one of {DTYPES}")
    return name


def is_float(dtype: str) -> bool:
    return dtype in FLOATS
