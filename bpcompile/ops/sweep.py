"""The reverse sweep: THE backward pass over a graph, seeded on any outputs.

`backward(seeds, wrt)` walks the graph in reverse topological order, asks each op's VJP rule
for its inputs' cotangents, un-broadcasts them to the input shapes, casts them to the input
dtypes, accumulates fan-out with `add`, never materialises symbolic zeros (None), never
propagates into integer/bool inputs, and stops at `stop_gradient`. A node with several results
(a scan) collects one cotangent per result from its `result` projections and its VJP gets them
as a list. `bp.grad` (autodiff/reverse.py, which re-exports this) seeds it on the loss; the
scan VJP (ops/scan.py) seeds it on a step body's outputs to build the body of the BPTT scan.
It lives at the ops level so that scan, an op, can use it without importing autodiff.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

from ..errors import NonDifferentiableError
from ..ir.dtypes import is_float
from ..ir.node import LOCATION_OVERRIDE, Node, next_serial
from ..ir.provenance import record_grad_of
from ..ir.traverse import toposort
from .elementwise import add, cast
from .movement import unbroadcast
from .registry import get_op

# (node, cotangent(s), needs) -> the inputs' cotangents, or None for the op's own VJP rule
VJPRules = Callable[[Node, "Node | list[Node | None]", tuple], "Sequence[Node | None] | None"]
# the sweeps running now, innermost last, as (rules, add): an op whose VJP runs a sweep of its
# own (a checkpoint's recomputed region) asks for the rules with `active_rules`; a rule adds a
# cotangent to a node further down with `add_cotangent`. Per thread: two threads may compile.
_LOCAL = threading.local()


def _active() -> list[tuple[VJPRules | None, Callable[[Node, Node], None]]]:
    if not hasattr(_LOCAL, "stack"):
        _LOCAL.stack = []
    return _LOCAL.stack


def active_rules() -> VJPRules | None:
    """The `rules` of the innermost sweep now calling a VJP rule (None: the ops' own)."""
    stack = _active()
    return stack[-1][0] if stack else None


def _fit(c: Node, shape: tuple, dtype: str) -> Node:
    c = unbroadcast(c, shape)
    return cast(c, dtype) if c.dtype != dtype else c


def _acc(a: Node | None, b: Node) -> Node:
    return b if a is None else add(a, b)


def add_cotangent(x: Node, c: Node) -> None:
    """Add c to the cotangent of x, a node the running sweep has not reached yet (an ancestor
    of the node whose rule calls this): direct feedback alignment sends the output error
    straight to a conv layer's input this way. Ignored where x depends on no `wrt`."""
    stack = _active()
    if not stack:
        raise RuntimeError("add_cotangent: no reverse sweep is running")
    stack[-1][1](x, c)


def on_path(order: list[Node], wrt: Sequence[Node]) -> set[Node]:
    """The nodes of `order` (topological) that depend on a node of `wrt` (wrt included)."""
    depends = set(wrt)
    for n in order:
        # stop_gradient cuts the dependence, so floor(stop_gradient(x)) is not on the path
        if n not in depends and n.op != "stop_gradient" and any(i in depends for i in n.inputs):
            depends.add(n)
    return depends


def backward(seeds: Mapping[Node, Node | None], wrt: Sequence[Node],
             on_cotangent: Callable[[Node, Node], None] | None = None,
             rules: VJPRules | None = None) -> list[Node | None]:
    """Cotangents of the `wrt` nodes given cotangents `seeds` {output: ct}; None = zero.

    `on_cotangent(n, g)` sees each node's complete cotangent before its VJP runs (bp.grad
    names them `d<name>`). Every node a VJP rule, un-broadcasting or accumulation builds for
    a node n is recorded as a gradient of n (ir.provenance.GRAD_OF). `rules(n, g, needs)`, if
    given, may replace an op's VJP for node n (a list of cotangents) or return None to keep
    it: feedback alignment's rule sets (autodiff/feedback.py) replace matmuls' this way.
    """
    order = toposort(list(seeds))
    depends = on_path(order, wrt)
    cts: dict[Node, Node] = {}
    parts: dict[Node, list[Node | None]] = {}  # tuple node -> one cotangent per result
    for n, seed in seeds.items():
        if seed is not None and n in depends:
            cts[n] = _acc(cts.get(n), _fit(seed, n.shape, n.dtype))

    def add(x: Node, c: Node) -> None:
        if x in depends and is_float(x.dtype):
            cts[x] = _acc(cts.get(x), _fit(c, x.shape, x.dtype))

    stack = _active()
    stack.append((rules, add))
    try:
        _sweep(order, depends, cts, parts, on_cotangent, rules)
    finally:
        stack.pop()
    return [cts.get(w) for w in wrt]


def _sweep(order: list[Node], depends: set[Node], cts: dict[Node, Node],
           parts: dict[Node, list[Node | None]],
           on_cotangent: Callable[[Node, Node], None] | None, rules: VJPRules | None) -> None:
    g: Node | list[Node | None] | None
    for n in reversed(order):
        g = parts.get(n) if n.results is not None else cts.get(n)
        if g is None or not n.inputs:
            continue
        if on_cotangent is not None and isinstance(g, Node):
            on_cotangent(n, g)
        if n.op == "result":  # a projection: its cotangent is its slot of the tuple's
            t = n.inputs[0]
            if t in depends and is_float(n.dtype) and isinstance(g, Node):
                slots = parts.setdefault(t, [None] * len(t.results or ()))
                slots[n.attr("index")] = _acc(slots[n.attr("index")], g)
            continue
        needs = tuple(i in depends and is_float(i.dtype) for i in n.inputs)
        if not any(needs):
            continue
        op = get_op(n.op)
        if op.vjp is None:
            where = f" (created at {n.where})" if n.where else ""
            raise NonDifferentiableError(
                f"op {n.op!r}{where} is on the gradient path but is not differentiable; "
                "wrap its input in bp.stop_gradient if a zero gradient is intended"
            )
        since = next_serial()  # what the rule, un-broadcasting and accumulation build
        # ... takes n's source line: a backward index op's run-time error names the user's
        # take, not the bp.compile call that ran the sweep
        if n.where:
            LOCATION_OVERRIDE.append(n.where)
        try:
            ins = rules(n, g, needs) if rules is not None else None
            for x, c, need in zip(n.inputs, op.vjp(n, g, needs) if ins is None else ins, needs):
                if c is not None and need:
                    cts[x] = _acc(cts.get(x), _fit(c, x.shape, x.dtype))
        finally:
            if n.where:
                LOCATION_OVERRIDE.pop()
        record_grad_of([cts.get(x) for x in n.inputs], n, since)
