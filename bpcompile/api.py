"""The public tensor API: declarations, elementwise functions and Python operators on nodes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .ir.hints import Axis, DTypeLike, TensorLike
from .ir.node import Node
from .ops import elementwise as ew
from .ops.custom import custom_vjp  # noqa: F401
from .ops.custom_jvp import custom_jvp  # noqa: F401
from .ops.elementwise import (  # noqa: F401  (re-exported)
    add,
    cast,
    div,
    logical_and,
    logical_not,
    logical_or,
    logical_xor,
    maximum,
    minimum,
    mul,
    neg,
    power,
    stop_gradient,
    sub,
    where,
)
from .ops.index import one_hot, scatter_add, take  # noqa: F401
from .ops.kernel import elementwise  # noqa: F401
from .ops.leaves import const, input, iota, param  # noqa: F401
from .ops.linalg import matmul  # noqa: F401
from .ops.movement import (  # noqa: F401
    broadcast_to,
    concatenate,
    getitem,
    pad,
    reshape,
    stack,
    transpose,
)
from .ops.reduce import argmax, argmin, max_, min_, sum_  # noqa: F401
from .ops.reduce import mean as mean_

# Elementwise comparisons by name (`<`, `<=`, `>`, `>=` work as operators; `==` stays identity).
equal, not_equal, less, less_equal = ew.eq, ew.ne, ew.lt, ew.le
greater, greater_equal = ew.gt, ew.ge


def unary(name: str, x: TensorLike) -> Node:
    """Apply the elementwise op `name` of the registry (a UNARY row; also one defined after
    import with `ops.elementwise.define_unary`): `bp.unary("softplus", x)`."""
    if name not in ew.UNARY:
        raise ValueError(f"unary: no elementwise op {name!r}; choose from {sorted(ew.UNARY)}")
    return ew.unary(name, x)


def binary(name: str, a: TensorLike, b: TensorLike) -> Node:
    """Apply the binary elementwise op `name` of the registry (a BINARY row):
    `bp.binary("maximum", x, 0.0)`."""
    if name not in ew.BINARY:
        raise ValueError(f"binary: no elementwise op {name!r}; choose from {sorted(ew.BINARY)}")
    return ew.binary(name, a, b)


def _unary(name: str) -> Callable[[TensorLike], Node]:
    def f(x: TensorLike) -> Node:
        return ew.unary(name, x)

    f.__name__ = name
    f.__doc__ = f"Elementwise {name}: {ew.UNARY[name][2]}."
    return f


exp, log, log1p, expm1, sqrt, sin, cos, tanh = (
    _unary(n) for n in ("exp", "log", "log1p", "expm1", "sqrt", "sin", "cos", "tanh")
)
sigmoid, relu, softplus, sign, floor, round_ = (
    _unary(n) for n in ("sigmoid", "relu", "softplus", "sign", "floor", "round")
)
abs_ = _unary("abs")


def sum(x: TensorLike, axis: Axis = None, keepdims: bool = False) -> Node:  # noqa: A001
    """Sum over `axis` (int, tuple or None for all)."""
    return sum_(x, axis, keepdims)


def max(x: TensorLike, axis: Axis = None, keepdims: bool = False) -> Node:  # noqa: A001
    """Max over `axis`; gradient split evenly among ties."""
    return max_(x, axis, keepdims)


def min(x: TensorLike, axis: Axis = None, keepdims: bool = False) -> Node:  # noqa: A001
    """Min over `axis`; gradient split evenly among ties (as jnp.min)."""
    return min_(x, axis, keepdims)


def arange(start: int, stop: int | None = None, step: int = 1, dtype: DTypeLike = "int32") -> Node:
    """`jnp.arange` for static ints: an iota, so graphs built from it (a power matrix
    `t ** arange(n)`) fold to constants at compile time."""
    if stop is None:
        start, stop = 0, start
    for what, v in (("start", start), ("stop", stop), ("step", step)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise TypeError(f"arange: {what} must be a Python int, got {type(v).__name__}")
    if step == 0:
        raise ValueError("arange: step must not be 0")
    n = len(range(start, stop, step))
    out = iota((n,), 0, dtype)
    if step != 1:
        out = mul(out, step)
    return add(out, start) if start else out


class _At:
    """`x.at[idx]` as in JAX: `x.at[idx].add(v)` is `scatter_add(x, idx, v, axis)`, where the
    index is an int32 tensor (or Python int) after `axis` full slices (`x.at[:, idx]`)."""

    def __init__(self, x: Node, idx: Any):
        self.x, self.idx, self.axis = x, idx, 0
        if isinstance(idx, tuple):
            *lead, last = idx
            if any(not (isinstance(s, slice) and s == slice(None)) for s in lead):
                raise TypeError(
                    f"at[]: only full slices ':' may precede the index tensor, got {idx!r}")
            self.idx, self.axis = last, len(lead)
        if isinstance(self.idx, (int, np.integer)) and not isinstance(self.idx, bool):
            self.idx = const(np.int32(self.idx), "int32")
        if not isinstance(self.idx, Node):
            raise TypeError(
                f"at[]: the index must be an int32 tensor or an int, got {type(self.idx).__name__}")

    def add(self, v: TensorLike) -> Node:
        return scatter_add(self.x, self.idx, v, self.axis)


class _AtIndexer:
    def __init__(self, x: Node):
        self.x = x

    def __getitem__(self, idx: Any) -> _At:
        return _At(self.x, idx)


def mean(x: TensorLike, axis: Axis = None, keepdims: bool = False) -> Node:
    """Mean over `axis` (int, tuple or None for all), like numpy.mean."""
    return mean_(x, axis, keepdims)


def square(x: TensorLike) -> Node:
    x = ew.as_node(x)
    return mul(x, x)


# ---- Python operators on nodes (their signatures for type checkers: ir/node.py) -------------
_METHODS: dict[str, Any] = {
    "__add__": lambda a, b: add(a, b),
    "__radd__": lambda a, b: add(b, a),
    "__sub__": lambda a, b: sub(a, b),
    "__rsub__": lambda a, b: sub(b, a),
    "__mul__": lambda a, b: mul(a, b),
    "__rmul__": lambda a, b: mul(b, a),
    "__truediv__": lambda a, b: div(a, b),
    "__rtruediv__": lambda a, b: div(b, a),
    "__pow__": lambda a, b: power(a, b),
    "__rpow__": lambda a, b: power(b, a),
    "__matmul__": lambda a, b: matmul(a, b),
    "__rmatmul__": lambda a, b: matmul(b, a),
    "__neg__": lambda a: neg(a),
    "__pos__": lambda a: a,
    "__abs__": lambda a: abs_(a),
    "__lt__": lambda a, b: ew.lt(a, b),
    "__le__": lambda a, b: ew.le(a, b),
    "__gt__": lambda a, b: ew.gt(a, b),
    "__ge__": lambda a, b: ew.ge(a, b),
    "__getitem__": lambda a, idx: getitem(a, idx),
    "T": property(lambda a: transpose(a)),
    "reshape": lambda a, *shape: reshape(a, shape[0] if len(shape) == 1 else shape),
    "transpose": lambda a, *perm: transpose(a, perm[0] if len(perm) == 1 else (perm or None)),
    "sum": lambda a, axis=None, keepdims=False: sum_(a, axis, keepdims),
    "mean": lambda a, axis=None, keepdims=False: mean(a, axis, keepdims),
    "max": lambda a, axis=None, keepdims=False: max_(a, axis, keepdims),
    "min": lambda a, axis=None, keepdims=False: min_(a, axis, keepdims),
    "argmax": lambda a, axis=None, keepdims=False: argmax(a, axis, keepdims),
    "argmin": lambda a, axis=None, keepdims=False: argmin(a, axis, keepdims),
    "at": property(lambda a: _AtIndexer(a)),
    "__and__": lambda a, b: logical_and(a, b),
    "__rand__": lambda a, b: logical_and(b, a),
    "__or__": lambda a, b: logical_or(a, b),
    "__ror__": lambda a, b: logical_or(b, a),
    "__xor__": lambda a, b: logical_xor(a, b),
    "__rxor__": lambda a, b: logical_xor(b, a),
    "__invert__": lambda a: logical_not(a),
    "astype": lambda a, dtype: cast(a, dtype),
}
for _name, _method in _METHODS.items():
    setattr(Node, _name, _method)


def _node_svg(node: Node) -> str | None:  # Jupyter shows a node as its graph's picture
    from .inspect.notebook import node_svg

    return node_svg(node)


Node._repr_svg_ = _node_svg  # type: ignore[attr-defined]
