"""SymPy functions for the primitives SymPy lacks, and what every printer needs to know of them.

A `Primitive` is a scalar function a printer may meet in an op's SymPy form or a kernel body.
Each printer (ops/array_printer.py for NumPy/jax.numpy and constant folding, the LLVM
KernelPrinter) prints an application of one in this order, as SymPy's printers consult a
class's `_numpycode`/`_ccode` first:
1. the class's own printing method, when it has one: `_bp_array(printer, args)` returns an
   array expression string, `_bp_llvm(printer, args)` an LLVM value (args already printed);
2. the printer's own hand-tuned entry (stable sigmoid/softplus, LLVM's vectorisable exp);
3. the class's `definition(*args)`, a SymPy expression in functions the printer knows.
So a new op needs neither (1) nor (2): its definition prints everywhere, and its derivative
comes from the definition too (`fdiff`) unless the class writes one.
`step(x)` is 1 for x > 0 else 0 (relu'(0) = 0, as in JAX).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import ClassVar

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p  # noqa: F401  (re-exported for printers)

from ..ir import naming


class Primitive(sp.Function):
    """A real scalar function of the compiler's own (see the module docstring).

    `helper = True`: the NumPy and JAX backends print it as a call of the stable helper of
    the same name in their namespace (so that name is reserved in generated modules)."""

    is_real = True
    helper: ClassVar[bool] = False

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.__dict__.get("helper"):
            naming.reserve(cls.__name__)

    @classmethod
    def definition(cls, *args) -> sp.Expr | None:
        """The function in terms of SymPy's own and other primitives; None if it has none."""
        return None

    def fdiff(self, argindex=1):
        # d/d(argument) of the definition at dummy arguments: an argument may be an expression
        # (softsign(2*a0 + 1)); SymPy's chain rule multiplies by its derivative
        xs = [sp.Dummy(f"x{i}", real=True) for i in range(len(self.args))]
        d = type(self).definition(*xs)
        if d is None:
            raise sp.ArgumentIndexError(self, argindex)
        return sp.diff(d, xs[argindex - 1]).xreplace(dict(zip(xs, self.args)))


class sigmoid(Primitive):
    helper = True

    @classmethod
    def definition(cls, x):
        return 1 / (1 + sp.exp(-x))

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)


class softplus(Primitive):
    """log(1 + exp(x)), evaluated stably by every backend."""

    helper = True

    @classmethod
    def definition(cls, x):
        return sp.Max(x, 0) + log1p(sp.exp(-sp.Abs(x)))

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])


class step(Primitive):
    helper = True

    @classmethod
    def definition(cls, x):
        return sp.Piecewise((1, x > 0), (0, True))

    def fdiff(self, argindex=1):
        return sp.Integer(0)


class relu(Primitive):
    helper = True

    @classmethod
    def definition(cls, x):
        return sp.Max(x, 0)

    def fdiff(self, argindex=1):
        return step(self.args[0])


# SymPy's own functions every printer knows; bp.elementwise refuses others (and primitives
# nobody can print) up front.
SUPPORTED = (sp.exp, sp.log, log1p, expm1, sp.tanh, sp.sin, sp.cos, sp.Abs, sp.sign, sp.floor,
             sp.Max, sp.Min, sp.Heaviside, sp.DiracDelta, sp.Piecewise)


def unprintable(expr, known: Callable[[type], bool] = lambda f: False) -> set[str]:
    """Names of the functions in `expr` a printer can print neither directly (SUPPORTED, or
    `known(cls)`: its own table or the class's printing method) nor through a definition."""
    out: set[str] = set()
    for f in expr.atoms(sp.Function):
        if f.func in SUPPORTED or known(f.func):
            continue
        d = f.func.definition(*f.args) if issubclass(f.func, Primitive) else None
        if d is None:
            out.add(f.func.__name__)
        else:
            out |= unprintable(d, known)
    return out


def expand(expr, known: Callable[[type], bool]):
    """`expr` with each primitive application `known` refuses replaced by its definition (the
    printers do this before `sympy.cse`, so shared parts of definitions are computed once)."""
    for _ in range(16):  # a definition may use other primitives; bounded, not recursive
        unknown = {f: d for f in expr.atoms(Primitive)
                   if not known(f.func) and (d := definition_of(f)) is not None}
        if not unknown:  # (printing names those without a definition)
            break
        expr = expr.xreplace(unknown)
    return expr


def known_function_names() -> list[str]:
    """SymPy's supported functions and every primitive defined so far, by name."""
    prims, todo = [], list(Primitive.__subclasses__())
    while todo:
        c = todo.pop()
        prims.append(c.__name__)
        todo += c.__subclasses__()
    return [f.__name__ for f in SUPPORTED] + sorted(prims)


def forget(name: str) -> None:
    """Drop the cached form of op `name` (it was unregistered)."""
    _FORMS.pop(name, None)


def unsupported_functions(expr) -> set:
    """Functions in `expr` some backend could not print (nor expand into ones it can): a
    primitive needs a definition, or printing methods for both printer families."""
    return unprintable(expr, lambda f: hasattr(f, "_bp_array") and hasattr(f, "_bp_llvm"))


def definition_of(e) -> sp.Expr | None:
    """The definition of an application `e` of a primitive (None if it has none)."""
    return e.func.definition(*e.args) if issubclass(e.func, Primitive) else None


def arity(fn) -> int:
    """How many operands an op's SymPy form takes (Max/Min, variadic in SymPy: two)."""
    if isinstance(fn, type) and issubclass(fn, Primitive):
        if fn.definition.__func__ is not Primitive.definition.__func__:
            return arity(fn.definition)
    if isinstance(fn, type) and issubclass(fn, sp.Basic):
        nargs = getattr(fn, "nargs", None)
        return min(nargs) if isinstance(nargs, sp.FiniteSet) else 2
    return sum(p.default is p.empty for p in inspect.signature(fn).parameters.values())


_FORMS: dict[str, tuple] = {}


def form(op) -> sp.Expr | None:
    """The SymPy form of elementwise op record `op` applied to the real symbols a0, a1, ...
    that kernel bodies use (None without one); cached per op record, so a name registered
    again is recomputed."""
    hit = _FORMS.get(op.name)
    if hit is not None and hit[0] is op:
        return hit[1]
    expr = None
    if op.sympy is not None and op.kind == "elementwise":
        args = [sp.Symbol(f"a{i}", real=True) for i in range(arity(op.sympy))]
        expr = sp.sympify(op.sympy(*args))
    _FORMS[op.name] = (op, expr)
    return expr


# IEEE arithmetic and SymPy's disagree on these (x - oo -> -oo for real x, NaN - inf = NaN;
# 1/0 -> zoo loses the sign), so no kernel body may contain one (ops/kernel.py).
NONFINITE = (sp.zoo, sp.oo, sp.S.NegativeInfinity, sp.nan)


def nonfinite_atoms(expr) -> list:
    """The non-finite SymPy atoms (zoo, oo, -oo, nan) in `expr`, by name."""
    return [str(a) for a in NONFINITE if expr.has(a)]


def strip_distributions(expr: sp.Expr) -> sp.Expr:
    """Derivatives of sign/Heaviside are zero almost everywhere (as in JAX): drop DiracDelta."""
    return expr.replace(sp.DiracDelta, lambda *a: sp.Integer(0))


def diff(expr: sp.Expr, sym: sp.Symbol) -> sp.Expr:
    return strip_distributions(sp.diff(expr, sym))
