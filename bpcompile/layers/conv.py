"""Convolution and pooling as composites of primitives (docs/design.md principle 4).

Nothing here carries a VJP or a lowering: conv2d is im2col (pad, kh·kw strided slices,
concatenate, one matmul), pooling is slices or a reshape plus a reduction. Every backend runs
them with no new code, and gradients come from the primitives' VJP rules.

Layouts follow `jax.lax.conv_general_dilated`'s defaults: inputs NCHW, kernels OIHW (for
groups: O = groups·O_g, I = C / groups, output feature o belongs to group o // O_g).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import numpy as np

from ..errors import ShapeError
from ..ir.hints import TensorLike
from ..ir.node import Node
from ..ops.elementwise import as_node, eq, neg, where
from ..ops.leaves import const, iota
from ..ops.linalg import matmul
from ..ops.movement import concatenate, pad, reshape, slice_, transpose
from ..ops.reduce import max_, mean, sum_

# "valid", "same", an int for every side, or per spatial axis an int or (lo, hi)
Padding = str | int | Sequence[int | tuple[int, int]]


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ShapeError(f"{what} must be an int or a pair, got {v}")
    return v


def conv_padding(padding: Padding, in_hw: Sequence[int],
                 window: Sequence[int], stride: Sequence[int],
                 dilation: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Resolve "valid" / "same" / explicit padding to ((lo, hi) per spatial axis), as lax does.

    "same": output size ceil(in / stride), total padding split with the extra element at the
    end (lax.padtype_to_pads). Explicit: an int (all sides), or per axis an int or (lo, hi).
    """
    nd = len(in_hw)
    if isinstance(padding, str):
        p = padding.lower()
        if p == "valid":
            return ((0, 0),) * nd
        if p == "same":
            out = []
            for n, k, s, d in zip(in_hw, window, stride, dilation):
                eff = (k - 1) * d + 1
                total = max((math.ceil(n / s) - 1) * s + eff - n, 0)
                out.append((total // 2, total - total // 2))
            return tuple(out)
        raise ShapeError(f"padding must be 'valid', 'same' or explicit, got {padding!r}")
    if isinstance(padding, (int, np.integer)):
        return ((int(padding), int(padding)),) * nd
    entries = tuple(padding)
    if len(entries) != nd:
        raise ShapeError(f"padding {entries} needs one entry per spatial axis ({nd})")
    out = []
    for e in entries:
        lo, hi = (e, e) if isinstance(e, (int, np.integer)) else tuple(e)
        if lo < 0 or hi < 0:
            raise ShapeError(f"padding must be non-negative, got {entries}")
        out.append((int(lo), int(hi)))
    return tuple(out)


def _out_size(n, k, s, d, what):
    eff = (k - 1) * d + 1
    if n < eff:
        raise ShapeError(f"{what}: window {k} (dilation {d}) is larger than the padded input {n}")
    return (n - eff) // s + 1


def _windows(xp: Node, window, stride, dilation, out_hw) -> list[Node]:
    """The kh·kw strided views of a padded NC(H)(W) tensor, each (N, C, Ho, Wo), row-major."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = window, stride, dilation, out_hw
    n, c = xp.shape[:2]
    views = []
    for i in range(kh):
        for j in range(kw):
            a, b = i * dh, j * dw
            stops = (n, c, a + (ho - 1) * sh + 1, b + (wo - 1) * sw + 1)
            views.append(slice_(xp, (0, 0, a, b), stops, (1, 1, sh, sw)))
    return views


def conv2d(x: TensorLike, w: TensorLike, b: TensorLike | None = None,
           stride: int | Sequence[int] = 1, padding: Padding = "valid",
           dilation: int | Sequence[int] = 1, groups: int = 1) -> Node:
    """2-D cross-correlation, NCHW input (N, C, H, W), OIHW kernel (O, C/groups, kh, kw).

    Matches `lax.conv_general_dilated(x, w, stride, padding, rhs_dilation=dilation,
    feature_group_count=groups)`. Implemented as im2col: the padded input's kh·kw strided
    slices are stacked into patches (N·Ho·Wo, C·kh·kw) and multiplied by the reshaped kernel
    in one matmul (one batched matmul over groups).
    """
    x, w = as_node(x), as_node(w)
    if x.ndim != 4 or w.ndim != 4:
        raise ShapeError(f"conv2d: needs x (N,C,H,W) and w (O,I,kh,kw), got {x.shape}, {w.shape}")
    n, c, h, wd = x.shape
    o, ci, kh, kw = w.shape
    if groups < 1 or c % groups or o % groups or ci != c // groups:
        raise ShapeError(f"conv2d: input channels {c}, kernel {w.shape} and groups={groups} "
                         f"disagree (need C = groups·I and O divisible by groups)")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    pads = conv_padding(padding, (h, wd), (kh, kw), stride, dilation)
    xp = pad(x, (0, 0, pads[0][0], pads[1][0]), (0, 0, pads[0][1], pads[1][1]))
    ho = _out_size(xp.shape[2], kh, stride[0], dilation[0], "conv2d")
    wo = _out_size(xp.shape[3], kw, stride[1], dilation[1], "conv2d")
    k = kh * kw
    views = _windows(xp, (kh, kw), stride, dilation, (ho, wo))
    # patches[n, ho, wo, c, k] = xp[n, c, ho*s + i*d, wo*s + j*d] with k = i*kw + j: the
    # views joined along the channel axis (k major), then split and moved last in one
    # transpose (no per-view reshape: 2·kh·kw fewer nodes per conv with its gradient)
    stacked = reshape(concatenate(views, axis=1) if k > 1 else views[0], (n, k, c, ho, wo))
    patches = transpose(stacked, (0, 3, 4, 2, 1))
    if groups == 1:
        cols = reshape(patches, (n * ho * wo, c * k))
        wm = transpose(reshape(w, (o, c * k)), (1, 0))  # (C·k, O)
        out = reshape(matmul(cols, wm), (n, ho, wo, o))
    else:
        g, og = groups, o // groups
        cols = transpose(reshape(patches, (n * ho * wo, g, ci * k)), (1, 0, 2))  # (G, NHW, Ci·k)
        wm = transpose(reshape(w, (g, og, ci * k)), (0, 2, 1))  # (G, Ci·k, Og)
        out = reshape(transpose(matmul(cols, wm), (1, 0, 2)), (n, ho, wo, o))
    out = transpose(out, (0, 3, 1, 2))
    if b is not None:
        b = as_node(b)
        if b.shape != (o,):
            raise ShapeError(f"conv2d: bias shape {b.shape} != ({o},)")
        out = out + reshape(b, (1, o, 1, 1))
    return out


def conv1d(x: TensorLike, w: TensorLike, b: TensorLike | None = None, stride: int = 1,
           padding: Padding = "valid", dilation: int = 1,
           groups: int = 1) -> Node:
    """1-D cross-correlation, NCL input, OIK kernel: conv2d on a height-1 image."""
    x, w = as_node(x), as_node(w)
    if x.ndim != 3 or w.ndim != 3:
        raise ShapeError(f"conv1d: needs x (N,C,L) and w (O,I,k), got {x.shape}, {w.shape}")
    pl: tuple
    if isinstance(padding, str):
        (pl,) = conv_padding(padding, (x.shape[2],), (w.shape[2],), (int(stride),),
                             (int(dilation),))
    elif isinstance(padding, (int, np.integer)):
        pl = (int(padding), int(padding))
    else:
        nested = len(padding) == 1 and not isinstance(padding[0], (int, np.integer))
        pl = tuple(cast(tuple, padding[0])) if nested else tuple(padding)
    x4 = reshape(x, (x.shape[0], x.shape[1], 1, x.shape[2]))
    w4 = reshape(w, (w.shape[0], w.shape[1], 1, w.shape[2]))
    y = conv2d(x4, w4, b, (1, stride), ((0, 0), pl), (1, dilation), groups)
    return reshape(y, (y.shape[0], y.shape[1], y.shape[3]))


def _pool_setup(x: TensorLike, window: int | Sequence[int], stride: int | Sequence[int] | None,
                padding: Padding, what: str
                ) -> tuple[Node, tuple[int, int], tuple[int, int], tuple[tuple[int, int], ...]]:
    x = as_node(x)
    if x.ndim != 4:
        raise ShapeError(f"{what}: needs an NCHW input, got shape {x.shape}")
    window = _pair(window, "window")
    stride = window if stride is None else _pair(stride, "stride")
    pads = conv_padding(padding, x.shape[2:], window, stride, (1, 1))
    return x, window, stride, pads


def _window_stack(xp: Node, window, stride) -> Node:
    """(N, C, Ho, Wo, kh·kw): every pooling window's elements along the last axis, row-major."""
    n, c, h, w = xp.shape
    (kh, kw), (sh, sw) = window, stride
    ho, wo = _out_size(h, kh, sh, 1, "pool"), _out_size(w, kw, sw, 1, "pool")
    if (kh, kw) == (sh, sw):  # non-overlapping: a reshape of the (cropped) input
        xc = slice_(xp, (0, 0, 0, 0), (n, c, ho * kh, wo * kw), (1, 1, 1, 1))
        t = transpose(reshape(xc, (n, c, ho, kh, wo, kw)), (0, 1, 2, 4, 3, 5))
        return reshape(t, (n, c, ho, wo, kh * kw))
    views = _windows(xp, window, stride, (1, 1), (ho, wo))
    # joined along the channel axis, as conv2d's patches (no per-view reshape)
    stacked = reshape(concatenate(views, axis=1), (n, kh * kw, c, ho, wo))
    return transpose(stacked, (0, 2, 3, 4, 1))


def first_max(stack: Node, axis: int = -1) -> Node:
    """max over `axis` whose gradient goes entirely to the FIRST maximal element.

    This is JAX's rule for reduce_window max (select_and_scatter picks the first maximum in
    row-major window order); the `max` primitive instead splits ties evenly. The selection is
    built from primitives with no gradient (eq, iota, where), so only the chosen element's
    value - which equals the maximum exactly - is on the gradient path.
    """
    axis = axis % stack.ndim
    k = stack.shape[axis]
    m = max_(stack, axis, keepdims=True)
    idx = reshape(iota((k,), 0, stack.dtype),
                  tuple(k if a == axis else 1 for a in range(stack.ndim)))  # broadcasts
    # first index attaining the max, as -max(where(is_max, -idx, -k))
    neg_first = max_(where(eq(stack, m), neg(idx), const(-float(k), stack.dtype)), axis,
                     keepdims=True)
    chosen = eq(neg(idx), neg_first)
    return sum_(where(chosen, stack, const(0.0, stack.dtype)), axis)


def max_pool2d(x: TensorLike, window: int | Sequence[int] = 2,
               stride: int | Sequence[int] | None = None,
               padding: Padding = "valid") -> Node:
    """Max pooling over (kh, kw) windows of an NCHW tensor (stride defaults to the window).

    Padding is with -inf, as `lax.reduce_window(x, -inf, lax.max, ...)`. Gradient tie rule:
    the first maximal element of each window (row-major) receives the whole gradient, as in
    JAX; see `first_max`.
    """
    x, window, stride, pads = _pool_setup(x, window, stride, padding, "max_pool2d")
    if any(p for pp in pads for p in pp):
        n, c, h, w = x.shape
        lo, hi = (0, 0, pads[0][0], pads[1][0]), (0, 0, pads[0][1], pads[1][1])
        inside = np.zeros((h + lo[2] + hi[2], w + lo[3] + hi[3]), bool)
        inside[lo[2]:lo[2] + h, lo[3]:lo[3] + w] = True
        x = where(const(inside), pad(x, lo, hi), const(-np.inf, x.dtype))
    return first_max(_window_stack(x, window, stride), -1)


def avg_pool2d(x: TensorLike, window: int | Sequence[int] = 2,
               stride: int | Sequence[int] | None = None,
               padding: Padding = "valid") -> Node:
    """Average pooling; padded zeros count in the mean (lax.reduce_window add / window size)."""
    x, window, stride, pads = _pool_setup(x, window, stride, padding, "avg_pool2d")
    x = pad(x, (0, 0, pads[0][0], pads[1][0]), (0, 0, pads[0][1], pads[1][1]))
    return mean(_window_stack(x, window, stride), -1)


def global_avg_pool(x: TensorLike) -> Node:
    """Mean over every spatial axis: (N, C, ...) -> (N, C)."""
    x = as_node(x)
    if x.ndim < 3:
        raise ShapeError(f"global_avg_pool: needs (N, C, spatial...), got {x.shape}")
    return mean(x, tuple(range(2, x.ndim)))


def flatten(x: TensorLike, start: int = 1) -> Node:
    """Collapse axes start.. into one: (N, C, H, W) -> (N, C·H·W)."""
    x = as_node(x)
    return reshape(x, x.shape[:start] + (-1,))
