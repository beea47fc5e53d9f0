"""The simplification pipeline: a plain ordered list of named passes.

Every pass maps output nodes to new output nodes; graphs are defined by what their outputs
reach, so dead code never survives a pass (DCE is structural). `run` keeps each stage's graph
so users can dump it (`fn.graph("algebraic")`) and reports node counts per stage.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..ir.node import Node
from ..ir.traverse import toposort
from ..ops.scan import prune_outputs
from .algebraic import algebraic
from .canonicalize import canonicalize, canonicalize_forward, cse
from .engine import counting
from .fold import fold_constants
from .fuse import fuse
from .scan_hoist import hoist_scans
from .stabilize import stabilize

# Run on the forward graph before autodiff: a stable forward gives a stable backward.
FORWARD_PASSES = [
    ("canonicalize", canonicalize_forward),
    ("algebraic", algebraic),
    ("stabilize", stabilize),
]

# Run on (loss, gradients...) after autodiff. "simplify" repeats the cheap passes to a fixpoint.
PASSES = [
    ("canonicalize", canonicalize),
    ("algebraic", algebraic),
    ("stabilize", stabilize),
    ("fold", fold_constants),
    ("cse", cse),
    ("scan_outputs", prune_outputs),  # drop scan ys / saved carries nothing reads (ops/scan.py)
    ("scan_hoist", hoist_scans),  # loop-invariant work leaves scan bodies (scan_hoist.py)
    ("fuse", fuse),
]
SIMPLIFY_ROUNDS = 4


@dataclass
class Stage:
    name: str
    outputs: list
    nodes: int
    ops: Counter = field(default_factory=Counter)
    hits: Counter = field(default_factory=Counter)  # rewrites per named rule (engine.py)


def _stage(name, outputs, hits=None):
    order = toposort(outputs)
    ops = Counter(n.op for n in order if n.op not in ("input", "param", "const"))
    return Stage(name, list(outputs), sum(ops.values()), ops, Counter(hits or ()))


def run(outputs: list[Node], passes=None, record=None) -> tuple[list[Node], list[Stage]]:
    """Apply `passes` (names or (name, fn) pairs; default PASSES) and return (outputs, stages)."""
    table = dict(PASSES)
    unknown = [p for p in (passes or []) if isinstance(p, str) and p not in table]
    if unknown:  # checked before the lookup below, which would raise a bare KeyError
        raise ValueError(f"unknown passes {unknown}; available: {list(table)}")
    chosen = (
        PASSES if passes is None else [(p, table[p]) if isinstance(p, str) else p for p in passes]
    )
    stages = list(record or [])
    before_fuse = [(n, f) for n, f in chosen if n != "fuse"]
    later = Counter()  # rule hits after the first round, reported on the "simplify" stage
    for round_ in range(SIMPLIFY_ROUNDS):
        start = outputs
        for name, fn in before_fuse:
            with counting() as hits:
                outputs = fn(outputs)
            if round_ == 0:
                stages.append(_stage(name, outputs, hits))
            else:
                later.update(hits)
        if all(a is b for a, b in zip(start, outputs)):
            break
    if round_ > 0:
        stages.append(_stage(f"simplify x{round_ + 1}", outputs, later))
    for name, fn in chosen:
        if name == "fuse":
            with counting() as hits:
                outputs = fn(outputs)
            stages.append(_stage(name, outputs, hits))
    return outputs, stages


def run_forward(loss: Node, hits: Counter | None = None) -> Node:
    """The forward passes on `loss`; their rule hits are added to `hits` when given."""
    with counting() as counted:
        for _, fn in FORWARD_PASSES:
            (loss,) = fn([loss])
    if hits is not None:
        hits.update(counted)
    return loss
