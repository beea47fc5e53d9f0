"""`memory_budget=`: choose which segments of the forward pass to recompute (bp.checkpoint) so
the planned peak fits a byte budget.

Segments: the forward graph in topological order is cut at nodes that every later node reaches
only through them (no activation computed before a cut is read after it: a residual block's
output, each layer of a chain). Checkpointing a segment stores only its input and recomputes the
rest in the backward pass. The search checkpoints the segments holding the most activation
bytes first and bisects on how many, measuring each choice's planned peak with the caller's
`peak` function; the result is the fewest recomputed segments (a greedy choice, not yet the
min-cut / DP optimum: docs/memory.md lists what is left).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from .errors import BPError
from .ir.node import Node, make, rebuild
from .ir.traverse import leaves, toposort, transform
from .ops.checkpoint import frontier

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20,
          "gib": 2**30}


class InfeasibleBudget(BPError):
    """No choice of recomputed segments fits; `need` is the smallest planned peak found and
    `marked` the loss with every segment recomputed."""

    def __init__(self, msg: str, need: int, marked: Node):
        super().__init__(msg)
        self.need, self.marked = need, marked


def parse_budget(budget: int | str) -> int:
    """Bytes from an int or a string such as "64MB", "1.5GiB", "300kB"."""
    if isinstance(budget, (int, np.integer)) and not isinstance(budget, bool):
        if budget <= 0:
            raise ValueError(f"memory_budget must be positive, got {budget}")
        return int(budget)
    if isinstance(budget, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", budget)
        if m and m.group(2).lower() in _UNITS and float(m.group(1)) > 0:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ValueError(f"memory_budget must be a positive int of bytes or a string like '64MB' "
                     f"or '1.5GiB', got {budget!r}")


def segments(loss: Node) -> list[tuple[Node, int]]:
    """The cut nodes of the forward graph, in order, each with the activation bytes strictly
    inside the segment it ends."""
    order = toposort([loss])
    inputs = set(leaves([loss], ops=("input",)))
    act = set(inputs)
    for n in order:
        if n not in act and any(i in act for i in n.inputs):
            act.add(n)
    seq = [n for n in order if n in act and n not in inputs]
    pos = {n: k for k, n in enumerate(seq)}
    last = {n: pos.get(n, -1) for n in act}
    for n in seq:
        for i in n.inputs:
            if i in last:
                last[i] = max(last[i], pos[n])
    cuts, inside = [], 0
    reach = max((last[x] for x in inputs), default=-1)  # an input read later spans the cut
    for k, n in enumerate(seq):
        if reach <= k and inside and n is not loss and n.results is None and n.ndim:
            cuts.append((n, inside))
            inside = 0
        else:
            inside += n.size * np.dtype(n.dtype).itemsize if n.results is None else 0
        reach = max(reach, last[n])
    return cuts


def with_checkpoints(loss: Node, chosen: set[Node], cut_order: list[Node]) -> Node:
    """`loss` with each chosen cut node marked as a checkpoint of the segment it ends."""
    if not chosen:
        return loss
    prev: dict[Node, list[Node]] = {}
    before: list[Node] = leaves([loss], ops=("input",))
    for c in cut_order:
        prev[c] = before
        before = [c]

    def build(n: Node, memo: dict[Node, Node]) -> Node:
        new = rebuild(n, [memo[i] for i in n.inputs])
        if n in chosen:
            args = [memo[a] for a in prev[n]]
            front = frontier([new], args)
            if front:
                new = make("remat", (new, *front), name="segment", policy=None)
        return new

    (out,) = transform([loss], build=build)
    return out


def fit_budget(loss: Node, budget: int, peak: Callable[[Node], int]) -> tuple[Node, dict]:
    """(loss with checkpoints, report) for the fewest recomputed segments whose planned peak
    is <= budget; BPError naming the smallest feasible budget when none is."""
    cuts = segments(loss)
    order = [c for c, _ in cuts]
    ranked = [c for c, _ in sorted(cuts, key=lambda cb: -cb[1])]
    inside = dict(cuts)
    cache: dict[int, tuple[Node, int]] = {}

    def trial(m: int) -> tuple[Node, int]:
        if m not in cache:
            marked = with_checkpoints(loss, set(ranked[:m]), order)
            cache[m] = (marked, peak(marked))
        return cache[m]

    lo, hi = 0, len(ranked)
    if trial(hi)[1] > budget:
        need = min(trial(hi)[1], trial(0)[1])
        raise InfeasibleBudget(f"memory_budget={budget} bytes is infeasible: the smallest "
                               f"planned peak is {need} bytes ({len(ranked)} segments, all "
                               f"recomputed); give memory_budget >= {need}", need, trial(hi)[0])
    while lo < hi:  # the fewest recomputed segments that fit
        mid = (lo + hi) // 2
        if trial(mid)[1] <= budget:
            hi = mid
        else:
            lo = mid + 1
    marked, planned = trial(lo)
    report = {"budget_bytes": budget, "planned_peak_bytes": planned,
              "unconstrained_peak_estimate_bytes": trial(0)[1], "segments": len(ranked),
              "recomputed_segments": lo,
              "recomputed_bytes": int(sum(inside[c] for c in ranked[:lo])),
              "ranked": ranked, "order": order, "inside": inside}
    return marked, report
