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


def _offset(e, c=1):
    """e - c if e is a sum containing the constant c, else None."""
    if e.is_Add and c in e.args:
        return e - c
    return None


def _stable(e):
    """One stabilising rewrite of a scalar SymPy expression at its root, or None."""
    if e.func == sp.log:
        a = e.args[0]
        if isinstance(a, sigmoid):
            return -softplus(-a.args[0])  # log σ(x) -> -softplus(-x)
        b = _offset(a)
        if b is not None:
            return softplus(b.args[0]) if b.func == sp.exp else log1p(b)  # log(1+eˣ), log(1+x)
    if e.is_Add:
        b = _offset(e, -1)
        if b is not None and b.func == sp.exp:
            return expm1(b.args[0])  # eˣ - 1 -> expm1(x)
    if e.is_Pow and e.exp == -1:
        b = _offset(e.base)
        if b is not None and b.func == sp.exp:
            return sigmoid(-b.args[0])  # 1/(1+eˣ) -> σ(-x)
    if e.is_Mul:
        nums = [f for f in e.args if f.func == sp.exp]
        dens = [f.base for f in e.args if f.is_Pow and f.exp == -1]
        sigs = [f for f in e.args if isinstance(f, sigmoid)]
        for n in nums:
            for d in dens:
                if _offset(d) == n:  # eˣ/(1+eˣ) -> σ(x)
                    return e / n * d * sigmoid(n.args[0])
            for s in sigs:
                if s.args[0] == -n.args[0]:  # eˣ σ(-x) -> σ(x)   (bottom-up form of the above)
                    return e / n / s * sigmoid(n.args[0])
    return None


def stabilize(expr):
    """Rewrite overflow-prone forms (log(1+eˣ), eˣ/(1+eˣ), log σ, ...) bottom-up."""
    return expr.replace(lambda e: _stable(e) is not None, lambda e: _stable(e))
