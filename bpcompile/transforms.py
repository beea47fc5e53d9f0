"""Derivative transformations beyond `bp.grad`: forward mode (`jvp`), vector-valued reverse
mode (`vjp`), full Jacobians and Hessians. Each returns graph nodes in the same IR, so the
results compile with `bp.function` on every backend and compose with `bp.grad` and each other.
See docs/transforms.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .autodiff.feedback import FeedbackRules, check_mode
from .autodiff.feedback import refuse as refuse_feedback
from .autodiff.forward import jvp as _jvp
from .autodiff.reverse import _name_cotangent
from .errors import GradientError, ShapeError
from .ir.dtypes import is_float
from .ir.node import NAMES, Node
from .ops.elementwise import cast
from .ops.leaves import const
from .ops.movement import broadcast_to
from .ops.sweep import backward

__all__ = ["hessian", "jacobian", "jvp", "vjp"]


def jvp(outputs: Node | Sequence[Node], primals: Node | Sequence[Node],
        tangents: Any, feedback: str | None = None) -> tuple[Any, Any]:
    """Forward mode, as `jax.jvp`: (outputs, tangents of the outputs) as graph nodes.

    `primals` are the nodes the `tangents` (nodes such as `bp.input`s, or arrays, one per
    primal and of its shape) are attached to: params, inputs or any intermediate node.
    `feedback=` raises: feedback alignment is a reverse-sweep rule with no forward mode.
    """
    refuse_feedback("jvp", feedback)
    return _jvp(outputs, primals, tangents)


def _nodes(x, what: str) -> tuple[list[Node], bool]:
    single = isinstance(x, Node)
    xs = [x] if single else list(x)
    for n in xs:
        if not isinstance(n, Node):
            raise GradientError(f"{what} must be bpcompile tensors, got {type(n).__name__}")
    return xs, single


def _cotangent(o: Node, c: Any) -> Node:
    if not isinstance(c, Node):
        c = const(np.asarray(c, dtype=o.dtype), o.dtype)
    if c.shape != o.shape:
        raise ShapeError(f"vjp: the cotangent for {o!r} has shape {c.shape}, the output {o.shape}")
    if not is_float(c.dtype):
        raise GradientError(f"vjp: the cotangent for {o!r} must be float, got {c.dtype}")
    return cast(c, o.dtype) if c.dtype != o.dtype else c


def vjp(outputs: Node | Sequence[Node], wrt: Node | Sequence[Node],
        cotangents: Any, feedback: str | None = None) -> Node | list[Node]:
    """Reverse mode for outputs of any shape: Σ_o <cotangent_o, d output_o / d w> for each w
    in `wrt` (params, inputs or any node), as `jax.vjp(f, *wrt)[1](cotangents)` does.

    cotangents: one node (e.g. a `bp.input`) or array per output, of the output's shape.
    Returns one node per w (a single node if `wrt` is one), zeros where w does not matter.
    feedback="alignment" | "direct": the same sweep with feedback alignment's rules (as
    bp.grad's), reading `B_<param>` inputs (values: bp.feedback_matrices).
    """
    outs, osingle = _nodes(outputs, "vjp: outputs")
    ws, wsingle = _nodes(wrt, "vjp: wrt")
    cs = [cotangents] if osingle else list(cotangents)
    if len(cs) != len(outs):
        raise GradientError(f"vjp: {len(outs)} outputs but {len(cs)} cotangents")
    for o in outs:
        if not is_float(o.dtype):
            raise GradientError(f"vjp: output {o!r} must be float, got {o.dtype}")
    if len({id(w) for w in ws}) != len(ws):
        raise GradientError("vjp: a node is given twice in wrt")
    seeds: dict[Node, Node] = {}
    for o, c in zip(outs, cs):
        c = _cotangent(o, c)
        seeds[o] = c if o not in seeds else seeds[o] + c
    rules = FeedbackRules(outs, mode) if (mode := check_mode(feedback, "vjp: feedback")) \
        else None
    grads = backward(seeds, ws, on_cotangent=_name_cotangent, rules=rules)
    res = []
    for w, g in zip(ws, grads):
        if g is None:
            g = broadcast_to(const(0.0, w.dtype), w.shape)
        elif g not in NAMES and w.name and g.op not in ("input", "param", "const"):
            NAMES[g] = "d" + w.name
        res.append(g)
    return res[0] if wsingle else res


def _wrt(wrt, what: str) -> tuple[list[Node], bool]:
    ws, single = _nodes(wrt, what)
    if not ws:
        raise GradientError(f"{what} is empty")
    if len({id(w) for w in ws}) != len(ws):
        raise GradientError(f"{what}: a node is given twice")
    for w in ws:
        if not is_float(w.dtype):
            raise GradientError(f"{what}: {w!r} must be float, got {w.dtype}")
    if len({w.dtype for w in ws}) > 1:
        raise GradientError(f"{what}: all must share one float dtype, got "
                            f"{sorted({w.dtype for w in ws})}")
    return ws, single


def jacobian(output: Node, wrt: Node | Sequence[Node], mode: str = "auto",
             feedback: str | None = None) -> Node | list[Node]:
    """d output / d w, shape output.shape + w.shape, for each w in `wrt` (a single node if
    `wrt` is one), as `jax.jacrev` / `jax.jacfwd` do.

    mode: "rev" (one VJP per output element), "fwd" (one JVP per input element) or "auto":
    reverse when the output has no more elements than the inputs together. Either way J is
    one program: reverse mode a `scan` over the seed rows, forward mode one batched pass over
    the seed matrix (a scan where an op has no batched rule; autodiff/jacobian.py).
    """
    from .autodiff.jacobian import jacobian_fwd, jacobian_rev

    refuse_feedback("jacobian", feedback)  # (feedback=: a clear error, never J silently)
    (y,), _ = _nodes([output], "jacobian: output")
    ws, single = _wrt(wrt, "jacobian: wrt")
    if not is_float(y.dtype):
        raise GradientError(f"jacobian: output {y!r} must be float, got {y.dtype}")
    if mode not in ("auto", "rev", "fwd"):
        raise ValueError(f"jacobian: mode must be 'auto', 'rev' or 'fwd', got {mode!r}")
    if mode == "auto":
        mode = "rev" if y.size <= sum(w.size for w in ws) else "fwd"
    if mode == "rev":
        out = jacobian_rev(y, ws)
    else:
        out = jacobian_fwd([y], ws)[0]
    out = [cast(j, y.dtype) if j.dtype != y.dtype else j for j in out]
    return out[0] if single else out


def hessian(loss: Node, wrt: Node | Sequence[Node],
            feedback: str | None = None) -> Node | list[list[Node]]:
    """Second derivatives of a scalar `loss`, forward-over-reverse as `jax.hessian`: the
    gradient graph (bp.grad), then one JVP of it per parameter element, in one scan.

    Returns H of shape w.shape + w.shape for a single w, else blocks H[i][j] of shape
    w_i.shape + w_j.shape.
    """
    from .autodiff.jacobian import jacobian_fwd
    from .autodiff.reverse import check_loss
    from .compiled import grad

    refuse_feedback("hessian", feedback)
    loss = check_loss(loss)
    ws, single = _wrt(wrt, "hessian: wrt")
    gs = grad_any(loss, ws) if any(w.op != "param" for w in ws) else grad(loss, ws)
    blocks = jacobian_fwd(list(gs), ws)
    return blocks[0][0] if single else blocks


def grad_any(loss: Node, ws: Sequence[Node]) -> list[Node]:
    """The gradient of a scalar w.r.t. any nodes (inputs too): vjp seeded with 1."""
    out = vjp(loss, list(ws), const(1.0, loss.dtype))
    return out if isinstance(out, list) else [out]
