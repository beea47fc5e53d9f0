"""[[layers]] types for TOML specs: conv, pooling, recurrent, attention, norms, residual.

Each builder reads its keys from the layer's table (unknown keys are errors, as for `dense`)
and calls the composites of this package; registered into `spec_registry.LAYERS` with `@layer`.
Documented in docs/layers.md.
"""

from __future__ import annotations

import math

import numpy as np

from ..initializers import Init
from ..ir.node import Node
from ..nn import activation as _activation
from ..ops.leaves import const
from ..ops.movement import broadcast_to, reshape
from ..spec_registry import ACTIVATIONS, LayerContext, layer
from . import attention, basic, conv, norm, recurrent


def _ints(ctx: LayerContext, key: str, default, n: int = 2):
    v = ctx.table.raw(key, default, f"an integer or a list of {n} integers")
    vals = [v] * n if isinstance(v, int) and not isinstance(v, bool) else v
    if not isinstance(vals, (list, tuple)) or len(vals) != n or not all(
            isinstance(a, int) and not isinstance(a, bool) and a >= 1 for a in vals):
        ctx.error(f"expected a positive integer or a list of {n}, got {v!r}", key)
    return tuple(vals)


def _padding(ctx: LayerContext, default="valid"):
    v = ctx.table.raw("padding", default, '"valid", "same" or an integer')
    if isinstance(v, str):
        if v.lower() not in ("valid", "same"):
            ctx.error(f'expected "valid", "same" or an integer, got {v!r}', "padding")
        return v.lower()
    if isinstance(v, bool) or not isinstance(v, (int, list)):
        ctx.error(f'expected "valid", "same" or an integer, got {v!r}', "padding")
    return v


def _fan_init(ctx: LayerContext, fan_in: int, fan_out: int) -> Init:
    """The layer's init; glorot computed from the real fans (a conv kernel's are I·k, O·k)."""
    init = ctx.weight_init()
    if init.method == "glorot":
        scale = 1.0 if init.scale is None else init.scale
        return Init("uniform", scale * math.sqrt(6.0 / max(fan_in + fan_out, 1)))
    return init


def _need(ctx: LayerContext, ndim: int, what: str):
    if ctx.x.ndim != ndim:
        ctx.error(f"{what} needs a {ndim}-d input, got {ctx.x!r}")


@layer("conv2d")
def _conv2d(ctx: LayerContext) -> Node:
    """NCHW convolution: filters, kernel, stride, padding, dilation, groups, bias, activation."""
    t = ctx.table
    _need(ctx, 4, "conv2d (N, C, H, W)")
    filters = t.int("filters", min=1)
    k = _ints(ctx, "kernel", 3)
    stride, dil = _ints(ctx, "stride", 1), _ints(ctx, "dilation", 1)
    groups = t.int("groups", 1, min=1)
    padding = _padding(ctx)
    act = t.str("activation", "identity", choices=ACTIVATIONS)
    c = ctx.x.shape[1]
    if c % groups or filters % groups:
        ctx.error(f"groups={groups} must divide the input channels {c} and filters {filters}")
    fan = c // groups * k[0] * k[1]
    W = ctx.param("W", (filters, c // groups) + k, _fan_init(ctx, fan, filters * k[0] * k[1]))
    b = ctx.param("b", (filters,), ctx.builder.bias_init) if t.bool("bias", True) else None
    y = conv.conv2d(ctx.x, W, b, stride, padding, dil, groups)
    return _activation(y, act)


@layer("conv1d")
def _conv1d(ctx: LayerContext) -> Node:
    """NCL convolution: filters, kernel, stride, padding, dilation, groups, bias, activation."""
    t = ctx.table
    _need(ctx, 3, "conv1d (N, C, L)")
    filters = t.int("filters", min=1)
    k, stride, dil = t.int("kernel", 3, min=1), t.int("stride", 1, min=1), t.int(
        "dilation", 1, min=1)
    groups = t.int("groups", 1, min=1)
    padding = _padding(ctx)
    act = t.str("activation", "identity", choices=ACTIVATIONS)
    c = ctx.x.shape[1]
    W = ctx.param("W", (filters, c // groups, k), _fan_init(ctx, c // groups * k, filters * k))
    b = ctx.param("b", (filters,), ctx.builder.bias_init) if t.bool("bias", True) else None
    return _activation(conv.conv1d(ctx.x, W, b, stride, padding, dil, groups), act)


def _pool(fn):
    def build(ctx: LayerContext) -> Node:
        _need(ctx, 4, "pooling (N, C, H, W)")
        window = _ints(ctx, "window", 2)
        stride = _ints(ctx, "stride", window) if ctx.table.has("stride") else None
        return fn(ctx.x, window, stride, _padding(ctx))

    build.__doc__ = f"{fn.__name__}: window, stride (default: the window), padding."
    return build


layer("max_pool2d")(_pool(conv.max_pool2d))
layer("avg_pool2d")(_pool(conv.avg_pool2d))


@layer("global_avg_pool")
def _gap(ctx: LayerContext) -> Node:
    """Mean over the spatial axes: (N, C, ...) -> (N, C)."""
    return conv.global_avg_pool(ctx.x)


@layer("embedding")
def _embedding(ctx: LayerContext) -> Node:
    """int32 token ids (any shape) -> (..., dim) rows of E<name> (vocab, dim)."""
    t = ctx.table
    vocab, dim = t.int("vocab", min=1), t.int("dim", min=1)
    E = ctx.param("E", (vocab, dim), Init("normal", t.scale("scale", 1.0 / math.sqrt(dim))))
    if ctx.x.dtype != "int32":
        ctx.error(f"embedding needs int32 token ids, got {ctx.x!r}")
    return basic.embedding(ctx.x, E)


def _recurrent(kind: str):
    def build(ctx: LayerContext) -> Node:
        t = ctx.table
        _need(ctx, 3, f"{kind} (time, batch, features)")
        units = t.int("units", min=1)
        ret = t.str("return", "sequence", choices=("sequence", "last"))
        opts = {}
        if t.has("truncate"):
            opts["truncate"] = t.int("truncate", min=1)
        if t.has("checkpoint"):
            v = t.raw("checkpoint")
            if not (isinstance(v, bool) or (isinstance(v, int) and v >= 1)):
                ctx.error(f"expected true/false or a segment length >= 1, got {v!r}",
                          "checkpoint")
            opts["checkpoint"] = v
        T, B, width = ctx.x.shape
        gates = {"rnn": 1, "lstm": 4, "gru": 3}[kind]
        init = _fan_init(ctx, width, units)
        hinit = _fan_init(ctx, units, units)
        Wx = ctx.param("Wx", (width, gates * units), init)
        Wh = ctx.param("Wh", (units, gates * units), hinit)
        b = ctx.param("b", (gates * units,), ctx.builder.bias_init)
        h0 = broadcast_to(const(0.0, ctx.x.dtype), (B, units))
        if kind == "rnn":
            act = t.str("activation", "tanh", choices=ACTIVATIONS)
            hT, hs = recurrent.rnn(ctx.x, h0, Wx, Wh, b, act, **opts)
        elif kind == "lstm":
            (hT, _), hs = recurrent.lstm(ctx.x, h0, h0, Wx, Wh, b, **opts)
        else:
            bh = ctx.param("bh", (gates * units,), ctx.builder.bias_init)
            hT, hs = recurrent.gru(ctx.x, h0, Wx, Wh, b, bh, **opts)
        return hs if ret == "sequence" else hT

    build.__doc__ = (f"{kind} over time-major input (T, B, I): units, return "
                     "(sequence|last), truncate, checkpoint")
    return build


for _kind in ("rnn", "lstm", "gru"):
    layer(_kind)(_recurrent(_kind))


@layer("attention")
def _attention(ctx: LayerContext) -> Node:
    """Multi-head self-attention on (B, T, D): heads, causal, bias; output width D."""
    t = ctx.table
    _need(ctx, 3, "attention (batch, time, features)")
    heads, causal = t.int("heads", 1, min=1), t.bool("causal", False)
    d = ctx.x.shape[-1]
    if d % heads:
        ctx.error(f"heads={heads} must divide the width {d}", "heads")
    init = _fan_init(ctx, d, d)
    Ws = [ctx.param(p, (d, d), init) for p in ("Wq", "Wk", "Wv", "Wo")]
    bias = t.bool("bias", False)
    bs = [ctx.param(p, (d,), ctx.builder.bias_init) for p in ("bq", "bk", "bv", "bo")] \
        if bias else [None] * 4
    return attention.multi_head_attention(ctx.x, *Ws, heads=heads, causal=causal, bq=bs[0],
                                          bk=bs[1], bv=bs[2], bo=bs[3])


class _OnesInit(Init):
    """Norm scales (gamma) start at one."""

    def sample(self, rng, shape, dtype):
        return np.ones(shape, dtype)


ONES = _OnesInit("zeros")


@layer("layer_norm")
def _layer_norm(ctx: LayerContext) -> Node:
    """Normalise the last axis; gamma/beta params (scale, shift) unless affine = false."""
    t = ctx.table
    eps, affine = t.float("eps", 1e-5), t.bool("affine", True)
    d = ctx.x.shape[-1]
    g = ctx.param("gamma", (d,), ONES) if affine else None
    b = ctx.param("beta", (d,), Init("zeros")) if affine else None
    return norm.layer_norm(ctx.x, g, b, -1, eps)


@layer("batch_norm")
def _batch_norm(ctx: LayerContext) -> Node:
    """Training-mode batch norm over every axis but the feature `axis` (default 1)."""
    t = ctx.table
    eps, affine, axis = t.float("eps", 1e-5), t.bool("affine", True), t.int("axis", 1)
    c = ctx.x.shape[axis]
    g = ctx.param("gamma", (c,), ONES) if affine else None
    b = ctx.param("beta", (c,), Init("zeros")) if affine else None
    return norm.batch_norm(ctx.x, g, b, axis, eps)


@layer("residual")
def _residual(ctx: LayerContext) -> Node:
    """x + <skip>: add the output of an earlier layer or input named by `skip`."""
    t = ctx.table
    other = ctx.lookup(t.str("skip"), "skip")
    if other.shape != ctx.x.shape:
        ctx.error(f"residual: {t.data['skip']!r} has shape {list(other.shape)} but the input "
                  f"has {list(ctx.x.shape)}", "skip")
    return ctx.x + other


@layer("reshape")
def _reshape(ctx: LayerContext) -> Node:
    """Reshape to `shape` (one entry may be -1)."""
    v = ctx.table.raw("shape", expected="a list of integers")
    if not isinstance(v, list) or not all(isinstance(s, int) for s in v):
        ctx.error(f"expected a list of integers, got {v!r}", "shape")
    return reshape(ctx.x, tuple(v))
