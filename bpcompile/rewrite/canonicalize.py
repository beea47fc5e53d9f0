"""Canonicalisation and CSE.

canonicalize: drop identities that only matter to autodiff (stop_gradient), turn division by
a constant into multiplication by its reciprocal, and put constants last in commutative ops.
cse: merge a+b with b+a (interning merges every other duplicate when a node is made).
"""

from __future__ import annotations

from ..ir.node import Node, lookup, make, rebuild
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
    """Merge commuted spellings (a+b with b+a) and put constants last in commutative ops.

    Nodes are interned (ir/node.py), so structurally equal nodes are one object already but
    for the operand order of commutative ops: of two distinct equal nodes, a lowest pair has
    the same inputs in swapped order, so the one duplicates a graph can hold start at a node
    whose swapped twin is in the graph too. With none (the usual graph: operands in the
    order the program built them) the graph is returned as it is, not rebuilt; else each
    node is rebuilt on its merged inputs and a twin met earlier in topological order stands
    for it. The result is the program's own order (so identical layers keep one order and
    share kernels, and no hash seed enters the generated code), and cse of it is itself."""
    order = toposort(outputs)
    present = set(order)
    if not any(_needs_cse(n, present) for n in order):
        return outputs
    made: set[Node] = set()

    def build(n: Node, memo: dict) -> Node:
        new = rebuild(n, [memo[i] for i in n.inputs])
        if new.op in COMMUTATIVE:
            a, b = new.inputs
            if a.op == "const" and b.op != "const":  # constants last, as canonicalize does
                new = make(new.op, (b, a), **dict(new.attrs))
            else:
                twin = swapped(new)
                if twin is not None and twin in made:
                    new = twin
        made.add(new)
        return new

    return transform(outputs, build=build)


def swapped(n: Node) -> Node | None:
    """The interned node `n.op(b, a)` for `n = n.op(a, b)`, if one exists."""
    a, b = n.inputs
    return None if a is b else lookup(n.op, (b, a), n.attrs)


def _needs_cse(n: Node, present: set) -> bool:
    if n.op not in COMMUTATIVE:
        return False
    if n.inputs[0].op == "const" and n.inputs[1].op != "const":
        return True
    twin = swapped(n)
    return twin is not None and twin in present
