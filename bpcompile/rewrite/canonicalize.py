"""Canonicalisation and CSE.

canonicalize: drop identities that only matter to autodiff (stop_gradient), turn division by
a constant into multiplication by its reciprocal, and put constants last in commutative ops.
cse: order commutative operands deterministically so re-interning merges a+b with b+a.
"""

from __future__ import annotations

import weakref
import zlib

from ..ir.node import Node, make
from ..ir.traverse import transform
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
    """Order commutative operands by a structural hash and re-intern. Idempotent: a node's hash
    does not depend on its commutative operands' order (they enter it sorted), so the order
    chosen here is chosen again on the result, and the simplify fixpoint stops after the round
    that confirms it. (Ranks by first appearance in a toposort changed with the order they
    chose: large graphs swapped operands back and forth every round.)"""
    keys = StructuralHash()

    def order_operands(n: Node) -> Node:
        if n.op in COMMUTATIVE and n.inputs[1].op != "const":
            a, b = n.inputs
            # constants last, as canonicalize puts them
            if a.op == "const" or keys.order(a) > keys.order(b):
                n = make(n.op, (b, a), **dict(n.attrs))
        keys.add(n)
        return n

    # Rebuilding re-interns every node: structurally identical subgraphs become one object.
    return transform(outputs, order_operands)


class StructuralHash:
    """Node -> (shallow signature, structural hash): the order cse gives commutative operands.

    Both are equal for a+b and b+a (commutative operands enter them sorted), and the same in
    every process (tuples of ints hash deterministically, strings would not, so a node's own
    part is a CRC of its text): the generated code, and so the on-disk cache, must not depend
    on the run. The signature (its own part, then 1, 2, ... SIGNATURE_DEPTH levels of ops,
    shapes and dtypes, no leaf names) is compared level by level before the hash, so identical
    layers order their operands alike (x1 @ W1 + b1 as x2 @ W2 + b2, although x2 is deeper
    than x1) and share one native kernel. Nodes are added in topological order (`transform`
    hands them over so); a node's key is a function of the node alone (nodes are immutable),
    so keys are kept, weakly, for the next round and the next compile."""

    _keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __getitem__(self, n: Node) -> tuple:
        return self._keys[n]

    def add(self, n: Node) -> tuple:
        key = self._keys.get(n)
        if key is not None:
            return key
        full = zlib.crc32(repr((n.op, n.attrs, n.shape, n.dtype)).encode())
        own = full
        if n.op in ("input", "param"):  # which leaf it is: the full hash's business only
            attrs = tuple(a for a in n.attrs if a[0] != "name")
            own = zlib.crc32(repr((n.op, attrs, n.shape, n.dtype)).encode())
        ins = [self._keys[i] for i in n.inputs]
        if n.op in COMMUTATIVE:
            ins.sort()
        sig = [own]
        for d in range(SIGNATURE_DEPTH):
            sig.append(hash((own, *(i[0][d] for i in ins))))
        self._keys[n] = key = (sig, hash((full, *(i[1] for i in ins))))
        return key

    def order(self, n: Node) -> tuple[int, ...]:
        """Leaves last (x @ W + b, as people write it: fewer nodes to rebuild), then the
        shallowest difference first: x @ W before b in every layer, whatever x is."""
        sig, full = self._keys[n]
        return (n.op in LEAVES, *sig, full)


LEAVES = frozenset({"input", "param", "const"})
SIGNATURE_DEPTH = 3
