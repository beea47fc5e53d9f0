"""`x + A @ B` as one step: copy x into the add's output, then GEMM with beta = 1 into it.

The product gets no buffer and the result is not read and rewritten once more. This serves
BPTT's gradient accumulations dW + hᵀδ and residual connections x + f(x) W. The decision is
the rule `llvm.accumulate_matmul` (rules.py), which marks the add `accumulate=k` (k: the
operand that is the product, or its reshape); here the schedule reads the marks (`folds`) and
the emitter lowers a marked add (`lower_accumulate`).
"""

from __future__ import annotations

from typing import NamedTuple

from ...ir.node import Node
from ...ir.traverse import consumers
from . import blas
from .lower import broadcast_view, copy


class Fold(NamedTuple):
    """An add whose product operand is computed into the add's own buffer."""

    product: Node  # the matmul
    addend: Node  # x, copied into the output first
    operand: Node  # the add's operand: the product itself or a reshape of it


MARK = "accumulate"  # the attribute of a marked add: the index of its product operand


def folds(order: list[Node], owner: dict, gemm_threshold: int) -> dict[Node, Fold]:
    """add -> Fold for every marked add whose mark holds in this graph: operand k is a BLAS
    product (or its reshape) of the add's shape and dtype that nothing else reads and that
    writes no output (`owner`: nodes that write an output buffer). The rule only marks such
    adds; an add whose mark does not hold (a marked graph rewritten since, or scheduled with
    another threshold) is lowered as a plain add, which computes the same."""
    marked = [n for n in order if n.op == "add" and n.attr(MARK) is not None]
    if not marked:
        return {}
    users = consumers(order)
    out = {}
    for n in marked:
        k = n.attr(MARK)
        m, x = n.inputs[k], n.inputs[1 - k]
        prod = m.inputs[0] if m.op == "reshape" else m
        chain = (m,) if prod is m else (m, prod)
        if (prod.op == "matmul" and m is not x and x.shape == n.shape == m.shape
                and n.dtype in blas.GLOBALS and x.dtype == m.dtype == n.dtype
                and all(len(users[c]) == 1 and c not in owner for c in chain)
                # operand views are not built yet: decide on shapes, as blas.plan does
                and blas.plan_shape(prod.inputs[0].shape, prod.inputs[1].shape,
                                    gemm_threshold)):
            out[n] = Fold(prod, x, m)
    return out


def lower_accumulate(ctx, n: Node, fold: Fold):
    """Emit the folded add `n`: copy the addend into n's buffer, then GEMM (beta = 1) onto it."""
    m = fold.product
    out = ctx.view(m)  # the add's buffer, in the product's shape
    copy(ctx, ctx.view(fold.addend), ctx.view(n))
    if out.size == 0:
        return
    batch = out.shape[:-2]
    a, b = (broadcast_view(ctx.view(i), batch + i.shape[-2:]) for i in m.inputs)
    blas.emit_gemm(ctx, m, a, b, out, ctx.matmul_plan[m], beta=1.0)
