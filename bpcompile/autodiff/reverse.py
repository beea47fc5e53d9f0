"""Reverse-mode autodiff: build the adjoint graph in the same IR.

`grad` checks its arguments and runs THE reverse sweep, `backward` (defined in ops/sweep.py so
that scan's VJP, an op, reuses it without importing this layer; re-exported here), seeded with
1 on the loss: each op's VJP rule gives its inputs' cotangents, un-broadcast to the input
shapes, fan-out accumulated with `add`, symbolic zeros (None) never materialised, several-result
nodes (scan) given one cotangent per result. Because the result is ordinary IR, `grad` of an
expression that contains `grad` works (Hessian-vector products).
"""

from __future__ import annotations

from collections import Counter

from ..errors import GradientError
from ..ir.dtypes import is_float
from ..ir.node import NAMES, Node
from ..ir.traverse import toposort
from ..ops.custom import inline as inline_custom
from ..ops.leaves import const
from ..ops.movement import broadcast_to
from ..ops.sweep import backward
from .feedback import FeedbackRules, check_mode

__all__ = ["backward", "check_loss", "check_wrt", "grad"]


def check_loss(loss) -> Node:
    if not isinstance(loss, Node):
        raise GradientError(f"loss must be a bpcompile tensor, got {type(loss).__name__}")
    if loss.shape != ():
        raise GradientError(
            f"loss must be a scalar (shape ()), got shape {loss.shape}; "
            "reduce it with bp.sum or bp.mean"
        )
    if not is_float(loss.dtype):
        raise GradientError(f"loss must be a float (float16, bfloat16, float32, float64), "
                            f"got {loss.dtype}")
    return loss


def check_wrt(wrt) -> list[Node]:
    single = isinstance(wrt, Node)
    wrt = [wrt] if single else list(wrt)
    if not wrt:
        raise GradientError("wrt is empty: name at least one bp.param or float bp.input")
    for w in wrt:
        # any float leaf the caller feeds (a param, or an input: a saddle point differentiates
        # each player's loss w.r.t. its own variables); never an intermediate node
        if not isinstance(w, Node) or w.op not in ("param", "input"):
            what = repr(w) if isinstance(w, Node) else type(w).__name__
            raise GradientError(
                f"wrt must contain only bp.param or bp.input leaves; got {what}"
                + (f" (a {w.op} node)" if isinstance(w, Node) else "")
            )
        if not is_float(w.dtype):
            raise GradientError(
                f"wrt: {w.op} {w.name!r} is {w.dtype}{list(w.shape)}; only float32/float64 "
                "leaves have gradients"
            )
    names = [w.name for w in wrt]
    dup = {n for n, k in Counter(names).items() if k > 1}  # linear: models have 1000s of params
    if dup:
        raise GradientError(f"wrt names {sorted(dup)} more than once")
    return wrt


def grad(loss: Node, wrt, feedback: str | None = None) -> list[Node] | Node:
    """d loss / d w for each param or float input in `wrt`, as graph nodes (a single node if
    `wrt` is one). `feedback` ("alignment", "direct"): the weight updates of feedback
    alignment instead (autodiff/feedback.py), reading `B_<param>` inputs."""
    single = isinstance(wrt, Node)
    loss, wrt = check_loss(loss), check_wrt(wrt)
    rules = FeedbackRules(loss, mode) if (mode := check_mode(feedback)) else None
    cts = backward({loss: const(1.0, loss.dtype)}, wrt, on_cotangent=_name_cotangent,
                   rules=rules)
    # As with jax.custom_vjp, a custom rule serves one differentiation: where the gradient
    # reads a custom function's forward value, it reads the primal, which a second
    # differentiation differentiates as written (the user's bwd is differentiated likewise)
    forward_custom = {n for n in toposort([loss]) if n.op == "custom_vjp"}
    if forward_custom:
        done = iter(inline_custom([c for c in cts if c is not None], forward_custom))
        cts = [None if c is None else next(done) for c in cts]
    out = []
    for w, g in zip(wrt, cts):
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
