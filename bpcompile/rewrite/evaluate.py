"""The constant evaluator of constant folding: an interpreter table op -> NumPy function.

Folded values end up in generated code, so each entry computes exactly what the NumPy backend's
generated statement computes (the same NumPy call on the same operand types): a fold never
changes a result. The stable helpers (`sigmoid`, `pad`, ...) live here and the NumPy backend's
runtime re-exports them, so there is one copy of each. An elementwise op without an entry is
evaluated from its SymPy form, printed by the NumPy backend's own printer
(ops/array_printer.py) and run in `NAMESPACE`, so a new op folds with no entry here. Ops
without either (`kernel`, `scan`) are not folded.
"""

from __future__ import annotations

import operator

import numpy as np

from ..ir.dtypes import FLOATS, is_half
from ..ir.node import Node
from ..ops import sympy_funcs as sf
from ..ops.array_printer import ArrayExprPrinter, has_literal_branches
from ..ops.index import describe_site, range_error
from ..ops.registry import get_op


def sigmoid(x):
    # exp(-logaddexp(0, -x)) never overflows: exact 0/1 at the extremes, no warnings.
    return np.exp(-np.logaddexp(0, -x))


def softplus(x):
    return np.logaddexp(0, x)


def relu(x):
    return np.maximum(x, 0)


def step(x):
    # a float x keeps its dtype (float16, ml_dtypes' bfloat16 too); int/bool -> float32
    dt = x.dtype if x.dtype.name in FLOATS else np.result_type(x, np.float32)
    return np.where(x > 0, 1, 0).astype(dt)


# What printed SymPy forms may call: NumPy and the stable helpers (ops/sympy_funcs.py's
# helper primitives); the NumPy backend's runtime namespace extends this one.
NAMESPACE = {"np": np, "sigmoid": sigmoid, "softplus": softplus, "relu": relu, "step": step}
PRINTER = ArrayExprPrinter("np", NAMESPACE)


def _check(idx, lo, hi, site):
    """Refuse indices outside [lo, hi) (ops/index.py has the semantics) before any use."""
    if idx.size:
        mn, mx = int(idx.min()), int(idx.max())
        if mn < lo or mx >= hi:
            bad = np.asarray(idx).flat[int(np.argmax((idx < lo) | (idx >= hi)))]
            raise range_error(site, lo, hi, int(bad), (mn, mx))


def one_hot(idx, n, dtype, wrap=False, site="one_hot"):
    idx = np.asarray(idx)
    _check(idx, -n if wrap else 0, n, site)
    if wrap:
        idx = np.where(idx < 0, idx + n, idx)
    return (idx[..., None] == np.arange(n, dtype=idx.dtype)).astype(dtype)


def take_in_range(x, idx, axis, site="take"):
    """np.take with jnp.take's index range: [-n, n), negatives wrapping once; else an error."""
    n = np.shape(x)[axis]
    _check(np.asarray(idx), -n, n, site)
    return np.take(x, idx, axis=axis)


def scatter_add(x, v, idx, axis, site="scatter_add"):
    """x.at[idx].add(v) along `axis` (duplicates accumulate), idx in [-n, n); else an error."""
    n = np.shape(x)[axis]
    idx = np.asarray(idx)
    _check(idx, -n, n, site)
    out = np.array(x, copy=True)
    np.add.at(out, (slice(None),) * axis + (idx,), v)
    return out


def iota(shape, axis, dtype):
    ix = np.arange(shape[axis], dtype=dtype).reshape(
        [-1 if i == axis else 1 for i in range(len(shape))]
    )
    return np.broadcast_to(ix, shape)


def pad(x, lo, hi, interior):
    """Zero padding with `interior` zeros between elements (lax.pad semantics, no negatives)."""
    shape = [a + b + n + max(n - 1, 0) * i for a, b, n, i in zip(lo, hi, x.shape, interior)]
    out = np.zeros(shape, x.dtype)
    out[
        tuple(
            slice(a, a + (n - 1) * (i + 1) + 1 if n else a, i + 1)
            for a, n, i in zip(lo, x.shape, interior)
        )
    ] = x
    return out


def _dt(n: Node):
    return np.dtype(n.dtype)


def _reduce(fn):
    def run(n, x):
        dt = {"dtype": np.int32} if n.dtype == "int32" and fn is np.sum else {}
        return fn(x, axis=tuple(n.attr("axes")), keepdims=n.attr("keepdims"), **dt)

    return run


def _slice(n, x):
    return x[tuple(slice(*t) for t in zip(n.attr("starts"), n.attr("stops"), n.attr("steps")))]


# op -> f(node, *operand values); mirrors backends/numpy/lower.LOWERINGS entry by entry
EVAL = {
    "add": lambda n, a, b: a + b,
    "sub": lambda n, a, b: a - b,
    "mul": lambda n, a, b: a * b,
    "div": lambda n, a, b: a / b,
    "pow": lambda n, a, b: a**b,
    "lt": lambda n, a, b: operator.lt(a, b),
    "le": lambda n, a, b: operator.le(a, b),
    "gt": lambda n, a, b: operator.gt(a, b),
    "ge": lambda n, a, b: operator.ge(a, b),
    "eq": lambda n, a, b: operator.eq(a, b),
    "ne": lambda n, a, b: operator.ne(a, b),
    "round": lambda n, x: np.round(x),
    "where": lambda n, c, a, b: np.where(c, a, b),
    "neg": lambda n, x: -x,
    "cast": lambda n, x: np.asarray(x).astype(_dt(n)),
    "sum": _reduce(np.sum),
    "max": _reduce(np.max),
    "min": _reduce(np.min),
    "logical_and": lambda n, a, b: np.logical_and(a, b),
    "logical_or": lambda n, a, b: np.logical_or(a, b),
    "logical_xor": lambda n, a, b: np.logical_xor(a, b),
    "logical_not": lambda n, x: np.logical_not(x),
    "reshape": lambda n, x: np.reshape(x, n.shape),
    "transpose": lambda n, x: x.T if n.attr("perm") == (1, 0) else np.transpose(x, n.attr("perm")),
    "broadcast_to": lambda n, x: np.broadcast_to(x, n.shape),
    "concatenate": lambda n, *xs: np.concatenate(list(xs), axis=n.attr("axis")),
    "slice": _slice,
    "matmul": lambda n, a, b: (a.astype(np.float32) @ b.astype(np.float32)).astype(a.dtype)
    if is_half(n.dtype) else a @ b,  # 16 bits: float32 accumulation, as the backends
    "stop_gradient": lambda n, x: x,
    "remat": lambda n, x, *frontier: x,
    "remat_barrier": lambda n, x, after: x,
    "pad": lambda n, x: pad(x, n.attr("lo"), n.attr("hi"), n.attr("interior")),
    "one_hot": lambda n, x: one_hot(x, n.attr("n"), _dt(n), bool(n.attr("wrap")),
                                    describe_site(n)),
    "take": lambda n, x, i: take_in_range(x, i, n.attr("axis"), describe_site(n)),
    "scatter_add": lambda n, x, v, i: scatter_add(x, v, i, n.attr("axis"), describe_site(n)),
    "iota": lambda n: iota(n.shape, n.attr("axis"), _dt(n)),
}


_FROM_FORM: dict[str, tuple] = {}


def from_form(op_name: str):
    """f(node, *operands) evaluating the op's SymPy form as the NumPy backend prints it (its
    `derived` lowering, backends/array_lowering.py), or None; cached per op record."""
    op = get_op(op_name)
    hit = _FROM_FORM.get(op_name)
    if hit is not None and hit[0] is op:
        return hit[1]
    fn, f = None, sf.form(op) if op.kind == "elementwise" else None
    if f is not None and not PRINTER.unprintable(f):
        expr = PRINTER.expand(f)
        args = [f"a{i}" for i in range(sf.arity(op.sympy))]
        body = PRINTER.print(expr, {a: a for a in args})
        code = f"lambda _n, {', '.join(args)}: {body}"
        if has_literal_branches(expr):
            code = f"lambda _n, {', '.join(args)}: np.asarray({body}, dtype=_n.dtype)"
        fn = eval(code, dict(NAMESPACE))  # our own printer's output
    _FROM_FORM[op_name] = (op, fn)
    return fn


def can_evaluate(n: Node) -> bool:
    return n.op in EVAL or from_form(n.op) is not None


def evaluate(n: Node) -> np.ndarray:
    """The value of `n`, whose inputs are all `const` nodes, as a `n.dtype` array.

    Operands take the types the NumPy backend's source gives them: a 0-d constant is a Python
    literal (a weak scalar in NumPy's promotion) unless every operand is 0-d, then a typed 0-d
    array (backends/pysource.py).
    """
    vals = [i.attr("value").array for i in n.inputs]
    if not all(v.ndim == 0 for v in vals):
        vals = [v.item() if v.ndim == 0 else v for v in vals]
    with np.errstate(all="ignore"):
        fn = EVAL.get(n.op) or from_form(n.op)
        return np.asarray(fn(n, *vals), n.dtype)
