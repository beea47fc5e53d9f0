"""Call-time argument checking shared by every backend.

A compiled function takes its inputs and params by keyword, or by position in the order of
`Signature.names` (mixed as in any Python call). Anything missing, extra, duplicated,
mis-shaped or of a dtype the conversion rule refuses is an ArgumentError naming the argument and
the expected shape/dtype; integer inputs used as indices are range-checked, so an out-of-range
label is an error rather than a silent zero row.

The conversion rule (docs/reliability.md, "Argument conversion, byte order and odd arrays") is
written once here, `refusal`, and every backend's call path applies it: NumPy's `same_kind`
casting from the value's dtype to the declared one (bool -> int -> float, any float width;
never float -> int or number -> bool), with int -> int32 range-checked. Accepted values are
converted to the declared dtype in native byte order, C-contiguous and aligned.
"""

from __future__ import annotations

import numpy as np

from ..errors import ArgumentError
from ..ir.dtypes import FLOATS, np_dtype
from ..ir.node import Node
from ..ir.printer import type_str
from ..ir.traverse import toposort
from ..ops.index import input_ranges

_KIND_NAMES = {"f": "float", "i": "int", "u": "unsigned int", "b": "bool", "c": "complex",
               "O": "object", "U": "string", "S": "bytes", "M": "datetime", "m": "timedelta",
               "V": "void"}


def np_name(dtype: str) -> str:
    """How a user names the NumPy type of an IR dtype."""
    return "ml_dtypes.bfloat16" if dtype == "bfloat16" else f"np.{dtype}"


def refusal(name: str, node: Node, dtype, python_data: bool = False) -> str | None:
    """Why a value of `dtype` cannot be the argument `name` (declared `node`), or None.

    The one conversion rule of every backend is NumPy's `same_kind` casting from the value's
    dtype to the declared one, for real numbers only: bool -> int -> float and any float width
    convert (as `np.asarray(x, dtype)` would in a NumPy program, so `X = np.array([[0, 1]])`
    fills a float input); float -> int, number -> bool, complex, object, string, datetime and
    void are refused. int -> int32 is then range-checked (never wrapped).
    """
    dt = np.dtype(dtype)
    kind, want = _kind(dt), _kind(np_dtype(node.dtype))
    rank = {"b": 0, "i": 1, "u": 1, "f": 2}  # same_kind for real numbers: bool < int < float
    if kind in rank and rank[kind] <= rank[want]:
        return None
    got = f"dtype {dt} ({_KIND_NAMES.get(kind, kind)})"
    if python_data:
        got = f"Python data that NumPy reads as {dt}"
    return (
        f"argument {name!r}: expected dtype {node.dtype} (shape {node.shape}), got {got}, "
        f"which NumPy's same_kind casting does not convert; convert it explicitly "
        f"(e.g. .astype({np_name(node.dtype)})) if that is meant"
    )


def _kind(dt: np.dtype) -> str:
    """NumPy's kind letter, with ml_dtypes' bfloat16 (kind 'V') counted as a float."""
    return "f" if dt.name in FLOATS else dt.kind


def _python_data(value) -> bool:
    """Python scalars and (nested) lists/tuples: values without a dtype of their own."""
    return not hasattr(value, "dtype")


class Signature:
    def __init__(self, args: list[Node], graph_outputs: list[Node]):
        self.args = args
        self.names = [a.attr("name") for a in args]
        self.by_name = {a.attr("name"): a for a in args}
        self.dtypes = [np_dtype(a.dtype) for a in args]
        # index ranges: input name -> (lo, hi), the valid [lo, hi) of the take/one_hot it feeds
        self.bounds: dict[str, tuple[int, int]] = input_ranges(toposort(graph_outputs))

    def describe(self) -> str:
        return ", ".join(f"{n}:{type_str(a)}" for n, a in zip(self.names, self.args))

    def bind(self, kwargs: dict, args: tuple = ()) -> list[np.ndarray]:
        """Every argument converted by the rule, in `names` order (`args` positional)."""
        if args:
            return self.call_positional(lambda **kw: self.bind(kw), args, kwargs)
        check_names(self.args, kwargs)
        return [self.convert(n, kwargs[n]) for n in self.names]

    def call_positional(self, call, args: tuple, kwargs: dict):
        """`call(**merged)`; an ArgumentError then also says which order positions follow
        (a misordered call usually shows up as a shape mismatch)."""
        merged = self.merge(args, kwargs)
        try:
            return call(**merged)
        except ArgumentError as e:
            raise ArgumentError(
                f"{e} (positional arguments follow the order {', '.join(self.names)})"
            ) from None

    def merge(self, args: tuple, kwargs: dict) -> dict:
        """Positional `args` named in signature order, joined with `kwargs` (as Python binds a
        call); too many, or one given both ways, is an ArgumentError."""
        if len(args) > len(self.names):
            raise ArgumentError(
                f"{len(args)} positional arguments given, but the function takes "
                f"{len(self.names)}: {self.describe()}"
            )
        both = [n for n in self.names[: len(args)] if n in kwargs]
        if both:
            raise ArgumentError(
                f"argument {both[0]!r} given both by position and by keyword. "
                f"The function takes: {self.describe()}"
            )
        merged = dict(zip(self.names, args))
        merged.update(kwargs)
        return merged

    def convert(self, name: str, value) -> np.ndarray:
        """`value` as the array the compiled code reads for `name`: the declared dtype in
        native byte order, C-contiguous and aligned (a copy only when one of these differs)."""
        node = self.by_name[name]
        want = np_dtype(node.dtype)
        weak = _python_data(value)
        try:
            arr = np.asarray(value)
        except Exception as e:  # ragged lists and the like
            raise ArgumentError(
                f"argument {name!r}: cannot convert {type(value).__name__} to an array ({e})"
            ) from None
        why = refusal(name, node, arr.dtype, weak)
        if why:
            raise ArgumentError(why)
        if arr.shape != node.shape:
            raise ArgumentError(
                f"argument {name!r}: expected shape {node.shape} ({node.dtype}), got {arr.shape}"
            )
        if arr.dtype != want:  # another width or kind, or non-native byte order
            if node.dtype == "int32" and arr.size and (arr.min() < -(2**31) or arr.max() >= 2**31):
                raise ArgumentError(
                    f"argument {name!r}: values of {arr.dtype} do not fit in int32 "
                    f"(range [{arr.min()}, {arr.max()}])"
                )
            arr = arr.astype(want)
        if not (arr.flags.c_contiguous and arr.flags.aligned):
            arr = np.array(arr, order="C")  # (ascontiguousarray would turn a 0-d array 1-d)
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


def check_host_range(name: str, v, bound: tuple[int, int]) -> None:
    """Index range check for host (NumPy) index arrays; device arrays are not copied back,
    so out-of-range indices there poison the result as computed ones do (NaN-filled gathers,
    NaN one-hot rows; ops/index.py)."""
    if isinstance(v, np.ndarray) and v.size:
        lo, hi = v.min(), v.max()
        if lo < bound[0] or hi >= bound[1]:
            bad = lo if lo < bound[0] else hi
            raise ArgumentError(
                f"argument {name!r}: index {bad} out of range [{bound[0]}, {bound[1]})")
