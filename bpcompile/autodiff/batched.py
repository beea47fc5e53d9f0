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
from ..ops.sweep import backward, on_path

__all__ = ["NotBatched", "batched_jvp", "batched_vjp"]


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
    tup: dict[Node, list] = {}  # a while_loop's tangents, one (or None) per result
    seeded = set(primals)
    for n in toposort(list(outputs)):
        if n in seeded or not n.inputs:
            continue
        if n.op == "result" and n.inputs[0] in tup:
            t = tup[n.inputs[0]][n.attr("index")]
            if t is not None:
                tan[n] = t
            continue
        ts = [tan.get(i) if is_float(i.dtype) else None for i in n.inputs]
        if all(t is None for t in ts):
            continue
        if n.op == "while_loop":  # the loop carries the b tangents (autodiff/loop_jvp.py)
            from .loop_jvp import while_jvp

            tup[n] = while_jvp(n, ts, batch=b)
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


# ---- batched reverse mode: n cotangents at once (jax.vmap over jax.vjp) ----

def _unbroadcast_b(c: Node, shape: tuple, b: int) -> Node:
    """A batched cotangent (b, *s) summed down to (b, *shape) (shape broadcasts to s)."""
    if c.shape[1:] == shape:
        return c
    lead = c.ndim - 1 - len(shape)
    axes = tuple(range(1, 1 + lead)) + tuple(
        1 + lead + i for i, s in enumerate(shape) if s == 1 and c.shape[1 + lead + i] != 1)
    return reshape(make("sum", (c,), axes=axes, keepdims=False), (b,) + shape)


def _matmul_vjp(n: Node, g: Node, needs, b: int) -> tuple:
    """dA = G Bᵀ and dB = Aᵀ G for b cotangents G, each one GEMM for 2-d operands."""
    a, bb = n.inputs
    if a.ndim < 2 or bb.ndim < 2:
        raise NotBatched("matmul with a 1-d operand")
    if a.ndim != 2 or bb.ndim != 2:  # batched operands: broadcasting matmuls, summed down
        def swap(x):
            return make("transpose", (x,), perm=tuple(range(x.ndim - 2)) + (x.ndim - 1,
                                                                               x.ndim - 2))
        da = _unbroadcast_b(make("matmul", (g, swap(bb))), a.shape, b) if needs[0] else None
        db = _unbroadcast_b(make("matmul", (swap(a), g)), bb.shape, b) if needs[1] else None
        return da, db
    (m, k), nn = a.shape, bb.shape[1]
    da = db = None
    if needs[0]:  # (b·M, N) @ (N, K)
        bt = make("transpose", (bb,), perm=(1, 0))
        da = reshape(make("matmul", (reshape(g, (b * m, nn)), bt)), (b, m, k))
    if needs[1]:  # (K, M) @ (M, b·N)
        at = make("transpose", (a,), perm=(1, 0))
        wide = reshape(make("transpose", (g,), perm=(1, 0, 2)), (m, b * nn))
        y = reshape(make("matmul", (at, wide)), (k, b, nn))
        db = make("transpose", (y,), perm=(1, 0, 2))
    return da, db


def _linear_vjp(n: Node, g: Node, needs, b: int) -> tuple:
    """A linear op's VJP on b cotangents: the VJP of the op lifted to a batched operand (its
    axes shifted by one, as the forward rules above build it), which for a linear op does
    not read that operand's value."""
    if n.op == "matmul":
        return _matmul_vjp(n, g, needs, b)
    phs = [make("input", (), name=f"batched_x{i}", shape=(b,) + x.shape, dtype=x.dtype,
                scope=("batched_vjp", id(n))) if is_float(x.dtype) else None
           for i, x in enumerate(n.inputs)]
    lifted = _linear(n, phs, b)
    if lifted is None or lifted.shape != (b,) + n.shape:
        raise NotBatched(n.op)
    # the lifted op may be a few nodes (reshape + broadcast_to): the sweep over them
    want = [p for p, need in zip(phs, needs) if p is not None and need]
    cts = iter(backward({lifted: g}, want))
    live = {p for p in phs if p is not None}
    out = []
    for p, need in zip(phs, needs):
        c = next(cts) if p is not None and need else None
        if c is not None and any(x in live for x in toposort([c])):
            raise NotBatched(f"{n.op}: its VJP reads its operand")
        out.append(c)
    return tuple(out)


def batched_vjp(seeds: dict[Node, Node], wrt: Sequence[Node]) -> list[Node | None]:
    """The reverse sweep (ops/sweep.py) on b cotangents at once: each seed has shape
    (b, *output.shape), each result (b, *w.shape) or None. Elementwise ops and kernels run
    their own VJP rule on the batched cotangent (numpy broadcasting puts the batch axis in
    front), linear ops their lifted rule, matmul one GEMM per operand; anything else raises
    NotBatched and the caller falls back to a scan over the seed rows."""
    b = next(iter(seeds.values())).shape[0]
    order = toposort(list(seeds))
    depends = on_path(order, wrt)
    cts: dict[Node, Node] = {}
    for n, s in seeds.items():
        if n in depends:
            cts[n] = s if n not in cts else add(cts[n], s)
    for n in reversed(order):
        g = cts.get(n)
        if g is None or not n.inputs or n.op == "stop_gradient":
            continue
        if n.op == "result" and n.inputs[0] in depends:  # a scan's (tuple) results
            raise NotBatched(n.inputs[0].op)
        needs = tuple(i in depends and is_float(i.dtype) for i in n.inputs)
        if not any(needs):
            continue
        op = get_op(n.op)
        if n.results is not None or op.vjp is None:
            raise NotBatched(n.op)
        if n.op in _LINEAR:
            out = _linear_vjp(n, g, needs, b)
        elif op.kind in ("elementwise", "kernel"):
            out = op.vjp(n, g, needs)
        else:
            raise NotBatched(n.op)
        for x, c, need in zip(n.inputs, out, needs):
            if c is None or not need:
                continue
            # an elementwise rule answers in the (batched) broadcast output shape, a linear
            # one in the operand's; anything else dropped or moved the batch axis
            want = n.ndim + 1 if n.op not in _LINEAR else x.ndim + 1
            if c.ndim != want or c.shape[0] != b:
                raise NotBatched(f"{n.op}: cotangent shape {c.shape} for {x.shape}")
            c = _unbroadcast_b(c, x.shape, b)
            c = cast(c, x.dtype) if c.dtype != x.dtype else c
            if x.name and c not in NAMES and c.op not in ("input", "param", "const"):
                NAMES[c] = "d" + x.name
            cts[x] = c if x not in cts else add(cts[x], c)
    return [cts.get(w) for w in wrt]
