"""Print a SymPy expression as an array expression string (NumPy or jax.numpy).

One printer for the array-API family: the NumPy and JAX backends print kernel bodies and
elementwise primitives with it (differing in the module prefix and the helpers their namespace
holds), and constant folding (rewrite/evaluate.py) evaluates what it prints for NumPy, so a
folded value is the NumPy backend's bit for bit. It lives in `ops` for that reason: it knows
SymPy and the primitives of ops/sympy_funcs.py, no backend. A primitive prints by its own
`_bp_array` method, else as a helper call when it is a helper the namespace holds, else
through its definition (ops/sympy_funcs.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import sympy as sp

from ..errors import BackendError
from . import sympy_funcs as sf

_MARK = re.compile("\x00([^\x01]*)\x01")  # a placeholder for a symbol's name (print_cse)
_CSE_CACHE_SIZE = 4096


class ArrayExprPrinter:
    """`print(expr, names)`: `names` maps symbol name (a0, a1, ...) to a variable name.

    `helpers`: names of the stable helper functions the target namespace defines (sigmoid,
    softplus, ...); a helper primitive is called by name only if its name is among them."""

    def __init__(self, ns: str = "np", helpers: Iterable[str] = ()):
        self.ns = ns
        self.helpers = frozenset(helpers)
        self._cse_cache: dict[tuple, tuple] = {}  # print_cse results with placeholder names
        self.funcs = {  # SymPy's own functions (ops/sympy_funcs.SUPPORTED)
            sp.exp: f"{ns}.exp",
            sp.log: f"{ns}.log",
            sf.log1p: f"{ns}.log1p",
            sf.expm1: f"{ns}.expm1",
            sp.tanh: f"{ns}.tanh",
            sp.sin: f"{ns}.sin",
            sp.cos: f"{ns}.cos",
            sp.Abs: f"{ns}.abs",
            sp.sign: f"{ns}.sign",
            sp.floor: f"{ns}.floor",
        }

    def module(self, name: str) -> str:
        """`np.name` / `jnp.name`: for a primitive's `_bp_array` method."""
        return f"{self.ns}.{name}"

    def knows(self, f: type) -> bool:
        """Whether applications of `f` print without expanding a definition."""
        return (f in self.funcs or hasattr(f, "_bp_array")
                or (issubclass(f, sf.Primitive) and f.helper and f.__name__ in self.helpers))

    def expand(self, expr):
        """`expr` with each primitive this printer does not know replaced by its definition
        (before `sympy.cse`, so shared subexpressions of definitions are computed once)."""
        return sf.expand(expr, self.knows)

    def unprintable(self, expr) -> set[str]:
        """Functions in `expr` this printer cannot print (by name)."""
        return sf.unprintable(expr, self.knows)

    def print(self, expr, names: dict[str, str]) -> str:
        self.names = names
        return self._p(self.expand(expr))

    def print_cse(self, expr, names: dict[str, str], prefix: str):
        """(temporaries, result): repeated subexpressions hoisted by sympy.cse into
        [(f"{prefix}_t0", expr0), ...], then the result expression using them.

        Printed once per (expr, prefix, symbol names) with placeholders for the names, then
        filled in: a graph of many scalar ops has thousands of kernels with a few bodies."""
        if any(v.startswith("-") for v in names.values()):  # _pow brackets such a literal
            return self._print_cse(expr, names, prefix)
        key = (expr, prefix, tuple(names))
        hit = self._cse_cache.get(key)
        if hit is None:
            if len(self._cse_cache) >= _CSE_CACHE_SIZE:
                self._cse_cache.clear()
            marks = {k: f"\x00{k}\x01" for k in names}
            hit = self._cse_cache[key] = self._print_cse(expr, marks, prefix)
        temps, body = hit

        def fill(text: str) -> str:
            return _MARK.sub(lambda m: names[m.group(1)], text)

        return [(t, fill(e)) for t, e in temps], fill(body)

    def _print_cse(self, expr, names: dict[str, str], prefix: str):
        syms = sp.numbered_symbols("_cse")
        repl, (reduced,) = sp.cse(self.expand(expr), symbols=syms)
        names = dict(names)
        temps = []
        for k, (s, e) in enumerate(repl):
            temps.append((f"{prefix}_t{k}", self.print(e, names)))
            names[s.name] = f"{prefix}_t{k}"
        return temps, self.print(reduced, names)

    def _p(self, e) -> str:
        if e.is_Symbol:
            return self.names[e.name]
        if e.is_Number or e.is_NumberSymbol:  # NumberSymbol: pi, E (GELU's sqrt(2/pi))
            return self._num(e)
        if e is sp.true:
            return "True"
        if e is sp.false:
            return "False"
        if e.is_Add:
            return self._add(e)
        if e.is_Mul:
            return self._mul(e)
        if e.is_Pow:
            return self._pow(e)
        if isinstance(e, sp.Piecewise):
            return self._piecewise(e.args)
        if isinstance(e, (sp.Max, sp.Min)):
            fn = f"{self.ns}.maximum" if isinstance(e, sp.Max) else f"{self.ns}.minimum"
            out = self._p(e.args[0])
            for a in e.args[1:]:
                out = f"{fn}({out}, {self._p(a)})"
            return out
        if isinstance(e, sp.Heaviside):
            h0 = e.args[1] if len(e.args) > 1 else sp.Rational(1, 2)
            x = self._p(e.args[0])
            return f"{self.ns}.where({x} > 0, 1.0, {self.ns}.where({x} == 0, {self._num(h0)}, 0.0))"
        if isinstance(e, sp.core.relational.Relational):
            return f"({self._p(e.lhs)} {e.rel_op} {self._p(e.rhs)})"
        return self._function(e)

    def _function(self, e) -> str:
        hook = getattr(e, "_bp_array", None)
        if hook is not None:
            return hook(self, [self._p(a) for a in e.args])
        fn = self.funcs.get(e.func)
        if fn is None and self.knows(e.func):
            fn = e.func.__name__  # a helper in the namespace
        if fn is not None:
            return f"{fn}({', '.join(self._p(a) for a in e.args)})"
        d = sf.definition_of(e)
        if d is not None:
            return self._p(d)
        raise BackendError(
            f"kernel printer ({self.ns}): no rule for SymPy {e.func.__name__} in {e}"
        )

    def _num(self, e) -> str:
        if e is sp.nan:
            return "float('nan')"
        if e in (sp.oo, -sp.oo):
            return "float('inf')" if e is sp.oo else "-float('inf')"
        v = float(e)
        return repr(v)

    def _add(self, e) -> str:
        def negative(t):
            c = t.as_coeff_Mul()[0]
            return bool(c.is_Number and c < 0)

        terms = sorted(e.args, key=lambda t: (negative(t), t.is_Number, sp.default_sort_key(t)))
        out = self._p(terms[0])
        for t in terms[1:]:
            c, rest = t.as_coeff_Mul()
            if c.is_Number and c < 0:
                out += f" - {self._p(-t)}"
            else:
                out += f" + {self._p(t)}"
        return f"({out})"

    def _mul(self, e) -> str:
        c, rest = e.as_coeff_Mul()
        if c == -1:
            return f"(-{self._p(rest)})"
        num, den = [], []
        for f in e.args:
            if f.is_Pow and f.exp.is_Number and f.exp < 0:
                den.append(f.base if f.exp == -1 else f.base ** (-f.exp))
            elif f.is_Rational and not f.is_Integer and f.p == 1:
                den.append(sp.Integer(f.q))
            else:
                num.append(f)
        s = "*".join(self._p(f) for f in num) if num else "1.0"
        if den:
            s += "/" + (
                "(" + "*".join(self._p(f) for f in den) + ")" if len(den) > 1 else self._p(den[0])
            )
        return f"({s})"

    def _pow(self, e) -> str:
        b, x = e.base, e.exp
        if x == sp.Rational(1, 2):
            return f"{self.ns}.sqrt({self._p(b)})"
        if x == -sp.Rational(1, 2):
            return f"(1.0/{self.ns}.sqrt({self._p(b)}))"
        if x == 2:
            pb = self._p(b)
            return f"({pb}*{pb})" if b.is_Symbol else f"{self.ns}.square({pb})"
        if x == -1:
            return f"(1.0/{self._p(b)})"
        if x.is_Integer:
            pb = self._p(b)  # a literal operand (-1.0) binds looser than **
            return f"({'(' + pb + ')' if pb.startswith('-') else pb}**{int(x)})"
        return f"({self._p(b)}**{self._p(x)})"

    def _piecewise(self, args) -> str:
        (val, cond), rest = args[0], args[1:]
        if cond is sp.true or not rest:
            return self._p(val)
        return f"{self.ns}.where({self._p(cond)}, {self._p(val)}, {self._piecewise(rest)})"


def has_literal_branches(expr) -> bool:
    """True when the result dtype could come from Python literals (np.where(c, 1.0, 0.0));
    `expr` as printed, i.e. after `ArrayExprPrinter.expand`."""
    return bool(expr.atoms(sp.Piecewise, sp.Heaviside))
