"""16-bit matmuls for the LLVM backend: float32 copies of the operands, one float32 product
(inline loops or sgemm), rounded once to the 16-bit result.

The IR keeps `matmul` on float16/bfloat16 operands, so the backward pass saves the 16-bit
tensors rather than float32 copies; only the graph this backend schedules spells the float32
accumulation out, and the copies are workspace buffers that live for one step: each copy is
cast(remat_barrier(x, other operand)), so two products reading x (the forward matmul and the
weight gradient's) get a copy each instead of one interned float32 copy kept alive between
them (a saved float32 activation; cnn_digits' im2col patches, 83 KB).
"""

from __future__ import annotations

from ...ir.dtypes import is_half
from ...ir.node import Node, make
from ...ir.traverse import toposort, transform


def _widen(n: Node) -> Node:
    if n.op != "matmul" or not is_half(n.dtype):
        return n
    a, b = n.inputs
    wide = tuple(make("cast", (make("remat_barrier", (x, y)),), dtype="float32")
                 for x, y in ((a, b), (b, a)))
    return make("cast", (make("matmul", wide),), dtype=n.dtype)


def widen_half_matmuls(outputs: list[Node]) -> list[Node]:
    """The graph with every 16-bit matmul as cast(matmul(cast(a, f32), cast(b, f32)))."""
    if not any(n.op == "matmul" and is_half(n.dtype) for n in toposort(outputs)):
        return outputs
    return transform(outputs, fn=_widen)
