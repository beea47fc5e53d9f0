"""`memory_budget=`: choose which segments of the forward pass to recompute (bp.checkpoint) so
the planned peak fits a byte budget, with the least recompute FLOPs.

Segments: the forward graph in topological order is cut at nodes that every later node reaches
only through them (no activation computed before a cut is read after it: a residual block's
output, each layer of a chain). A group of consecutive segments is checkpointed by one `remat`
mark from the cut before it to its last cut: the forward keeps that cut only, the backward
recomputes the group. budget_dp.py chooses the groups (stored, recomputed, or recomputed with
each segment checkpointed again inside) by dynamic programming on a calibrated model; every
plan is checked with the caller's `peak` (the NumPy estimate or the target's own plan).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np

from .backends.memory_estimate import node_flops
from .budget_dp import Chain, Group, Planner
from .errors import BPError
from .ir.node import Node, make, rebuild
from .ir.traverse import leaves, toposort, transform
from .ops.checkpoint import frontier

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20,
          "gib": 2**30}


DOTS = (-2, -2)  # marks a plan's key as its dots_saveable twin (no real group is (-2, -2))
DOTS_TRIALS = 4  # dots_saveable twins measured per search


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
    return [(c, b) for c, b, _ in segment_table(loss)]


def segment_table(loss: Node) -> list[tuple[Node, int, int]]:
    """(cut node, activation bytes strictly inside its segment, forward FLOPs of the segment
    with the cut) for each segment, in order.

    Scalars read late do not block a cut: with parallel branches whose terms are summed into
    the loss (multi-task heads, regularisers), the branches then form one chain, each later
    branch's layers cut like the first's, instead of one tail region nothing recomputes."""
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
    cuts, inside, flops = [], 0, 0
    reach = -1  # (inputs are arguments, kept anyway: one read late spans no cut)
    for k, n in enumerate(seq):
        flops += node_flops(n)
        if reach <= k and inside and n is not loss and n.results is None and n.ndim:
            cuts.append((n, inside, flops))
            inside = flops = 0
        else:
            inside += n.size * np.dtype(n.dtype).itemsize if n.results is None and n.ndim else 0
        if n.ndim or n.results is not None:  # a scalar read late (one branch's term of a
            reach = max(reach, last[n])  # summed loss) stays alive whatever is recomputed
    return cuts


def _groups_of(plan: tuple[Group, ...]) -> list[tuple[int, int]]:
    """with_groups intervals of a DP plan (cut index -1: the inputs)."""
    out = []
    for s, e, kind in plan:
        if kind != "store":
            out.append((s - 1, e))
        if kind == "nested":
            out += [(i - 1, i) for i in range(s, e + 1)]
    return out


def with_checkpoints(loss: Node, chosen: set[Node], cut_order: list[Node]) -> Node:
    """`loss` with each chosen cut node marked as a checkpoint of the segment it ends."""
    pos = {c: k for k, c in enumerate(cut_order)}
    return with_groups(loss, [(pos[c] - 1, pos[c]) for c in chosen], cut_order)


def with_groups(loss: Node, groups: list[tuple[int, int]], cut_order: list[Node],
                policy: str | None = None) -> Node:
    """`loss` with each group (s, e) of cut indices checkpointed: the region from cut s (-1: the
    graph's inputs) to cut e keeps only cut s and recomputes the rest in the backward pass.
    Groups nest (a laminar family): the inner marks are recomputed again inside the outer.
    `policy` (bp.checkpoint's, e.g. "dots_saveable") is what each group may still save."""
    if not groups:
        return loss
    ends: dict[Node, list[int]] = {}
    for s, e in sorted(set(groups), key=lambda g: -g[0]):  # inner (later start) first
        ends.setdefault(cut_order[e], []).append(s)
    inputs = leaves([loss], ops=("input",))

    def build(n: Node, memo: dict[Node, Node]) -> Node:
        new = rebuild(n, [memo[i] for i in n.inputs])
        for s in ends.get(n, ()):
            args = inputs if s < 0 else [memo[cut_order[s]]]
            front = frontier([new], [memo.get(a, a) for a in args])
            if front:
                new = make("remat", (new, *front), name="segment", policy=policy)
        return new

    (out,) = transform([loss], build=build)
    return out


def fit_budget(loss: Node, budget: int, peak: Callable[[Node], int | tuple[int, int]],
               sweep: int = 10) -> tuple[Node, dict]:
    """(loss with checkpoints, report) with the least recompute FLOPs among the plans tried
    whose planned peak is <= budget; InfeasibleBudget naming the smallest planned peak found
    when none is. `peak(marked)` gives the planned peak, or (peak, recompute FLOPs measured
    on the built graph), which then ranks the plans instead of the model's FLOPs (the model
    counts a group's every op; the backward may not need all of them, e.g. a block's last
    matmul, whose output is the kept cut).

    The DP (budget_dp.py) plans on a model calibrated by two real peaks (nothing recomputed,
    every segment recomputed). Its plans for `sweep` model budgets spread from the model's
    least peak to the plain peak, and Chen et al.'s uniform groups (2, 3, √n, 2√n segments),
    are always measured (so the smallest feasible budget named in the error does not depend
    on the budget asked for), then bisection on the model budget refines between the largest
    fitting model budget and the next one up."""
    table = segment_table(loss)
    order = [c for c, _, _ in table]
    n = len(order)
    tried: dict[tuple[tuple[int, int], ...], tuple[Node, int]] = {}
    measured: dict[tuple[tuple[int, int], ...], int] = {}

    def trial(groups: list[tuple[int, int]], policy: str | None = None) -> int:
        key = tuple(sorted(set(groups))) + ((DOTS,) if policy else ())
        if key not in tried:
            marked = with_groups(loss, [g for g in key if g != DOTS], order, policy)
            got = peak(marked)
            if isinstance(got, tuple):
                got, measured[key] = got
            tried[key] = (marked, int(got))
        return tried[key][1]

    def flops(key) -> int:  # measured, else the model's: each interval recomputes its segments
        if key in measured:
            return measured[key]
        return sum(table[i][2] for s, e in key for i in range(s + 1, e + 1))

    p0 = trial([])
    if p0 <= budget:
        return loss, _report(budget, p0, p0, table, ())
    if n == 0:
        raise InfeasibleBudget(f"memory_budget={budget} bytes is infeasible: the graph has no "
                               f"segment to recompute; its planned peak is {p0} bytes; give "
                               f"memory_budget >= {p0}", p0, loss)
    act = [float(b) for _, b, _ in table]
    cut = [float(c.size * np.dtype(c.dtype).itemsize) for c in order]
    p1 = trial([(i - 1, i) for i in range(n)])
    amax, atot = max(act), sum(act)
    alpha = max(0.05, (p0 - p1) / (atot - amax)) if atot > amax else 1.0
    flo = [float(f) for _, _, f in table]
    every = tuple(sorted((i - 1, i) for i in range(n)))
    # the share of a segment's FLOPs its own recomputation skips, from the measured plan
    tau = min(0.9, max(0.0, 1 - measured[every] / sum(flo))) if every in measured else 0.0
    planner = Planner(Chain(tuple(alpha * a for a in act), tuple(cut), tuple(flo),
                            p1 - sum(cut) - alpha * amax, tuple(tau * f for f in flo)))

    def at(model_budget: float) -> bool:
        plan = planner.plan(model_budget)
        return plan is not None and trial(_groups_of(plan)) <= budget

    root = math.isqrt(n) + 1
    for size in sorted({2, 3, root, 2 * root}):  # Chen et al.'s uniform groups: the floor
        if size < n:
            trial([(j - 1, min(j + size, n) - 1) for j in range(0, n, size)])
    lo, hi = planner.least_peak(), float(max(p0, budget))
    grid = [lo + (hi - lo) * k / (sweep - 1) for k in range(sweep)]
    fits = [mb for mb in grid if at(mb)]
    if fits:  # refine: the largest model budget whose plan still fits
        a = max(fits)
        b = min((mb for mb in grid if mb > a), default=a)
        for _ in range(5):
            mid = (a + b) / 2
            a, b = (mid, b) if at(mid) else (a, mid)
    fitting = [k for k, (_, pk) in tried.items() if pk <= budget]
    if fitting and measured:  # the same groups saving matmul outputs (AOTAutograd's default):
        # more memory than recomputing them, far fewer FLOPs; a dots plan can only fit where
        # its all-recomputing twin does, so try the twins of the fitting plans with most room
        for k in sorted(fitting, key=lambda k: tried[k][1])[:DOTS_TRIALS]:
            if k and trial(list(k), "dots_saveable") <= budget:
                fitting.append(k + (DOTS,))
    if not fitting:
        need, key = min((pk, k) for k, (_, pk) in tried.items())
        raise InfeasibleBudget(f"memory_budget={budget} bytes is infeasible: the smallest "
                               f"planned peak found is {need} bytes ({n} segments); give "
                               f"memory_budget >= {need}", need, tried[key][0])
    key = min(fitting, key=lambda k: (flops(k), tried[k][1]))
    rep = _report(budget, tried[key][1], p0, table, tuple(g for g in key if g != DOTS))
    rep["policy"] = "dots_saveable" if DOTS in key else "nothing_saveable"
    if key in measured:
        rep["recompute_flops"] = measured[key]
    return tried[key][0], rep


def _report(budget: int, planned: int, p0: int, table, key) -> dict:
    """What memory_budget= chose: recompute groups (intervals of segments, an inner one when
    inside another: nested), segments recomputed, their bytes and modelled FLOPs."""
    nested = [g for g in key if any(o != g and o[0] <= g[0] and g[1] <= o[1] for o in key)]
    segs = [i for s, e in key for i in range(s + 1, e + 1)]
    return {"budget_bytes": budget, "planned_peak_bytes": planned,
            "unconstrained_peak_estimate_bytes": p0, "segments": len(table),
            "recompute_groups": len(key) - len(nested), "nested_groups": len(nested),
            "recomputed_segments": len(set(segs)),
            "recomputed_bytes": int(sum(table[i][1] for i in set(segs))),
            "recompute_flops_model": int(sum(table[i][2] for i in segs)),
            "groups": [list(g) for g in key]}
