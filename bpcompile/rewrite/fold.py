"""Constant folding: evaluate nodes whose inputs are all constants (`evaluate.py`, an
interpreter table bit-identical to the NumPy backend).

Broadcasts of constants stay symbolic (folding them would bake large arrays into the code).
`iota` counts as a constant for its consumers (a power matrix `t ** arange(n)` is computed
once, at compile time), but a lone iota stays an iota: it costs nothing to generate.
"""

from __future__ import annotations

from ..ir.node import Node, make
from ..ir.traverse import transform
from ..ops.leaves import const
from ..ops.movement import broadcast_to
from ..ops.registry import get_op
from .evaluate import can_evaluate, evaluate

MAX_FOLD_ELEMENTS = 4096


def _small_const(x: Node):
    """x as (const, broadcast shape): a const, or broadcast_to of one."""
    if x.op == "const":
        return x
    if x.op == "broadcast_to" and x.inputs[0].op == "const":
        return x.inputs[0]
    return None


def _fold_through_broadcast(n: Node) -> Node:
    """f(bcast(c1), c2) -> bcast(f(c1, c2)): fold elementwise ops on broadcast constants."""
    if get_op(n.op).kind != "elementwise" or n.op == "kernel":
        return n
    smalls = [_small_const(i) for i in n.inputs]
    if any(s is None for s in smalls) or all(s is i for s, i in zip(smalls, n.inputs)):
        return n
    small = make(n.op, smalls, **dict(n.attrs))
    if small.size > MAX_FOLD_ELEMENTS or not can_evaluate(small):
        return n
    value = evaluate(small)
    return broadcast_to(const(value, n.dtype), n.shape)


def _through_iota(n: Node) -> Node:
    """f(..., iota, ...) with every other operand constant: f of the iota's value."""
    ins = [const(evaluate(i), i.dtype) if i.op == "iota" and i.size <= MAX_FOLD_ELEMENTS
           else i for i in n.inputs]
    if not all(i.op == "const" or _small_const(i) is not None for i in ins):
        return n
    folded = _fold(make(n.op, ins, **dict(n.attrs)))
    return folded if folded.op in ("const", "broadcast_to") else n


def _fold(n: Node) -> Node:
    if n.op not in ("iota", "broadcast_to") and any(i.op == "iota" for i in n.inputs):
        return _through_iota(n)
    if n.inputs and not all(i.op == "const" for i in n.inputs):
        return _fold_through_broadcast(n) if n.inputs else n
    if not n.inputs or n.op in ("broadcast_to", "iota") or n.size > MAX_FOLD_ELEMENTS:
        return n
    if not all(i.op == "const" for i in n.inputs) or not can_evaluate(n):
        return n
    value = evaluate(n)
    return const(value, n.dtype)


def fold_constants(outputs: list[Node]) -> list[Node]:
    return transform(outputs, _fold)
