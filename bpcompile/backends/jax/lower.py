"""jax.numpy lowering table: op name -> function(node, operand strings) -> expression.

Used by the JAX backend and by `translate` (the independent JAX oracle for bp.check).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ...errors import BackendError
from ...ir.node import Node
from ..kernel_printer import ArrayExprPrinter, has_literal_branches

PRINTER = ArrayExprPrinter("jnp")
JNP_DTYPE = {
    "float32": "jnp.float32",
    "float64": "jnp.float64",
    "int32": "jnp.int32",
    "bool": "jnp.bool_",
}
LOWERINGS: dict[str, Callable[[Node, list[str]], str]] = {}

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
    "exp": "jnp.exp",
    "log": "jnp.log",
    "log1p": "jnp.log1p",
    "expm1": "jnp.expm1",
    "sqrt": "jnp.sqrt",
    "abs": "jnp.abs",
    "sign": "jnp.sign",
    "sin": "jnp.sin",
    "cos": "jnp.cos",
    "tanh": "jnp.tanh",
    "sigmoid": "sigmoid",
    "relu": "relu",
    "softplus": "softplus",
    "floor": "jnp.floor",
    "round": "jnp.round",
}
for _op, _sym in _BIN.items():
    LOWERINGS[_op] = (lambda s: lambda n, a: f"{a[0]} {s} {a[1]}")(_sym)
for _op, _fn in _UNARY.items():
    LOWERINGS[_op] = (lambda f: lambda n, a: f"{f}({a[0]})")(_fn)


def _slice(n, a):
    idx = ", ".join(
        f"{s}:{e}" + (f":{k}" if k != 1 else "")
        for s, e, k in zip(n.attr("starts"), n.attr("stops"), n.attr("steps"))
    )
    return f"{a[0]}[{idx}]"


def _pad(n, a):
    cfg = list(zip(n.attr("lo"), n.attr("hi"), n.attr("interior")))
    return f"lax.pad({a[0]}, jnp.zeros((), {a[0]}.dtype), {cfg})"


def _kernel(n, a):
    expr = n.attr("expr")
    body = PRINTER.print(expr, {f"a{i}": s for i, s in enumerate(a)})
    # Python literals are weakly typed in JAX, so a body over operands of the kernel's own
    # dtype keeps that dtype; literal branches (where(c, 1.0, 0.0)) or mixed-dtype operands
    # would promote (to float64 under x64), so those get an explicit dtype.
    if has_literal_branches(expr) or any(i.dtype != n.dtype for i in n.inputs):
        return f"jnp.asarray({body}, dtype={JNP_DTYPE[n.dtype]})"
    return body


LOWERINGS.update(
    {
        "neg": lambda n, a: f"-{a[0]}",
        "maximum": lambda n, a: f"jnp.maximum({a[0]}, {a[1]})",
        "minimum": lambda n, a: f"jnp.minimum({a[0]}, {a[1]})",
        "where": lambda n, a: f"jnp.where({a[0]}, {a[1]}, {a[2]})",
        "cast": lambda n, a: f"jnp.asarray({a[0]}).astype({JNP_DTYPE[n.dtype]})",
        "stop_gradient": lambda n, a: f"lax.stop_gradient({a[0]})",
        "sum": lambda n, a: (
            f"jnp.sum({a[0]}, axis={n.attr('axes')}, keepdims={n.attr('keepdims')}"
            + (", dtype=jnp.int32)" if n.dtype == "int32" else ")")
        ),
        "max": lambda n, a: (
            f"jnp.max({a[0]}, axis={n.attr('axes')}, keepdims={n.attr('keepdims')})"
        ),
        "reshape": lambda n, a: f"jnp.reshape({a[0]}, {n.shape})",
        "transpose": lambda n, a: (
            f"{a[0]}.T" if n.attr("perm") == (1, 0) else f"jnp.transpose({a[0]}, {n.attr('perm')})"
        ),
        "broadcast_to": lambda n, a: f"jnp.broadcast_to({a[0]}, {n.shape})",
        "concatenate": lambda n, a: f"jnp.concatenate([{', '.join(a)}], axis={n.attr('axis')})",
        "slice": _slice,
        "pad": _pad,
        "matmul": lambda n, a: f"{a[0]} @ {a[1]}",
        "take": lambda n, a: f"jnp.take({a[0]}, {a[1]}, axis={n.attr('axis')})",
        "one_hot": lambda n, a: (
            f"jax.nn.one_hot({a[0]}, {n.attr('n')}, dtype={JNP_DTYPE[n.dtype]})"
        ),
        "iota": lambda n, a: (
            f"lax.broadcasted_iota({JNP_DTYPE[n.dtype]}, {n.shape}, {n.attr('axis')})"
        ),
        "kernel": _kernel,
    }
)


def _step(x):
    return jnp.where(x > 0, 1, 0).astype(x.dtype)


NAMESPACE = {
    "jnp": jnp,
    "jax": jax,
    "lax": jax.lax,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "relu": jax.nn.relu,
    "step": _step,
}


def lower(n: Node, a: list[str]) -> str:
    fn = LOWERINGS.get(n.op)
    if fn is None:
        raise BackendError(f"jax backend: no lowering for op {n.op!r}")
    return fn(n, a)


def lowered_ops() -> set[str]:
    return set(LOWERINGS) | {"input", "param", "const"}


from ..pyscan import jax_scan  # noqa: E402  (scan: jax.lax.scan over a generated body function)

LOWERINGS["scan"] = jax_scan
