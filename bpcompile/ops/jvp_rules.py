"""Explicit forward-mode (JVP) rules for the linear and bilinear primitives.

A linear op's tangent is the op applied to the tangents (JAX's `defjvp` of a linear
primitive); matmul is bilinear: d(A@B) = dA@B + A@dB. Ops without a rule here get theirs
derived by the forward driver (autodiff/forward.py): elementwise ops and kernels from their
VJP, the rest by transposing the VJP. A rule takes (node, tangents), one tangent or None
(a symbolic zero) per input, and returns the output's tangent or None.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..ir.dtypes import is_float
from ..ir.node import Node, make


def _zeros(shape: tuple, dtype: str) -> Node:
    from .leaves import const

    z = const(0.0, dtype)
    return make("broadcast_to", (z,), shape=shape) if shape else z


def linear(node: Node, tangents: Sequence[Node | None]) -> Node | None:
    """The op on the tangents: float inputs without one are zeros, other inputs (indices)
    stay as they are."""
    if all(t is None for t in tangents):
        return None
    ins = []
    for x, t in zip(node.inputs, tangents):
        if not is_float(x.dtype):
            ins.append(x)
        else:
            ins.append(t if t is not None else _zeros(x.shape, x.dtype))
    return make(node.op, ins, **dict(node.attrs))


def first_linear(node: Node, tangents: Sequence[Node | None]) -> Node | None:
    """Linear in its first input only (take: gather at fixed indices)."""
    t = tangents[0]
    if t is None:
        return None
    return make(node.op, (t,) + tuple(node.inputs[1:]), **dict(node.attrs))


def matmul(node: Node, tangents: Sequence[Node | None]) -> Node | None:
    a, b = node.inputs
    ta, tb = tangents
    parts = []
    if ta is not None:
        parts.append(make("matmul", (ta, b)))
    if tb is not None:
        parts.append(make("matmul", (a, tb)))
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return make("add", tuple(parts))
