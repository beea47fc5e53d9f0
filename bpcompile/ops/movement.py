"""Movement ops: reshape, transpose, broadcast_to, concatenate, slice, pad."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ShapeError
from ..ir.hints import Shape, TensorLike
from ..ir.node import Node, make
from . import jvp_rules
from .elementwise import as_node, promoted
from .leaves import static_shape
from .registry import Op, register


def _infer_reshape(inputs, attrs):
    (x,) = inputs
    shape = attrs["shape"]
    if math.prod(shape) != x.size:  # math.prod: exact, and cheap (shape inference is hot)
        raise ShapeError(f"reshape: cannot reshape {x.shape} ({x.size} elements) to {shape}")
    return shape, x.dtype


register(
    Op(
        "reshape",
        "movement",
        _infer_reshape,
        lambda y, g, n: (reshape(g, y.inputs[0].shape),),
        "row-major reshape",
        jvp=jvp_rules.linear,
    )
)


def reshape(x: TensorLike, shape: Shape) -> Node:
    x = as_node(x)
    shape = static_shape("reshape", shape, infer=True)
    if shape.count(-1) > 1:
        raise ShapeError(f"reshape: at most one -1 allowed, got {shape}")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if known == 0 or x.size % known:
            raise ShapeError(f"reshape: cannot reshape {x.shape} to {shape}")
        shape = tuple(x.size // known if s == -1 else s for s in shape)
    if shape == x.shape:
        return x
    return make("reshape", (x,), shape=shape)


def _infer_transpose(inputs, attrs):
    (x,) = inputs
    perm = attrs["perm"]
    if sorted(perm) != list(range(x.ndim)):
        raise ShapeError(f"transpose: {perm} is not a permutation of the axes of shape {x.shape}")
    return tuple(x.shape[p] for p in perm), x.dtype


register(
    Op(
        "transpose",
        "movement",
        _infer_transpose,
        lambda y, g, n: (transpose(g, tuple(np.argsort(y.attr("perm")).tolist())),),
        "permute axes",
        jvp=jvp_rules.linear,
    )
)


def transpose(x: TensorLike, perm: Sequence[int] | None = None) -> Node:
    x = as_node(x)
    perm = (
        tuple(reversed(range(x.ndim)))
        if perm is None
        else tuple(int(p) % max(x.ndim, 1) for p in perm)
    )
    if perm == tuple(range(x.ndim)):
        return x
    return make("transpose", (x,), perm=perm)


def swap_last(x: Node) -> Node:
    """Swap the last two axes (matrix transpose of a batch)."""
    perm = list(range(x.ndim))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return transpose(x, perm)


def _infer_broadcast(inputs, attrs):
    (x,) = inputs
    shape = attrs["shape"]
    try:
        ok = tuple(np.broadcast_shapes(x.shape, shape)) == shape
    except ValueError:
        ok = False
    if not ok:
        raise ShapeError(f"broadcast_to: cannot broadcast {x.shape} to {shape}")
    return shape, x.dtype


register(
    Op(
        "broadcast_to",
        "movement",
        _infer_broadcast,
        lambda y, g, n: (unbroadcast(g, y.inputs[0].shape),),
        "numpy-style broadcast to a larger shape",
        jvp=jvp_rules.linear,
    )
)


def broadcast_to(x: TensorLike, shape: Shape) -> Node:
    x = as_node(x)
    shape = static_shape("broadcast_to", shape)
    if x.shape == shape:
        return x
    return make("broadcast_to", (x,), shape=shape)


def unbroadcast(g: Node, shape: tuple[int, ...]) -> Node:
    """Sum a cotangent of a broadcast result back down to `shape` (shared by every VJP)."""
    from .reduce import sum_

    shape = tuple(shape)
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, s in enumerate(shape) if s == 1 and g.shape[lead + i] != 1
    )
    return reshape(sum_(g, axes), shape)


def _infer_concat(inputs, attrs):
    axis = attrs["axis"]
    first = inputs[0]
    for x in inputs:
        if x.ndim != first.ndim or any(
            a != b for i, (a, b) in enumerate(zip(x.shape, first.shape)) if i != axis
        ):
            raise ShapeError(
                f"concatenate: shapes {[i.shape for i in inputs]} differ off axis {axis}"
            )
        if x.dtype != first.dtype:
            raise ShapeError(f"concatenate: dtypes differ: {[i.dtype for i in inputs]}")
    shape = list(first.shape)
    shape[axis] = sum(x.shape[axis] for x in inputs)
    return tuple(shape), first.dtype


def _vjp_concat(y, g, needs):
    axis, off, out = y.attr("axis"), 0, []
    for x, need in zip(y.inputs, needs):
        n = x.shape[axis]
        if need:
            starts = [0] * g.ndim
            stops = list(g.shape)
            starts[axis], stops[axis] = off, off + n
            out.append(slice_(g, starts, stops, [1] * g.ndim))
        else:
            out.append(None)
        off += n
    return tuple(out)


register(Op("concatenate", "movement", _infer_concat, _vjp_concat, "join along an axis",
            jvp=jvp_rules.linear))


def concatenate(xs: Sequence[TensorLike], axis: int = 0) -> Node:
    xs = list(xs)
    if not xs:
        raise ShapeError("concatenate: needs at least one operand")
    nodes = promoted("concatenate", *xs)  # one dtype, as jnp.concatenate
    if not -nodes[0].ndim <= axis < nodes[0].ndim:
        raise ShapeError(f"concatenate: axis {axis} out of range for shape {nodes[0].shape}")
    if len(nodes) == 1:
        return nodes[0]
    return make("concatenate", nodes, axis=axis % nodes[0].ndim)


def stack(xs: Sequence[TensorLike], axis: int = 0) -> Node:
    """Join same-shape tensors along a new axis, as `jnp.stack` (a composite: reshape each to
    a size-1 axis, then one concatenate, so it needs no rules of its own)."""
    xs = list(xs)
    if not xs:
        raise ShapeError("stack: needs at least one operand")
    nodes = promoted("stack", *xs)
    shapes = {n.shape for n in nodes}
    if len(shapes) > 1:
        raise ShapeError(f"stack: operands must share one shape, got {[n.shape for n in nodes]}")
    nd = nodes[0].ndim + 1
    if not -nd <= axis < nd:
        raise ShapeError(f"stack: axis {axis} out of range for {nd}-d result of shapes "
                         f"{nodes[0].shape}")
    ax = axis % nd
    shape = nodes[0].shape[:ax] + (1,) + nodes[0].shape[ax:]
    return concatenate([reshape(n, shape) for n in nodes], axis=ax)


def _slice_len(start, stop, step):
    return max(0, (stop - start + step - 1) // step)


def _infer_slice(inputs, attrs):
    (x,) = inputs
    st, sp_, stp = attrs["starts"], attrs["stops"], attrs["steps"]
    shape = []
    for d, (a, b, c) in enumerate(zip(st, sp_, stp)):
        if not (0 <= a <= b <= x.shape[d]) or c < 1:
            raise ShapeError(f"slice: bad range {a}:{b}:{c} for axis {d} of shape {x.shape}")
        shape.append(_slice_len(a, b, c))
    return tuple(shape), x.dtype


def _vjp_slice(y, g, needs):
    x = y.inputs[0]
    lo, hi, interior = [], [], []
    for d, (a, c) in enumerate(zip(y.attr("starts"), y.attr("steps"))):
        n = y.shape[d]
        last = a + (n - 1) * c + 1 if n else a
        lo.append(a)
        hi.append(x.shape[d] - last)
        interior.append(c - 1 if n > 1 else 0)
    return (pad(g, lo, hi, interior),)


register(
    Op(
        "slice",
        "movement",
        _infer_slice,
        _vjp_slice,
        "basic slicing start:stop:step (positive steps) on every axis",
        jvp=jvp_rules.linear,
    )
)


def slice_(x: TensorLike, starts: Sequence[int], stops: Sequence[int],
           steps: Sequence[int]) -> Node:
    x = as_node(x)
    starts, stops, steps = (tuple(int(v) for v in s) for s in (starts, stops, steps))
    if starts == (0,) * x.ndim and stops == x.shape and steps == (1,) * x.ndim:
        return x
    return make("slice", (x,), starts=starts, stops=stops, steps=steps)


def _infer_pad(inputs, attrs):
    (x,) = inputs
    shape = []
    for d, (lo, hi, it) in enumerate(zip(attrs["lo"], attrs["hi"], attrs["interior"])):
        if lo < 0 or hi < 0 or it < 0:
            raise ShapeError(f"pad: negative padding on axis {d}")
        n = x.shape[d]
        shape.append(lo + hi + n + max(n - 1, 0) * it)
    return tuple(shape), x.dtype


def _vjp_pad(y, g, needs):
    x = y.inputs[0]
    starts = y.attr("lo")
    steps = tuple(i + 1 for i in y.attr("interior"))
    stops = tuple(a + (n - 1) * s + 1 if n else a for a, n, s in zip(starts, x.shape, steps))
    return (slice_(g, starts, stops, steps),)


register(
    Op(
        "pad",
        "movement",
        _infer_pad,
        _vjp_pad,
        "zero padding: lo/hi per axis and `interior` zeros between elements (as lax.pad)",
        jvp=jvp_rules.linear,
    )
)


def pad(x: TensorLike, lo: Sequence[int], hi: Sequence[int],
        interior: Sequence[int] | None = None) -> Node:
    x = as_node(x)
    lo, hi = tuple(int(v) for v in lo), tuple(int(v) for v in hi)
    interior = (0,) * x.ndim if interior is None else tuple(int(v) for v in interior)
    if not any(lo) and not any(hi) and not any(interior):
        return x
    return make("pad", (x,), lo=lo, hi=hi, interior=interior)


def getitem(x: Node, index: Any) -> Node:
    """x[index] for ints, slices (positive steps), None and Ellipsis; integer tensors -> take."""
    from .index import take

    if isinstance(index, Node):
        return take(x, index, axis=0)
    if not isinstance(index, tuple):
        index = (index,)
    if sum(i is Ellipsis for i in index) > 1:
        raise ShapeError("index: at most one Ellipsis")
    if Ellipsis in [i for i in index if i is Ellipsis]:
        k = index.index(Ellipsis)
        n_real = sum(i is not None for i in index) - 1
        index = index[:k] + (slice(None),) * (x.ndim - n_real) + index[k + 1 :]
    if sum(i is not None for i in index) > x.ndim:
        raise ShapeError(f"index: too many indices {index} for shape {x.shape}")
    starts, stops, steps, out_shape = [], [], [], []
    d = 0
    for i in index:
        if i is None:
            out_shape.append(1)
            continue
        n = x.shape[d]
        if isinstance(i, (int, np.integer)):
            j = int(i)
            if not -n <= j < n:
                raise ShapeError(f"index {j} out of range for axis {d} of size {n}")
            j %= n
            starts.append(j)
            stops.append(j + 1)
            steps.append(1)
        elif isinstance(i, slice):
            a, b, c = i.indices(n)
            if c < 1:
                raise ShapeError(f"index: negative slice steps are not supported ({i})")
            b = max(a, b)
            starts.append(a)
            stops.append(b)
            steps.append(c)
            out_shape.append(_slice_len(a, b, c))
        else:
            raise ShapeError(f"index: unsupported index {i!r}")
        d += 1
    for k in range(d, x.ndim):
        starts.append(0)
        stops.append(x.shape[k])
        steps.append(1)
        out_shape.append(x.shape[k])
    return reshape(slice_(x, starts, stops, steps), out_shape)
