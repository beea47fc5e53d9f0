"""Constant folding: evaluate nodes whose inputs are all constants with the reference evaluator.

Broadcasts of constants stay symbolic (folding them would bake large arrays into the code).
"""

from __future__ import annotations

from ..ir.node import Node
from ..ir.traverse import transform
from ..ops.leaves import const

MAX_FOLD_ELEMENTS = 4096


def _fold(n: Node) -> Node:
    if not n.inputs or n.op in ("broadcast_to", "iota") or n.size > MAX_FOLD_ELEMENTS:
        return n
    if not all(i.op == "const" for i in n.inputs):
        return n
    from ..backends.numpy.codegen import evaluate

    (value,) = evaluate([n], {})
    return const(value, n.dtype)


def fold_constants(outputs: list[Node]) -> list[Node]:
    return transform(outputs, _fold)
