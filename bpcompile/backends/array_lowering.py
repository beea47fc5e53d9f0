"""The lowering table the two array-API backends share (NumPy and jax.numpy).

A lowering maps a node and its operand strings to a Python expression; it may instead return
(temporaries, expression), where temporaries are [(name, expression)] lines emitted first and
"{self}" in a name stands for the node's variable name. `table(ns)` builds the entries whose
text differs only in the module prefix; each backend adds the few that differ in substance.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import BackendError
from ..ir.dtypes import is_half
from ..ir.node import Node

Lowering = Callable[[Node, list[str]], "str | tuple"]

BINARY = {
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
MODULE_FUNCS = (
    "exp",
    "log",
    "log1p",
    "expm1",
    "sqrt",
    "abs",
    "sign",
    "sin",
    "cos",
    "tanh",
    "floor",
    "round",
    "maximum",
    "minimum",
    "where",
)
HELPERS = ("sigmoid", "relu", "softplus")  # stable versions in each backend's namespace


def dtype_name(ns: str, dtype: str) -> str:
    if dtype == "bfloat16" and ns == "np":  # NumPy's bfloat16 is ml_dtypes' (jnp has its own)
        return "ml_dtypes.bfloat16"
    return f"{ns}.{'bool_' if dtype == 'bool' else dtype}"


def _axes(t) -> str:
    return f"({t[0]},)" if len(t) == 1 else str(tuple(t))


def _slice(n, a):
    idx = ", ".join(
        f"{s}:{e}" + (f":{k}" if k != 1 else "")
        for s, e, k in zip(n.attr("starts"), n.attr("stops"), n.attr("steps"))
    )
    return f"{a[0]}[{idx}]"


def table(ns: str) -> dict[str, Lowering]:
    """The shared entries, printed against module `ns` ("np" or "jnp")."""
    t: dict[str, Lowering] = {}
    for op, sym in BINARY.items():
        t[op] = (lambda s: lambda n, a: f"{a[0]} {s} {a[1]}")(sym)
    for op in MODULE_FUNCS:
        t[op] = (lambda f: lambda n, a: f"{f}({', '.join(a)})")(f"{ns}.{op}")
    for op in HELPERS:
        t[op] = (lambda f: lambda n, a: f"{f}({a[0]})")(op)

    def reduce_(fn):
        def lower(n, a):
            dt = f", dtype={dtype_name(ns, n.dtype)}" if n.dtype == "int32" else ""
            return (
                f"{ns}.{fn}({a[0]}, axis={_axes(n.attr('axes'))}, "
                f"keepdims={n.attr('keepdims')}{dt})"
            )

        return lower

    t.update(
        {
            "neg": lambda n, a: f"-{a[0]}",
            "cast": lambda n, a: f"{ns}.asarray({a[0]}).astype({dtype_name(ns, n.dtype)})",
            "sum": reduce_("sum"),
            "max": reduce_("max"),
            "reshape": lambda n, a: f"{ns}.reshape({a[0]}, {n.shape})",
            "transpose": lambda n, a: (
                f"{a[0]}.T"
                if n.attr("perm") == (1, 0)
                else f"{ns}.transpose({a[0]}, {n.attr('perm')})"
            ),
            "broadcast_to": lambda n, a: f"{ns}.broadcast_to({a[0]}, {n.shape})",
            "concatenate": lambda n, a: (
                f"{ns}.concatenate([{', '.join(a)}], axis={n.attr('axis')})"
            ),
            "slice": _slice,
            "matmul": lambda n, a: (
                f"({a[0]}.astype({ns}.float32) @ {a[1]}.astype({ns}.float32))"
                f".astype({dtype_name(ns, n.dtype)})" if is_half(n.dtype)  # float32 accumulation
                else f"{a[0]} @ {a[1]}"),
            "take": lambda n, a: f"{ns}.take({a[0]}, {a[1]}, axis={n.attr('axis')})",
        }
    )
    return t


def dispatcher(lowerings: dict[str, Lowering], backend: str):
    """`lower(node, operands)` over a table, failing loudly on an op it lacks."""

    def lower(n: Node, a: list[str]):
        fn = lowerings.get(n.op)
        if fn is None:
            raise BackendError(f"{backend} backend: no lowering for op {n.op!r}")
        return fn(n, a)

    return lower
