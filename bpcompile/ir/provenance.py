"""Which forward node each adjoint node is the gradient of ("grad of" comments).

A side table like `node.NAMES`, never a node attribute, so interning and CSE are unchanged.
The reverse sweep records it for every node a VJP rule builds; `traverse.transform` carries it
to replacements the passes build; the Python-source emitter prints it on backward statements.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from .node import Node

# adjoint node -> the forward node whose VJP built it (values never reach their keys: a
# forward node is older than every node its VJP builds, so the weak keys can still die)
GRAD_OF: weakref.WeakKeyDictionary[Node, Node] = weakref.WeakKeyDictionary()

_PLAIN = (int, float, str, tuple, type(None))  # attribute values that are never sub-graphs


@runtime_checkable
class SubGraph(Protocol):
    """A node attribute holding a graph of its own (a scan's body)."""

    outputs: tuple


def record_grad_of(roots: Iterable[Node | None], forward: Node, since: int) -> None:
    """Mark every node reachable from `roots` built since serial `since` as an adjoint of
    `forward`; older nodes (interned hits shared with the forward pass) stay unmarked, and a
    node already marked (by a nested sweep, e.g. a scan body's) keeps its mark. Sub-graphs
    built here count too: a BPTT body's accumulators are the scan's gradient."""
    stack = [r for r in roots if r is not None]
    while stack:
        m = stack.pop()
        if m.serial < since or m in GRAD_OF:
            continue
        GRAD_OF[m] = forward
        stack.extend(m.inputs)
        for _, v in m.attrs:
            if not isinstance(v, _PLAIN) and isinstance(v, SubGraph):  # (a slow check)
                stack.extend(v.outputs)

# recomputed node -> the name of the checkpoint (ops/checkpoint.py) whose backward rebuilt it,
# so generated code shows rematerialisation as its own section
RECOMPUTED: weakref.WeakKeyDictionary[Node, str] = weakref.WeakKeyDictionary()


def recompute_labels(order, forward) -> dict:
    """node -> checkpoint name for the backward nodes of `order` that recompute forward values:
    a `remat_barrier` (its `name` attr) and any non-forward node whose inputs are all forward,
    const or recomputed, one at least recomputed. Read from the graph itself, so an interned
    node shared with an earlier compile cannot carry a stale label; RECOMPUTED fills in."""
    out: dict = {}
    for n in order:
        if n.op == "remat_barrier" and n not in forward:
            out[n] = n.attr("name") or RECOMPUTED.get(n, "block")
        elif n not in forward and n.inputs and n.op not in ("input", "param", "const"):
            got = [out[i] for i in n.inputs if i in out]
            if got and all(i in out or i in forward or i.op == "const" for i in n.inputs):
                out[n] = got[0]
            elif n in RECOMPUTED:
                out[n] = RECOMPUTED[n]
    return out
