"""The one rewrite engine: rules are data, (name, pattern, replacement), as in tinygrad's
PatternMatcher and PyTensor's named rewrites.

A pattern (`Pat`) matches a node by op name(s), input sub-patterns and a predicate on the node
(attributes, constants, shapes), and binds nodes to names; a name bound twice must bind the same
node. A replacement is a function `(n, **bindings) -> Node | None` of the matched root `n`;
returning None means "no rewrite here" and the next rule is tried. Rules are tried in order and
the first that rewrites wins. Every rewrite of a graph runs one bounded fixpoint (`FIXPOINT`):
bottom-up, each node is rewritten until no rule applies, the nodes a replacement builds
included, so one pass over the graph settles it (another runs only past the bound). Hits are
counted per rule name while `counting()` is active (`fn.stats()`).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..ir.node import Node, rebuild
from ..ir.traverse import transform
from .patterns import is_scalar

# The one bound on every rewrite fixpoint: rewrites of one node, and passes over a graph.
FIXPOINT = 16

_COUNTERS: list[Counter] = []  # hit counters of the active `counting()` blocks, innermost last


@contextlib.contextmanager
def counting() -> Iterator[Counter]:
    """Collect {rule name: hits} of every rewrite inside the block."""
    hits: Counter = Counter()
    _COUNTERS.append(hits)
    try:
        yield hits
    finally:
        _COUNTERS.pop()


def record(name: str) -> None:
    """Count one hit of the rule `name` (also used by rewrites of SymPy kernel bodies)."""
    if _COUNTERS:
        _COUNTERS[-1][name] += 1


class Pat:
    """A node pattern: `op` (a name, a tuple of names, or None for any op), `src` (input
    sub-patterns, matched position by position; None: any inputs), `where` (a predicate on
    the node) and `name` (bind the node under this name)."""

    __slots__ = ("ops", "src", "where", "name")

    def __init__(self, op=None, *src: Pat, name: str | None = None, where=None):
        self.ops = (op,) if isinstance(op, str) else op
        self.src = src or None
        self.where = where
        self.name = name

    def match(self, n: Node, b: dict) -> bool:
        if self.ops is not None and n.op not in self.ops:
            return False
        if self.src is not None:
            if len(n.inputs) != len(self.src):
                return False
            for p, i in zip(self.src, n.inputs):  # a loop, not all(): this is the hot path
                if not p.match(i, b):
                    return False
        if self.where is not None and not self.where(n):
            return False
        if self.name is not None:
            if self.name in b:
                return b[self.name] is n
            b[self.name] = n
        return True


def X(name: str = "x", where=None) -> Pat:
    """Any node, bound to `name`."""
    return Pat(None, name=name, where=where)


def C(value=None, name: str | None = None, rank0: bool = False) -> Pat:
    """A constant whose elements all equal `value` (any value if None); rank0: a 0-d one."""
    return Pat(None, name=name, where=lambda n: is_scalar(n, value) and (not rank0 or n.ndim == 0))


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: Pat
    replace: Callable[..., Node | None]


class Rules:
    """An ordered rule list applied by the engine; `rules(outputs)` rewrites a graph."""

    def __init__(self, name: str, rules: list[Rule]):
        self.name = name
        self.rules = list(rules)
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate rule names in {name}: {names}")
        self._by_op: dict[str, list[Rule]] = {}

    def _for(self, op: str) -> list[Rule]:
        rs = self._by_op.get(op)
        if rs is None:  # rules that can match `op`, in their declared order
            rs = [r for r in self.rules if r.pattern.ops is None or op in r.pattern.ops]
            self._by_op[op] = rs
        return rs

    def _replace(self, n: Node) -> tuple[str, Node] | None:
        for r in self._for(n.op):
            b: dict = {}
            if r.pattern.match(n, b):
                new = r.replace(n, **b)
                if new is not None and new is not n:
                    return r.name, new
        return None

    def rewrite_once(self, n: Node) -> Node | None:
        """The first rule's replacement of `n`, or None when no rule rewrites it."""
        hit = self._replace(n)
        if hit is None:
            return None
        record(f"{self.name}.{hit[0]}")
        return hit[1]

    def rewrite_node(self, n: Node) -> Node:
        """`n` rewritten at its root until no rule applies (bounded)."""
        for _ in range(FIXPOINT):
            new = self.rewrite_once(n)
            if new is None:
                return n
            n = new
        return n

    def __call__(self, outputs: list[Node]) -> list[Node]:
        """The graph rewritten bottom-up until no rule applies anywhere (bounded).

        Every node is rewritten after its inputs; the nodes a replacement builds (the `a*b` of
        `-(a*b)`) are rewritten at once, before the replacement's own root is tried again. A
        pass that leaves something unsettled (only past the bound) is followed by another."""
        for _ in range(FIXPOINT):
            normal: set[Node] = set()  # nodes no rule rewrites
            stale = False

            def build(n: Node, memo: dict) -> Node:
                nonlocal stale
                new, settled = self._settle(rebuild(n, [memo[i] for i in n.inputs]), normal)
                stale = stale or not settled
                return new

            outputs = transform(outputs, build=build)
            if not stale:
                return outputs
        return outputs

    def _settle(self, n: Node, normal: set[Node], depth: int = 0) -> tuple[Node, bool]:
        """(`n` rewritten, with every node a replacement built rewritten too; whether that
        finished within the bound)."""
        if n in normal:
            return n, True
        ok = True
        for _ in range(FIXPOINT):
            new = self.rewrite_node(n)
            if new is n and all(i in normal for i in n.inputs):  # the common case: no rule
                normal.add(n)
                return n, ok
            if depth >= FIXPOINT:
                return new, False
            ins = []
            for i in new.inputs:
                j, fine = self._settle(i, normal, depth + 1)
                ins.append(j)
                ok = ok and fine
            settled = rebuild(new, ins)
            if settled is new or self._replace(settled) is None:
                normal.add(settled)
                return settled, ok
            n = settled
        return n, False


def rule(name: str, pattern: Pat, replace: Callable[..., Node | None]) -> Rule:
    return Rule(name, pattern, replace)
