"""jax.numpy lowering table: op name -> function(node, operand strings) -> expression.

`lower` (the op-for-op table) is used by `translate` (the independent JAX oracle for bp.check)
and by scan bodies; the JAX backend's program uses `lower_program`, the same table plus a few
entries chosen for how XLA:CPU runs them (`PROGRAM_LOWERINGS`). Those never reach the oracle,
which jax.grad differentiates and so must keep each primitive's own derivative.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from ...ir.dtypes import DTYPES
from ..array_lowering import dispatcher, dtype_name, table
from ..kernel_printer import ArrayExprPrinter, has_literal_branches

PRINTER = ArrayExprPrinter("jnp")
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
    if has_literal_branches(expr) or any(i.dtype != n.dtype for i in n.inputs):
        return f"jnp.asarray({body}, dtype={JNP_DTYPE[n.dtype]})"
    return body


LOWERINGS = table("jnp")
LOWERINGS.update(
    {
        "stop_gradient": lambda n, a: f"lax.stop_gradient({a[0]})",
        "pad": _pad,
        "one_hot": lambda n, a: (
            f"one_hot({a[0]}, {n.attr('n')}, {JNP_DTYPE[n.dtype]}{_wrap(n)})"
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
    """jnp.sum over a few elements per output, as additions (see SMALL_REDUCTION)."""
    return _unrolled(jnp.add, x, axes, keepdims)


def max_unrolled(x, axes, keepdims=False):
    """jnp.max over a few elements per output, as jnp.maximum (NaN-propagating, like max)."""
    return _unrolled(jnp.maximum, x, axes, keepdims)


def matmul_unrolled(a, b):
    """a @ b as a sum of K outer products (see SMALL_MATMUL_K): elementwise ops that XLA fuses
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


lower = dispatcher(LOWERINGS, "jax")

# XLA:CPU (jax 0.10) hands reductions to YNNPACK, which is slow when each output reduces only a
# few elements: a 2x2 max-pool's max over 4 took ~80 us for 4608 outputs, against ~10 us as three
# fused jnp.maximum. Up to this many elements per output, a float sum/max in the backend's
# program is emitted as an unrolled elementwise chain (`sum_unrolled`/`max_unrolled`).
SMALL_REDUCTION = 8


def _small_reduction(op: str):
    def lower_(n, a):
        x, axes = n.inputs[0], n.attr("axes")
        k = math.prod(x.shape[i] for i in axes)
        if n.dtype in ("float32", "float64") and x.dtype == n.dtype and 1 < k <= SMALL_REDUCTION:
            return f"{op}_unrolled({a[0]}, {tuple(axes)!r}, keepdims={n.attr('keepdims')})"
        return LOWERINGS[op](n, a)

    return lower_


# A dot is a call of its own in XLA:CPU's runtime (~0.5 us each, whatever its size), where
# elementwise ops fuse with their neighbours into one loop. A matmul contracting over at most
# SMALL_MATMUL_K terms, with at most SMALL_MATMUL_WORK multiply-adds in all, is emitted as a sum
# of outer products (`matmul_unrolled`): xor's five products went from five dots to nothing
# but fused loops (device-array call 18.7 -> 16.1 us). Contracting over 32 terms (mlp_small's
# 32x32 layer) made XLA's fused loops slower than its dot, so the bound stays small.
SMALL_MATMUL_K = 8
SMALL_MATMUL_WORK = 4096


def _small_matmul(n, a):
    k = n.inputs[0].shape[-1]
    if n.dtype in ("float32", "float64") and 1 <= k <= SMALL_MATMUL_K:
        if math.prod(n.shape) * k <= SMALL_MATMUL_WORK:
            return f"matmul_unrolled({a[0]}, {a[1]})"
    return LOWERINGS["matmul"](n, a)


# one_hot: jax.nn.one_hot is a compare with an iota, which XLA fuses into every consumer; as a
# scatter (what JAX's own gradient of take_along_axis emits) it is computed once, up front, off
# the critical path. On mlp_mnist (XLA:CPU, both cores free) that took the program from
# 0.83-0.96 of jax.value_and_grad's speed to 0.96-1.00 (same HLO otherwise); docs/performance.md.
PROGRAM_LOWERINGS = {
    "matmul": _small_matmul,
    "sum": _small_reduction("sum"),
    "max": _small_reduction("max"),
    "one_hot": lambda n, a: (
        f"one_hot_scatter({a[0]}, {n.attr('n')}, {JNP_DTYPE[n.dtype]}{_wrap(n)})"
    ),
}


def lower_program(n, a):
    """The backend program's lowering: `PROGRAM_LOWERINGS` first, else the shared table."""
    fn = PROGRAM_LOWERINGS.get(n.op)
    return fn(n, a) if fn is not None else lower(n, a)


def lowered_ops() -> set[str]:
    return set(LOWERINGS) | {"input", "param", "const"}


from ..pyscan import jax_scan  # noqa: E402  (scan: jax.lax.scan over a generated body function)

LOWERINGS["scan"] = jax_scan
