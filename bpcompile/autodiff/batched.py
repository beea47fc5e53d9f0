"""Batched forward mode: n tangents at once, each tangent carrying a leading batch axis.

`batched_jvp(outputs, primals, tangents)` is `jvp` with every tangent of shape (n,) + the
primal's shape, as `jax.vmap` over `jax.jvp` computes it: a forward Jacobian becomes one pass
whose matrix-vector products are matrix-matrix products. The rules are the forward rules
with the batch axis threaded through: elementwise ops and kernels call their VJP rule on the
batched tangent (numpy broadcasting puts the batch axis in front), linear ops shift their
axis attributes by one, matmul broadcasts over the batch. An op with no batched rule (max,
scan, one added later) raises `NotBatched`, and the caller falls back to a `scan` over the
seed rows (autodiff/jacobian.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..ir.dtypes import is_float
from ..ir.node import NAMES, Node, make
from ..ir.traverse import toposort
from ..ops.elementwise import add, cast
from ..ops.leaves import const
from ..ops.movement import broadcast_to, reshape
from ..ops.registry import get_op

__all__ = ["NotBatched", "batched_jvp"]


class NotBatched(Exception):
    """An op on the tangent path has no batched forward rule."""


def _lift(t: Node, shape: tuple, n: int) -> Node:
    """A batched tangent (n, *s) broadcast to (n, *shape) (s broadcasts to shape)."""
    if t.shape[1:] == shape:
        return t
    k = len(shape) - (t.ndim - 1)
    if k:
        t = reshape(t, (n,) + (1,) * k + t.shape[1:])
    return broadcast_to(t, (n,) + shape)


def _pad_rank(v: Node, r: int, batched: bool) -> Node:
    """v with unit axes after its batch axis (a primal: in front) so that its ndim is r."""
    k = r - v.ndim
    if k <= 0:
        return v
    if batched:
        return reshape(v, v.shape[:1] + (1,) * k + v.shape[1:])
    return reshape(v, (1,) * k + v.shape)


def _zeros(shape: tuple, dtype: str) -> Node:
    return broadcast_to(const(0.0, dtype), shape)


def _shift(axes) -> tuple:
    return tuple(a + 1 for a in axes)


def _linear(n: Node, ts: list, b: int) -> Node | None:
    op, at = n.op, dict(n.attrs)
    x = n.inputs[0]
    t = ts[0]
    if op == "reshape":
        return reshape(t, (b,) + n.shape)
    if op == "transpose":
        return make("transpose", (t,), perm=(0,) + _shift(at["perm"]))
    if op == "broadcast_to":
        return _lift(t, n.shape, b)
    if op == "slice":
        return make("slice", (t,), starts=(0,) + tuple(at["starts"]),
                    stops=(b,) + tuple(at["stops"]), steps=(1,) + tuple(at["steps"]))
    if op == "pad":
        return make("pad", (t,), lo=(0,) + tuple(at["lo"]), hi=(0,) + tuple(at["hi"]),
                    interior=(0,) + tuple(at["interior"]))
    if op == "sum":
        return make("sum", (t,), axes=_shift(at["axes"]), keepdims=at["keepdims"])
    if op == "take":
        return make("take", (t, n.inputs[1]), axis=at["axis"] + 1)
    if op == "cast":
        return cast(t, n.dtype)
    if op == "concatenate":
        parts = [tt if tt is not None else _zeros((b,) + i.shape, i.dtype)
                 for i, tt in zip(n.inputs, ts)]
        return make("concatenate", parts, axis=at["axis"] + 1)
    if op == "matmul":
        a, bb = n.inputs
        ta, tb = ts
        r = n.ndim + 1  # align every operand's batch axes with (b, *output batch)

        out = None
        if ta is not None:
            out = make("matmul", (_pad_rank(ta, r, True), _pad_rank(bb, r, False)))
        if tb is not None and a.ndim == 2 and tb.ndim == 3:
            # A @ dB for b seeds is one GEMM: A (M,K) @ [dB_1 .. dB_b] (K, b·N), not b
            # matrix-vector products (a Hessian's columns through a dense layer)
            k, m = tb.shape[1], tb.shape[2]
            wide = reshape(make("transpose", (tb,), perm=(1, 0, 2)), (k, b * m))
            y = reshape(make("matmul", (a, wide)), (a.shape[0], b, m))
            y = make("transpose", (y,), perm=(1, 0, 2))
            out = y if out is None else add(out, y)
        elif tb is not None:
            y = make("matmul", (_pad_rank(a, r, False), _pad_rank(tb, r, True)))
            out = y if out is None else add(out, y)
        return out
    raise NotBatched(f"{op} (input {x!r})")


_LINEAR = ("reshape", "transpose", "broadcast_to", "slice", "pad", "sum", "take", "cast",
           "concatenate", "matmul")


def _diagonal(n: Node, ts: list, b: int) -> Node | None:
    vjp = get_op(n.op).vjp
    assert vjp is not None
    out = None
    for i, t in enumerate(ts):
        if t is None:
            continue
        needs = tuple(j == i for j in range(len(ts)))
        c = vjp(n, _lift(t, n.shape, b), needs)[i]
        if c is not None:
            c = _lift(c, n.shape, b) if c.ndim == n.ndim + 1 else broadcast_to(
                c, (b,) + n.shape)
            out = c if out is None else add(out, c)
    return out


def batched_jvp(outputs: Sequence[Node], primals: Sequence[Node],
                tangents: Sequence[Node]) -> list[Node]:
    """Batched tangents (b, *output.shape) of `outputs`; raises NotBatched (see module)."""
    b = tangents[0].shape[0]
    tan: dict[Node, Node] = dict(zip(primals, tangents))
    seeded = set(primals)
    for n in toposort(list(outputs)):
        if n in seeded or not n.inputs:
            continue
        ts = [tan.get(i) if is_float(i.dtype) else None for i in n.inputs]
        if all(t is None for t in ts):
            continue
        if n.results is not None:  # several results (scan): no batched rule
            raise NotBatched(n.op)
        if not is_float(n.dtype):  # comparisons: an integer/bool value has no tangent
            continue
        op = get_op(n.op)
        if n.op == "stop_gradient":
            continue
        if n.op in _LINEAR:
            t = _linear(n, ts, b)
        elif op.kind in ("elementwise", "kernel") and op.vjp is not None and op.jvp is None:
            t = _diagonal(n, ts, b)
        else:
            raise NotBatched(n.op)
        if t is None:
            continue
        if t.shape != (b,) + n.shape:
            raise NotBatched(f"{n.op}: tangent shape {t.shape}, expected {(b,) + n.shape}")
        t = cast(t, n.dtype) if t.dtype != n.dtype else t
        if n.name and t not in NAMES and t.op not in ("input", "param", "const"):
            NAMES[t] = n.name + "_t"
        tan[n] = t
    return [tan[o] if o in tan else _zeros((b,) + o.shape, o.dtype) for o in outputs]
