"""The simplification pipeline: a plain ordered list of named passes.

Every pass maps output nodes to new output nodes; graphs are defined by what their outputs
reach, so dead code never survives a pass (DCE is structural). `run` keeps each stage's graph
so users can dump it (`fn.graph("algebraic")`) and reports node counts per stage.

The pipeline is the one owner of sub-graphs: `run` and `run_forward` recurse into the body of
every `scan` (the way PyTensor's scan inner-graph phase does), so ops trace bodies as written
and backends lower exactly the body they are given, the one `fn.graph()` shows.

A backend may bring rules of its own (`engine.BackendRules`, from its `rules.py`): `run`
applies them with the same engine after the shared passes, as one more stage ("backend"), so
their decisions (LLVM's GEMM accumulation, JAX's unrolled small products) show in `fn.graph`
and `fn.stats()`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from operator import attrgetter

from ..ir.node import Node, make
from ..ir.traverse import memoized, toposort, transform
from ..ops.custom import inline as inline_custom
from ..ops.scan import Body, prune_outputs
from .algebraic import algebraic
from .canonicalize import canonicalize, canonicalize_forward, cse
from .engine import BackendRules, counting
from .fold import fold_constants
from .fuse import fuse
from .loop_share import share_while_loops
from .scan_hoist import hoist_scans
from .stabilize import stabilize

LOOP_OPS = ("scan", "while_loop")  # ops holding a body sub-graph (ops/scan.py, ops/loops.py)

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
    ops = Counter(map(_op_of, toposort(outputs)))  # counted in C: a stage per pass
    for leaf in ("input", "param", "const"):
        ops.pop(leaf, None)
    return Stage(name, list(outputs), sum(ops.values()), ops, Counter(hits or ()))


_op_of = attrgetter("op")


def body_stages(outputs: list[Node], _depth: int = 0) -> list[tuple[int, Stage]]:
    """(nesting depth, node counts) of every scan body reachable from `outputs`, each body
    once and followed by those nested in it: the sub-graphs the final stage runs."""
    rows, seen = [], set()
    for n in toposort(outputs):
        body = n.attr("body") if n.op in LOOP_OPS else None
        if body is None or body in seen:
            continue
        seen.add(body)
        rows.append((_depth, _stage(body.name, list(body.outputs))))
        rows += body_stages(list(body.outputs), _depth + 1)
    return rows


def run(outputs: list[Node], passes=None, record=None,
        backend: BackendRules | None = None) -> tuple[list[Node], list[Stage]]:
    """Apply `passes` (names or (name, fn) pairs; default PASSES), then the `backend`'s own
    rules whatever `passes` says (they choose how to lower, not what to compute), and return
    (outputs, stages). The passes sort the same graphs many times: `memoized`."""
    with memoized():
        return _run(outputs, passes, record, backend)


def _run(outputs: list[Node], passes, record,
         backend: BackendRules | None) -> tuple[list[Node], list[Stage]]:
    table = dict(PASSES)
    unknown = [p for p in (passes or []) if isinstance(p, str) and p not in table]
    if unknown:  # checked before the lookup below, which would raise a bare KeyError
        raise ValueError(f"unknown passes {unknown}; available: {list(table)}")
    chosen = (
        PASSES if passes is None else [(p, table[p]) if isinstance(p, str) else p for p in passes]
    )
    stages = list(record or [])
    # custom_vjp rules have served the reverse sweep: their primals join the graph (always,
    # whatever `passes` says), so every pass sees and simplifies them
    inlined = inline_custom(outputs)
    if any(a is not b for a, b in zip(inlined, outputs)):
        outputs = inlined
        stages.append(_stage("custom_inline", outputs))
    # a while_loop's primal is read from its tangent loop (loop_share.py), before any pass,
    # so every pass sees one loop; a stage only when it shared one
    shared = share_while_loops(outputs)
    if any(a is not b for a, b in zip(shared, outputs)):
        outputs = shared
        stages.append(_stage("loop_share", outputs))
    before_fuse = [(n, f) for n, f in chosen if n != "fuse"]
    later = Counter()  # rule hits after the first round, reported on the "simplify" stage
    last = -1  # the pass that last changed the graph: every pass since left it as it is
    settled = False
    for round_ in range(SIMPLIFY_ROUNDS):
        start = outputs
        for i, (name, fn) in enumerate(before_fuse):
            # each pass is idempotent and the others already saw this graph: it is settled
            # (the round that only confirms this stops here, not after every pass)
            settled = i == last and round_ > 0
            if settled:
                break
            with counting() as hits:
                new = fn(outputs)
            if any(a is not b for a, b in zip(new, outputs)):
                last = i
            outputs = new
            if round_ == 0:
                stages.append(_stage(name, outputs, hits))
            else:
                later.update(hits)
        if settled or all(a is b for a, b in zip(start, outputs)):
            break
    if round_ > 0:
        stages.append(_stage(f"simplify x{round_ + 1}", outputs, later))
    for name, fn in chosen:
        if name == "fuse":
            with counting() as hits:
                outputs = fn(outputs)
            stages.append(_stage(name, outputs, hits))
    # bodies last: scan_outputs and scan_hoist above decide what a body computes
    simplified = rewrite_bodies(outputs, lambda outs: run(outs, passes)[0])
    if stages and any(a is not b for a, b in zip(simplified, outputs)):
        last = stages[-1]  # the last stage shows what runs
        stages[-1] = _stage(last.name, simplified, last.hits)
    outputs = simplified
    if backend is not None:
        outputs = run_backend(outputs, backend, stages)
    return outputs, stages


def run_backend(outputs: list[Node], backend: BackendRules, stages: list[Stage]) -> list[Node]:
    """`backend.rules` on `outputs` (and nested scan bodies when `backend.bodies`), recorded as
    the stage "backend": the graph the backend lowers."""

    def apply(outs: list[Node]) -> list[Node]:
        outs = backend.rules(outs)
        return rewrite_bodies(outs, apply) if backend.bodies else outs

    with counting() as hits:
        outputs = apply(outputs)
    stages.append(_stage("backend", outputs, hits))
    return outputs


def run_forward(loss: Node, hits: Counter | None = None) -> Node:
    """The forward passes (before autodiff) on `loss` and, recursively, on scan bodies; their
    rule hits are added to `hits` when given."""
    with counting() as counted:
        (loss,) = _forward([loss])
    if hits is not None:
        hits.update(counted)
    return loss


def _forward(outputs: list[Node]) -> list[Node]:
    for _, fn in FORWARD_PASSES:
        outputs = fn(outputs)
    return rewrite_bodies(outputs, _forward)


def rewrite_bodies(outputs: list[Node], rewrite) -> list[Node]:
    """Every scan reachable from `outputs` with its body's outputs replaced by
    `rewrite(body outputs)`; a body shared by several scan nodes is rewritten once."""
    if not any(n.op in LOOP_OPS for n in toposort(outputs)):
        return outputs
    done: dict[Body, Body] = {}

    def visit(n: Node) -> Node:
        if n.op not in LOOP_OPS:
            return n
        body = n.attr("body")
        if body not in done:
            outs = rewrite(list(body.outputs))
            nc = len(body.carries)
            done[body] = body if all(a is b for a, b in zip(outs, body.outputs)) else Body(
                body.carries, body.xs, body.consts, outs[:nc], outs[nc:], body.name)
        new = done[body]
        return n if new is body else make(n.op, n.inputs, **dict(n.attrs, body=new))

    return transform(outputs, visit)
