"""jax.numpy lowering table: op name -> function(node, operand strings) -> expression.

Used by the JAX backend and by `translate` (the independent JAX oracle for bp.check).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..array_lowering import dispatcher, dtype_name, table
from ..kernel_printer import ArrayExprPrinter, has_literal_branches

PRINTER = ArrayExprPrinter("jnp")
JNP_DTYPE = {d: dtype_name("jnp", d) for d in ("float32", "float64", "int32", "bool")}


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


LOWERINGS = table("jnp")
LOWERINGS.update(
    {
        "stop_gradient": lambda n, a: f"lax.stop_gradient({a[0]})",
        "pad": _pad,
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


lower = dispatcher(LOWERINGS, "jax")


def lowered_ops() -> set[str]:
    return set(LOWERINGS) | {"input", "param", "const"}


from ..pyscan import jax_scan  # noqa: E402  (scan: jax.lax.scan over a generated body function)

LOWERINGS["scan"] = jax_scan
