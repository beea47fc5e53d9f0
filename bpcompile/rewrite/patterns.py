"""Small helpers rewrite rules share: matching ops and constants."""

from __future__ import annotations

from ..ir.node import Node
from ..ops.leaves import scalar_value


def is_op(n: Node, *ops: str) -> bool:
    return n.op in ops


def is_scalar(n: Node, value=None) -> bool:
    """n is a constant whose elements all equal `value` (any value if None)."""
    v = scalar_value(n)
    return v is not None and (value is None or v == value)


def same_shape_as(x: Node, target: Node) -> Node:
    """x, broadcast to target's shape if needed (a rule's result must keep the node's type)."""
    from ..ops.elementwise import cast
    from ..ops.movement import broadcast_to

    if x.dtype != target.dtype:
        x = cast(x, target.dtype)
    return broadcast_to(x, target.shape) if x.shape != target.shape else x


def structural_keys(order: list[Node]) -> dict[Node, tuple]:
    """A deterministic key per node (op, attrs, input keys' ranks), stable across processes."""
    keys: dict[Node, tuple] = {}
    rank: dict[tuple, int] = {}
    for n in order:
        k = (n.op, repr(n.attrs), n.shape, n.dtype, tuple(keys[i][0] for i in n.inputs))
        r = rank.setdefault(k, len(rank))
        keys[n] = (r, k)
    return keys
