"""Composites that rewrite rules build as well as users: kept in ops so `rewrite` never imports
the front end (`nn` re-exports them)."""

from __future__ import annotations

from ..ir.hints import Axis, TensorLike
from ..ir.node import Node
from .elementwise import add, as_node, stop_gradient, sub, unary
from .movement import reshape
from .reduce import max_, normalize_axes, sum_


def logsumexp(x: TensorLike, axis: Axis = -1, keepdims: bool = False) -> Node:
    """log(sum(exp(x))) over `axis`, computed as m + log(sum(exp(x - m))) with m = max(x)."""
    x = as_node(x)
    m = stop_gradient(max_(x, axis, keepdims=True))
    out = add(unary("log", sum_(unary("exp", sub(x, m)), axis, keepdims=True)), m)
    if keepdims:
        return out
    ax = normalize_axes("logsumexp", axis, x.ndim)
    return reshape(out, tuple(s for i, s in enumerate(x.shape) if i not in ax))
