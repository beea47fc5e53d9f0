"""NumPy lowering table: op name -> function(node, operand strings) -> Python expression.

Most entries come from `backends/array_lowering.table("np")`; modules that add ops register
theirs here with `LOWERINGS[name] = fn`; an elementwise op without an entry is printed from its
SymPy form; the test suite fails when an op has neither.
"""

from __future__ import annotations

from ...ir.dtypes import DTYPES
from ...ops.array_printer import ArrayExprPrinter, has_literal_branches
from ...ops.index import describe_site
from ..array_lowering import dispatcher, dtype_name, table
from ..array_lowering import lowered_ops as _lowered_ops
from .runtime import NAMESPACE

PRINTER = ArrayExprPrinter("np", NAMESPACE)
NP_DTYPE = {d: dtype_name("np", d) for d in DTYPES}


def _kernel(n, a):
    """A kernel prints as one expression; repeated subexpressions become `{self}_t<k>` lines."""
    expr = n.attr("expr")
    temps, body = PRINTER.print_cse(expr, {f"a{i}": s for i, s in enumerate(a)}, "{self}")
    if has_literal_branches(PRINTER.expand(expr)):
        body = f"np.asarray({body}, dtype={NP_DTYPE[n.dtype]})"
    return (temps, body) if temps else body


LOWERINGS = table("np")
LOWERINGS.update(
    {
        "stop_gradient": lambda n, a: a[0],
        "remat": lambda n, a: a[0],  # ops/checkpoint.py: aliases; NumPy runs statements in order
        "remat_barrier": lambda n, a: a[0],
        "pad": lambda n, a: f"pad({a[0]}, {n.attr('lo')}, {n.attr('hi')}, {n.attr('interior')})",
        "one_hot": lambda n, a: (
            f"one_hot({a[0]}, {n.attr('n')}, {NP_DTYPE[n.dtype]}"
            + (", wrap=True" if n.attr("wrap") else "") + f", site={describe_site(n)!r})"
        ),
        "take": lambda n, a: (
            f"take_in_range({a[0]}, {a[1]}, {n.attr('axis')}, {describe_site(n)!r})"
        ),
        "scatter_add": lambda n, a: (
            f"scatter_add({a[0]}, {a[1]}, {a[2]}, {n.attr('axis')}, {describe_site(n)!r})"
        ),
        "iota": lambda n, a: f"iota({n.shape}, {n.attr('axis')}, {NP_DTYPE[n.dtype]})",
        "kernel": _kernel,
    }
)
lower = dispatcher(LOWERINGS, "numpy", PRINTER)


def lowered_ops() -> set[str]:
    return _lowered_ops(LOWERINGS, PRINTER)


from ..pyscan import numpy_scan, numpy_while, result_item  # noqa: E402  (scan: a for loop over a generated body function)

LOWERINGS["scan"] = numpy_scan
LOWERINGS["while_loop"] = numpy_while
LOWERINGS["result"] = result_item  # (pysource unpacks a scan into its results instead)

from ..pycustom import numpy_custom  # noqa: E402  (custom_vjp outside the pipeline: its primal as a function)

LOWERINGS["custom_vjp"] = numpy_custom
LOWERINGS["custom_jvp"] = numpy_custom
