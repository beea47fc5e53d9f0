"""The op table: one `Op` record per primitive holds its shape/dtype rule, VJP rule and doc.

The IR owns the table because `ir.node.make` looks up each op's shape rule; `bpcompile/ops`
fills it (`ops/registry.py` re-exports it). Backends keep their own lowering tables keyed by
op name; nothing here imports an op definition or a backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import BackendError

# kinds: leaf | elementwise | reduce | movement | matmul | index | kernel | control (scan)
KINDS = ("leaf", "elementwise", "reduce", "movement", "matmul", "index", "kernel", "control")


@dataclass(frozen=True)
class Op:
    """A primitive.

    infer(inputs, attrs) -> (shape, dtype); raises ShapeError/DTypeError naming the op. An op
        with `multiple_results` (JAX's term) returns a list of (shape, dtype), one per result;
        its node is a tuple that `result` nodes project (ir/node.py).
    vjp(node, g, needs) -> tuple with one cotangent node (or None for "no gradient / zero")
        per input; `needs[i]` says whether input i needs one. For a multiple-results op `g` is
        a list with one cotangent (or None) per result. `vjp=None` means the op is not
        differentiable and a cotangent reaching a float input of it is an error.
    sympy(*args, **attrs) -> the scalar expression of an elementwise op, used by fusion.
    jvp(node, tangents) -> the tangent of the output (forward mode, autodiff/forward.py):
        `tangents` has one tangent node (or None, a symbolic zero) per input, in the input's
        shape; a multiple-results op returns one tangent (or None) per result. None here
        means "derived": elementwise ops and kernels from their VJP (a diagonal Jacobian is
        its own transpose), every other op by transposing its VJP (docs/transforms.md).
    """

    name: str
    kind: str
    infer: Callable
    vjp: Callable | None
    doc: str
    sympy: Callable | None = None
    attrs_doc: dict = field(default_factory=dict)
    multiple_results: bool = False
    jvp: Callable | None = None


_OPS: dict[str, Op] = {}


def register(op: Op) -> Op:
    if op.name in _OPS:
        raise ValueError(f"op {op.name!r} registered twice")
    if op.kind not in KINDS:
        raise ValueError(f"op {op.name!r} has unknown kind {op.kind!r}")
    _OPS[op.name] = op
    return op


def unregister(name: str) -> Op:
    """Remove op `name` (a test's throwaway op); returns its record."""
    try:
        return _OPS.pop(name)
    except KeyError:
        raise BackendError(f"unknown op {name!r}") from None


_BUILTIN: dict[str, Op] = {}  # the table as `import bpcompile` left it (seal_builtins)


def seal_builtins() -> None:
    """Record the ops bpcompile itself defines (called once, at the end of its import)."""
    _BUILTIN.update(_OPS)


def is_builtin(name: str) -> bool:
    """Whether op `name` is bpcompile's own (not one a user added or replaced since import):
    a user's op is defined by Python code outside bpcompile, which no cache key can pin."""
    op = _BUILTIN.get(name)
    return op is not None and _OPS.get(name) is op


def get_op(name: str) -> Op:
    try:
        return _OPS[name]
    except KeyError:
        raise BackendError(f"unknown op {name!r}") from None


def all_ops() -> dict[str, Op]:
    return dict(_OPS)
