"""Graph traversal: topological order, consumers, leaves, and bottom-up rewriting."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .node import LOCATION_OVERRIDE, NAMES, Node, rebuild


def toposort(outputs: Iterable[Node]) -> list[Node]:
    """All nodes reachable from `outputs`, every node after its inputs (iterative DFS)."""
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


def transform(outputs: list[Node], fn: Callable[[Node], Node]) -> list[Node]:
    """Rebuild the graph bottom-up: each node gets rebuilt on transformed inputs, then `fn`.

    `fn` receives the rebuilt node and returns its replacement (or the node itself). Names given
    with `.named()` carry over to the replacement when it has none of its own.
    """
    memo: dict[Node, Node] = {}
    for n in toposort(outputs):
        LOCATION_OVERRIDE.append(n.where)  # nodes a rewrite creates keep the user's line
        try:
            new = fn(rebuild(n, [memo[i] for i in n.inputs]))
        finally:
            LOCATION_OVERRIDE.pop()
        if new is not n and n in NAMES and new not in NAMES and new.op not in ("input", "param"):
            NAMES[new] = NAMES[n]
        memo[n] = new
    return [memo[o] for o in outputs]
