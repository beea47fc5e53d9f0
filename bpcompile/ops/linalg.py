"""Matrix multiplication, batched over leading axes with numpy broadcasting."""

from __future__ import annotations

import numpy as np

from ..errors import DTypeError, ShapeError
from ..ir.dtypes import DEFAULT_FLOAT, is_float
from ..ir.hints import TensorLike
from ..ir.node import Node, make
from . import jvp_rules
from .elementwise import cast, promoted
from .movement import reshape, swap_last
from .registry import Op, register


def _infer(inputs, attrs):
    a, b = inputs
    if a.ndim < 2 or b.ndim < 2:
        raise ShapeError(f"matmul: operands must be at least 2-d, got {a.shape} @ {b.shape}")
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(
            f"matmul: inner dimensions differ: {a.shape} @ {b.shape} "
            f"({a.shape[-1]} != {b.shape[-2]})"
        )
    if a.dtype != b.dtype or not is_float(a.dtype):
        raise DTypeError(
            f"matmul: needs two operands of one float dtype, got {a.dtype} @ {b.dtype}"
        )
    try:
        batch = tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    except ValueError:
        raise ShapeError(
            f"matmul: batch dimensions of {a.shape} @ {b.shape} do not broadcast"
        ) from None
    return batch + (a.shape[-2], b.shape[-1]), a.dtype


def _vjp(y, g, needs):
    # dA = G Bᵀ, dB = Aᵀ G; the reverse sweep sums over broadcast batch axes.
    a, b = y.inputs
    if b.ndim == 2 and a.ndim > 2:
        # A shared 2-d weight: Σ_batch A_iᵀ G_i is one product of the flattened batches
        # (one GEMM instead of a batched product plus a reduction over the batch).
        k, n = b.shape
        db = matmul2(swap_last(reshape(a, (-1, k))), reshape(g, (-1, n))) if needs[1] else None
        return (matmul2(g, swap_last(b)) if needs[0] else None, db)
    return (
        matmul2(g, swap_last(b)) if needs[0] else None,
        matmul2(swap_last(a), g) if needs[1] else None,
    )


register(Op("matmul", "matmul", _infer, _vjp,
            "a @ b over the last two axes, batched; 16-bit operands accumulate in float32 and "
            "the result is rounded once (every backend)", jvp=jvp_rules.matmul))


def matmul2(a: Node, b: Node) -> Node:
    return make("matmul", (a, b))


def matmul(a: TensorLike, b: TensorLike) -> Node:
    """numpy.matmul semantics, including 1-d operands (promoted, then squeezed)."""
    a, b = promoted("matmul", a, b)
    if not is_float(a.dtype):  # integer products run in the default float
        a, b = cast(a, DEFAULT_FLOAT), cast(b, DEFAULT_FLOAT)
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError(f"matmul: scalar operand ({a.shape} @ {b.shape}); use * instead")
    va, vb = a.ndim == 1, b.ndim == 1
    if va:
        a = reshape(a, (1, a.shape[0]))
    if vb:
        b = reshape(b, (b.shape[0], 1))
    out = matmul2(a, b)
    if va or vb:
        shape = out.shape[:-2] + (() if va else (out.shape[-2],)) + (() if vb else (out.shape[-1],))
        out = reshape(out, shape)
    return out
