"""Algebraic simplification, one rule per line where possible (the algebra in the comment)."""

from __future__ import annotations

import numpy as np

from ..ir.node import Node, make
from ..ir.traverse import transform
from ..ops import elementwise as ew
from ..ops.leaves import const, scalar_value
from ..ops.movement import broadcast_to, reshape, transpose
from ..ops.registry import get_op
from .patterns import is_op, is_scalar, same_shape_as


def _sum_of_broadcast(n: Node):
    """sum(broadcast_to(x), axes) -> x * count when only broadcast axes are summed."""
    b = n.inputs[0]
    if not is_op(b, "broadcast_to"):
        return None
    x = b.inputs[0]
    xs = (1,) * (b.ndim - x.ndim) + x.shape
    axes = n.attr("axes")
    if any(xs[a] != 1 for a in axes):
        return None
    count = int(np.prod([b.shape[a] for a in axes]))
    kept = tuple(1 if a in axes else b.shape[a] for a in range(b.ndim))
    if n.attr("keepdims"):
        out_shape = kept
    else:
        out_shape = tuple(s for a, s in enumerate(b.shape) if a not in axes)
    base = broadcast_to(reshape(x, xs), kept) if xs != kept else reshape(x, xs)
    return ew.mul(reshape(base, out_shape), float(count) if n.dtype != "int32" else count)


def _implicit_broadcast(n: Node):
    """f(broadcast_to(x), y) -> f(x, y) and f(c[1,1], y) -> f(c, y) when the other operands
    already give f's shape."""
    if get_op(n.op).kind not in ("elementwise", "kernel") or not any(
        is_op(i, "broadcast_to") or (i.op == "const" and i.ndim and i.size == 1) for i in n.inputs
    ):
        return None
    new = list(n.inputs)
    for k, x in enumerate(n.inputs):
        if is_op(x, "broadcast_to"):
            trial = new[:k] + [x.inputs[0]] + new[k + 1 :]
        elif x.op == "const" and x.ndim > 0 and x.size == 1:
            trial = new[:k] + [const(x.attr("value").array.reshape(()), x.dtype)] + new[k + 1 :]
        else:
            continue
        if tuple(np.broadcast_shapes(*[t.shape for t in trial])) == n.shape:
            new = trial
    return make(n.op, new, **dict(n.attrs)) if new != list(n.inputs) else None


def _resum(n: Node, x: Node) -> Node:
    """The reduction `n` applied to another operand of the same shape."""
    return make("sum", (x,), **dict(n.attrs))


def _transposed_product(n: Node):
    """transpose(a @ b) swapping the matrix axes -> bᵀ @ aᵀ. Transposed operands are free (a
    BLAS flag, a strided view); a transposed result is not: whoever reshapes it copies it."""
    a, b = n.inputs[0].inputs
    nd = n.ndim
    if nd < 2 or a.ndim != nd or b.ndim != nd:
        return None
    if n.attr("perm") != tuple(range(nd - 2)) + (nd - 1, nd - 2):
        return None
    perm = n.attr("perm")
    return make("matmul", (transpose(b, perm), transpose(a, perm)))


def _merge_sums(outer: Node, inner: Node) -> Node:
    x, a = inner.inputs[0], inner.attr("axes")
    if inner.attr("keepdims"):
        axes = set(a) | set(outer.attr("axes"))
    else:
        rest = [d for d in range(x.ndim) if d not in a]
        axes = set(a) | {rest[b] for b in outer.attr("axes")}
    return make("sum", (x,), axes=tuple(sorted(axes)), keepdims=outer.attr("keepdims"))


def _softmax_from_shifted_exp(n: Node):
    """exp(x - (log Σ e + m)) with e = exp(x - m) -> e / Σ e: softmax reuses the exponentials
    logsumexp already computed (one exp pass instead of two; e ≤ 1 and Σ e ≥ 1, so stable)."""
    d = n.inputs[0]
    if not is_op(d, "sub") or not is_op(d.inputs[1], "add"):
        return None
    x, lse = d.inputs
    for lg, m in (lse.inputs, reversed(lse.inputs)):
        if not (is_op(lg, "log") and is_op(lg.inputs[0], "sum") and lg.inputs[0].attr("keepdims")):
            continue
        s = lg.inputs[0]
        e = s.inputs[0]
        if is_op(e, "exp") and is_op(e.inputs[0], "sub") and e.inputs[0].inputs == (x, m):
            return ew.div(e, s)
    return None


def _rules(n: Node):
    op, i = n.op, n.inputs
    if (r := _implicit_broadcast(n)) is not None:
        return r  # f(bcast(x), y) -> f(x, y): elementwise ops broadcast anyway
    if op == "reshape" and is_op(i[0], "const") and is_scalar(i[0]) and n.size == 1:
        return const(np.full(n.shape, scalar_value(i[0])), n.dtype)  # reshape(c) -> c
    if op == "add":
        if is_scalar(i[1], 0):
            return same_shape_as(i[0], n)  # x + 0 -> x
        if is_scalar(i[0], 0):
            return same_shape_as(i[1], n)  # 0 + x -> x
        if is_op(i[1], "neg"):
            return ew.sub(i[0], i[1].inputs[0])  # x + (-y) -> x - y
    if op == "sub":
        if is_scalar(i[1], 0):
            return same_shape_as(i[0], n)  # x - 0 -> x
        if is_scalar(i[0], 0):
            return same_shape_as(ew.neg(i[1]), n)  # 0 - x -> -x
        if is_op(i[1], "neg"):
            return ew.add(i[0], i[1].inputs[0])  # x - (-y) -> x + y
    if op == "mul":
        if is_scalar(i[1], 1):
            return same_shape_as(i[0], n)  # x * 1 -> x
        if is_scalar(i[0], 1):
            return same_shape_as(i[1], n)  # 1 * x -> x
        if is_scalar(i[1], -1):
            return same_shape_as(ew.neg(i[0]), n)  # x * -1 -> -x
        if is_op(i[0], "neg") and is_op(i[1], "neg"):
            return ew.mul(i[0].inputs[0], i[1].inputs[0])  # (-a)(-b) -> ab
        if is_op(i[1], "neg"):
            return ew.neg(ew.mul(i[0], i[1].inputs[0]))  # a * (-b) -> -(ab)
        if is_op(i[0], "neg"):
            return ew.neg(ew.mul(i[0].inputs[0], i[1]))  # (-a) * b -> -(ab)
        if is_op(i[0], "mul") and is_scalar(i[0].inputs[1]) and is_scalar(i[1]) and i[1].ndim == 0:
            c = i[0].inputs[1].attr("value").array * i[1].attr("value").array
            return same_shape_as(ew.mul(i[0].inputs[0], const(c, n.dtype)), n)  # (x*a)*b -> x*(ab)
    if op == "div" and is_scalar(i[1], 1):
        return same_shape_as(i[0], n)  # x / 1 -> x
    if op == "neg" and is_op(i[0], "neg"):
        return i[0].inputs[0]  # --x -> x
    if (
        op == "neg"
        and is_op(i[0], "mul")
        and i[0].inputs[1].op == "const"
        and i[0].inputs[1].ndim == 0
    ):
        return ew.mul(
            i[0].inputs[0], const(-scalar_value(i[0].inputs[1]), n.dtype)
        )  # -(x*c) -> x*(-c)
    if op == "sum" and is_op(i[0], "sum") and n.attr("keepdims") == i[0].attr("keepdims"):
        return _merge_sums(n, i[0])  # Σ_b Σ_a x -> Σ_(a∪b) x
    if op == "matmul" and i[1].ndim == 2 and i[0].ndim > 2:
        a, k = i[0], i[1].shape[0]  # (..., M, K) @ (K, N): one GEMM over the flattened batch
        return reshape(make("matmul", (reshape(a, (-1, k)), i[1])), n.shape)
    if op == "exp" and (r := _softmax_from_shifted_exp(n)) is not None:
        return r  # exp(x - logsumexp(x)) -> exp(x - m) / Σ exp(x - m)
    if op == "sum" and is_op(i[0], "neg"):
        return ew.neg(_resum(n, i[0].inputs[0]))  # Σ(-x) -> -Σx
    if (
        op == "sum"
        and is_op(i[0], "mul")
        and i[0].inputs[1].op == "const"
        and i[0].inputs[1].ndim == 0
    ):
        return ew.mul(_resum(n, i[0].inputs[0]), i[0].inputs[1])  # Σ(x*c) -> (Σx)*c
    if op == "sum" and is_op(i[0], "one_hot") and n.attr("axes") == (i[0].ndim - 1,):
        return broadcast_to(const(1.0, n.dtype), n.shape)  # one-hot rows sum to 1
    if op == "pow" and i[1].ndim == 0:
        if is_scalar(i[1], 1):
            return same_shape_as(i[0], n)  # x**1 -> x
        if is_scalar(i[1], 2):
            return ew.mul(i[0], i[0])  # x**2 -> x*x
        if is_scalar(i[1], 0.5):
            return ew.unary("sqrt", i[0])  # x**0.5 -> sqrt(x)
    if op == "where":
        if i[1] is i[2]:
            return same_shape_as(i[1], n)  # where(c, x, x) -> x
        if is_op(i[0], "const") and is_scalar(i[0]):
            return same_shape_as(
                i[1] if is_scalar(i[0], True) else i[2], n
            )  # where(True, a, b) -> a
    if op == "transpose" and is_op(i[0], "transpose"):
        inner, outer = i[0].attr("perm"), n.attr("perm")
        return transpose(i[0].inputs[0], tuple(inner[p] for p in outer))  # (xᵀ)ᵀ -> x
    if op == "transpose" and is_op(i[0], "matmul") and (r := _transposed_product(n)) is not None:
        return r  # (A B)ᵀ -> Bᵀ Aᵀ: the product is written in the layout its users read
    if op == "reshape" and is_op(i[0], "broadcast_to") and i[0].inputs[0].size == 1:
        return broadcast_to(reshape(i[0].inputs[0], ()), n.shape)  # reshape(bcast(c)) -> bcast(c)
    if op == "reshape" and is_op(i[0], "reshape"):
        return reshape(i[0].inputs[0], n.shape)  # reshape(reshape(x)) -> reshape(x)
    if op == "broadcast_to" and is_op(i[0], "broadcast_to"):
        return broadcast_to(i[0].inputs[0], n.shape)  # bcast(bcast(x)) -> bcast(x)
    if op == "sum" and (r := _sum_of_broadcast(n)) is not None:
        return r  # sum(bcast(x)) over broadcast axes -> x * count
    if (
        op in ("sum", "max")
        and i[0].ndim == n.ndim
        and all(i[0].shape[a] == 1 for a in n.attr("axes"))
    ):
        return i[0]  # reducing size-1 axes with keepdims -> x
    if op in ("sum", "max") and all(i[0].shape[a] == 1 for a in n.attr("axes")):
        return reshape(i[0], n.shape)  # reducing size-1 axes -> reshape(x) (no max-tie mask)
    if (
        op == "cast"
        and is_op(i[0], "cast")
        and i[0].inputs[0].dtype == n.dtype
        and i[0].dtype in ("float64",)
    ):
        return i[0].inputs[0]  # widening then narrowing back -> x
    return None


def simplify_node(n: Node) -> Node:
    for _ in range(16):  # bounded fixpoint on one node
        r = _rules(n)
        if r is None or r is n:
            return n
        n = r
    return n


def algebraic(outputs: list[Node]) -> list[Node]:
    return transform(outputs, simplify_node)


__all__ = ["algebraic", "simplify_node", "make"]
