"""The dtypes the IR knows and the one type-promotion rule every op uses.

Floats: float16, bfloat16 (through `ml_dtypes`, the package JAX uses), float32, float64; one
integer type (int32: labels, indices) and bool (masks). Promotion is JAX's lattice with 64-bit
types enabled (`jnp.promote_types` under x64), restricted to these types:

    bool < weak int < int32 < weak float < {bfloat16, float16} < float32 < float64

with bfloat16 ⊔ float16 = float32. A Python (or NumPy) scalar is *weak*: it takes the other
operand's type and never widens a tensor. Where the join is itself weak (an int32 tensor and
a Python float) the result is bpcompile's default float, float32 — JAX's weak float without
x64 — not JAX-x64's float64 (docs/dtypes.md).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import ml_dtypes
import numpy as np

from ..errors import DTypeError

FLOATS = ("float16", "bfloat16", "float32", "float64")
HALF = ("float16", "bfloat16")  # 16-bit storage; backends without them compute in float32
INTS = ("int32", "int8")  # int8: storage of compressed activations (rewrite/compress.py)
DTYPES = FLOATS + INTS + ("bool",)
SHORT = {"float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64",
         "int32": "i32", "int8": "i8", "bool": "bool"}
DEFAULT_FLOAT = "float32"
DEFAULT_INT = "int32"
WEAK_INT, WEAK_FLOAT = "weak_int", "weak_float"  # Python int / float scalars

NUMPY = {"bfloat16": np.dtype(ml_dtypes.bfloat16)}  # names np.dtype() does not know


def np_dtype(dtype: str) -> np.dtype:
    """The NumPy dtype of an IR dtype (bfloat16 is ml_dtypes.bfloat16)."""
    return NUMPY.get(dtype) or np.dtype(dtype)


def canonical(dtype) -> str:
    """Normalise a dtype given as a string, numpy dtype or numpy type to one of DTYPES."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    try:
        name = np.dtype(dtype).name
    except TypeError as e:
        raise DTypeError(f"unknown dtype {dtype!r}; expected one of {DTYPES}") from e
    if name not in DTYPES:
        raise DTypeError(f"unsupported dtype {name!r}; expected one of {DTYPES}")
    return name


def is_float(dtype: str) -> bool:
    return dtype in FLOATS


def is_half(dtype: str) -> bool:
    return dtype in HALF


# --------------------------------------------------------------------------------------------
# promotion: the lattice as each type's immediate successors (jax/_src/dtypes.py, x64 on)

_UP = {
    "bool": (WEAK_INT,),
    WEAK_INT: ("int8",),
    "int8": ("int32",),
    "int32": (WEAK_FLOAT,),  # int32 < int64 < weak float in JAX; we have no int64
    WEAK_FLOAT: ("bfloat16", "float16"),
    "bfloat16": ("float32",),
    "float16": ("float32",),
    "float32": ("float64",),
    "float64": (),
}


def _upper(t: str) -> frozenset[str]:
    """t and every type above it."""
    out, todo = set(), [t]
    while todo:
        x = todo.pop()
        if x not in out:
            out.add(x)
            todo.extend(_UP[x])
    return frozenset(out)


_UPPER = {t: _upper(t) for t in _UP}


def _join(a: str, b: str) -> str:
    common = _UPPER[a] & _UPPER[b]
    (least,) = [t for t in common if common <= _UPPER[t]]  # a lattice: exactly one
    return least


def materialize(t: str) -> str:
    """A weak type as the dtype a tensor of it gets."""
    return {WEAK_INT: DEFAULT_INT, WEAK_FLOAT: DEFAULT_FLOAT}.get(t, t)


_STRICT = [os.environ.get("BPCOMPILE_STRICT_DTYPES", "") not in ("", "0")]


@contextmanager
def strict_promotion(on: bool = True):
    """Within the block two different float dtypes meeting in an op is a DTypeError (the rule
    before promotion existed); int/bool next to a float still converts. Also set by the
    environment variable BPCOMPILE_STRICT_DTYPES=1."""
    _STRICT.append(on)
    try:
        yield
    finally:
        _STRICT.pop()


def promote_types(*types: str, op: str = "op") -> str:
    """The result dtype of an op whose operands have `types`: DTYPES entries, or WEAK_INT /
    WEAK_FLOAT for Python scalars. Weak results materialise as int32 / float32."""
    if not types:
        raise DTypeError(f"{op}: no operands to promote")
    for t in types:
        if t not in _UP:
            raise DTypeError(f"{op}: unknown dtype {t!r}")
    out = types[0]
    for t in types[1:]:
        out = _join(out, t)
    strong = {t for t in types if is_float(t)}
    if _STRICT[-1] and len(strong) > 1:
        raise DTypeError(
            f"{op}: operand dtypes differ ({', '.join(types)}) and strict dtype promotion is on; "
            "convert one with .astype(...)"
        )
    return materialize(out)


def weak_type(x) -> str | None:
    """WEAK_INT / WEAK_FLOAT for a Python or NumPy int / float scalar, "bool" for a bool,
    None for anything else."""
    if isinstance(x, (bool, np.bool_)):
        return "bool"
    if isinstance(x, (int, np.integer)):
        return WEAK_INT
    if isinstance(x, (float, np.floating)):
        return WEAK_FLOAT
    return None
