"""The lowering table the two array-API backends share (NumPy and jax.numpy).

A lowering maps a node and its operand strings to a Python expression; it may instead return
(temporaries, expression), where temporaries are [(name, expression)] lines emitted first and
"{self}" in a name stands for the node's variable name. `table(ns)` builds the entries whose
text differs only in the module prefix; each backend adds the few that differ in substance.
An elementwise op with no entry is lowered from its SymPy form (`derived`): exp prints as
`np.exp(x)`, maximum as `np.maximum(x, y)`, a new op through its definition.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import BackendError
from ..ir.dtypes import is_half
from ..ir.node import Node
from ..ops import sympy_funcs as sf
from ..ops.array_printer import ArrayExprPrinter, has_literal_branches
from ..ops.registry import all_ops, get_op

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
MODULE_FUNCS = ("round", "where")  # ops with no SymPy form to derive from (round) or ternary


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

    def reduce_(fn):
        def lower(n, a):
            # int sums keep int32 (NumPy would widen); max/min take no dtype
            dt = f", dtype={dtype_name(ns, n.dtype)}" if n.dtype == "int32" and fn == "sum" else ""
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
            "min": reduce_("min"),
            "logical_and": lambda n, a: f"{ns}.logical_and({a[0]}, {a[1]})",
            "logical_or": lambda n, a: f"{ns}.logical_or({a[0]}, {a[1]})",
            "logical_xor": lambda n, a: f"{ns}.logical_xor({a[0]}, {a[1]})",
            "logical_not": lambda n, a: f"{ns}.logical_not({a[0]})",
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


_TOKEN = "\x00"  # stands for operand i as TOKEN i TOKEN in a cached print of a form


class _Derived:
    """An op's form printed once per printer, with operand slots: `parts` alternates text and
    operand indices, so lowering a node is a join (printing costs ~10 us, a join ~0.3 us)."""

    def __init__(self, op, printer: ArrayExprPrinter):
        self.op, self.parts = op, None
        f = sf.form(op)
        if f is None or printer.unprintable(f):
            return
        self.expr = printer.expand(f)
        slots = {s.name: f"{_TOKEN}{s.name[1:]}{_TOKEN}" for s in f.free_symbols}
        parts: list = printer.print(self.expr, slots).split(_TOKEN)
        parts[1::2] = [int(i) for i in parts[1::2]]
        self.parts, self.literal = parts, has_literal_branches(self.expr)

    def lower(self, n: Node, a: list[str], printer: ArrayExprPrinter) -> str:
        if any(s.startswith("-") for s in a):  # a literal operand: let the printer bracket it
            out = printer.print(self.expr, {f"a{i}": s for i, s in enumerate(a)})
        else:
            out = "".join(a[p] if isinstance(p, int) else p for p in self.parts)
        if self.literal:  # np.where(c, 1.0, 0.0) would be float64
            out = f"{printer.ns}.asarray({out}, dtype={dtype_name(printer.ns, n.dtype)})"
        return out


def _derived(op_name: str, printer: ArrayExprPrinter) -> _Derived:
    op, cache = get_op(op_name), printer.__dict__.setdefault("derived", {})
    hit = cache.get(op_name)
    if hit is None or hit.op is not op:  # a name registered again is printed again
        hit = cache[op_name] = _Derived(op, printer)
    return hit


def derivable(op_name: str, printer: ArrayExprPrinter) -> bool:
    """An elementwise op whose SymPy form `printer` can print (directly or by definitions)."""
    return _derived(op_name, printer).parts is not None


def derived(printer: ArrayExprPrinter) -> Lowering:
    """The lowering of an elementwise op from its SymPy form, printed over the operands."""
    return lambda n, a: _derived(n.op, printer).lower(n, a, printer)


def lowered_ops(lowerings: dict[str, Lowering], printer: ArrayExprPrinter) -> set[str]:
    """The ops a table lowers: its entries and every derivable elementwise op."""
    return set(lowerings) | {"input", "param", "const"} | {
        name for name, op in all_ops().items()
        if name not in lowerings and op.kind == "elementwise" and derivable(name, printer)}


def dispatcher(lowerings: dict[str, Lowering], backend: str,
               printer: ArrayExprPrinter | None = None):
    """`lower(node, operands)` over a table (then derived from the op's SymPy form when a
    `printer` is given), failing loudly on an op it lacks."""
    from_form = derived(printer) if printer is not None else None

    def lower(n: Node, a: list[str]):
        fn = lowerings.get(n.op)
        if fn is None and from_form is not None and derivable(n.op, printer):
            fn = from_form
        if fn is None:
            raise BackendError(f"{backend} backend: no lowering for op {n.op!r}")
        return fn(n, a)

    return lower
