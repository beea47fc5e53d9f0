"""Integer indexing: take (gather), scatter_add and one_hot, for labels and embeddings.

Index semantics (those of `jnp.take` / `jnp.take_along_axis` in their default mode, where sound):

- `take(x, idx, axis)`: an index i in [-n, n) (n = x.shape[axis]) selects x[..., i, ...];
  a negative index counts from the end (wraps once), in the forward pass and in the gradient,
  which is scattered (summed) to the wrapped position.
- `one_hot(labels, n)`: a label in [0, n) gives the row e_label. A label outside [0, n) is an
  error (JAX gives a zero row, which with cross_entropy would give a loss and a gradient that
  disagree). `wrap=True` (take's gradient) also accepts [-n, -1], counting from the end.
- Anything else is an error: int32 *inputs* are range-checked when the compiled function is
  called (`Signature`, the LLVM fast path, the exported C entry); indices *computed* in the
  graph are checked at run time by the NumPy and LLVM backends (`IndexRangeError`), and the
  native code never reads or writes out of bounds. A jitted JAX program cannot raise: there an
  out-of-range computed index poisons its result (NaN gathered values, NaN one-hot rows), so
  the loss and every gradient it reaches are NaN, never a finite wrong answer.

Integer operands never receive gradients.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import DTypeError, IndexRangeError, ShapeError
from ..ir.dtypes import canonical, is_float
from ..ir.hints import DTypeLike, TensorLike
from ..ir.node import Node, make
from ..ir.provenance import GRAD_OF
from . import jvp_rules
from .elementwise import as_node
from .leaves import const
from .registry import Op, register


def _infer_take(inputs, attrs):
    x, idx = inputs
    axis = attrs["axis"]
    if idx.dtype != "int32":
        raise DTypeError(f"take: indices must be int32, got {idx.dtype}")
    if not 0 <= axis < x.ndim:
        raise ShapeError(f"take: axis {axis} out of range for shape {x.shape}")
    return x.shape[:axis] + idx.shape + x.shape[axis + 1 :], x.dtype


# From this axis size on, take's gradient is a scatter_add, O(k·rest), instead of the product
# one_hot(idx)ᵀ @ g, O(k·n·rest): on LLVM a 10000-row embedding's gradient (k = 512, d = 64)
# took 41 ms as the product and 0.19 ms as the scatter (docs/performance.md). Smaller axes keep
# the product (a BLAS-friendly form every earlier graph was compiled with).
SCATTER_MIN = 64


def _vjp_take(y, g, needs):
    # d x = one_hot(idx)ᵀ @ g, with the gathered axis moved to the front; wrap=True scatters a
    # negative index's cotangent to the row it read (x[-1] is x[n-1]).
    from .linalg import matmul2
    from .movement import broadcast_to, reshape, swap_last, transpose

    x, idx = y.inputs
    if not needs[0]:
        return None, None
    axis, n, k = y.attr("axis"), x.shape[y.attr("axis")], idx.size
    if n >= SCATTER_MIN:
        zeros = broadcast_to(const(0.0, x.dtype), x.shape)
        return scatter_add(zeros, idx, g, axis), None
    perm = (
        tuple(range(axis, axis + idx.ndim))
        + tuple(range(axis))
        + tuple(range(axis + idx.ndim, g.ndim))
    )
    gt = reshape(transpose(g, perm), (k, -1))
    oh = one_hot(reshape(idx, (k,)), n, x.dtype, wrap=True)  # (k, n)
    dx = matmul2(swap_last(oh), gt)  # (n, rest)
    rest = x.shape[:axis] + x.shape[axis + 1 :]
    dx = reshape(dx, (n,) + rest)
    inv = tuple(range(1, axis + 1)) + (0,) + tuple(range(axis + 1, x.ndim))
    return transpose(dx, inv), None


register(
    Op(
        "take",
        "index",
        _infer_take,
        _vjp_take,
        "gather x along `axis` at int32 indices in [-n, n) (negatives count from the end)",
        jvp=jvp_rules.first_linear,
    )
)


def take(x: TensorLike, idx: TensorLike, axis: int = 0) -> Node:
    """x gathered along `axis` at int32 `idx` (jnp.take): idx in [-n, n), n = x.shape[axis],
    negatives counting from the end in the value and in the gradient; other indices are an
    error (see the module docstring)."""
    x, idx = as_node(x), as_node(idx)
    if not -x.ndim <= axis < x.ndim:
        raise ShapeError(f"take: axis {axis} out of range for shape {x.shape}")
    return make("take", (x, idx), axis=axis % x.ndim)


def _infer_scatter_add(inputs, attrs):
    x, v, idx = inputs
    axis = attrs["axis"]
    if idx.dtype != "int32":
        raise DTypeError(f"scatter_add: indices must be int32, got {idx.dtype}{list(idx.shape)}")
    if not is_float(x.dtype) or v.dtype != x.dtype:
        raise DTypeError(
            f"scatter_add: x and v must share a float dtype, got x {x.dtype}{list(x.shape)} "
            f"and v {v.dtype}{list(v.shape)}")
    want = x.shape[:axis] + idx.shape + x.shape[axis + 1 :]
    if v.shape != want:
        raise ShapeError(
            f"scatter_add: v must have shape x.shape[:axis] + idx.shape + x.shape[axis+1:] = "
            f"{want} (x {x.shape}, idx {idx.shape}, axis {axis}), got {v.shape}")
    return x.shape, x.dtype


def _vjp_scatter_add(y, g, needs):
    # out = x + S v with S the scatter; its transpose is the gather: dv = take(g, idx)
    _, _, idx = y.inputs
    return g, (take(g, idx, y.attr("axis")) if needs[1] else None), None


# Inputs are (x, v, idx): the index operand last, as for take (the LLVM index guard reads it).
register(
    Op(
        "scatter_add",
        "index",
        _infer_scatter_add,
        _vjp_scatter_add,
        "x with v added at int32 positions idx along `axis` (x.at[idx].add(v)); duplicate "
        "indices accumulate; idx in [-n, n), negatives count from the end",
    )
)


def scatter_add(x: TensorLike, idx: TensorLike, v: TensorLike, axis: int = 0) -> Node:
    """JAX's `x.at[idx].add(v)` along `axis`: a copy of x with each slice of v added at the
    position idx names (duplicates accumulate). v has shape x.shape[:axis] + idx.shape +
    x.shape[axis+1:]; a scalar v is broadcast. Differentiable in x (identity) and v (a gather,
    `take`). idx in [-n, n), n = x.shape[axis], as for `take`."""
    from .movement import broadcast_to

    x, idx = as_node(x), as_node(idx)
    v = as_node(v, x)
    if not -x.ndim <= axis < x.ndim:
        raise ShapeError(f"scatter_add: axis {axis} out of range for x of shape {x.shape}")
    axis %= x.ndim
    want = x.shape[:axis] + idx.shape + x.shape[axis + 1 :]
    if v.ndim == 0 and want != ():
        v = broadcast_to(v, want)
    return make("scatter_add", (x, v, idx), axis=axis)


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
        "one_hot(idx, n)[..., j] = (idx == j), idx in [0, n) ([-n, n) with wrap); no gradient",
    )
)


def one_hot(idx: TensorLike, n: int, dtype: DTypeLike = "float32", wrap: bool = False) -> Node:
    """Rows e_idx of the n×n identity for int32 labels in [0, n); with `wrap`, labels in
    [-n, -1] count from the end (take's gradient uses this). Other labels are an error."""
    idx = as_node(idx)
    dtype = canonical(dtype)
    if not is_float(dtype):
        raise DTypeError(f"one_hot: dtype must be float, got {dtype}")
    if n < 1:
        raise ShapeError(f"one_hot: n must be >= 1, got {n}")
    extra = {"wrap": True} if wrap else {}  # absent when False: graphs without it are unchanged
    return make("one_hot", (idx,), n=int(n), dtype=dtype, **extra)


# ---- index ranges, shared by the call-time checks and the backends' run-time checks --------


def index_range(n: Node) -> tuple[Node, int, int, int] | None:
    """(index operand, lo, hi, axis size) of a take/scatter_add/one_hot node, valid indices in
    [lo, hi)."""
    if n.op == "take":
        size = n.inputs[0].shape[n.attr("axis")]
        return n.inputs[1], -size, size, size
    if n.op == "scatter_add":
        size = n.inputs[0].shape[n.attr("axis")]
        return n.inputs[2], -size, size, size
    if n.op == "one_hot":
        size = n.attr("n")
        return n.inputs[0], (-size if n.attr("wrap") else 0), size, size
    return None


def input_ranges(nodes: Iterable[Node], wrap: bool = True) -> dict[str, tuple[int, int]]:
    """{input name: (lo, hi)}, valid values in [lo, hi), for int32 inputs used directly as
    indices in `nodes` (intersected over uses): the one index-bounds rule. With `wrap` (call-time
    checks: Signature, the LLVM fast path, the exported C entry) take's negative positions count;
    without it (data sets and spec [data]: labels, token ids) values are held to [0, hi), since
    a negative id in data is a padding or encoding slip far more often than a position."""
    out: dict[str, tuple[int, int]] = {}
    for n in nodes:
        r = index_range(n)
        if r is not None and r[0].op == "input":
            name = r[0].attr("name")
            first = r[1] if wrap else max(r[1], 0)
            lo, hi = out.get(name, (first, r[2]))
            out[name] = (max(lo, first), min(hi, r[2]))
    return out


def describe_site(n: Node) -> str:
    """'take (axis 1, size 5)' / 'one_hot (n=3)' with the user's line, for run-time errors."""
    what = (f"{n.op} (axis {n.attr('axis')} of size {n.inputs[0].shape[n.attr('axis')]})"
            if n.op in ("take", "scatter_add") else f"one_hot (n={n.attr('n')})")
    if n in GRAD_OF:  # a backward index op: its line is the forward op's (ops/sweep.py)
        what += f" in the gradient of {GRAD_OF[n].op}"
    return what + (f", made at {n.where}" if n.where else "")


def range_error(site: str, lo: int, hi: int, bad: int,
                found: tuple[int, int] | None = None) -> IndexRangeError:
    """The error for an out-of-range index computed in the graph (every backend words it so)."""
    span = f"; indices found span [{found[0]}, {found[1]}]" if found is not None else ""
    return IndexRangeError(
        f"{site}: computed index {bad} is out of range, valid indices are [{lo}, {hi}){span}")
