"""Canonicalisation and CSE.

canonicalize: drop identities that only matter to autodiff (stop_gradient), turn division by
a constant into multiplication by its reciprocal, and put constants last in commutative ops.
cse: order commutative operands deterministically so re-interning merges a+b with b+a.
"""

from __future__ import annotations

from ..ir.node import Node, make
from ..ir.traverse import toposort, transform
from ..ops.elementwise import mul
from ..ops.leaves import const, scalar_value

COMMUTATIVE = ("add", "mul", "maximum", "minimum", "eq", "ne")
AUTODIFF_ONLY = ("stop_gradient", "remat")  # identities autodiff reads (remat: checkpoint)


def _canon(n: Node) -> Node:
    if n.op in AUTODIFF_ONLY:  # x ; gradients are already built
        return n.inputs[0]
    if n.op == "div":
        c = scalar_value(n.inputs[1])
        if c not in (None, 0) and n.inputs[1].ndim == 0:  # x / c -> x * (1/c)
            return mul(n.inputs[0], const(1.0 / c, n.dtype))
    if n.op in COMMUTATIVE and n.inputs[0].op == "const" and n.inputs[1].op != "const":
        return make(n.op, (n.inputs[1], n.inputs[0]), **dict(n.attrs))
    return n


def canonicalize(outputs: list[Node]) -> list[Node]:
    return transform(outputs, _canon)


def canonicalize_forward(outputs: list[Node]) -> list[Node]:
    """canonicalize before autodiff: stop_gradient and remat live until gradients are built."""
    return transform(outputs, lambda n: n if n.op in AUTODIFF_ONLY else _canon(n))


def cse(outputs: list[Node]) -> list[Node]:
    from .patterns import structural_keys

    keys = structural_keys(toposort(outputs))

    def order_operands(n: Node) -> Node:
        if n.op in COMMUTATIVE and n.inputs[1].op != "const":
            a, b = n.inputs
            ka, kb = keys.get(a), keys.get(b)
            if ka is not None and kb is not None and ka[0] > kb[0]:
                return make(n.op, (b, a), **dict(n.attrs))
        return n

    # Rebuilding re-interns every node: structurally identical subgraphs become one object.
    out = transform(outputs, order_operands)
    return out
