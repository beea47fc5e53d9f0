"""Call-time argument checking shared by every backend.

A compiled function takes every input and param by keyword. Anything missing, extra,
mis-shaped or of the wrong kind of dtype is refused with a message naming the argument and the
expected shape/dtype; integer inputs used as indices are range-checked, so an out-of-range label
is an error rather than a silent zero row.
"""

from __future__ import annotations

import numpy as np

from .errors import ArgumentError
from .ir.node import Node
from .ir.printer import type_str
from .ir.traverse import toposort
from .ops.index import input_ranges

_ACCEPT = {"float32": "fiub", "float64": "fiub", "int32": "iub", "bool": "b"}


class Signature:
    def __init__(self, args: list[Node], graph_outputs: list[Node]):
        self.args = args
        self.names = [a.attr("name") for a in args]
        self.by_name = {a.attr("name"): a for a in args}
        self.dtypes = [np.dtype(a.dtype) for a in args]
        # index ranges: input name -> (lo, hi), the valid [lo, hi) of the take/one_hot it feeds
        self.bounds: dict[str, tuple[int, int]] = input_ranges(toposort(graph_outputs))

    def describe(self) -> str:
        return ", ".join(f"{n}:{type_str(a)}" for n, a in zip(self.names, self.args))

    def bind(self, kwargs: dict) -> list[np.ndarray]:
        check_names(self.args, kwargs)
        return [self.convert(n, kwargs[n]) for n in self.names]

    def convert(self, name: str, value) -> np.ndarray:
        node = self.by_name[name]
        want = np.dtype(node.dtype)
        try:
            arr = np.asarray(value)
        except Exception as e:  # ragged lists and the like
            raise ArgumentError(
                f"argument {name!r}: cannot convert {type(value).__name__} to an array ({e})"
            ) from None
        if arr.dtype.kind not in _ACCEPT[node.dtype]:
            raise ArgumentError(
                f"argument {name!r}: expected dtype {node.dtype} "
                f"(shape {node.shape}), got {arr.dtype}"
            )
        if arr.shape != node.shape:
            raise ArgumentError(
                f"argument {name!r}: expected shape {node.shape} ({node.dtype}), got {arr.shape}"
            )
        if arr.dtype != want:
            if node.dtype == "int32" and arr.size and (arr.min() < -(2**31) or arr.max() >= 2**31):
                raise ArgumentError(f"argument {name!r}: values do not fit in int32")
            arr = arr.astype(want)
        if not arr.flags.c_contiguous:  # (ascontiguousarray would turn a 0-d array 1-d)
            arr = np.ascontiguousarray(arr)
        bound = self.bounds.get(name)
        if bound is not None and arr.size and (arr.min() < bound[0] or arr.max() >= bound[1]):
            lo, hi = bound
            bad = arr[(arr < lo) | (arr >= hi)].flat[0]
            raise ArgumentError(f"argument {name!r}: index {bad} out of range [{lo}, {hi})")
        return arr


def check_names(args: list[Node], kwargs) -> None:
    """Raise an ArgumentError naming every missing or unexpected keyword argument."""
    by_name = {a.attr("name"): a for a in args}
    missing = [n for n in by_name if n not in kwargs]
    extra = [k for k in kwargs if k not in by_name]
    if missing or extra:
        parts = []
        if missing:
            parts.append(
                "missing " + ", ".join(f"{m} (expected {type_str(by_name[m])})" for m in missing)
            )
        if extra:
            parts.append(f"unexpected {', '.join(map(repr, extra))}")
        described = ", ".join(f"{n}:{type_str(a)}" for n, a in by_name.items())
        raise ArgumentError("; ".join(parts) + f". The function takes: {described}")
