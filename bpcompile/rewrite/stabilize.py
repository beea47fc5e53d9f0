"""Numerical-stabilisation rewrites (run on the forward graph before autodiff, and again after).

Two rule lists: `RULES` rewrites graph nodes (run by the engine), `SYMPY_RULES` rewrites the
SymPy bodies of fused kernels. A SymPy rule with the name of a graph rule is its twin: the same
algebra on the other representation, and tests/test_rewrites.py checks each pair agrees in
value at ordinary and extreme inputs. Tested by graph structure and by values at extreme inputs.
"""

from __future__ import annotations

import sympy as sp

from ..ir.node import Node
from ..ops import elementwise as ew
from ..ops.composites import logsumexp
from ..ops.kernel import kernel
from ..ops.sympy_funcs import expm1, log1p, sigmoid, softplus
from .engine import C, Pat, Rules, X, record, rule
from .patterns import is_op, is_scalar


def _logsumexp(x: Node, axes, keepdims: bool) -> Node:
    return logsumexp(x, axes, keepdims)


def _is_shifted(e: Node) -> bool:
    """e is x - max(x) (possibly under stop_gradient): already the stable logsumexp form."""
    if not is_op(e, "sub"):
        return False
    m = e.inputs[1]
    if is_op(m, "stop_gradient"):
        m = m.inputs[0]
    return is_op(m, "max") and m.inputs[0] is e.inputs[0]


def _unshifted(e: Node) -> bool:
    return not _is_shifted(e)


def _one_plus(n: Node):
    """If n is 1 + x or x + 1, return x."""
    if is_op(n, "add"):
        a, b = n.inputs
        if is_scalar(b, 1) and b.ndim == 0:
            return a
        if is_scalar(a, 1) and a.ndim == 0:
            return b
    return None


def _log1p_exp(n: Node, s: Node):
    y = _one_plus(s)
    return ew.unary("softplus", y.inputs[0]) if y is not None and is_op(y, "exp") else None


def _log1p(n: Node, s: Node):
    y = _one_plus(s)
    return ew.unary("log1p", y) if y is not None else None


def _body(n: Node):
    expr = stabilize_expr(n.attr("expr"))
    if expr == n.attr("expr"):
        return None
    return kernel(expr, n.inputs, name=n.attr("name"), dtype=n.dtype)


def _softmax(n: Node, x: Node, e: Node, s: Node) -> Node:
    return ew.unary("exp", ew.sub(x, _logsumexp(x, s.attr("axes"), True)))


RULES = Rules("stabilize", [
    rule("kernel_body", Pat("kernel"), _body),  # SYMPY_RULES inside a fused kernel's body
    rule("log_sigmoid", Pat("log", Pat("sigmoid", X())),
         lambda n, x: ew.neg(ew.unary("softplus", ew.neg(x)))),  # log σ(x) -> -softplus(-x)
    rule("log_one_minus_sigmoid", Pat("log", Pat("sub", C(1), Pat("sigmoid", X()))),
         lambda n, x: ew.neg(ew.unary("softplus", x))),  # log(1-σ(x)) -> -softplus(x)
    rule("log_exp", Pat("log", Pat("exp", X())),
         lambda n, x: x),  # log(exp(x)) -> x   (so log(softmax) -> log_softmax)
    rule("logsumexp", Pat("log", Pat("sum", Pat("exp", X(where=_unshifted)), name="s")),
         lambda n, x, s: _logsumexp(x, s.attr("axes"), s.attr("keepdims"))),  # log Σ eˣ
    rule("log_exp_ratio", Pat("log", Pat("div", Pat("exp", X("a")), X("b"))),
         lambda n, a, b: ew.sub(a, ew.unary("log", b))),  # log(eᵃ/b) -> a - log b
    rule("log1p_exp", Pat("log", Pat("add", name="s")), _log1p_exp),  # log(1+eˣ) -> softplus(x)
    rule("log1p", Pat("log", Pat("add", name="s")), _log1p),  # log(1+x) -> log1p(x)
    rule("log1p_of_exp", Pat("log1p", Pat("exp", X())),
         lambda n, x: ew.unary("softplus", x)),  # log1p(eˣ) -> softplus(x)
    rule("expm1", Pat("sub", Pat("exp", X()), C(1, rank0=True)),
         lambda n, x: ew.unary("expm1", x)),  # eˣ - 1 -> expm1(x)
    rule("softmax", Pat("div", Pat("exp", X(where=_unshifted), name="e"),
                        Pat("sum", X("e"), name="s", where=lambda s: s.attr("keepdims"))),
         _softmax),  # eˣ / Σeˣ -> exp(x - logsumexp(x))   (softmax without overflow)
])


# ---- the SymPy twins: the same rewrites on scalar kernel bodies ----------------------------


def _offset(e, c=1):
    """e - c if e is a sum containing the constant c, else None."""
    if e.is_Add and c in e.args:
        return e - c
    return None


def _s_log_sigmoid(e):
    if e.func == sp.log and isinstance(e.args[0], sigmoid):
        return -softplus(-e.args[0].args[0])  # log σ(x) -> -softplus(-x)
    return None


def _s_log1p_exp(e):
    b = _offset(e.args[0]) if e.func == sp.log else None
    if b is not None and b.func == sp.exp:
        return softplus(b.args[0])  # log(1+eˣ) -> softplus(x)
    return None


def _s_log1p(e):
    b = _offset(e.args[0]) if e.func == sp.log else None
    if b is not None and b.func != sp.exp:
        return log1p(b)  # log(1+x) -> log1p(x)
    return None


def _s_expm1(e):
    b = _offset(e, -1) if e.is_Add else None
    if b is not None and b.func == sp.exp:
        return expm1(b.args[0])  # eˣ - 1 -> expm1(x)
    return None


def _s_sigmoid_recip(e):
    b = _offset(e.base) if e.is_Pow and e.exp == -1 else None
    if b is not None and b.func == sp.exp:
        return sigmoid(-b.args[0])  # 1/(1+eˣ) -> σ(-x)
    return None


def _s_sigmoid_of_exp(e):
    if not e.is_Mul:
        return None
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


# (name, rewrite of one SymPy node at its root or None); same name as a graph rule = its twin.
SYMPY_RULES = [
    ("log_sigmoid", _s_log_sigmoid),
    ("log1p_exp", _s_log1p_exp),
    ("log1p", _s_log1p),
    ("expm1", _s_expm1),
    ("sigmoid_recip", _s_sigmoid_recip),  # no graph twin: sigmoid is a graph primitive
    ("sigmoid_of_exp", _s_sigmoid_of_exp),  # no graph twin: as above
]


def _stable(e):
    """(rule name, rewrite) of the first SymPy rule that rewrites `e` at its root, or None."""
    for name, f in SYMPY_RULES:
        new = f(e)
        if new is not None:
            return name, new
    return None


def _apply(e):
    name, new = _stable(e)
    record(f"stabilize.body.{name}")
    return new


def stabilize_expr(expr):
    """Rewrite overflow-prone forms (log(1+eˣ), eˣ/(1+eˣ), log σ, ...) of a SymPy kernel body,
    bottom-up."""
    return expr.replace(lambda e: _stable(e) is not None, _apply)


def stabilize_node(n: Node) -> Node:
    return RULES.rewrite_node(n)


def stabilize(outputs: list[Node]) -> list[Node]:
    return RULES(outputs)
