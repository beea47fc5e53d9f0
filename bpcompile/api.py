"""The public tensor API: declarations, elementwise functions and Python operators on nodes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .ir.hints import Axis, TensorLike
from .ir.node import Node
from .ops import elementwise as ew
from .ops.elementwise import (  # noqa: F401  (re-exported)
    add,
    cast,
    div,
    maximum,
    minimum,
    mul,
    neg,
    power,
    stop_gradient,
    sub,
    where,
)
from .ops.index import one_hot, take  # noqa: F401
from .ops.kernel import elementwise  # noqa: F401
from .ops.leaves import const, input, iota, param  # noqa: F401
from .ops.linalg import matmul  # noqa: F401
from .ops.movement import (  # noqa: F401
    broadcast_to,
    concatenate,
    getitem,
    pad,
    reshape,
    transpose,
)
from .ops.reduce import max_, sum_
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
    "astype": lambda a, dtype: cast(a, dtype),
}
for _name, _method in _METHODS.items():
    setattr(Node, _name, _method)


def _node_svg(node: Node) -> str | None:  # Jupyter shows a node as its graph's picture
    from .inspect.notebook import node_svg

    return node_svg(node)


Node._repr_svg_ = _node_svg  # type: ignore[attr-defined]
