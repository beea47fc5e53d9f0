"""jax.numpy lowering table: op name -> function(node, operand strings) -> expression.

`lower` (the op-for-op table) is used by `translate` (the independent JAX oracle for bp.check)
and by scan bodies; the JAX backend's program uses `lower_program`, the same table plus a few
entries chosen for how XLA:CPU runs them (`PROGRAM_LOWERINGS`: nodes the backend's rules
marked `unroll`, rules.py, and one_hot as a scatter). Those never reach the oracle, which
jax.grad differentiates and so must keep each primitive's own derivative.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ...ir.dtypes import DTYPES
from ...ops.array_printer import ArrayExprPrinter, has_literal_branches
from ..array_lowering import dispatcher, dtype_name, table
from ..array_lowering import lowered_ops as _lowered_ops

JNP_DTYPE = {d: dtype_name("jnp", d) for d in DTYPES}


def _pad(n, a):
    cfg = list(zip(n.attr("lo"), n.attr("hi"), n.attr("interior")))
    return f"lax.pad({a[0]}, jnp.zeros((), {a[0]}.dtype), {cfg})"


def _kernel(n, a):
    expr = n.attr("expr")
    body = PRINTER.print(expr, {f"a{i}": s for i, s in enumerate(a)})
    # Python literals are weakly typed in JAX, so a body over operands of the kernel's own
    # dtype keeps that dtype; literal branches (where(c, 1.0, 0.0)) or mixed-dtype operands
    # would promote (to float64 under x64), so those get an explicit dtype.
    if has_literal_branches(PRINTER.expand(expr)) or any(i.dtype != n.dtype for i in n.inputs):
        return f"jnp.asarray({body}, dtype={JNP_DTYPE[n.dtype]})"
    return body


LOWERINGS = table("jnp")
LOWERINGS.update(
    {
        "stop_gradient": lambda n, a: f"lax.stop_gradient({a[0]})",
        "remat": lambda n, a: a[0],
        # what jax.checkpoint emits: XLA may neither CSE the recomputation with the forward
        # copy nor move it before the cotangent exists
        "remat_barrier": lambda n, a: f"lax.optimization_barrier(({a[0]}, {a[1]}))[0]",
        "pad": _pad,
        "one_hot": lambda n, a: (
            f"one_hot({a[0]}, {n.attr('n')}, {JNP_DTYPE[n.dtype]}{_wrap(n)})"
        ),
        "scatter_add": lambda n, a: (  # x.at[:, idx].add(v); duplicates accumulate
            f"{a[0]}.at[{':, ' * n.attr('axis')}{a[2]}].add({a[1]})"
        ),
        "iota": lambda n, a: (
            f"lax.broadcasted_iota({JNP_DTYPE[n.dtype]}, {n.shape}, {n.attr('axis')})"
        ),
        "kernel": _kernel,
    }
)


def _step(x):
    return jnp.where(x > 0, 1, 0).astype(x.dtype)


def _unrolled(op, x, axes, keepdims):
    """Reduce `axes` of x with a chain of elementwise `op`s over index slices (row-major order).

    XLA fuses the chain, with whatever produced x, into one elementwise loop."""
    parts = [x]
    for ax in axes:
        parts = [
            jax.lax.index_in_dim(p, i, ax, keepdims=True) for p in parts for i in range(x.shape[ax])
        ]
    out = functools.reduce(op, parts)
    if keepdims:
        return out
    return jnp.reshape(out, tuple(d for i, d in enumerate(x.shape) if i not in axes))


def sum_unrolled(x, axes, keepdims=False):
    """jnp.sum over a few elements per output, as additions (see rules.SMALL_REDUCTION)."""
    return _unrolled(jnp.add, x, axes, keepdims)


def max_unrolled(x, axes, keepdims=False):
    """jnp.max over a few elements per output, as jnp.maximum (NaN-propagating, like max)."""
    return _unrolled(jnp.maximum, x, axes, keepdims)


def matmul_unrolled(a, b):
    """a @ b as a sum of K outer products (see rules.SMALL_MATMUL_K): elementwise ops that XLA fuses
    with the matmul's producers and consumers into one loop, where a dot is its own call."""
    k = a.shape[-1]
    terms = [a[..., :, i : i + 1] * b[..., i : i + 1, :] for i in range(k)]
    return functools.reduce(jnp.add, terms)


def _wrap(n) -> str:
    return ", wrap=True" if n.attr("wrap") else ""


def _labels(labels, n, wrap):
    """Labels wrapped once when `wrap` (take's gradient), and the mask of out-of-range ones."""
    if wrap:
        labels = jnp.where(labels < 0, labels + n, labels)
    return labels, (labels < 0) | (labels >= n)


def one_hot(labels, n, dtype, wrap=False):
    """jax.nn.one_hot, except that an out-of-range label gives a NaN row, not a zero row: a
    jitted program cannot raise, and with a zero row cross_entropy's loss would ignore the
    example while its (simplified) gradient does not. NaN makes both NaN (ops/index.py)."""
    labels, bad = _labels(labels, n, wrap)
    return jnp.where(bad[..., None], jnp.nan, jax.nn.one_hot(labels, n, dtype=dtype))


def one_hot_scatter(labels, n, dtype, wrap=False):
    """`one_hot` as ones scattered into zeros (NaN rows for out-of-range labels). See
    PROGRAM_LOWERINGS."""
    labels, bad = _labels(labels, n, wrap)
    rows = jnp.indices(labels.shape, sparse=True)
    base = jnp.where(bad[..., None], jnp.asarray(jnp.nan, dtype), jnp.zeros((), dtype))
    out = jnp.broadcast_to(base, labels.shape + (n,))
    return out.at[(*rows, labels)].set(1, mode="drop", wrap_negative_indices=False)


NAMESPACE = {
    "jnp": jnp,
    "jax": jax,
    "lax": jax.lax,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "relu": jax.nn.relu,
    "step": _step,
    "sum_unrolled": sum_unrolled,
    "max_unrolled": max_unrolled,
    "one_hot": one_hot,
    "one_hot_scatter": one_hot_scatter,
    "matmul_unrolled": matmul_unrolled,
}

PRINTER = ArrayExprPrinter("jnp", NAMESPACE)

lower = dispatcher(LOWERINGS, "jax", PRINTER)


def _marked(op: str):
    """`op`, or its unrolled form where the rule `jax.unroll_<op>` marked the node (rules.py)."""
    def lower_(n, a):
        if not n.attr("unroll"):
            return LOWERINGS[op](n, a)
        if op == "matmul":
            return f"matmul_unrolled({a[0]}, {a[1]})"
        axes = tuple(n.attr("axes"))
        return f"{op}_unrolled({a[0]}, {axes!r}, keepdims={n.attr('keepdims')})"

    return lower_


# one_hot: jax.nn.one_hot is a compare with an iota, which XLA fuses into every consumer; as a
# scatter (what JAX's own gradient of take_along_axis emits) it is computed once, up front, off
# the critical path. On mlp_mnist (XLA:CPU, both cores free) that took the program from
# 0.83-0.96 of jax.value_and_grad's speed to 0.96-1.00 (same HLO otherwise); docs/performance.md.
PROGRAM_LOWERINGS = {
    "matmul": _marked("matmul"),
    "sum": _marked("sum"),
    "max": _marked("max"),
    "one_hot": lambda n, a: (
        f"one_hot_scatter({a[0]}, {n.attr('n')}, {JNP_DTYPE[n.dtype]}{_wrap(n)})"
    ),
}


def lower_program(n, a):
    """The backend program's lowering: `PROGRAM_LOWERINGS` first, else the shared table."""
    fn = PROGRAM_LOWERINGS.get(n.op)
    return fn(n, a) if fn is not None else lower(n, a)


def lowered_ops() -> set[str]:
    return _lowered_ops(LOWERINGS, PRINTER)


from ..pyscan import jax_scan, jax_while, result_item  # noqa: E402  (scan: jax.lax.scan over a generated body function)

LOWERINGS["scan"] = jax_scan
LOWERINGS["while_loop"] = jax_while
LOWERINGS["result"] = result_item  # (pysource unpacks a scan into its results instead)

from ..pycustom import jax_custom  # noqa: E402  (custom_vjp outside the pipeline: its primal as a function)

LOWERINGS["custom_vjp"] = jax_custom
LOWERINGS["custom_jvp"] = jax_custom
