"""SymPy functions for activations SymPy lacks, with the derivatives fusion needs.

Every backend's kernel printer must know these names: sigmoid, softplus, relu, step.
`step(x)` is 1 for x > 0 else 0 (relu'(0) = 0, as in JAX).
"""

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p  # noqa: F401  (re-exported for printers)


class sigmoid(sp.Function):
    is_real = True

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)


class softplus(sp.Function):
    """log(1 + exp(x)), evaluated stably by every backend."""

    is_real = True

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])


class step(sp.Function):
    is_real = True

    def fdiff(self, argindex=1):
        return sp.Integer(0)


class relu(sp.Function):
    is_real = True

    def fdiff(self, argindex=1):
        return step(self.args[0])


# Functions every backend's kernel printer knows; bp.elementwise refuses others up front.
SUPPORTED = (sp.exp, sp.log, log1p, expm1, sp.tanh, sp.sin, sp.cos, sp.Abs, sp.sign, sp.floor,
             sp.Max, sp.Min, sp.Heaviside, sp.DiracDelta, sp.Piecewise)


def unsupported_functions(expr) -> set:
    ours = (sigmoid, softplus, relu, step)
    return {f.func.__name__ for f in expr.atoms(sp.Function)
            if f.func not in SUPPORTED and not issubclass(f.func, ours)}


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
