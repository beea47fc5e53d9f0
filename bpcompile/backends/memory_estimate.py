"""Bytes live at each step of a graph run in topological order: the memory timeline of a
backend without a static memory plan (NumPy, JAX), as an estimate.

Each computed node allocates its result when it runs and frees it after its last reader
(outputs live to the end); a loop node (scan, while) adds its body's own estimated peak while
it runs; view ops (reshape, transpose, broadcast_to, slice and the autodiff
identities) allocate nothing and keep their base alive. Arguments and constants are not
counted. The NumPy backend allocates about this (plus transient temporaries inside one
expression); XLA plans its own buffers, so for JAX this is the graph's order, not XLA's.
"""

from __future__ import annotations

import numpy as np

from ..ir.node import Node
from ..ir.provenance import RECOMPUTED
from ..ir.traverse import toposort
from .run_order import run_order

VIEWS = ("reshape", "transpose", "broadcast_to", "slice", "stop_gradient", "remat",
         "remat_barrier", "result")


def _nbytes(n: Node) -> int:
    if n.results is not None:
        return sum(int(np.prod(s, dtype=np.int64)) * np.dtype(d).itemsize for s, d in n.results)
    return n.size * np.dtype(n.dtype).itemsize


def phase(n: Node, forward: set) -> str:
    """forward, recompute (a checkpoint's rematerialisation) or backward."""
    if n in forward:
        return "forward"
    return "recompute" if n in RECOMPUTED else "backward"


def estimate_timeline(outputs: list[Node]) -> list[dict]:
    """One entry per computed node in run order: step, op, phase, bytes it allocates and
    bytes live while it runs (its inputs and every value still needed later)."""
    order = [n for n in run_order(outputs) if n.op not in ("input", "param", "const")]
    forward = set(toposort(outputs[:1]))
    base: dict[Node, Node] = {}
    for n in order:
        if n.op in VIEWS and n.inputs:
            b = base.get(n.inputs[0], n.inputs[0])
            base[n] = b
    last: dict[Node, int] = {}
    for k, n in enumerate(order):
        for i in n.inputs:
            b = base.get(i, i)
            last[b] = max(last.get(b, -1), k)
    end = len(order)
    for o in outputs:
        b = base.get(o, o)
        last[b] = end
    frees: dict[int, int] = {}
    bodies: dict[int, int] = {}
    live, out = 0, []
    for k, n in enumerate(order):
        alloc = 0 if n in base else _nbytes(n)
        live += alloc
        inner = _body_peak(n, bodies)  # a loop body's workspace, live only while it runs
        out.append({"step": k, "op": n.op, "name": n.name or n.op, "phase": phase(n, forward),
                    "alloc_bytes": alloc, "live_bytes": live + inner})
        if alloc:
            frees[last.get(n, k)] = frees.get(last.get(n, k), 0) + alloc
        live -= frees.pop(k, 0)
    return out


def _body_peak(n: Node, memo: dict[int, int]) -> int:
    """Peak bytes of the graphs a loop node runs (scan / while bodies: attrs with `outputs`),
    estimated the same way, recursively; 0 for other nodes."""
    peak = 0
    for _, v in n.attrs:
        outs = getattr(v, "outputs", None)
        if not isinstance(outs, tuple) or not outs or not all(isinstance(o, Node) for o in outs):
            continue
        if id(v) not in memo:
            rows = estimate_timeline(list(outs))
            memo[id(v)] = max((r["live_bytes"] for r in rows), default=0)
        peak = max(peak, memo[id(v)])
    return peak


def node_flops(n: Node) -> int:
    """A node's FLOPs: 2·m·n·k for a matmul, one per element otherwise (views: none)."""
    if n.op in VIEWS or n.op in ("input", "param", "const"):
        return 0
    if n.op == "matmul":
        return 2 * n.size * n.inputs[0].shape[-1]
    return n.size


def recompute_cost(outputs: list[Node]) -> dict:
    """What checkpoint recomputation adds to the backward pass: bytes of the recomputed values
    (those not views) and their FLOPs (2·m·n·k per matmul, one per element otherwise)."""
    nbytes = flops = 0
    for n in toposort(outputs):
        if n not in RECOMPUTED or n.op in VIEWS:
            continue
        nbytes += _nbytes(n)
        flops += node_flops(n)
    return {"recomputed_bytes": nbytes, "recompute_flops": flops}
