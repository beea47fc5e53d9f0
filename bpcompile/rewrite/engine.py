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

Two pattern forms serve rules that commit to a structure, such as a backend's own rules
(backends/<name>/rules.py): `Pat(..., commute=True)` matches a binary op's inputs in either
order (the given order first) and `p | q` matches whichever alternative matches first. A
predicate may ask `used_once(n)`: whether n has exactly one reader in the graph being rewritten,
so that folding n into that reader leaves nobody else reading it.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..ir.node import Node, rebuild
from ..ir.traverse import toposort, transform
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
    the node), `name` (bind the node under this name) and `commute` (two sub-patterns that
    may match the inputs in either order, the given one tried first)."""

    __slots__ = ("ops", "src", "where", "name", "commute")

    def __init__(self, op=None, *src: Pat, name: str | None = None, where=None,
                 commute: bool = False):
        if commute and len(src) != 2:
            raise ValueError("commute=True needs exactly two input patterns")
        self.ops = (op,) if isinstance(op, str) else op
        self.src = src or None
        self.where = where
        self.name = name
        self.commute = commute

    def match(self, n: Node, b: dict) -> bool:
        if self.ops is not None and n.op not in self.ops:
            return False
        if self.src is not None:
            if len(n.inputs) != len(self.src):
                return False
            if self.commute:
                if not _first_match(((self.src, n.inputs), (self.src, n.inputs[::-1])), b):
                    return False
            else:
                for p, i in zip(self.src, n.inputs):  # a loop, not all(): the hot path
                    if not p.match(i, b):
                        return False
        if self.where is not None and not self.where(n):
            return False
        if self.name is not None:
            if self.name in b:
                return b[self.name] is n
            b[self.name] = n
        return True

    def __or__(self, other: Pat) -> Pat:
        return AnyOf(self, other)


class AnyOf(Pat):
    """The first of several alternative patterns that matches (`p | q`)."""

    __slots__ = ("alternatives",)

    def __init__(self, *alternatives: Pat):
        ops = [p.ops for p in alternatives]
        super().__init__(None if None in ops else tuple(o for os in ops for o in os))
        self.alternatives = alternatives

    def match(self, n: Node, b: dict) -> bool:
        return _first_match((((p,), (n,)) for p in self.alternatives), b)


def _first_match(tries, b: dict) -> bool:
    """Match the first (patterns, nodes) pair of `tries` that matches, position by position;
    a failed try leaves no bindings behind in `b`."""
    for pats, nodes in tries:
        trial = dict(b)
        if all(p.match(i, trial) for p, i in zip(pats, nodes)):
            b.update(trial)
            return True
    return False


class _Readers:
    """Readers of each node of the graph one `Rules` call rewrites (an appearance among the
    outputs counts as one), counted when first asked for. A node built in place of an original
    one (rebuilt on new inputs, or its replacement) has the original's count: its readers are
    the original's readers, rebuilt."""

    def __init__(self, outputs: list[Node]):
        self.outputs = outputs
        self.origin: dict[Node, Node | None] = {}  # None: stands for two originals
        self._counts: Counter | None = None
        self.asked = False  # whether a rule asked used_once: then results depend on the graph

    def note(self, original: Node, new: Node) -> None:
        if new is not original:
            self.origin[new] = original if new not in self.origin else None

    def of(self, n: Node) -> int | None:
        """n's readers, or None when unknown (a node a replacement built, or one that merged
        with another)."""
        if self._counts is None:
            counts = Counter(self.outputs)
            for m in toposort(self.outputs):
                counts.update(m.inputs)
            self._counts = counts
        o = self.origin.get(n, n)
        if o is None or (o is not n and n in self._counts) or o not in self._counts:
            return None
        return self._counts[o]


class _Active(threading.local):
    """The graphs of this thread's active `Rules` calls, innermost last (per thread: two
    threads compiling at once must not see each other's graph)."""

    def __init__(self) -> None:
        self.stack: list[_Readers] = []


_READERS = _Active()


def used_once(n: Node) -> bool:
    """Whether `n` has exactly one reader (and is no output) in the graph being rewritten;
    False outside a `Rules` call and for nodes whose readers are unknown."""
    stack = _READERS.stack
    if not stack:
        return False
    stack[-1].asked = True
    return stack[-1].of(n) == 1


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
        # Nodes no rule rewrites, nor any node below them, found by earlier calls whose rules
        # never asked used_once (so the finding holds in any graph): the simplify rounds and
        # the forward part of a gradient graph are not matched again. Weak: no graph is kept.
        self._known: weakref.WeakSet[Node] = weakref.WeakSet()

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
        known = self._known
        for _ in range(FIXPOINT):
            normal: set[Node] = set()  # nodes no rule rewrites
            doubtful: set[Node] = set()  # in `normal` only because a bound was reached
            stale = False
            readers = _Readers(outputs)

            def build(n: Node, memo: dict) -> Node:
                nonlocal stale
                m = rebuild(n, [memo[i] for i in n.inputs])
                if m in known:
                    normal.add(m)
                new, settled = self._settle(m, normal, doubtful)
                stale = stale or not settled
                readers.note(n, new)
                return new

            _READERS.stack.append(readers)
            try:
                outputs = transform(outputs, build=build)
            finally:
                _READERS.stack.pop()
            if not readers.asked:
                known.update(normal - doubtful if doubtful else normal)
            if not stale:
                return outputs
        return outputs

    def _settle(self, n: Node, normal: set[Node], doubtful: set[Node],
                depth: int = 0) -> tuple[Node, bool]:
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
                j, fine = self._settle(i, normal, doubtful, depth + 1)
                ins.append(j)
                ok = ok and fine
            settled = rebuild(new, ins)
            if settled is new or self._replace(settled) is None:
                normal.add(settled)
                if settled is new or not ok:  # maybe left rewritable by a bound: unproven
                    doubtful.add(settled)
                return settled, ok
            n = settled
        return n, False


def rule(name: str, pattern: Pat, replace: Callable[..., Node | None]) -> Rule:
    return Rule(name, pattern, replace)


@dataclass(frozen=True)
class BackendRules:
    """A backend's own rule list (backends/<name>/rules.py), which the pipeline runs after the
    shared passes on the graph the backend lowers and, with `bodies`, on every scan body (for a
    backend that lowers bodies like any graph)."""

    rules: Rules
    bodies: bool = True
