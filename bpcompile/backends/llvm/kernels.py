"""Print a fused kernel's SymPy body as LLVM IR on scalars (the LLVM twin of ops/array_printer).

The body is split with `sympy.cse` first, so shared subexpressions (sigmoid(x) in
s*(1-s), ...) are computed once per element. Math goes to LLVM intrinsics where LLVM has one
(log, sqrt, fabs, sin, cos, floor, maximum/minimum) and to libm otherwise (log1p, expm1, float64
tanh); float32 exp and tanh are inline polynomials so their loops vectorise. sigmoid and
softplus use forms that never overflow to NaN. A primitive (ops/sympy_funcs.py) prints by its
own `_bp_llvm(printer, args)` method, else by the hand-tuned entry in `_FUNCS`, else through
its definition; elementwise primitive ops print their SymPy form here too (`emit_form`).
"""

from __future__ import annotations

import sympy as sp
from llvmlite import ir

from ...errors import BackendError
from ...ops import sympy_funcs as sf
from .loops import F32, I1, I32, Emitter, fconst

_REL = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "==": "==", "!=": "!="}


class KernelPrinter:
    """`emit(expr, values)`: IR for `expr` given symbol name -> IR value (already float `ty`)."""

    def __init__(self, em: Emitter, ty: ir.Type):
        self.em, self.b, self.ty = em, em.b, ty

    def emit(self, expr, values: dict[str, ir.Value]) -> ir.Value:
        self.values = dict(values)
        self.memo: dict = {}
        repl, (red,) = sp.cse(self.expand(expr), symbols=sp.numbered_symbols("_cse"),
                              optimizations=None)
        for s, e in repl:
            self.values[s.name] = self._p(e)
        return self._p(red)

    def emit_form(self, expr, values: dict[str, ir.Value]) -> ir.Value:
        """`emit` without `sympy.cse`: for an op's small SymPy form, once per elementwise op."""
        self.values = dict(values)
        self.memo = {}
        return self._p(self.expand(expr))

    @staticmethod
    def knows(f: type) -> bool:
        """Whether applications of `f` print without expanding a definition."""
        return f in _FUNCS or hasattr(f, "_bp_llvm")

    def expand(self, expr):
        """`expr` with unknown primitives replaced by their definitions (see ArrayExprPrinter).
        """
        return sf.expand(expr, self.knows)

    # -- dispatch ---------------------------------------------------------------------------
    def _p(self, e) -> ir.Value:
        hit = self.memo.get(e)
        if hit is None:
            hit = self.memo[e] = self._emit(e)
        return hit

    def _emit(self, e) -> ir.Value:
        b, em, ty = self.b, self.em, self.ty
        if e.is_Symbol:
            return self.values[e.name]
        if e is sp.true or e is sp.false:
            return ir.Constant(I1, int(e is sp.true))
        if e.is_Number:
            return fconst(ty, _number(e))
        if e.is_number and not e.free_symbols and e.is_real:  # pi, sqrt(2/pi), E: fold
            return fconst(ty, float(e.evalf(30)))
        if e.is_Add:
            terms = [self._p(a) for a in e.args]
            out = terms[0]
            for t in terms[1:]:
                out = b.fadd(out, t)
            return out
        if e.is_Mul:
            return self._mul(e)
        if e.is_Pow:
            return self._pow(e.base, e.exp)
        if isinstance(e, sp.Piecewise):
            return self._piecewise(e.args)
        if isinstance(e, (sp.Max, sp.Min)):
            fn = "maximum" if isinstance(e, sp.Max) else "minimum"  # NaN-propagating, as NumPy
            out = self._p(e.args[0])
            for a in e.args[1:]:
                out = em.intrinsic(fn, out, self._p(a))
            return out
        if isinstance(e, sp.core.relational.Relational):
            op = _REL[e.rel_op]
            # != is unordered (NaN != NaN is True); the others are ordered, as in NumPy
            return b.fcmp_unordered(op, self._p(e.lhs), self._p(e.rhs)) if op == "!=" else \
                b.fcmp_ordered(op, self._p(e.lhs), self._p(e.rhs))
        if isinstance(e, sp.And):
            out = self._p(e.args[0])
            for a in e.args[1:]:
                out = b.and_(out, self._p(a))
            return out
        if isinstance(e, sp.Or):
            out = self._p(e.args[0])
            for a in e.args[1:]:
                out = b.or_(out, self._p(a))
            return out
        if isinstance(e, sp.Not):
            return b.xor(self._p(e.args[0]), ir.Constant(I1, 1))
        if isinstance(e, sp.Heaviside):
            x = self._p(e.args[0])
            h0 = _number(e.args[1]) if len(e.args) > 1 else 0.5
            zero, one = fconst(ty, 0.0), fconst(ty, 1.0)
            at0 = b.select(b.fcmp_ordered("==", x, zero), fconst(ty, h0), zero)
            return b.select(b.fcmp_ordered(">", x, zero), one, at0)
        hook = getattr(e, "_bp_llvm", None)
        if hook is not None:
            return hook(self, [self._p(a) for a in e.args])
        fn = _FUNCS.get(e.func)
        if fn is not None:
            return fn(self, *[self._p(a) for a in e.args])
        d = sf.definition_of(e) if isinstance(e, sp.Function) else None
        if d is not None:
            return self._p(d)
        raise BackendError(f"kernel printer (llvm): no rule for SymPy {e.func.__name__} in {e}")

    def _mul(self, e) -> ir.Value:
        b = self.b
        num, den = [], []
        for f in e.args:
            if f.is_Pow and f.exp.is_Number and f.exp < 0:
                den.append(f.base ** (-f.exp))
            else:
                num.append(f)
        if num and num[0] == -1:
            out = b.fneg(self._product(num[1:])) if len(num) > 1 else None
        else:
            out = self._product(num) if num else None
        if den:
            d = self._product(den)
            if out is None:
                out = b.fneg(fconst(self.ty, 1.0)) if num and num[0] == -1 else fconst(self.ty, 1.0)
            out = b.fdiv(out, d)
        return out

    def _product(self, factors) -> ir.Value:
        out = self._p(factors[0])
        for f in factors[1:]:
            out = self.b.fmul(out, self._p(f))
        return out

    def _pow(self, base, x) -> ir.Value:
        b, em = self.b, self.em
        if x == sp.Rational(1, 2):
            return em.intrinsic("sqrt", self._p(base))
        if x == -sp.Rational(1, 2):
            return b.fdiv(fconst(self.ty, 1.0), em.intrinsic("sqrt", self._p(base)))
        if x.is_Integer and abs(int(x)) <= 8:
            n = abs(int(x))
            if n == 0:
                return fconst(self.ty, 1.0)
            v = self._p(base)
            out, sq, first = None, v, True
            while n:  # square-and-multiply
                if n & 1:
                    out = sq if first else b.fmul(out, sq)
                    first = False
                n >>= 1
                if n:
                    sq = b.fmul(sq, sq)
            return b.fdiv(fconst(self.ty, 1.0), out) if x < 0 else out
        return em.intrinsic("pow", self._p(base), self._p(x))

    def _piecewise(self, args) -> ir.Value:
        (val, cond), rest = args[0], args[1:]
        if cond is sp.true or not rest:
            return self._p(val)
        return self.b.select(self._p(cond), self._p(val), self._piecewise(rest))


def _number(e) -> float:
    if e is sp.nan:
        return float("nan")
    if e is sp.oo:
        return float("inf")
    if e is -sp.oo:
        return float("-inf")
    return float(e)


# -- scalar functions shared by kernels and primitive ops ---------------------------------------


def sigmoid(p: KernelPrinter, x):
    # 1/(1+exp(-x)): exp overflows to inf for x << 0 and the result is an exact 0, never NaN
    b, one = p.b, fconst(p.ty, 1.0)
    return b.fdiv(one, b.fadd(one, exp(p.em, b.fneg(x))))


def softplus(p: KernelPrinter, x):
    # max(x, 0) + log1p(exp(-|x|)): no overflow for large |x|, NaN propagates through maximum
    b, em = p.b, p.em
    pos = em.intrinsic("maximum", x, fconst(p.ty, 0.0))
    return b.fadd(pos, em.libm("log1p", exp(em, b.fneg(em.intrinsic("fabs", x)))))


def relu(p: KernelPrinter, x):
    return p.em.intrinsic("maximum", x, fconst(p.ty, 0.0))


def step(p: KernelPrinter, x):
    return p.b.select(p.b.fcmp_ordered(">", x, fconst(p.ty, 0.0)), fconst(p.ty, 1.0),
                      fconst(p.ty, 0.0))


def sign(p: KernelPrinter, x):
    # +1 / -1 / x itself for zeros and NaN (np.sign(nan) is nan)
    b, zero = p.b, fconst(p.ty, 0.0)
    neg = b.select(b.fcmp_ordered("<", x, zero), fconst(p.ty, -1.0), x)
    return b.select(b.fcmp_ordered(">", x, zero), fconst(p.ty, 1.0), neg)


# -- float32 exp and tanh without calls, so loops over them vectorise ---------------------------
# (LLVM has no vector math library under MCJIT: llvm.exp.f32 becomes one expf call per element.)
# float64 keeps libm: its 1e-10 agreement with NumPy needs correctly rounded routines.

_LN2_HI, _LN2_LO = 0.693145751953125, 1.428606765330187045e-06  # Cody-Waite split of ln 2
_EXP_POLY = [1 / 5040, 1 / 720, 1 / 120, 1 / 24, 1 / 6, 1 / 2, 1.0, 1.0]  # Taylor, |r| <= ln2/2
# Eigen's rational minimax tanh for float (max rel. error ~3e-7 on [-7.9, 7.9], 1 beyond)
_TANH_P = [-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
           5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
           4.89352455891786e-03]
_TANH_Q = [1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
           4.89352518554385e-03]
_TANH_CLAMP = 7.90531110763549805


def _horner(b, x, coeffs, ty):
    """Polynomial in x; `contract` lets each step be one fused multiply-add."""
    out = fconst(ty, coeffs[0])
    for c in coeffs[1:]:
        out = b.fadd(b.fmul(out, x, flags=("contract",)), fconst(ty, c), flags=("contract",))
    return out


def _keep_nan(b, x, y):
    return b.select(b.fcmp_unordered("uno", x, x), x, y)


def exp_f32(em: Emitter, x):
    """e**x = 2**n * p(r), x = n ln2 + r; max rel. error ~1.2e-7 for normal results."""
    b = em.b
    xc = em.intrinsic("minnum", em.intrinsic("maxnum", x, fconst(F32, -104.0)),
                      fconst(F32, 89.0))  # beyond these e**x is 0 / inf in float32 anyway
    n = em.intrinsic("rint", b.fmul(xc, fconst(F32, 1.4426950408889634)))
    r = b.fsub(b.fsub(xc, b.fmul(n, fconst(F32, _LN2_HI))), b.fmul(n, fconst(F32, _LN2_LO)))
    poly = _horner(b, r, _EXP_POLY, F32)
    ni = b.fptosi(n, I32)
    n1 = b.ashr(ni, ir.Constant(I32, 1))  # 2**n as 2**n1 * 2**n2 reaches subnormals and inf
    n2 = b.sub(ni, n1)

    def pow2(k):
        return b.bitcast(b.shl(b.add(k, ir.Constant(I32, 127)), ir.Constant(I32, 23)), F32)

    return _keep_nan(b, x, b.fmul(b.fmul(poly, pow2(n1)), pow2(n2)))


def tanh_f32(em: Emitter, x):
    b = em.b
    xc = em.intrinsic("minnum", em.intrinsic("maxnum", x, fconst(F32, -_TANH_CLAMP)),
                      fconst(F32, _TANH_CLAMP))
    x2 = b.fmul(xc, xc)
    p = b.fmul(xc, _horner(b, x2, _TANH_P, F32))
    q = _horner(b, x2, _TANH_Q, F32)
    return _keep_nan(b, x, b.fdiv(p, q))


def exp(em: Emitter, x):
    return exp_f32(em, x) if x.type == F32 else em.intrinsic("exp", x)


def tanh(em: Emitter, x):
    return tanh_f32(em, x) if x.type == F32 else em.libm("tanh", x)


_FUNCS = {
    sp.exp: lambda p, x: exp(p.em, x),
    sp.log: lambda p, x: p.em.intrinsic("log", x),
    sf.log1p: lambda p, x: p.em.libm("log1p", x),
    sf.expm1: lambda p, x: p.em.libm("expm1", x),
    sp.tanh: lambda p, x: tanh(p.em, x),
    sp.sin: lambda p, x: p.em.intrinsic("sin", x),
    sp.cos: lambda p, x: p.em.intrinsic("cos", x),
    sp.Abs: lambda p, x: p.em.intrinsic("fabs", x),
    sp.floor: lambda p, x: p.em.intrinsic("floor", x),
    sp.sign: sign,
    sf.sigmoid: sigmoid,
    sf.softplus: softplus,
    sf.relu: relu,
    sf.step: step,
}
