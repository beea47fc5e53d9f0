"""Algebraic simplification, one rule per line where possible (the algebra in the comment)."""

from __future__ import annotations

import numpy as np

from ..ir.node import Node, make
from ..ops import elementwise as ew
from ..ops.leaves import const, scalar_value
from ..ops.movement import broadcast_to, reshape, transpose
from ..ops.registry import get_op
from .canonicalize import COMMUTATIVE
from .engine import C, Pat, Rules, X, rule
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
    if n.op in COMMUTATIVE and new[0].op == "const" and new[1].op != "const":
        new.reverse()  # constants last, as canonicalize puts them (cse would rebuild for it)
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


def _fold_scalars(n: Node, x: Node, a: Node, b: Node) -> Node:
    c = a.attr("value").array * b.attr("value").array
    return same_shape_as(ew.mul(x, const(c, n.dtype)), n)


def _pick(n: Node, c: Node, a: Node, b: Node) -> Node:
    return same_shape_as(a if is_scalar(c, True) else b, n)


def _flat_batch(n: Node, a: Node, b: Node) -> Node:
    return reshape(make("matmul", (reshape(a, (-1, b.shape[0])), b)), n.shape)


def _size1_axes(n: Node) -> bool:
    return all(n.inputs[0].shape[a] == 1 for a in n.attr("axes"))


def _same_keepdims(n: Node) -> bool:
    return n.attr("keepdims") == n.inputs[0].attr("keepdims")


def _rank0(n: Node) -> bool:
    return n.ndim == 0


_C0 = Pat("const", name="c", where=_rank0)  # a 0-d constant, bound to c

# Order matters: the first rule whose replacement is not None wins (see engine.py).
RULES = Rules("algebraic", [
    rule("implicit_broadcast", Pat(None), _implicit_broadcast),  # f(bcast(x), y) -> f(x, y)
    rule("reshape_scalar_const", Pat("reshape", C(name="c"), where=lambda n: n.size == 1),
         lambda n, c: const(np.full(n.shape, scalar_value(c)), n.dtype)),  # reshape(c) -> c
    rule("add_zero", Pat("add", X(), C(0)), lambda n, x: same_shape_as(x, n)),  # x + 0 -> x
    rule("zero_add", Pat("add", C(0), X()), lambda n, x: same_shape_as(x, n)),  # 0 + x -> x
    rule("add_neg", Pat("add", X(), Pat("neg", X("y"))),
         lambda n, x, y: ew.sub(x, y)),  # x + (-y) -> x - y
    rule("neg_add", Pat("add", Pat("neg", X("y")), X()),
         lambda n, x, y: ew.sub(x, y)),  # (-y) + x -> x - y (cse may order it so)
    rule("sub_zero", Pat("sub", X(), C(0)), lambda n, x: same_shape_as(x, n)),  # x - 0 -> x
    rule("zero_sub", Pat("sub", C(0), X()),
         lambda n, x: same_shape_as(ew.neg(x), n)),  # 0 - x -> -x
    rule("sub_neg", Pat("sub", X(), Pat("neg", X("y"))),
         lambda n, x, y: ew.add(x, y)),  # x - (-y) -> x + y
    rule("mul_one", Pat("mul", X(), C(1)), lambda n, x: same_shape_as(x, n)),  # x * 1 -> x
    rule("one_mul", Pat("mul", C(1), X()), lambda n, x: same_shape_as(x, n)),  # 1 * x -> x
    rule("mul_minus_one", Pat("mul", X(), C(-1)),
         lambda n, x: same_shape_as(ew.neg(x), n)),  # x * -1 -> -x
    rule("neg_mul_neg", Pat("mul", Pat("neg", X("a")), Pat("neg", X("b"))),
         lambda n, a, b: ew.mul(a, b)),  # (-a)(-b) -> ab
    rule("mul_neg", Pat("mul", X("a"), Pat("neg", X("b"))),
         lambda n, a, b: ew.neg(ew.mul(a, b))),  # a * (-b) -> -(ab)
    rule("neg_mul", Pat("mul", Pat("neg", X("a")), X("b")),
         lambda n, a, b: ew.neg(ew.mul(a, b))),  # (-a) * b -> -(ab)
    rule("mul_scalars", Pat("mul", Pat("mul", X(), C(name="a")), C(name="b", rank0=True)),
         _fold_scalars),  # (x*a)*b -> x*(ab)
    rule("div_one", Pat("div", X(), C(1)), lambda n, x: same_shape_as(x, n)),  # x / 1 -> x
    rule("neg_neg", Pat("neg", Pat("neg", X())), lambda n, x: x),  # --x -> x
    rule("neg_scaled", Pat("neg", Pat("mul", X(), _C0)),
         lambda n, x, c: ew.mul(x, const(-scalar_value(c), n.dtype))),  # -(x*c) -> x*(-c)
    rule("sum_of_sum", Pat("sum", Pat("sum", name="inner"), where=_same_keepdims),
         lambda n, inner: _merge_sums(n, inner)),  # Σ_b Σ_a x -> Σ_(a∪b) x
    rule("batched_matmul", Pat("matmul", X("a", where=lambda a: a.ndim > 2),
                               X("b", where=lambda b: b.ndim == 2)),
         _flat_batch),  # (..., M, K) @ (K, N): one GEMM over the flattened batch
    rule("softmax_from_logsumexp", Pat("exp"),
         _softmax_from_shifted_exp),  # exp(x - logsumexp(x)) -> exp(x - m) / Σ exp(x - m)
    rule("sum_neg", Pat("sum", Pat("neg", X())),
         lambda n, x: ew.neg(_resum(n, x))),  # Σ(-x) -> -Σx
    rule("sum_scaled", Pat("sum", Pat("mul", X(), _C0)),
         lambda n, x, c: ew.mul(_resum(n, x), c)),  # Σ(x*c) -> (Σx)*c
    rule("sum_one_hot", Pat("sum", Pat("one_hot"),
                            where=lambda n: n.attr("axes") == (n.inputs[0].ndim - 1,)),
         lambda n: broadcast_to(const(1.0, n.dtype), n.shape)),  # one-hot rows sum to 1
    rule("pow_one", Pat("pow", X(), C(1, rank0=True)),
         lambda n, x: same_shape_as(x, n)),  # x**1 -> x
    rule("pow_two", Pat("pow", X(), C(2, rank0=True)), lambda n, x: ew.mul(x, x)),  # x**2 -> x*x
    rule("pow_half", Pat("pow", X(), C(0.5, rank0=True)),
         lambda n, x: ew.unary("sqrt", x)),  # x**0.5 -> sqrt(x)
    rule("where_same", Pat("where", X("c"), X(), X()),
         lambda n, c, x: same_shape_as(x, n)),  # where(c, x, x) -> x
    rule("where_const", Pat("where", C(name="c"), X("a"), X("b")),
         _pick),  # where(True, a, b) -> a
    rule("transpose_transpose", Pat("transpose", Pat("transpose", X(), name="t")),
         lambda n, x, t: transpose(x, tuple(t.attr("perm")[p] for p in n.attr("perm")))
         ),  # (xᵀ)ᵀ -> x (one transpose with the composed permutation)
    rule("transposed_product", Pat("transpose", Pat("matmul")),
         _transposed_product),  # (A B)ᵀ -> Bᵀ Aᵀ: the product is written in the layout read
    rule("reshape_broadcast_scalar", Pat("reshape", Pat("broadcast_to", X(
        where=lambda x: x.size == 1))),
         lambda n, x: broadcast_to(reshape(x, ()), n.shape)),  # reshape(bcast(c)) -> bcast(c)
    rule("reshape_reshape", Pat("reshape", Pat("reshape", X())),
         lambda n, x: reshape(x, n.shape)),  # reshape(reshape(x)) -> reshape(x)
    rule("broadcast_broadcast", Pat("broadcast_to", Pat("broadcast_to", X())),
         lambda n, x: broadcast_to(x, n.shape)),  # bcast(bcast(x)) -> bcast(x)
    rule("sum_of_broadcast", Pat("sum"),
         _sum_of_broadcast),  # sum(bcast(x)) over broadcast axes -> x * count
    rule("reduce_size1_keepdims", Pat(("sum", "max"), X(), where=lambda n: (
        n.inputs[0].ndim == n.ndim and _size1_axes(n))),
         lambda n, x: x),  # reducing size-1 axes with keepdims -> x
    rule("reduce_size1", Pat(("sum", "max"), X(), where=_size1_axes),
         lambda n, x: reshape(x, n.shape)),  # reducing size-1 axes -> reshape(x) (no tie mask)
    rule("cast_widen_narrow", Pat("cast", Pat("cast", X(), where=lambda m: (
        m.dtype == "float64")), where=lambda n: n.inputs[0].inputs[0].dtype == n.dtype),
         lambda n, x: x),  # widening then narrowing back -> x
])


def simplify_node(n: Node) -> Node:
    """`n` rewritten by the algebraic rules until none applies (bounded)."""
    return RULES.rewrite_node(n)


def algebraic(outputs: list[Node]) -> list[Node]:
    return RULES(outputs)


__all__ = ["RULES", "algebraic", "simplify_node", "make"]
