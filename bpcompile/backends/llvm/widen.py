"""16-bit matmuls for the LLVM backend: float32 copies of the operands, one float32 product
(inline loops or sgemm), rounded once to the 16-bit result.

The IR keeps `matmul` on float16/bfloat16 operands, so the backward pass saves the 16-bit
tensors rather than float32 copies; only the graph this backend schedules spells the float32
accumulation out, and the copies are workspace buffers that live for one step: each copy is
cast(remat_barrier(x, other operand)), so two products reading x (the forward matmul and the
weight gradient's) get a copy each instead of one interned float32 copy kept alive between
them (a saved float32 activation; cnn_digits' im2col patches, 83 KB).

Peak memory (issue 15): a float32 copy of a 16-bit cast of a float32 value,
cast(cast(y, bf16), f32), is one step `cast(y, f32, via=bf16)` (rounded in registers, no 16-bit
buffer); and a product whose float32 copies exceed CHUNK_BYTES while its result is smaller
is split along the contraction axis, each slice's copies made and freed in turn, the partial
products accumulated by GEMM with beta = 1 (accumulate.py). Without this mlp_mnist's first
layer held x and W1 in 16 bits and in float32 at once: a bfloat16 peak 1.5x float32's.
"""

from __future__ import annotations

from ...ir.dtypes import is_half
from ...ir.node import Node, make
from ...ir.traverse import toposort, transform
from .accumulate import MARK

VIEWS = ("transpose", "reshape", "broadcast_to")
CHUNK_BYTES = 256 * 1024  # float32 operand copies of one slice of a split product
MIN_CHUNK = 32  # contraction length of a slice: shorter ones cost more GEMM calls than saved


def _round_trip(c: Node) -> Node:
    """cast(views(cast(y:f32, half)), f32) -> views(cast(y, f32, via=half)) for y an argument
    (or a barrier on one); else c.

    Remat barriers (as _widen and recompute_casts make them) are kept on y, so each product
    still gets its own copy."""
    if c.op != "cast" or c.dtype != "float32" or c.attr("via") is not None:
        return c
    views, barrier, x = [], None, c.inputs[0]
    while x.op in VIEWS or x.op == "remat_barrier":
        if x.op == "remat_barrier":
            barrier = x.inputs[1] if barrier is None else barrier
        else:
            views.append(x)
        x = x.inputs[0]
    if not (x.op == "cast" and is_half(x.dtype) and x.inputs[0].dtype == "float32"
            and x.attr("via") is None):
        return c
    y = x.inputs[0]
    leaf = y.inputs[0] if y.op == "remat_barrier" else y
    if leaf.op not in ("input", "param"):  # else y, float32, would live where 16 bits did
        return c
    if barrier is not None and y.op != "remat_barrier":
        y = make("remat_barrier", (y, _source(barrier)))
    out = make("cast", (y,), dtype="float32", via=x.dtype)
    for v in reversed(views):
        out = make(v.op, (out,), **dict(v.attrs))
    return out


def _source(y: Node) -> Node:
    """The argument under views, barriers and a 16-bit cast of it, else y: a barrier's partner
    that a round trip would otherwise compute in full only to be ignored (W1's 16-bit copy)."""
    x = y
    while x.op in VIEWS or x.op == "remat_barrier":
        x = x.inputs[0]
    if x.op == "cast" and is_half(x.dtype):
        x = x.inputs[0]
        while x.op == "remat_barrier":
            x = x.inputs[0]
    return x if x.op in ("input", "param") else y


def _sliced(x: Node, axis: int, lo: int, hi: int) -> Node:
    """x[..., lo:hi, ...] along `axis`, the slice pushed under casts, barriers and transposes
    down to a view of a buffer, so only the slice is copied."""
    if x.op == "cast":
        return make("cast", (_sliced(x.inputs[0], axis, lo, hi),), **dict(x.attrs))
    if x.op == "remat_barrier":
        return make("remat_barrier", (_sliced(x.inputs[0], axis, lo, hi), x.inputs[1]))
    if x.op == "transpose":
        perm = x.attr("perm")
        return make("transpose", (_sliced(x.inputs[0], perm[axis], lo, hi),), perm=perm)
    starts, stops = [0] * len(x.shape), list(x.shape)
    starts[axis], stops[axis] = lo, hi
    return make("slice", (x,), starts=tuple(starts), stops=tuple(stops),
                steps=(1,) * len(x.shape))


def _split(a: Node, b: Node) -> Node | None:
    """a @ b (float32 copies of 16-bit values) as a sum of products over contraction slices,
    when the copies exceed CHUNK_BYTES and the result is smaller than them; else None."""
    if len(a.shape) != 2 or len(b.shape) != 2:
        return None
    (m, k), n = a.shape, b.shape[1]
    copies = 4 * k * (m + n)
    pieces = min(-(-copies // CHUNK_BYTES), k // MIN_CHUNK)
    if pieces < 2 or 4 * m * n > copies:
        return None
    step = -(-k // pieces)
    out = None
    for lo in range(0, k, step):
        hi = min(k, lo + step)
        p = make("matmul", (_sliced(a, 1, lo, hi), _sliced(b, 0, lo, hi)))
        out = p if out is None else make("add", (out, p), **{MARK: 1})
    return out


def _is_wide(x: Node) -> bool:
    while x.op in VIEWS:
        x = x.inputs[0]
    return x.op == "cast" and x.attr("via") is not None


def _widen(n: Node) -> Node:
    if n.op == "cast":
        return _round_trip(n)
    if n.op != "matmul":
        return n
    a, b = n.inputs
    if not is_half(n.dtype):  # a float32 product of widened 16-bit values: maybe split
        split = _split(a, b) if _is_wide(a) and _is_wide(b) else None
        return n if split is None else split
    wide = tuple(_round_trip(make("cast", (make("remat_barrier", (x, y)),), dtype="float32"))
                 for x, y in ((a, b), (b, a)))
    split = _split(*wide)
    return make("cast", (make("matmul", wide) if split is None else split,), dtype=n.dtype)


def widen_half_matmuls(outputs: list[Node]) -> list[Node]:
    """The graph with every 16-bit matmul as cast(matmul(cast(a, f32), cast(b, f32)))."""
    if not any(n.op == "cast" and is_half(n.dtype) for n in toposort(outputs)):
        return outputs
    return transform(outputs, fn=_widen)
