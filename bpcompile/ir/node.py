"""Immutable, hash-consed IR nodes.

A node is (op name, input nodes, attributes) plus the shape and dtype its op's rule inferred.
`make` interns nodes: building the same node twice returns the same object, so identical
subexpressions are shared by construction and graph equality is object identity.

An op with several results (JAX's `multiple_results`; `scan`: final carries, stacked ys, saved
carries) makes a *tuple node*: dtype `TUPLE`, shape (), and `results`, one (shape, dtype) per
result. Its results are read through `result` projection nodes (attr `index`), ordinary
single-valued nodes that backends lower as aliases of the tuple's storage, never copies. Every
other node has `results` None, so code that never meets a tuple node is unchanged.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from .optable import get_op

if TYPE_CHECKING:
    from .hints import Axis, DTypeLike, TensorLike

_INTERN: weakref.WeakValueDictionary[tuple, Node] = weakref.WeakValueDictionary()
_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SERIAL = itertools.count()  # creation order: a compiled function's positional order
TUPLE = "tuple"  # the dtype of a node with several results (its `results` says what they are)


def next_serial() -> int:
    return next(_SERIAL)


class ConstValue:
    """A hashable wrapper around a numpy array so constants can be interned by value."""

    __slots__ = ("array", "_key")

    def __init__(self, array: np.ndarray):
        self.array = np.array(array, order="C")  # (ascontiguousarray would make 0-d 1-d)
        self.array.flags.writeable = False
        self._key = (self.array.dtype.str, self.array.shape, self.array.tobytes())

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, ConstValue) and self._key == other._key

    def __repr__(self):
        a = self.array
        return repr(a.item()) if a.ndim == 0 else f"array{list(a.shape)}"


# A stack of explicit locations ("xor.toml:24"); while non-empty, new nodes take the top one.
# The spec loader pushes the spec file's line so generated code points there, not at bpcompile.
LOCATION_OVERRIDE: list = []


def _user_location() -> str | None:
    """The first stack frame outside the bpcompile package: the user's line that built a node."""
    if LOCATION_OVERRIDE:
        return LOCATION_OVERRIDE[-1]
    f = sys._getframe(2)
    while f is not None:
        fn = f.f_code.co_filename
        base = _FILES.get(fn, "")
        if base == "":  # first time: abspath per frame and node made graph building ~2x slower
            base = None if os.path.abspath(fn).startswith(_PKG_DIR) else os.path.basename(fn)
            if os.path.isabs(fn):  # a relative name's meaning follows the working directory
                _FILES[fn] = base
        if base is not None:
            return f"{base}:{f.f_lineno}"
        f = f.f_back
    return None


_FILES: dict[str, str | None] = {}  # absolute source file -> basename, None inside bpcompile


class Node:
    """One value in the graph. Never construct directly: use `make` (or the public API)."""

    __slots__ = ("op", "inputs", "attrs", "shape", "dtype", "results", "where", "serial",
                 "__weakref__")
    __array_priority__ = 1000  # so `ndarray * node` defers to Node.__rmul__

    op: str
    inputs: tuple
    attrs: tuple
    shape: tuple
    dtype: str
    results: tuple[tuple[tuple[int, ...], str], ...] | None  # a tuple node's (shape, dtype)s
    where: str | None
    serial: int

    # -- attributes -------------------------------------------------------------------------
    def attr(self, key, default=None):
        for k, v in self.attrs:
            if k == key:
                return v
        return default

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)  # exact, and ~20x faster than np.prod on a tuple

    @property
    def name(self) -> str | None:
        """The user-facing name: leaves carry one; other nodes may get one via `named`."""
        n = self.attr("name")
        return n if n is not None and self.op in ("input", "param") else NAMES.get(self)

    def named(self, name: str) -> Node:
        """Give this node a readable name for generated code (does not change the graph)."""
        NAMES[self] = name
        return self

    def __repr__(self):
        from .dtypes import SHORT

        label = self.name or self.op
        return f"<{label}:{SHORT.get(self.dtype, self.dtype)}{list(self.shape)}>"

    def __bool__(self):
        raise TypeError(
            "a bpcompile tensor has no truth value; use bp.where(cond, a, b) instead of if/and/or"
        )

    def __iter__(self):
        raise TypeError("a bpcompile tensor is not iterable; slice it with x[i] instead")

    # Python operators (+ - * / ** @, unary -, < <= > >=, x[...]) are attached in
    # bpcompile/api.py so this module stays free of op definitions. `==` keeps identity
    # semantics because nodes are dictionary keys everywhere; use bp.equal for elementwise ==.
    # Their signatures are declared here for type checkers only.
    if TYPE_CHECKING:
        def __add__(self, other: TensorLike) -> Node: ...
        def __radd__(self, other: TensorLike) -> Node: ...
        def __sub__(self, other: TensorLike) -> Node: ...
        def __rsub__(self, other: TensorLike) -> Node: ...
        def __mul__(self, other: TensorLike) -> Node: ...
        def __rmul__(self, other: TensorLike) -> Node: ...
        def __truediv__(self, other: TensorLike) -> Node: ...
        def __rtruediv__(self, other: TensorLike) -> Node: ...
        def __pow__(self, other: TensorLike) -> Node: ...
        def __rpow__(self, other: TensorLike) -> Node: ...
        def __matmul__(self, other: TensorLike) -> Node: ...
        def __rmatmul__(self, other: TensorLike) -> Node: ...
        def __neg__(self) -> Node: ...
        def __pos__(self) -> Node: ...
        def __abs__(self) -> Node: ...
        def __lt__(self, other: TensorLike) -> Node: ...
        def __le__(self, other: TensorLike) -> Node: ...
        def __gt__(self, other: TensorLike) -> Node: ...
        def __ge__(self, other: TensorLike) -> Node: ...
        def __getitem__(self, idx: Any) -> Node: ...
        @property
        def T(self) -> Node: ...
        def reshape(self, *shape: Any) -> Node: ...
        def transpose(self, *perm: Any) -> Node: ...
        def sum(self, axis: Axis = None, keepdims: bool = False) -> Node: ...
        def mean(self, axis: Axis = None, keepdims: bool = False) -> Node: ...
        def max(self, axis: Axis = None, keepdims: bool = False) -> Node: ...
        def min(self, axis: Axis = None, keepdims: bool = False) -> Node: ...
        def argmax(self, axis: int | None = None, keepdims: bool = False) -> Node: ...
        def argmin(self, axis: int | None = None, keepdims: bool = False) -> Node: ...
        @property
        def at(self) -> Any: ...
        def __and__(self, other: TensorLike) -> Node: ...
        def __rand__(self, other: TensorLike) -> Node: ...
        def __or__(self, other: TensorLike) -> Node: ...
        def __ror__(self, other: TensorLike) -> Node: ...
        def __xor__(self, other: TensorLike) -> Node: ...
        def __rxor__(self, other: TensorLike) -> Node: ...
        def __invert__(self) -> Node: ...
        def astype(self, dtype: DTypeLike) -> Node: ...


# Readable names for non-leaf nodes (user `.named()`, autodiff's d<name>). A side table, so a
# name never splits two otherwise identical nodes.
NAMES: weakref.WeakKeyDictionary[Node, str] = weakref.WeakKeyDictionary()


# Op kinds whose shape and dtype rule reads only the operands' shapes and dtypes and the
# attributes (not leaves, not control ops with bodies or results): `rebuild` on operands of
# the old types reuses the old node's type.
TYPED_BY_OPERAND_TYPES = frozenset({"elementwise", "movement", "index", "kernel", "matmul",
                                    "reduce"})


def make(op: str, inputs=(), **attrs) -> Node:
    """Build (or fetch the interned) node `op(*inputs, **attrs)`, inferring shape and dtype."""
    inputs = tuple(inputs)
    return _make(op, inputs, tuple(sorted(attrs.items())), attrs)


def _make(op: str, inputs: tuple, key_attrs: tuple, attrs: dict,
          like: Node | None = None) -> Node:
    """`make` given the sorted attributes; `like`: a node of the same op and attributes on
    operands of the same types, whose type the new node has (the rule is not run again)."""
    key = (op, inputs, key_attrs)
    hit = _INTERN.get(key)
    if hit is not None:
        return hit
    spec = get_op(op)
    results = None
    if spec.multiple_results:
        results = tuple((tuple(int(s) for s in sh), dt) for sh, dt in spec.infer(inputs, attrs))
        shape, dtype = (), TUPLE
    elif like is not None and spec.kind in TYPED_BY_OPERAND_TYPES:
        shape, dtype = like.shape, like.dtype
    else:
        shape, dtype = spec.infer(inputs, attrs)
    n = object.__new__(Node)
    n.op, n.inputs, n.attrs = op, inputs, key_attrs
    n.shape, n.dtype, n.results = tuple(int(s) for s in shape), dtype, results
    n.where = _user_location()
    n.serial = next(_SERIAL)
    _INTERN[key] = n
    return n


def lookup(op: str, inputs: tuple, key_attrs: tuple) -> Node | None:
    """The interned node `op(*inputs)` with sorted attributes `key_attrs`, if one exists
    (nothing is made)."""
    return _INTERN.get((op, inputs, key_attrs))


def rebuild(node: Node, inputs) -> Node:
    """`node` with its inputs replaced (same op and attributes); returns `node` if unchanged."""
    inputs = tuple(inputs)
    old = node.inputs
    if len(inputs) == len(old):
        for a, b in zip(inputs, old):  # a loop, not all(genexpr): a hot path
            if a is not b:
                break
        else:
            return node
        for a, b in zip(inputs, old):
            # the type depends on the operands' types and the attributes only (no constants:
            # a dtype rule may treat a literal operand as weakly typed): passes that rebuild
            # a graph above a rewritten node skip shape inference
            if a.shape != b.shape or a.dtype != b.dtype or a.op == "const" or b.op == "const":
                break
        else:
            return _make(node.op, inputs, node.attrs, dict(node.attrs), like=node)
    return make(node.op, inputs, **dict(node.attrs))
