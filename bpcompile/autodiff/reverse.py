"""Reverse-mode autodiff: build the adjoint graph in the same IR.

The sweep walks the forward graph in reverse topological order, asks each op's VJP rule for
its inputs' cotangents, un-broadcasts them to the input shapes and accumulates fan-out with
`add`. Cotangents that are symbolically zero (None) are never materialised. Because the result
is ordinary IR, `grad` of an expression that contains `grad` works (Hessian-vector products).
"""

from __future__ import annotations

from collections import Counter

from ..errors import GradientError, NonDifferentiableError
from ..ir.dtypes import is_float
from ..ir.node import NAMES, Node, next_serial
from ..ir.provenance import record_grad_of
from ..ir.traverse import toposort
from ..ops.elementwise import add, cast
from ..ops.leaves import const
from ..ops.movement import broadcast_to, unbroadcast
from ..ops.registry import get_op


def check_loss(loss) -> Node:
    if not isinstance(loss, Node):
        raise GradientError(f"loss must be a bpcompile tensor, got {type(loss).__name__}")
    if loss.shape != ():
        raise GradientError(
            f"loss must be a scalar (shape ()), got shape {loss.shape}; "
            "reduce it with bp.sum or bp.mean"
        )
    if not is_float(loss.dtype):
        raise GradientError(f"loss must be float32 or float64, got {loss.dtype}")
    return loss


def check_wrt(wrt) -> list[Node]:
    single = isinstance(wrt, Node)
    wrt = [wrt] if single else list(wrt)
    if not wrt:
        raise GradientError("wrt is empty: name at least one bp.param")
    for w in wrt:
        if not isinstance(w, Node) or w.op != "param":
            what = repr(w) if isinstance(w, Node) else type(w).__name__
            raise GradientError(
                f"wrt must contain only params declared with bp.param; got {what}"
                + (f" (a {w.op} node)" if isinstance(w, Node) else "")
            )
    names = [w.name for w in wrt]
    dup = {n for n, k in Counter(names).items() if k > 1}  # linear: models have 1000s of params
    if dup:
        raise GradientError(f"wrt names {sorted(dup)} more than once")
    return wrt


def grad(loss: Node, wrt) -> list[Node] | Node:
    """d loss / d w for each param in `wrt`, as graph nodes (a single node if `wrt` is one)."""
    single = isinstance(wrt, Node)
    loss, wrt = check_loss(loss), check_wrt(wrt)
    order = toposort([loss])
    depends = set(wrt)
    for n in order:
        # stop_gradient cuts the dependence, so floor(stop_gradient(x)) is not on the path
        if n not in depends and n.op != "stop_gradient" and any(i in depends for i in n.inputs):
            depends.add(n)
    cts: dict[Node, Node] = {loss: const(1.0, loss.dtype)}
    for n in reversed(order):
        g = cts.get(n)
        if g is None or not n.inputs:
            continue
        _name_cotangent(n, g)
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
        contributions = op.vjp(n, g, needs)
        for x, c, need in zip(n.inputs, contributions, needs):
            if c is None or not need:
                continue
            c = unbroadcast(c, x.shape)
            if c.dtype != x.dtype:
                c = cast(c, x.dtype)
            cts[x] = add(cts[x], c) if x in cts else c
        record_grad_of([cts.get(x) for x in n.inputs], n, since)
    out = []
    for w in wrt:
        g = cts.get(w)
        if g is None:  # loss does not depend on w: an explicit zero gradient
            g = broadcast_to(const(0.0, w.dtype), w.shape)
        if g not in NAMES and g.op not in ("input", "param", "const"):
            NAMES[g] = "d" + w.name
        out.append(g)
    return out[0] if single else out


def _name_cotangent(n: Node, g: Node):
    """Name the complete cotangent of a named node d<name> (dz1, da2, ...) for readable code."""
    if g in NAMES or g.op in ("input", "param", "const"):
        return
    name = n.name
    if name:
        NAMES[g] = "d" + name
