"""Activation compression: the forward values the backward pass reads are stored smaller.

`compress_saved([loss, *grads], mode)` finds the saved tensors (forward nodes, computed and
floating point, that a backward node reads), adds their compressed copy to the forward pass
and rewires every backward read to a decompression of that copy; forward reads keep the exact
value, which then dies in the forward pass. Runs after autodiff, so nothing differentiates
through the rounding: the gradient is that of the exact forward at rounded saved values.

Modes: "bfloat16" (a cast each way: 8 mantissa bits, relative error <= 2^-9 per element) and
"int8" (q = round(x / s) with one scale s = max|x| / 127 per tensor; absolute error <= s / 2).
The error each causes in the gradient is measured in docs/memory.md.
"""

from __future__ import annotations

from ..errors import ArgumentError
from ..ir.dtypes import is_float, np_dtype
from ..ir.node import Node, rebuild
from ..ir.traverse import toposort, transform
from ..ops import elementwise as ew
from ..ops.checkpoint import barrier
from ..ops.reduce import max_ as reduce_max

MODES = ("bfloat16", "int8")
_NARROW = ("float16", "bfloat16")


def check_mode(mode: str | None) -> str | None:
    """`mode`, or ArgumentError naming the argument and the choices."""
    if mode is not None and mode not in MODES:
        raise ArgumentError(f"compress_activations must be one of {list(MODES)} or None, got "
                            f"{mode!r}")
    return mode


def _compress(x: Node, mode: str) -> tuple[Node, ...]:
    if mode == "bfloat16":
        return (ew.cast(x, "bfloat16"),)
    scale = ew.maximum(reduce_max(ew.unary("abs", x)), 1e-30) * (1.0 / 127.0)  # x = 0: no 0/0
    return ew.cast(ew.unary("round", x / scale), "int8"), scale


def _decompress(parts: tuple[Node, ...], dtype: str) -> Node:
    if len(parts) == 1:
        return ew.cast(parts[0], dtype)
    q, scale = parts
    return ew.cast(q, dtype) * scale


def saved_tensors(outputs: list[Node]) -> list[Node]:
    """Forward nodes (those of outputs[0]) that a node of the other outputs reads."""
    forward = set(toposort(outputs[:1]))
    seen: dict[Node, None] = {}
    for n in toposort(outputs):
        if n in forward:
            continue
        for i in n.inputs:
            if i in forward:
                seen.setdefault(i, None)
    return list(seen)


def compress_saved(outputs: list[Node], mode: str | None) -> tuple[list[Node], dict]:
    """(outputs with the saved activations compressed, report); mode None: unchanged.

    A forward read of a saved x becomes `remat_barrier(x, compressed x)` (an alias that runs
    after the compression), so every backend compresses x as soon as it exists and frees x
    after its last forward reader; the backward reads only the decompressed copy."""
    if mode is None:
        return outputs, {}
    forward = set(toposort(outputs[:1]))
    saved = {x for x in saved_tensors(outputs) if x.op not in ("input", "param", "const")
             and is_float(x.dtype) and x.dtype not in _NARROW and x.ndim and x.results is None}
    if not saved:
        return outputs, {"mode": mode, "tensors": 0, "exact_bytes": 0, "stored_bytes": 0}
    comp: dict[Node, tuple[Node, ...]] = {}
    fwd_read: dict[Node, Node] = {}
    back_read: dict[Node, Node] = {}

    def build(n: Node, memo: dict[Node, Node]) -> Node:
        ins = []
        for i in n.inputs:
            if i not in saved:
                ins.append(memo[i])
                continue
            if i not in comp:
                comp[i] = _compress(memo[i], mode)
                fwd_read[i] = barrier(memo[i], comp[i][0])
                back_read[i] = _decompress(comp[i], i.dtype)
            ins.append(fwd_read[i] if n in forward else back_read[i])
        return rebuild(n, ins)

    new = list(transform(outputs, build=build))
    exact = sum(x.size * np_dtype(x.dtype).itemsize for x in saved)
    stored = sum(p.size * np_dtype(p.dtype).itemsize for c in comp.values() for p in c)
    return new, {"mode": mode, "tensors": len(saved), "exact_bytes": int(exact),
                 "stored_bytes": int(stored)}
