"""Forward-mode autodiff: build the tangent graph (JVP) in the same IR.

`jvp(outputs, primals, tangents)` walks the graph in topological order and gives every node
that depends on a primal a tangent node, from its op's rule:
- an explicit `Op.jvp` (linear ops apply themselves to the tangents, matmul is bilinear:
  ops/jvp_rules.py);
- elementwise ops and kernels: their Jacobian is diagonal, so it is its own transpose and the
  VJP rule applied to the (broadcast) tangent *is* the JVP. A new op added the "Adding an op"
  way (a SymPy form, VJP = DERIVE) therefore gets its JVP from `sympy.diff` with no code, and
  maximum/minimum/abs/relu keep the tie rules their VJPs already share with JAX;
- every other op (max, scan, anything added later without a rule) by transposing its VJP,
  the double-VJP trick: u -> VJP(u) is linear, so J v = d/du <VJP(u), v>, which is the
  reverse sweep over <VJP(u), v> seeded with 1 (docs/transforms.md says why we derive this
  way round: we have a VJP for every op). The result does not depend on u (it is the
  derivative of a linear function); a placeholder u that a rule kept alive is replaced by
  zeros.
Symbolic zeros (None) are never materialised, integer/bool values get no tangent,
stop_gradient's is zero, and tangents are fitted to each node's shape and dtype once, here.
Tangents of named nodes are named `<name>_t` for readable code.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import GradientError, NonDifferentiableError, ShapeError
from ..ir.dtypes import is_float
from ..ir.node import NAMES, Node, make
from ..ir.traverse import toposort
from ..ops.elementwise import add, cast, mul
from ..ops.leaves import const
from ..ops.movement import broadcast_to, unbroadcast
from ..ops.reduce import sum_
from ..ops.registry import get_op
from ..ops.scan import _substitute
from ..ops.sweep import backward

__all__ = ["jvp", "tangent_of"]

_SCOPES = itertools.count(1)
_DIAGONAL_KINDS = ("elementwise", "kernel")


def _as_list(x) -> tuple[list, bool]:
    if isinstance(x, (list, tuple)):
        return list(x), False
    return [x], True


def _fit(t: Node, shape: tuple, dtype: str) -> Node:
    if t.shape != shape:
        t = broadcast_to(t, shape) if len(t.shape) <= len(shape) else unbroadcast(t, shape)
    return cast(t, dtype) if t.dtype != dtype else t


def _zeros(shape: tuple, dtype: str) -> Node:
    return broadcast_to(const(0.0, dtype), shape)


def _diagonal(n: Node, ts: Sequence[Node | None]):
    """Elementwise ops: J = Jᵀ (diagonal), so JVP = Σᵢ VJPᵢ(tᵢ broadcast to the output)."""
    vjp = get_op(n.op).vjp
    assert vjp is not None  # tangent_of checked
    out = None
    for i, t in enumerate(ts):
        if t is None:
            continue
        needs = tuple(j == i for j in range(len(ts)))
        c = vjp(n, _fit(t, n.shape, t.dtype), needs)[i]
        if c is not None:
            c = _fit(c, n.shape, n.dtype)
            out = c if out is None else add(out, c)
    return out


def _transposed(n: Node, ts: Sequence[Node | None]):
    """J v = d/du <VJP(u), v>: the VJP with a placeholder cotangent u, then its VJP in u."""
    vjp = get_op(n.op).vjp
    assert vjp is not None  # tangent_of checked
    scope = next(_SCOPES)
    if n.results is not None:
        us = [make("input", (), name=f"jvp_u{k}", shape=sh, dtype=dt, scope=-scope)
              if is_float(dt) else None for k, (sh, dt) in enumerate(n.results)]
        g: Any = us
    else:
        us = [make("input", (), name="jvp_u", shape=n.shape, dtype=n.dtype, scope=-scope)]
        g = us[0]
    needs = tuple(t is not None for t in ts)
    cts = vjp(n, g, needs)
    dot = None
    for x, c, t in zip(n.inputs, cts, ts):
        if c is None or t is None:
            continue
        c = _fit(c, x.shape, x.dtype)
        term = sum_(mul(c, t))
        dot = term if dot is None else add(dot, term)
    live = [u for u in us if u is not None]
    if dot is None:
        jv: list = [None] * len(live)
    else:
        jv = backward({dot: const(1.0, dot.dtype)}, live)
    # J v does not depend on u; a rule may still keep u alive (e.g. a reverse scan it feeds)
    zero = {u: _zeros(u.shape, u.dtype) for u in live}
    done = [None if t is None else _substitute([t], zero)[0] for t in jv]
    if n.results is None:
        return done[0]
    it = iter(done)
    return [next(it) if u is not None else None for u in us]


def tangent_of(n: Node, ts: Sequence[Node | None]) -> Node | list[Node | None] | None:
    """The tangent of node `n` given one tangent (or None) per input."""
    op = get_op(n.op)
    if op.jvp is not None:
        return op.jvp(n, ts)
    if n.op == "while_loop":  # its body's JVP needs this driver (autodiff/loop_jvp.py)
        from .loop_jvp import while_jvp

        return while_jvp(n, ts)
    if op.vjp is None:
        where = f" (created at {n.where})" if n.where else ""
        raise NonDifferentiableError(
            f"op {n.op!r}{where} is on the tangent path but is not differentiable; "
            "wrap its input in bp.stop_gradient if a zero tangent is intended"
        )
    if op.kind in _DIAGONAL_KINDS and n.results is None:
        return _diagonal(n, ts)
    return _transposed(n, ts)


def _seed(p: Node, t: Any) -> Node:
    if not isinstance(t, Node):
        t = const(np.asarray(t, dtype=p.dtype), p.dtype)
    if t.shape != p.shape:
        raise ShapeError(
            f"jvp: the tangent for {p!r} has shape {t.shape}, the primal {p.shape}"
        )
    if not is_float(t.dtype):
        raise GradientError(f"jvp: the tangent for {p!r} must be float, got {t.dtype}")
    return cast(t, p.dtype) if t.dtype != p.dtype else t


def jvp(outputs: Node | Sequence[Node], primals: Node | Sequence[Node],
        tangents: Any) -> tuple[Any, Any]:
    """Forward mode, like `jax.jvp`: returns (outputs, their tangents) as graph nodes.

    primals: the nodes (params, inputs, or any intermediate) the tangents are attached to;
    tangents: one node (e.g. a `bp.input`) or array per primal, of the primal's shape. An
    output that does not depend on the primals (or is not float) gets a zero tangent.
    """
    outs, single = _as_list(outputs)
    ps, psingle = _as_list(primals)
    ts, _ = _as_list(tangents) if not psingle else ([tangents], True)
    for o in outs:
        if not isinstance(o, Node):
            raise GradientError(f"jvp: outputs must be bpcompile tensors, got {type(o).__name__}")
    if len(ps) != len(ts):
        raise GradientError(f"jvp: {len(ps)} primals but {len(ts)} tangents")
    for p in ps:
        if not isinstance(p, Node) or not is_float(p.dtype):
            raise GradientError(f"jvp: primals must be float tensors, got {p!r}")
    if len({id(p) for p in ps}) != len(ps):
        raise GradientError("jvp: a primal is given twice")
    tan: dict[Node, Any] = {p: _seed(p, t) for p, t in zip(ps, ts)}
    seeded = set(ps)
    for n in toposort(outs):
        if n in seeded or not n.inputs:
            continue
        if n.op == "result":
            tt = tan.get(n.inputs[0])
            t = tt[n.attr("index")] if tt is not None else None
        else:
            ins = [tan.get(i) if is_float(i.dtype) else None for i in n.inputs]
            if all(i is None for i in ins):
                continue
            t = tangent_of(n, ins)
        if t is None:
            continue
        if isinstance(t, list):
            if all(x is None for x in t):
                continue
            tan[n] = [None if x is None else _fit(x, sh, dt)
                      for x, (sh, dt) in zip(t, n.results or ())]
            continue
        if not is_float(n.dtype):
            continue
        t = _fit(t, n.shape, n.dtype)
        if n.name and t not in NAMES and t.op not in ("input", "param", "const"):
            NAMES[t] = n.name + "_t"
        tan[n] = t
    res = []
    for o in outs:
        t = tan.get(o)
        if t is None or isinstance(t, list):
            t = _zeros(o.shape, o.dtype if is_float(o.dtype) else "float32")
        res.append(t)
    return (outs[0], res[0]) if single else (outs, res)
