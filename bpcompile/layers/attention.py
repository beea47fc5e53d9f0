"""Attention as a composite: scaled dot-product (optionally causal) and multi-head attention.

The softmax is the stable `nn.softmax` (exp of log_softmax, whose logsumexp subtracts a
stop-gradient max), so logits of 1e4 neither overflow nor lose the gradient. Masked scores are
replaced by MASK_VALUE (a large finite negative, as jax.nn.dot_product_attention does with
finfo.min) rather than -inf, so no inf - inf can appear in the forward or the backward pass.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from ..ir.hints import TensorLike
from ..ir.node import Node
from ..nn import softmax
from ..ops.elementwise import as_node, mul, where
from ..ops.leaves import const
from ..ops.linalg import matmul
from ..ops.movement import reshape, swap_last, transpose

MASK_VALUE = -1e30  # exp(MASK_VALUE - max) == 0 in float32 and float64


def causal_mask(tq: int, tk: int) -> Node:
    """bool (tq, tk): query i may attend to keys j <= i + (tk - tq) (aligned at the end)."""
    return const(np.tril(np.ones((tq, tk), bool), k=tk - tq))


def scaled_dot_product_attention(q: TensorLike, k: TensorLike, v: TensorLike, causal: bool = False,
                                 mask: TensorLike | None = None,
                                 scale: float | None = None) -> Node:
    """softmax(q kᵀ · scale [masked]) v over the last two axes; leading axes are batch/heads.

    q: (..., Tq, d), k: (..., Tk, d), v: (..., Tk, dv); scale defaults to 1/sqrt(d).
    `mask` (bool, broadcastable to (..., Tq, Tk)) keeps True positions; `causal` adds the
    lower-triangular mask. Every query must keep at least one key.
    """
    q, k, v = as_node(q), as_node(k), as_node(v)
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ShapeError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not agree "
                         "(need q[..., d], k[..., Tk, d], v[..., Tk, dv])")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    scores = mul(matmul(q, swap_last(k)), scale)
    keep = None
    if causal:
        keep = causal_mask(q.shape[-2], k.shape[-2])
    if mask is not None:
        mask = as_node(mask)
        keep = mask if keep is None else where(keep, mask, keep)
    if keep is not None:
        scores = where(keep, scores, const(MASK_VALUE, scores.dtype))
    return matmul(softmax(scores, -1), v)


def split_heads(x: Node, heads: int) -> Node:
    """(B, T, H·dh) -> (B, H, T, dh)."""
    b, t, d = x.shape
    if d % heads:
        raise ShapeError(f"attention: width {d} is not divisible by heads={heads}")
    return transpose(reshape(x, (b, t, heads, d // heads)), (0, 2, 1, 3))


def merge_heads(x: Node) -> Node:
    """(B, H, T, dh) -> (B, T, H·dh)."""
    b, h, t, dh = x.shape
    return reshape(transpose(x, (0, 2, 1, 3)), (b, t, h * dh))


def multi_head_attention(x: TensorLike, Wq: TensorLike, Wk: TensorLike, Wv: TensorLike,
                         Wo: TensorLike, heads: int = 1, causal: bool = False,
                         context: TensorLike | None = None, bq: TensorLike | None = None,
                         bk: TensorLike | None = None, bv: TensorLike | None = None,
                         bo: TensorLike | None = None) -> Node:
    """Multi-head (self-)attention: x (B, T, D); W{q,k,v} (D, H·dh); Wo (H·dh, D_out).

    Keys and values come from `context` (B, S, D) when given (cross-attention), else from x.
    """
    x = as_node(x)
    if x.ndim != 3:
        raise ShapeError(f"multi_head_attention: x must be (batch, time, features), got {x.shape}")
    ctx = x if context is None else as_node(context)

    def proj(a, W, b):
        y = matmul(a, W)
        return y + b if b is not None else y

    q = split_heads(proj(x, Wq, bq), heads)
    k = split_heads(proj(ctx, Wk, bk), heads)
    v = split_heads(proj(ctx, Wv, bv), heads)
    o = merge_heads(scaled_dot_product_attention(q, k, v, causal=causal))
    return proj(o, Wo, bo)
