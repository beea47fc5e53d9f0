"""The public tensor API: declarations, elementwise functions and Python operators on nodes."""

from __future__ import annotations

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


def _unary(name):
    def f(x) -> Node:
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


def sum(x, axis=None, keepdims=False) -> Node:  # noqa: A001
    """Sum over `axis` (int, tuple or None for all)."""
    return sum_(x, axis, keepdims)


def max(x, axis=None, keepdims=False) -> Node:  # noqa: A001
    """Max over `axis`; gradient split evenly among ties."""
    return max_(x, axis, keepdims)


def mean(x, axis=None, keepdims=False) -> Node:
    """Mean over `axis` (int, tuple or None for all), like numpy.mean."""
    return mean_(x, axis, keepdims)


def square(x) -> Node:
    x = ew.as_node(x)
    return mul(x, x)


# ---- Python operators on nodes ---------------------------------------------------------------
Node.__add__ = lambda a, b: add(a, b)
Node.__radd__ = lambda a, b: add(b, a)
Node.__sub__ = lambda a, b: sub(a, b)
Node.__rsub__ = lambda a, b: sub(b, a)
Node.__mul__ = lambda a, b: mul(a, b)
Node.__rmul__ = lambda a, b: mul(b, a)
Node.__truediv__ = lambda a, b: div(a, b)
Node.__rtruediv__ = lambda a, b: div(b, a)
Node.__pow__ = lambda a, b: power(a, b)
Node.__rpow__ = lambda a, b: power(b, a)
Node.__matmul__ = lambda a, b: matmul(a, b)
Node.__rmatmul__ = lambda a, b: matmul(b, a)
Node.__neg__ = lambda a: neg(a)
Node.__pos__ = lambda a: a
Node.__abs__ = lambda a: abs_(a)
Node.__lt__ = lambda a, b: ew.lt(a, b)
Node.__le__ = lambda a, b: ew.le(a, b)
Node.__gt__ = lambda a, b: ew.gt(a, b)
Node.__ge__ = lambda a, b: ew.ge(a, b)
Node.__getitem__ = lambda a, idx: getitem(a, idx)
Node.T = property(lambda a: transpose(a))
Node.reshape = lambda a, *shape: reshape(a, shape[0] if len(shape) == 1 else shape)
Node.transpose = lambda a, *perm: transpose(a, perm[0] if len(perm) == 1 else (perm or None))
Node.sum = lambda a, axis=None, keepdims=False: sum_(a, axis, keepdims)
Node.mean = lambda a, axis=None, keepdims=False: mean(a, axis, keepdims)
Node.max = lambda a, axis=None, keepdims=False: max_(a, axis, keepdims)
Node.astype = lambda a, dtype: cast(a, dtype)
