"""The JAX backend's own rewrite rules, applied by the shared engine after the shared passes
(`rewrite.pipeline.run_backend`) to the program's top-level graph: small products and
reductions marked `unroll=True`, which `lower.PROGRAM_LOWERINGS` emits as chains of elementwise
ops that XLA fuses with their neighbours.

Scan bodies keep their dots: they are lowered inside `lax.scan` by the op-for-op table that the
`bp.check` oracle shares, and unrolling there was never measured. A mark changes how a node is
lowered, never what it computes, so every other reader of the graph stays right.
"""

from __future__ import annotations

import math

from ...ir.node import Node, make
from ...rewrite.engine import BackendRules, Pat, Rules, rule

MARK = "unroll"
FLOATS = ("float32", "float64")

# XLA:CPU (jax 0.10) hands reductions to YNNPACK, which is slow when each output reduces only a
# few elements: a 2x2 max-pool's max over 4 took ~80 us for 4608 outputs, against ~10 us as three
# fused jnp.maximum. Up to this many elements per output, a float sum/max in the backend's
# program is emitted as an unrolled elementwise chain (`sum_unrolled`/`max_unrolled`).
SMALL_REDUCTION = 8

# A dot is a call of its own in XLA:CPU's runtime (~0.5 us each, whatever its size), where
# elementwise ops fuse with their neighbours into one loop. A matmul contracting over at most
# SMALL_MATMUL_K terms, with at most SMALL_MATMUL_WORK multiply-adds in all, is emitted as a sum
# of outer products (`matmul_unrolled`): xor's five products went from five dots to nothing
# but fused loops (device-array call 18.7 -> 16.1 us). Contracting over 32 terms (mlp_small's
# 32x32 layer) made XLA's fused loops slower than its dot, so the bound stays small.
SMALL_MATMUL_K = 8
SMALL_MATMUL_WORK = 4096


def _small_reduction(n: Node) -> bool:
    x = n.inputs[0]
    k = math.prod(x.shape[i] for i in n.attr("axes"))
    return (n.attr(MARK) is None and n.dtype in FLOATS and x.dtype == n.dtype
            and 1 < k <= SMALL_REDUCTION)


def _small_matmul(n: Node) -> bool:
    k = n.inputs[0].shape[-1]
    return (n.attr(MARK) is None and n.dtype in FLOATS and 1 <= k <= SMALL_MATMUL_K
            and math.prod(n.shape) * k <= SMALL_MATMUL_WORK)


def _unroll(n: Node) -> Node:
    return make(n.op, n.inputs, **dict(n.attrs, **{MARK: True}))


RULES = Rules("jax", [
    # a@b over K <= 8 terms -> Σₖ a[..., :, k] b[..., k, :]: fused loops, no dot call
    rule("unroll_matmul", Pat("matmul", where=_small_matmul), _unroll),
    # Σ over <= 8 elements per output -> a chain of adds (fused, no YNNPACK reduction)
    rule("unroll_sum", Pat("sum", where=_small_reduction), _unroll),
    # max over <= 8 elements per output -> a chain of jnp.maximum (NaN-propagating, like max)
    rule("unroll_max", Pat("max", where=_small_reduction), _unroll),
])

BACKEND_RULES = BackendRules(RULES, bodies=False)
