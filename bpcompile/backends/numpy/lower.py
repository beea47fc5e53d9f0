"""NumPy lowering table: op name -> function(node, operand strings) -> Python expression.

Modules that add ops register their lowering here with `LOWERINGS[name] = fn`; the test suite
fails when a registered op has no entry.
"""

from __future__ import annotations

from collections.abc import Callable

from ...errors import BackendError
from ...ir.node import Node
from ..kernel_printer import ArrayExprPrinter, has_literal_branches

PRINTER = ArrayExprPrinter("np")
NP_DTYPE = {
    "float32": "np.float32",
    "float64": "np.float64",
    "int32": "np.int32",
    "bool": "np.bool_",
}
# A lowering returns an expression, or (temporaries, expression) where temporaries are
# [(name, expression)] lines emitted first; "{self}" in a name is the node's variable name.
LOWERINGS: dict[str, Callable[[Node, list[str]], str | tuple]] = {}

_BIN = {
    "add": "+",
    "sub": "-",
    "mul": "*",
    "div": "/",
    "pow": "**",
    "lt": "<",
    "le": "<=",
    "gt": ">",
    "ge": ">=",
    "eq": "==",
    "ne": "!=",
}
_UNARY = {
    "exp": "np.exp",
    "log": "np.log",
    "log1p": "np.log1p",
    "expm1": "np.expm1",
    "sqrt": "np.sqrt",
    "abs": "np.abs",
    "sign": "np.sign",
    "sin": "np.sin",
    "cos": "np.cos",
    "tanh": "np.tanh",
    "sigmoid": "sigmoid",
    "relu": "relu",
    "softplus": "softplus",
    "floor": "np.floor",
    "round": "np.round",
}

for _op, _sym in _BIN.items():
    LOWERINGS[_op] = (lambda s: lambda n, a: f"{a[0]} {s} {a[1]}")(_sym)
for _op, _fn in _UNARY.items():
    LOWERINGS[_op] = (lambda f: lambda n, a: f"{f}({a[0]})")(_fn)


def _axes(t):
    return f"({t[0]},)" if len(t) == 1 else str(tuple(t))


def _slice(n, a):
    idx = ", ".join(
        f"{s}:{e}" + (f":{k}" if k != 1 else "")
        for s, e, k in zip(n.attr("starts"), n.attr("stops"), n.attr("steps"))
    )
    return f"{a[0]}[{idx}]"


def _transpose(n, a):
    return f"{a[0]}.T" if n.attr("perm") == (1, 0) else f"np.transpose({a[0]}, {n.attr('perm')})"


def _sum(n, a):
    dt = f", dtype={NP_DTYPE[n.dtype]}" if n.dtype == "int32" else ""
    return f"np.sum({a[0]}, axis={_axes(n.attr('axes'))}, keepdims={n.attr('keepdims')}{dt})"


def _kernel(n, a):
    """A kernel prints as one expression; repeated subexpressions become `{self}_t<k>` lines."""
    expr = n.attr("expr")
    temps, body = PRINTER.print_cse(expr, {f"a{i}": s for i, s in enumerate(a)}, "{self}")
    if has_literal_branches(expr):
        body = f"np.asarray({body}, dtype={NP_DTYPE[n.dtype]})"
    return (temps, body) if temps else body


LOWERINGS.update(
    {
        "neg": lambda n, a: f"-{a[0]}",
        "maximum": lambda n, a: f"np.maximum({a[0]}, {a[1]})",
        "minimum": lambda n, a: f"np.minimum({a[0]}, {a[1]})",
        "where": lambda n, a: f"np.where({a[0]}, {a[1]}, {a[2]})",
        "cast": lambda n, a: f"np.asarray({a[0]}).astype({NP_DTYPE[n.dtype]})",
        "stop_gradient": lambda n, a: a[0],
        "sum": _sum,
        "max": lambda n, a: (
            f"np.max({a[0]}, axis={_axes(n.attr('axes'))}, keepdims={n.attr('keepdims')})"
        ),
        "reshape": lambda n, a: f"np.reshape({a[0]}, {n.shape})",
        "transpose": _transpose,
        "broadcast_to": lambda n, a: f"np.broadcast_to({a[0]}, {n.shape})",
        "concatenate": lambda n, a: f"np.concatenate([{', '.join(a)}], axis={n.attr('axis')})",
        "slice": _slice,
        "pad": lambda n, a: f"pad({a[0]}, {n.attr('lo')}, {n.attr('hi')}, {n.attr('interior')})",
        "matmul": lambda n, a: f"{a[0]} @ {a[1]}",
        "take": lambda n, a: f"np.take({a[0]}, {a[1]}, axis={n.attr('axis')})",
        "one_hot": lambda n, a: f"one_hot({a[0]}, {n.attr('n')}, {NP_DTYPE[n.dtype]})",
        "iota": lambda n, a: f"iota({n.shape}, {n.attr('axis')}, {NP_DTYPE[n.dtype]})",
        "kernel": _kernel,
    }
)


def lower(n: Node, a: list[str]) -> str:
    """The right-hand side computing `n` from operand expressions `a`."""
    fn = LOWERINGS.get(n.op)
    if fn is None:
        raise BackendError(f"numpy backend: no lowering for op {n.op!r}")
    return fn(n, a)


def lowered_ops() -> set[str]:
    return set(LOWERINGS) | {"input", "param", "const"}

from ..pyscan import numpy_scan  # noqa: E402  (scan: a for loop over a generated body function)

LOWERINGS["scan"] = numpy_scan
