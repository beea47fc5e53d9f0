"""Integer indexing: take (gather) and one_hot, for labels and embeddings.

Integer operands never receive gradients. The compiled function checks index ranges of
integer inputs at call time, so an out-of-range label is an error, never a silent zero.
"""

from __future__ import annotations

from ..errors import DTypeError, ShapeError
from ..ir.dtypes import canonical, is_float
from ..ir.node import Node, make
from .elementwise import as_node
from .registry import Op, register


def _infer_take(inputs, attrs):
    x, idx = inputs
    axis = attrs["axis"]
    if idx.dtype != "int32":
        raise DTypeError(f"take: indices must be int32, got {idx.dtype}")
    if not 0 <= axis < x.ndim:
        raise ShapeError(f"take: axis {axis} out of range for shape {x.shape}")
    return x.shape[:axis] + idx.shape + x.shape[axis + 1 :], x.dtype


def _vjp_take(y, g, needs):
    # d x = one_hot(idx)ᵀ @ g, with the gathered axis moved to the front.
    from .linalg import matmul2
    from .movement import reshape, swap_last, transpose

    x, idx = y.inputs
    if not needs[0]:
        return None, None
    axis, n, k = y.attr("axis"), x.shape[y.attr("axis")], idx.size
    perm = (
        tuple(range(axis, axis + idx.ndim))
        + tuple(range(axis))
        + tuple(range(axis + idx.ndim, g.ndim))
    )
    gt = reshape(transpose(g, perm), (k, -1))
    oh = one_hot(reshape(idx, (k,)), n, x.dtype)  # (k, n)
    dx = matmul2(swap_last(oh), gt)  # (n, rest)
    rest = x.shape[:axis] + x.shape[axis + 1 :]
    dx = reshape(dx, (n,) + rest)
    inv = tuple(range(1, axis + 1)) + (0,) + tuple(range(axis + 1, x.ndim))
    return transpose(dx, inv), None


register(Op("take", "index", _infer_take, _vjp_take, "gather x along `axis` at int32 indices"))


def take(x, idx, axis=0) -> Node:
    x, idx = as_node(x), as_node(idx)
    if not -x.ndim <= axis < x.ndim:
        raise ShapeError(f"take: axis {axis} out of range for shape {x.shape}")
    return make("take", (x, idx), axis=axis % x.ndim)


def _infer_one_hot(inputs, attrs):
    (idx,) = inputs
    if idx.dtype != "int32":
        raise DTypeError(f"one_hot: indices must be int32, got {idx.dtype}")
    return idx.shape + (attrs["n"],), attrs["dtype"]


register(
    Op(
        "one_hot",
        "index",
        _infer_one_hot,
        lambda y, g, n: (None,),
        "one_hot(idx, n)[..., j] = (idx == j); no gradient",
    )
)


def one_hot(idx, n: int, dtype="float32") -> Node:
    idx = as_node(idx)
    dtype = canonical(dtype)
    if not is_float(dtype):
        raise DTypeError(f"one_hot: dtype must be float, got {dtype}")
    if n < 1:
        raise ShapeError(f"one_hot: n must be >= 1, got {n}")
    return make("one_hot", (idx,), n=int(n), dtype=dtype)
