"""Normalisation layers (layer norm, batch norm in training mode) as composites.

Both use the two-pass variance mean((x - mean)²), never E[x²] - E[x]², so a large common
offset cannot cancel catastrophically; eps keeps rsqrt finite at zero variance, and the
gradient there is finite too (it is what the primitives' VJPs give for the same formula).
"""

from __future__ import annotations

from ..errors import ShapeError
from ..ir.hints import Axis, TensorLike
from ..ir.node import Node
from ..ops.elementwise import add, as_node, div, mul, sub, unary
from ..ops.movement import reshape
from ..ops.reduce import mean, normalize_axes


def _normalize(x: Node, axes, eps: float):
    mu = mean(x, axes, keepdims=True)
    d = sub(x, mu)
    var = mean(mul(d, d), axes, keepdims=True)
    return div(d, unary("sqrt", add(var, eps))), mu, var


def layer_norm(x: TensorLike, gamma: TensorLike | None = None, beta: TensorLike | None = None,
               axis: Axis = -1, eps: float = 1e-5) -> Node:
    """(x - mean) / sqrt(var + eps) · gamma + beta over `axis` (int or tuple; default last).

    gamma and beta have the shape of the normalised axes (as flax.linen.LayerNorm).
    """
    x = as_node(x)
    axes = normalize_axes("layer_norm", axis, x.ndim)
    y, _, _ = _normalize(x, axes, eps)
    pshape = tuple(x.shape[a] for a in axes)
    bshape = tuple(x.shape[a] if a in axes else 1 for a in range(x.ndim))
    for name, p in (("gamma", gamma), ("beta", beta)):
        if p is not None and as_node(p).shape not in (pshape, bshape):
            raise ShapeError(f"layer_norm: {name} shape {as_node(p).shape} != {pshape}")
    if gamma is not None:
        y = y * reshape(as_node(gamma), bshape)
    if beta is not None:
        y = y + reshape(as_node(beta), bshape)
    return y


def batch_norm(x: TensorLike, gamma: TensorLike | None = None, beta: TensorLike | None = None,
               axis: int = 1, eps: float = 1e-5,
               return_stats: bool = False) -> Node | tuple[Node, Node, Node]:
    """Training-mode batch normalisation: statistics over every axis except the feature `axis`
    (N for (N, C); N, H, W for NCHW), biased variance, per-feature gamma/beta of shape (C,).

    With return_stats=True returns (y, batch_mean, batch_var) (each (C,)) so callers can keep
    running averages for inference.
    """
    x = as_node(x)
    axis = axis % x.ndim
    axes = tuple(a for a in range(x.ndim) if a != axis)
    y, mu, var = _normalize(x, axes, eps)
    c = x.shape[axis]
    bshape = tuple(c if a == axis else 1 for a in range(x.ndim))
    for name, p in (("gamma", gamma), ("beta", beta)):
        if p is not None and as_node(p).shape != (c,):
            raise ShapeError(f"batch_norm: {name} shape {as_node(p).shape} != ({c},)")
    if gamma is not None:
        y = y * reshape(as_node(gamma), bshape)
    if beta is not None:
        y = y + reshape(as_node(beta), bshape)
    if return_stats:
        return y, reshape(mu, (c,)), reshape(var, (c,))
    return y
