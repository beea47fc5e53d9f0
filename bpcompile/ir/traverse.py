"""Graph traversal: topological order, consumers, leaves, and bottom-up rewriting."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterable, Iterator

from .node import LOCATION_OVERRIDE, NAMES, Node, next_serial, rebuild
from .provenance import GRAD_OF, RECOMPUTED


class _Memo(threading.local):
    """This thread's toposort memo: {outputs tuple: order} while `memoized()` is active, else
    None. Nodes are immutable, so a graph's order is a function of its outputs; the memo lives
    only for one compile because it keeps the graphs it saw alive."""

    def __init__(self) -> None:
        self.orders: dict[tuple, list[Node]] | None = None


_MEMO = _Memo()


@contextlib.contextmanager
def memoized() -> Iterator[None]:
    """Remember toposort results inside the block (`pipeline.run`: its passes sort the same
    graphs many times); reentrant, and the memo is dropped on leaving the outermost.

    The cyclic garbage collector pauses meanwhile: graphs are acyclic (reference counting
    frees them), and each full collection walks every live object, so on a graph of tens of
    thousands of nodes collections cost a fifth of the passes' time."""
    if _MEMO.orders is not None:
        yield
        return
    _MEMO.orders = {}
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        _MEMO.orders = None
        if paused:
            gc.enable()


def toposort(outputs: Iterable[Node]) -> list[Node]:
    """All nodes reachable from `outputs`, every node after its inputs (iterative DFS)."""
    orders = _MEMO.orders
    if orders is None:
        return _toposort(outputs)
    key = tuple(outputs)
    order = orders.get(key)
    if order is None:
        order = orders[key] = _toposort(key)
    return list(order)  # a copy: callers may edit theirs


def _toposort(outputs: Iterable[Node]) -> list[Node]:
    order, seen = [], set()
    for root in outputs:
        if root in seen:
            continue
        stack = [(root, False)]
        while stack:
            n, done = stack.pop()
            if done:
                order.append(n)
                continue
            if n in seen:
                continue
            seen.add(n)
            stack.append((n, True))
            for i in reversed(n.inputs):
                if i not in seen:
                    stack.append((i, False))
    return order


def consumers(order: list[Node]) -> dict[Node, list[Node]]:
    """Map each node to the nodes that use it (with multiplicity)."""
    users: dict[Node, list[Node]] = {n: [] for n in order}
    for n in order:
        for i in n.inputs:
            users[i].append(n)
    return users


def leaves(outputs: Iterable[Node], ops=("input", "param")) -> list[Node]:
    return [n for n in toposort(outputs) if n.op in ops]


def transform(
    outputs: list[Node],
    fn: Callable[[Node], Node] | None = None,
    build: Callable[[Node, dict[Node, Node]], Node] | None = None,
) -> list[Node]:
    """Rebuild the graph bottom-up; the one traversal every pass rebuilds through.

    Each node is built by `build(n, memo)` (memo: old node -> its new node, filled for n's
    inputs and everything before n; default: `n` on its new inputs), then passed to `fn`, which
    returns its replacement (or the node itself). Nodes made meanwhile take n's source line, so
    generated code keeps pointing at the user's line. Names given with `.named()` carry over to
    the replacement when it has none of its own, and so does an adjoint's forward node
    (provenance.GRAD_OF) to a replacement built here (an older node, possibly a forward one,
    keeps its own).
    """
    memo: dict[Node, Node] = {}
    since = next_serial()
    push, pop = LOCATION_OVERRIDE.append, LOCATION_OVERRIDE.pop  # bound once: a hot loop
    for n in toposort(outputs):
        start = next_serial()
        push(n.where)  # nodes a rewrite creates keep the user's line
        try:
            new = build(n, memo) if build else rebuild(n, [memo[i] for i in n.inputs])
            if fn is not None:
                new = fn(new)
        finally:
            pop()
        if new is n:  # the common case: nothing to carry over
            memo[n] = n
            continue
        if n in NAMES and new not in NAMES and new.op not in ("input", "param"):
            NAMES[new] = NAMES[n]
        if new.serial > since and n in GRAD_OF and new not in GRAD_OF:
            GRAD_OF[new] = GRAD_OF[n]
            _mark_grad_of(new.inputs, GRAD_OF[n], start)
        if new.serial > since and n in RECOMPUTED and new not in RECOMPUTED:
            RECOMPUTED[new] = RECOMPUTED[n]
        memo[n] = new
    return [memo[o] for o in outputs]


def _mark_grad_of(built: Iterable[Node], forward: Node, start: int) -> None:
    """Mark the nodes a replacement was built from (serial > start: made while rebuilding)
    that have no forward node of their own as gradients of `forward`, so every statement of
    a rewritten backward pass still names the forward node it differentiates."""
    stack = list(built)
    while stack:
        m = stack.pop()
        if m.serial <= start or m in GRAD_OF or m.op in ("input", "param", "const"):
            continue
        GRAD_OF[m] = forward
        stack.extend(m.inputs)
