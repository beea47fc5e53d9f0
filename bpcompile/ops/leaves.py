"""Leaves: named inputs and params, constants, and iota."""

from __future__ import annotations

import math
import operator
import unicodedata
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import DeclarationError, DTypeError, ShapeError
from ..ir.dtypes import FLOATS, canonical, np_dtype
from ..ir.hints import DTypeLike, Shape
from ..ir.node import ConstValue, Node, make, next_serial
from .registry import Op, register

INT64_MAX = 2**63 - 1


def static_shape(what: str, shape: Shape, infer: bool = False) -> tuple[int, ...]:
    """`shape` (a tuple of ints, or one int) as a tuple of Python ints, or a ShapeError naming
    `what`. Shapes are static and exact: None (a dynamic size), a float such as 2.5 (never
    truncated to 2), a bool, a negative size (-1 only where `infer`) and sizes whose product
    overflows int64 are refused. np.int64 and other integer types are fine.
    """
    dims = (shape,) if isinstance(shape, (int, np.integer)) else shape
    try:
        dims = tuple(dims)
    except TypeError:
        raise ShapeError(f"{what}: shape must be a tuple of ints, got {shape!r}") from None
    out = []
    for d in dims:
        if d is None:
            raise ShapeError(
                f"{what}: shape {shape!r} has a None; shapes are static. Declare the size you "
                "will call with (e.g. the batch size) and compile again for another size"
            )
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)):
            raise ShapeError(
                f"{what}: shape {shape!r}: size {d!r} ({type(d).__name__}) is not an integer"
            )
        d = operator.index(d)
        if d < 0 and not (infer and d == -1):
            raise ShapeError(f"{what}: shape {shape!r}: size {d} is negative")
        out.append(d)
    known = [d for d in out if d >= 0]
    if any(d > INT64_MAX for d in known) or math.prod(known) > INT64_MAX:
        raise ShapeError(
            f"{what}: shape {tuple(out)} is too large: every size and their product must fit "
            f"in int64 (at most 2**63 - 1 = {INT64_MAX})"
        )
    return tuple(out)


def _infer_named(inputs, attrs):
    return attrs["shape"], attrs["dtype"]


register(Op("input", "leaf", _infer_named, None, "A named input fed at call time (data, labels)."))
register(
    Op("param", "leaf", _infer_named, None, "A named parameter; gradients are taken w.r.t. these.")
)
register(
    Op(
        "const",
        "leaf",
        lambda inputs, attrs: (attrs["value"].array.shape, canonical(attrs["value"].array.dtype)),
        None,
        "A constant array baked into the graph.",
    )
)
register(
    Op(
        "iota",
        "leaf",
        lambda inputs, attrs: (attrs["shape"], attrs["dtype"]),
        None,
        "iota(shape, axis): the index along `axis` at every position (like lax.broadcasted_iota).",
    )
)


def _check_name(op: str, name) -> None:
    """A leaf's name is the keyword argument of the compiled function and its gradient's key,
    so it must be a Python identifier. Keywords (`class`), builtins and any other identifier
    are fine: generated code renames its own copy where needed (ir/naming.py)."""
    if not isinstance(name, str):
        raise DeclarationError(f"{op} name must be a str, got {type(name).__name__} {name!r}")
    nfkc = unicodedata.normalize("NFKC", name)
    if name.isidentifier() and nfkc == name:
        return
    if name.isidentifier():  # Python would read fn(ﬁ=x) as fn(fi=x)
        raise DeclarationError(
            f"{op} name {name!r} is not in the form Python reads identifiers in (NFKC): "
            f"fn({name}=...) would pass {nfkc!r}. Declare it as {nfkc!r}."
        )
    hint = "".join(c if ("a" + c).isidentifier() else "_" for c in nfkc) or "x"
    hint = hint if hint.isidentifier() else "_" + hint
    raise DeclarationError(
        f"{op} name {name!r} is not a Python identifier (letters, digits and _, not starting "
        f"with a digit); it is the keyword argument of the compiled function and the key of "
        f"its gradient. Try {hint!r}."
    )


def _named(op: str, name: str, shape, dtype) -> Node:
    _check_name(op, name)
    shape = static_shape(f"{op} {name!r}", shape)
    node = make(op, (), name=name, shape=shape, dtype=canonical(dtype))
    # an interned leaf declared again takes its place in this declaration order (positional
    # arguments follow it); the serial is not part of the node's identity
    node.serial = next_serial()
    return node


def input(name: str, shape: Shape, dtype: DTypeLike = "float32") -> Node:  # noqa: A001 - public API name
    """Declare a named input (fed by keyword at call time)."""
    return _named("input", name, shape, dtype)


def param(name: str, shape: Shape, dtype: DTypeLike = "float32") -> Node:
    """Declare a named trainable parameter."""
    node = _named("param", name, shape, dtype)
    if node.dtype not in FLOATS:
        raise DTypeError(f"param {name!r}: dtype must be one of {FLOATS}, got {node.dtype}")
    return node


def const(value: ArrayLike, dtype: DTypeLike | None = None) -> Node:
    """A constant. A NumPy array or scalar of a float dtype keeps it (np.float64 data stays
    float64, as in NumPy and JAX); Python floats and lists default to float32, integers to
    int32, bools to bool."""
    arr = np.asarray(value)
    if dtype is None:
        if isinstance(value, (np.ndarray, np.generic)) and arr.dtype.name in FLOATS:
            dtype = arr.dtype.name
        else:
            dtype = {"f": "float32", "i": "int32", "u": "int32", "b": "bool"}.get(arr.dtype.kind)
        if dtype is None:
            raise DTypeError(f"const: cannot make a constant from dtype {arr.dtype}")
    dtype = canonical(dtype)
    if dtype == "int32" and arr.dtype.kind in "iu" and arr.size and (
            arr.min() < -(2**31) or arr.max() >= 2**31):  # never wrapped (JAX: OverflowError)
        raise DTypeError(f"const: integer values in [{arr.min()}, {arr.max()}] do not fit in "
                         "int32; use a float")
    with np.errstate(over="ignore"):  # a scalar beyond float16's range is inf, as in JAX
        value = arr.astype(np_dtype(dtype))
    return make("const", (), value=ConstValue(value))


def iota(shape: Shape, axis: int, dtype: DTypeLike = "int32") -> Node:
    shape = static_shape("iota", shape)
    if not 0 <= axis < len(shape):
        raise ShapeError(f"iota: axis {axis} out of range for shape {shape}")
    return make("iota", (), shape=shape, axis=axis, dtype=canonical(dtype))


def const_value(node: Node) -> np.ndarray | None:
    """The numpy value of a const node, or None for any other node."""
    return node.attr("value").array if node.op == "const" else None


def scalar_value(node: Node) -> Any:
    """The Python scalar of a constant whose elements are all equal, else None."""
    v = const_value(node)
    if v is None or v.size == 0:
        return None
    first = v.flat[0]
    return first.item() if (v == first).all() else None
