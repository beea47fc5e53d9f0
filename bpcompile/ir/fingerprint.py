"""A structural hash of a graph as the user built it: the first level of the compile cache.

`fingerprint(outputs)` writes every node reachable from `outputs` once, as a line naming its
op, shape, dtype, attributes and its inputs by line number (a shared node is written once and
referred to), and hashes the text: linear in the graph, one sha256 at the end. Everything that can
change what a graph computes is in it: ops, attributes, constants' bytes, shapes, dtypes,
leaf names, scan bodies. So are readable names (`NAMES`) and the source lines of index ops:
they change no result, but a hit serves text made from them (memory reports, index errors),
which must read as a fresh compile's would. Other source lines (`node.where`) only reach
comments in generated code, which a hit rebuilds when asked (`fn.source()`).

An attribute of a kind this module does not know how to encode (a `custom_vjp` rule holds
Python functions, whose meaning no hash of their code pins down), or an op a user registered
(`bp.define_unary`/`define_binary`: its definition is their code), raises `Unkeyable`, and the
caller compiles without the graph-level cache (the LLVM object cache, keyed by the emitted IR,
still serves it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

from .node import NAMES, ConstValue, Node
from .optable import is_builtin

_SIMPLE = (bool, int, float, str, type(None))
_FAST = frozenset(_SIMPLE)  # exact types whose repr is exact and says the type
# ops whose source line a compiled program keeps (its run-time index errors name it); other
# nodes' lines only reach comments, and an interned node (a constant) keeps the line of
# whichever graph made it first, so keying on every line would make keys depend on history
_SITES = frozenset(("take", "one_hot", "scatter_add"))


class Unkeyable(Exception):
    """The graph holds an attribute whose meaning a structural hash cannot capture."""


class _Hasher:
    """Writes the graph as one line per node (op, shape, dtype, attributes, inputs by line
    number) in a deterministic post-order; the digest is one sha256 of the text."""

    def __init__(self, given: dict[Node, str] | None = None):
        self.given = given or {}  # output -> the label a compile names it by when unnamed
        self.ids: dict[Node, int] = {}
        self.lines: list[str] = []
        self.scopes: dict[int, int] = {}  # trace-order scope ids -> first-seen order

    def node(self, root: Node) -> int:
        """Line number of `root`; iterative post-order so deep graphs never recurse."""
        ids, names = self.ids, NAMES
        if root in ids:
            return ids[root]
        stack = [(root, False)]
        while stack:
            n, ready = stack.pop()
            if n in ids:
                continue
            if not ready:
                stack.append((n, True))
                stack.extend((i, False) for i in reversed(n.inputs) if i not in ids)
                continue
            if not is_builtin(n.op):  # its meaning is Python code outside bpcompile
                raise Unkeyable(f"op {n.op!r} is defined outside bpcompile")
            name = names.get(n, "")
            if name and self.given.get(n) == name:  # named so by an earlier compile: unnamed
                name = ""
            parts = [n.op, repr(n.shape), n.dtype, repr(n.results) if n.results else "",
                     (n.where or "") if n.op in _SITES else "", name]
            for k, v in n.attrs:
                t = type(v)  # plain values (most attributes): their repr says value and type
                if k != "scope" and (t in _FAST or t is tuple and all(type(x) in _FAST
                                                                       for x in v)):
                    parts.append(f"{k}={v!r}")
                else:
                    parts.append(f"{k}:{self.value(k, v)}")
            parts.append(",".join([str(ids[i]) for i in n.inputs]))
            ids[n] = len(self.lines)  # after any nodes its attributes hold were written
            self.lines.append("\0".join(parts))
        return ids[root]

    def value(self, key: str, v) -> str:
        if key == "scope" and isinstance(v, int):  # a trace counter: its order is what counts
            return f"scope{self.scopes.setdefault(v, len(self.scopes))}"
        if isinstance(v, _SIMPLE):
            return f"{type(v).__name__}:{v!r}"
        if isinstance(v, (tuple, list)):
            return "(" + ",".join(self.value("", x) for x in v) + ")"
        if isinstance(v, ConstValue):
            a = v.array
            return (f"const:{a.dtype.str}:{a.shape}:"
                    f"{hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest()}")
        if isinstance(v, np.generic):
            return f"{v.dtype.str}:{v.item()!r}"
        if isinstance(v, np.dtype):
            return f"dtype:{v.str}"
        if isinstance(v, Node):
            return f"#{self.node(v)}"
        if _is_body(v):
            nodes = [self.node(n) for n in v.params + v.outputs]
            return (f"body:{v.name!r}:{len(v.carries)}:{len(v.xs)}:{len(v.consts)}:"
                    + ",".join(map(str, nodes)))
        if _is_sympy(v):  # a user kernel's body (bp.elementwise): SymPy's exact tree
            import sympy as sp

            return "sympy:" + sp.srepr(v)
        raise Unkeyable(f"attribute {key!r} holds a {type(v).__name__}")


def _is_body(v) -> bool:
    # a scan body (ops/scan.Body) duck-typed: the IR layer does not import ops
    return all(hasattr(v, a) for a in ("carries", "xs", "consts", "params", "outputs", "name"))


def _is_sympy(v) -> bool:
    return type(v).__module__.startswith("sympy.")


def fingerprint(outputs: Sequence[Node], extra: Iterable[Node] = ()) -> str:
    """Hex digest of the graph reaching `outputs` (in order) and of the nodes `extra` (the
    leaves a compile differentiates by, in order); raises Unkeyable (see module docstring)."""
    return fingerprint_and_size(outputs, extra)[0]


def fingerprint_and_size(outputs: Sequence[Node], extra: Iterable[Node] = (),
                         labels: Sequence[str] = ()) -> tuple[str, int]:
    """`fingerprint` and the number of nodes it read (scan bodies included). `labels`: the
    outputs' labels, which a compile gives an unnamed output as its name (compiled.py), so
    a graph compiled before hashes as it did then."""
    hasher = _Hasher(dict(zip(outputs, labels)))
    roots = [f"out{hasher.node(n)}" for n in outputs] + [f"extra{hasher.node(n)}" for n in extra]
    text = "\n".join(hasher.lines) + "\n" + ",".join(roots)
    return hashlib.sha256(text.encode()).hexdigest(), len(hasher.lines)
