"""Full Jacobians as ONE program: a `scan` over the rows of a seed (identity) matrix.

Reverse mode seeds one output cotangent per step (a row of J), forward mode one input
tangent per step (a column). The step is traced once, so code size does not grow with the
number of rows, and everything that does not depend on the seed (the forward pass, saved
activations) is captured by the scan as a loop constant and computed once before the loop.
Forward mode runs one fully batched pass where it can (every rule on tangents with a leading
batch axis, as `jax.vmap` of `jvp` does: matrix-vector products become one matrix-matrix
product). Reverse mode has the same (`batched_vjp`, chunks of rows) behind `batched=True`; a
row scan stays its default because it measured as fast or faster (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..ir.dtypes import is_float
from ..ir.node import NAMES, Node
from ..ir.traverse import toposort
from ..ops.leaves import const
from ..ops.movement import broadcast_to, reshape, slice_, transpose
from ..ops.scan import scan
from ..ops.sweep import backward
from .batched import NotBatched, batched_jvp, batched_vjp
from .forward import jvp

__all__ = ["jacobian_fwd", "jacobian_rev"]


def _zeros(w: Node) -> Node:
    return broadcast_to(const(0.0, w.dtype), w.shape)


def _seeds(n: int, dtype: str) -> Node:
    return const(np.eye(n), dtype)


def jacobian_rev(y: Node, ws: Sequence[Node], batched: bool = False) -> list[Node]:
    """d y / d w for each w, shape y.shape + w.shape: one VJP per output element, a scan over
    single seed rows; `batched=True`: batched VJPs over chunks of seed rows where every op on
    the path has a batched rule (a chunk's intermediates within BATCH_ELEMENTS), else the
    scan. Not the default: it measured no faster on LLVM or NumPy (docs/performance.md)."""
    m = max(y.size, 1)

    def row(carry, e):
        gs = backward({y: reshape(e, y.shape)}, list(ws))
        return carry, tuple(_zeros(w) if g is None else g for w, g in zip(ws, gs))

    if m == 1:  # a scalar output: the gradient itself, no loop
        _, rows = row(None, const(np.ones((1,)), y.dtype))
        return [reshape(r, y.shape + w.shape) for r, w in zip(rows, ws)]
    out = _rev_batched(y, ws, m) if batched else None
    if out is not None:
        return out
    _, rows = scan(row, const(0.0, y.dtype), _seeds(m, y.dtype), name="jacobian_row")
    return [reshape(r, y.shape + w.shape) for r, w in zip(rows, ws)]


# the most elements a batched intermediate of a reverse Jacobian may have (chunk rows ×
# the largest array on the backward path): beyond it the batch is split into a scan of
# chunks, so memory stays bounded and a chunk's arrays stay in cache
BATCH_ELEMENTS = 2**14


def _chunk(y: Node, ws: Sequence[Node], m: int) -> int:
    biggest = max([y.size] + [w.size for w in ws] + [
        n.size for n in toposort([y]) if n.results is None and is_float(n.dtype)])
    return max(1, min(m, BATCH_ELEMENTS // max(biggest, 1)))


def _rev_batched(y: Node, ws: Sequence[Node], m: int) -> list[Node] | None:
    """J by batched VJPs (autodiff/batched.py): one pass over all m seed rows, or a scan over
    chunks of c rows (the identity padded with zero rows to a multiple of c); None where an
    op on the path has no batched rule."""
    c = _chunk(y, ws, m)
    k = -(-m // c)

    def chunk(carry, e):
        gs = batched_vjp({y: reshape(e, (c,) + y.shape)}, list(ws))
        return carry, tuple(broadcast_to(const(0.0, w.dtype), (c,) + w.shape) if g is None
                            else g for w, g in zip(ws, gs))

    try:
        if k == 1:
            _, rows = chunk(None, _seeds(m, y.dtype))
        else:
            seeds = np.zeros((k * c, m))
            seeds[:m] = np.eye(m)
            e = const(seeds.reshape(k, c, m), y.dtype)
            _, stacked = scan(chunk, const(0.0, y.dtype), e, name="jacobian_rows")
            rows = [slice_(reshape(r, (k * c,) + w.shape), (0,) * (w.ndim + 1),
                           (m,) + w.shape, (1,) * (w.ndim + 1))
                    for r, w in zip(stacked, ws)]
    except NotBatched:
        return None
    return [reshape(r, y.shape + w.shape) for r, w in zip(rows, ws)]


def _batched(ys, ws, offs, n: int, dtype: str) -> list[Node] | None:
    """The columns as one batched pass over the seed matrix, or None where an op on the
    path has no batched rule."""
    eye = _seeds(n, dtype)
    ts = []
    for a, b, w in zip(offs[:-1], offs[1:], ws):
        t = reshape(slice_(eye, (0, int(a)), (n, int(b)), (1, 1)), (n,) + w.shape)
        if w.name and t not in NAMES:
            NAMES[t] = w.name + "_t"
        ts.append(t)
    try:
        return batched_jvp(list(ys), list(ws), ts)
    except NotBatched:
        return None


def jacobian_fwd(ys: Sequence[Node], ws: Sequence[Node],
                 batched: bool = True) -> list[list[Node]]:
    """d y_i / d w_j for each output y_i and w_j, shape y_i.shape + w_j.shape: one JVP per
    input element (the seed splits into one tangent per w), batched where every op on the
    path has a batched rule (autodiff/batched.py), else a scan over the seed rows."""
    sizes = [w.size for w in ws]
    n = int(sum(sizes))
    offs = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    dtype = ws[0].dtype

    def column(carry, e):
        ts = [reshape(slice_(e, (int(a),), (int(b),), (1,)), w.shape)
              for a, b, w in zip(offs[:-1], offs[1:], ws)]
        for t, w in zip(ts, ws):
            if w.name and t not in NAMES and t.op != "input":
                NAMES[t] = w.name + "_t"
        _, outs = jvp(list(ys), list(ws), ts)
        return carry, tuple(outs)

    cols = _batched(ys, ws, offs, n, dtype) if batched else None
    if cols is None:
        _, cols = scan(column, const(0.0, dtype), _seeds(n, dtype), name="jacobian_column")
    out = []
    for y, c in zip(ys, cols):  # c: (n, *y.shape) -> (*y.shape, n) -> per w
        k = y.ndim
        ct = transpose(c, tuple(range(1, k + 1)) + (0,)) if k else c
        blocks = []
        for a, b, w in zip(offs[:-1], offs[1:], ws):
            sl = slice_(ct, (0,) * k + (int(a),), y.shape + (int(b),), (1,) * (k + 1))
            blocks.append(reshape(sl, y.shape + w.shape))
        out.append(blocks)
    return out
