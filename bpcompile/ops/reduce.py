"""Reductions over axes: sum, max and min (mean is a composite: sum times 1/n; argmax and
argmin are composites of max/min, eq and iota that pick the first extremum, as JAX does)."""

from __future__ import annotations

from ..errors import ShapeError
from ..ir.dtypes import DEFAULT_FLOAT, is_float, is_half
from ..ir.hints import Axis, TensorLike
from ..ir.node import Node, make
from . import jvp_rules
from .elementwise import as_node, cast, div, eq, mul
from .registry import Op, register


def normalize_axes(op: str, axes: Axis, ndim: int) -> tuple:
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, int):
        axes = (axes,)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ShapeError(f"{op}: axis {a} out of range for a {ndim}-d operand")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"{op}: repeated axis in {axes}")
    return tuple(sorted(out))


def keep_shape(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple:
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


def _infer(op):
    def infer(inputs, attrs):
        (x,) = inputs
        axes, keep = attrs["axes"], attrs["keepdims"]
        if op in ("max", "min") and any(x.shape[a] == 0 for a in axes):
            raise ShapeError(
                f"{op}: reduction over an empty axis of shape {x.shape} has no identity"
            )
        if x.dtype == "bool":
            raise ShapeError(f"{op}: cannot reduce a bool tensor; cast it first")
        shape = (
            keep_shape(x.shape, axes)
            if keep
            else tuple(s for i, s in enumerate(x.shape) if i not in axes)
        )
        return shape, x.dtype

    return infer


def _expand(g: Node, x: Node, axes) -> Node:
    """Bring a reduced cotangent back to x's shape: reshape to keepdims, then broadcast."""
    from .movement import broadcast_to, reshape

    return broadcast_to(reshape(g, keep_shape(x.shape, axes)), x.shape)


def _vjp_sum(y, g, needs):
    x = y.inputs[0]
    return (_expand(g, x, y.attr("axes")),)


def _vjp_max(y, g, needs):
    # (max and min alike) Ties share the gradient evenly, as jax.lax.reduce_max's JVP does.
    x = y.inputs[0]
    axes = y.attr("axes")
    mask = cast(eq(x, _expand(y, x, axes)), x.dtype)
    count = sum_(mask, axes, keepdims=True)
    return (mul(_expand(g, x, axes), div(mask, count)),)


register(Op("sum", "reduce", _infer("sum"), _vjp_sum, "sum over `axes` (keepdims optional)",
            jvp=jvp_rules.linear))
register(
    Op(
        "min",
        "reduce",
        _infer("min"),
        _vjp_max,
        "min over `axes`; the gradient is split evenly among tied minima (as in JAX)",
    )
)
register(
    Op(
        "max",
        "reduce",
        _infer("max"),
        _vjp_max,
        "max over `axes`; the gradient is split evenly among tied maxima (as in JAX)",
    )
)


def sum_(x: TensorLike, axes: Axis = None, keepdims: bool = False) -> Node:
    x = as_node(x)
    if x.dtype == "bool":
        x = cast(x, "int32")
    axes = normalize_axes("sum", axes, x.ndim)
    if not axes and not keepdims:
        return x
    if is_half(x.dtype):  # 16-bit sums accumulate in float32, rounded once (as jnp.sum)
        return cast(make("sum", (cast(x, "float32"),), axes=axes, keepdims=bool(keepdims)),
                    x.dtype)
    return make("sum", (x,), axes=axes, keepdims=bool(keepdims))


def max_(x: TensorLike, axes: Axis = None, keepdims: bool = False) -> Node:
    x = as_node(x)
    axes = normalize_axes("max", axes, x.ndim)
    if not axes:
        return x
    return make("max", (x,), axes=axes, keepdims=bool(keepdims))


def min_(x: TensorLike, axes: Axis = None, keepdims: bool = False) -> Node:
    x = as_node(x)
    axes = normalize_axes("min", axes, x.ndim)
    if not axes:
        return x
    return make("min", (x,), axes=axes, keepdims=bool(keepdims))


def _arg_extreme(op: str, x: TensorLike, axis: int | None, keepdims: bool) -> Node:
    """Index (int32) of the first max/min along `axis` (flattened when None), as jnp.argmax:
    the smallest index i where x[i] equals the extremum; a NaN counts as the extremum (max/min
    propagate NaN), so the first NaN wins as in JAX."""
    from .elementwise import logical_or, ne, where
    from .leaves import iota
    from .movement import reshape

    x = as_node(x)
    if x.dtype == "bool":
        x = cast(x, "int32")
    if axis is None:
        shape = x.shape
        x, ax = reshape(x, (x.size,)), 0
    else:
        if not isinstance(axis, int) or not -x.ndim <= axis < x.ndim:
            raise ShapeError(f"{op}: axis {axis!r} out of range for a {x.ndim}-d operand")
        ax = axis % x.ndim
    n = x.shape[ax]
    if n == 0:
        raise ShapeError(f"{op}: empty axis {ax} of shape {x.shape}")
    ext = (max_ if op == "argmax" else min_)(x, ax, keepdims=True)
    hit = eq(x, ext)
    if is_float(x.dtype):
        hit = logical_or(hit, ne(x, x))
    idx = iota(x.shape, ax, "int32")
    first = min_(where(hit, idx, n), ax, keepdims=keepdims or axis is None)
    if axis is None:
        first = reshape(first, (1,) * len(shape) if keepdims else ())
    return first


def argmax(x: TensorLike, axis: int | None = None, keepdims: bool = False) -> Node:
    """int32 index of the first maximum along `axis` (of the flattened x when None)."""
    return _arg_extreme("argmax", x, axis, keepdims)


def argmin(x: TensorLike, axis: int | None = None, keepdims: bool = False) -> Node:
    """int32 index of the first minimum along `axis` (of the flattened x when None)."""
    return _arg_extreme("argmin", x, axis, keepdims)


def mean(x: TensorLike, axes: Axis = None, keepdims: bool = False) -> Node:
    x = as_node(x)
    if not is_float(x.dtype):
        x = cast(x, DEFAULT_FLOAT)
    ax = normalize_axes("mean", axes, x.ndim)
    n = 1
    for a in ax:
        n *= x.shape[a]
    if n == 0:
        raise ShapeError(f"mean: reduction over an empty axis of shape {x.shape}")
    return mul(sum_(x, ax, keepdims), 1.0 / n)
