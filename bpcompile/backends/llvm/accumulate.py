"""`x + A @ B` as one step: copy x into the add's output, then GEMM with beta = 1 into it.

The product gets no buffer and the result is not read and rewritten once more. This serves
BPTT's gradient accumulations dW + hᵀδ and residual connections x + f(x) W. The decision
(`fold_products`, at scheduling) and the emission (`lower_accumulate`) sit together here.
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


def fold_products(order: list[Node], owner: dict, viewed: dict, gemm_threshold: int) -> dict:
    """add -> Fold for every add that qualifies: a BLAS product (or its reshape, the flattened
    (B·M,K)@(K,N) form) whose one consumer is a same-shape add. `owner`: nodes that write an
    output buffer; `viewed`: nodes that already have a view (arguments)."""
    users = consumers(order)
    folds, claimed, owned = {}, set(), set(owner)
    for n in order:
        if n.op != "add" or n.dtype not in blas.GLOBALS or n in viewed:
            continue
        for m, x in (n.inputs, reversed(n.inputs)):
            prod = m.inputs[0] if m.op == "reshape" else m
            chain = {m, prod}
            if (prod.op == "matmul" and m is not x and x.shape == n.shape == m.shape
                    and x.dtype == n.dtype and not chain & (claimed | owned)
                    and all(len(users[c]) == 1 for c in chain)
                    # operand views are not built yet: decide on shapes, as blas.plan does
                    and blas.plan_shape(prod.inputs[0].shape, prod.inputs[1].shape,
                                        gemm_threshold)):
                folds[n] = Fold(prod, x, m)
                claimed |= chain
                break
    return folds


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
