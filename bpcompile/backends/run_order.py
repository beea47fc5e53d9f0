"""The order a backend runs a graph's nodes in: a topological order from the outputs.

The plain order is a depth-first walk from (loss, gradients in wrt order). For a graph with
checkpoint recomputation (ops/checkpoint.py) the gradients are walked in reverse: the last
params' gradients need only the top of the backward pass, so each block's recomputed values
are used and freed while the backward pass is at that block, instead of staying alive until
the walk reaches that gradient (32-block MLP: planned peak 34.0 -> 11.5 MiB, docs/memory.md).
"""

from __future__ import annotations

from ..ir.node import Node
from ..ir.traverse import toposort


def run_order(outputs: list[Node], extra: list[Node] | tuple = ()) -> list[Node]:
    """Every node reachable from `outputs` (then `extra`), each after its inputs."""
    order = toposort(list(outputs) + list(extra))
    if len(outputs) > 2 and any(n.op == "remat_barrier" for n in order):
        order = toposort([outputs[0], *reversed(outputs[1:]), *extra])
    return order
