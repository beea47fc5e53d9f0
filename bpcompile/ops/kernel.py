"""Fused elementwise kernels: a SymPy expression over symbols a0..an-1, one per input node.

Fusion turns chains of elementwise primitives into one kernel; `bp.elementwise` makes user
kernels from SymPy. The VJP of a kernel is another kernel, g * d(expr)/d(a_i), differentiated by
SymPy; where the derivative contains the forward expression it reuses the output instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import sympy as sp
from sympy.logic.boolalg import BooleanAtom

from ..errors import BackendError, DTypeError, GradientError, ShapeError
from ..ir.dtypes import canonical, is_float
from ..ir.hints import TensorLike
from ..ir.node import Node, make
from . import sympy_funcs as sf
from .elementwise import _broadcast, as_node
from .registry import Op, get_op, register


@cache
def sym(i: int) -> sp.Symbol:
    return sp.Symbol(f"a{i}", real=True)


def _infer(inputs, attrs):
    return _broadcast("kernel " + attrs["name"], [i.shape for i in inputs]), attrs["dtype"]


def _vjp(y, g, needs):
    return _vjp_of(y.attr("expr"), y.attr("name"), y, g, needs)


def form_vjp(y: Node, g: Node, needs: Sequence[bool]) -> tuple:
    """The VJP of an elementwise op from its SymPy form (registry rows with vjp=DERIVE): the
    same kernels a fused body's VJP builds. A kernel rather than primitives rebuilt from the
    derivative: one loop on every backend, printed by the printers that print the form, and
    differentiable again the same way (second order needs nothing new)."""
    return _vjp_of(sf.form(get_op(y.op)), y.op, y, g, needs)


def _vjp_of(expr, name, y, g, needs):
    n = len(y.inputs)
    gs, ys = sym(n), sym(n + 1)
    out = []
    for i, x in enumerate(y.inputs):
        if not needs[i] or not is_float(x.dtype):
            out.append(None)
            continue
        d = sf.diff(expr, sym(i))
        if sf.nonfinite_atoms(d):
            raise GradientError(
                f"kernel {name}: d/da{i} of {expr} is {d}, which contains the "
                f"non-finite atom(s) {', '.join(sf.nonfinite_atoms(d))} (a division by a "
                f"constant zero branch); input {i} is {x.dtype}{list(x.shape)}. Write the "
                "expression so that no branch divides by zero"
            )
        if d == 0:
            out.append(None)
            continue
        reuse = d.subs(expr, ys) if expr.free_symbols else d
        args = list(y.inputs) + [g]
        body = gs * d
        if reuse != d and sp.count_ops(reuse) < sp.count_ops(d):
            body, args = gs * reuse, args + [y]
        out.append(kernel(body, args, name=f"d{name}_da{i}", dtype=y.dtype))
    return tuple(out)


register(
    Op(
        "kernel",
        "kernel",
        _infer,
        _vjp,
        "fused elementwise kernel; attrs: expr (SymPy in a0..), name, dtype",
    )
)


def _check_finite(expr, name: str) -> None:
    """The guard that keeps SymPy's zoo/oo/nan out of every printer (fusion never makes one)."""
    bad = sf.nonfinite_atoms(expr)
    if bad:
        raise BackendError(
            f"kernel {name}: the SymPy body {expr} contains the non-finite atom(s) "
            f"{', '.join(bad)}, which no backend can print with IEEE semantics; keep the ops "
            "unfused (a non-finite constant belongs in a const node, not in the body)"
        )


def _compact(expr, inputs, merge: bool = True):
    """(expr, inputs) without the inputs `expr` does not use, repeated inputs merged."""
    used, subs = {s.name for s in expr.free_symbols}, {}
    new_inputs: list[Node] = []
    for i, x in enumerate(inputs):
        s = sym(i)
        if s.name not in used:
            continue
        if merge and x in new_inputs:
            subs[s] = sym(new_inputs.index(x))
        else:
            subs[s] = sym(len(new_inputs))
            new_inputs.append(x)
    return expr.xreplace(subs), new_inputs


# (body, which inputs are the same node) -> (compacted body, indices of the inputs it keeps):
# graphs of many scalar ops make thousands of kernels with a few distinct bodies
_BODIES: dict[tuple, tuple] = {}


def _body(expr, inputs: list[Node], name: str) -> tuple:
    """(expr, inputs) checked, without unused inputs, repeated ones merged where that keeps
    the body finite."""
    if isinstance(expr, (BooleanAtom, sp.core.relational.Relational)):  # a truth value: 1 or 0
        expr = sp.Piecewise((1, expr), (0, True))
    stray = {s.name for s in expr.free_symbols} - {sym(i).name for i in range(len(inputs))}
    if stray:
        raise ShapeError(f"kernel {name}: expression uses unknown symbols {sorted(stray)}")
    _check_finite(expr, name)
    given = expr
    expr, new_inputs = _compact(expr, inputs)
    # Merging repeated inputs can cancel terms (a0*(a1/a0 - a2/a0) with a1 = a2 is 0), leaving
    # inputs the merged expression no longer uses: compact again until nothing changes.
    while len(expr.free_symbols) < len(new_inputs):
        expr, new_inputs = _compact(expr, new_inputs)
    if sf.nonfinite_atoms(expr):  # merging divided by zero (a0/(a1 - a2) with a1 = a2 is zoo):
        expr, new_inputs = _compact(given, inputs, merge=False)  # keep the IEEE x/(y - y)
    return expr, new_inputs


def kernel(expr: sp.Expr, inputs: Sequence[Node], name: str = "fused",
           dtype: str | None = None) -> Node:
    """Build a kernel node, dropping unused inputs and merging repeated ones."""
    inputs = [as_node(i) for i in inputs]
    expr = sp.sympify(expr)
    first: dict[Node, int] = {}  # which inputs are the same node: all _body depends on
    pattern = tuple(first.setdefault(x, i) for i, x in enumerate(inputs))
    hit = _BODIES.get((expr, pattern))
    if hit is None:
        body, kept = _body(expr, inputs, name)
        hit = (body, tuple(inputs.index(x) for x in kept))
        if len(_BODIES) >= 4096:
            _BODIES.clear()
        _BODIES[expr, pattern] = hit
    expr, new_inputs = hit[0], [inputs[i] for i in hit[1]]
    if dtype is None:
        fl = [x.dtype for x in new_inputs + inputs if is_float(x.dtype)]
        dtype = fl[0] if fl else "float32"
    dtype = canonical(dtype)
    if not is_float(dtype):
        raise DTypeError(f"kernel {name}: output dtype must be float, got {dtype}")
    # Dropping inputs SymPy cancelled ((a0 - a0)*a1 -> 0) must not shrink the result's shape.
    full = _broadcast("kernel " + name, [x.shape for x in inputs])
    if not new_inputs:  # a constant expression
        from .leaves import const

        out = const(float(expr), dtype)
    elif (
        expr in [sym(i) for i in range(len(new_inputs))]
        and new_inputs[int(str(expr)[1:])].dtype == dtype
    ):
        out = new_inputs[int(str(expr)[1:])]
    else:
        out = make("kernel", new_inputs, expr=expr, name=name, dtype=dtype)
    if out.shape != full:
        from .movement import broadcast_to

        out = broadcast_to(out, full)
    return out


class ElementwiseFn:
    """A user op from a SymPy expression.

    mish = bp.elementwise(z * sp.tanh(sp.log(1 + sp.exp(z))), z, name="mish")
    """

    def __init__(self, expr: sp.Expr, symbols: sp.Symbol | Sequence[sp.Symbol], name: str) -> None:
        symbols = (symbols,) if isinstance(symbols, sp.Symbol) else tuple(symbols)
        free = sp.sympify(expr).free_symbols
        bad = sf.unsupported_functions(sp.sympify(expr))
        if bad:
            raise ValueError(
                f"elementwise {name}: no backend can print {sorted(bad)}; supported: "
                f"{' '.join(sf.known_function_names())}, with +, -, *, /, ** and constants "
                "(or a sympy_funcs.Primitive subclass with a definition)"
            )
        if sf.nonfinite_atoms(sp.sympify(expr)):
            raise ValueError(
                f"elementwise {name}: expression {expr} contains the non-finite atom(s) "
                f"{sf.nonfinite_atoms(sp.sympify(expr))}; pass infinities as tensor arguments"
            )
        extra = free - set(symbols)
        if extra:
            raise ValueError(
                f"elementwise {name}: expression has free symbols {extra} "
                f"that are not among its arguments {symbols}"
            )
        real = {s: sym(i) for i, s in enumerate(symbols)}
        self.expr = sp.sympify(expr).xreplace(real)
        self.arity = len(symbols)
        self.name = name
        self.__name__ = name

    def __call__(self, *args: TensorLike) -> Node:
        if len(args) != self.arity:
            raise TypeError(f"elementwise {self.name}: takes {self.arity} tensors, got {len(args)}")
        nodes = [as_node(a) for a in args]
        like = next((n for n in nodes if isinstance(n, Node) and is_float(n.dtype)), None)
        nodes = [as_node(a, like) for a in args]
        dtype = like.dtype if like is not None else "float32"
        from .elementwise import cast

        nodes = [n if is_float(n.dtype) else cast(n, dtype) for n in nodes]
        return kernel(self.expr, nodes, name=self.name, dtype=dtype)

    def __repr__(self):
        return f"elementwise {self.name}: {self.expr}"


def elementwise(expr: sp.Expr, symbols: sp.Symbol | Sequence[sp.Symbol],
                name: str = "user_fn") -> ElementwiseFn:
    """Make a tensor op from a SymPy scalar expression in `symbols` (a Symbol or a tuple)."""
    return ElementwiseFn(expr, symbols, name)
