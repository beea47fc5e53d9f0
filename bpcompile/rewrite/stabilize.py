"""Numerical-stabilisation rewrites (run on the forward graph before autodiff, and again after).

Tested by graph structure and by values at extreme inputs (tests/test_rewrites.py).
"""

from __future__ import annotations

from ..ir.node import Node
from ..ir.traverse import transform
from ..ops import elementwise as ew
from ..ops.kernel import kernel
from ..ops.sympy_funcs import stabilize as sympy_stabilize
from .patterns import is_op, is_scalar


def _logsumexp(x: Node, axes, keepdims: bool) -> Node:
    from ..nn import logsumexp

    return logsumexp(x, axes, keepdims)


def _is_shifted(e: Node) -> bool:
    """e is x - max(x) (possibly under stop_gradient): already the stable logsumexp form."""
    if not is_op(e, "sub"):
        return False
    m = e.inputs[1]
    if is_op(m, "stop_gradient"):
        m = m.inputs[0]
    return is_op(m, "max") and m.inputs[0] is e.inputs[0]


def _one_plus(n: Node):
    """If n is 1 + x or x + 1, return x."""
    if is_op(n, "add"):
        a, b = n.inputs
        if is_scalar(b, 1) and b.ndim == 0:
            return a
        if is_scalar(a, 1) and a.ndim == 0:
            return b
    return None


def _rule(n: Node):
    op, i = n.op, n.inputs
    if op == "kernel":
        expr = sympy_stabilize(n.attr("expr"))  # the same rewrites inside SymPy kernel bodies
        if expr != n.attr("expr"):
            return kernel(expr, i, name=n.attr("name"), dtype=n.dtype)
    if op == "log":
        x = i[0]
        if is_op(x, "sigmoid"):
            return ew.neg(ew.unary("softplus", ew.neg(x.inputs[0])))  # log σ(x) -> -softplus(-x)
        if is_op(x, "sub") and is_scalar(x.inputs[0], 1) and is_op(x.inputs[1], "sigmoid"):
            return ew.neg(
                ew.unary("softplus", x.inputs[1].inputs[0])
            )  # log(1-σ(x)) -> -softplus(x)
        if is_op(x, "exp"):
            return x.inputs[0]  # log(exp(x)) -> x   (so log(softmax) -> log_softmax)
        if is_op(x, "sum") and is_op(x.inputs[0], "exp") and not _is_shifted(x.inputs[0].inputs[0]):
            return _logsumexp(
                x.inputs[0].inputs[0], x.attr("axes"), x.attr("keepdims")
            )  # log Σ eˣ -> logsumexp
        if is_op(x, "div") and is_op(x.inputs[0], "exp"):
            return ew.sub(
                x.inputs[0].inputs[0], ew.unary("log", x.inputs[1])
            )  # log(eᵃ/b) -> a - log b
        y = _one_plus(x)
        if y is not None:
            if is_op(y, "exp"):
                return ew.unary("softplus", y.inputs[0])  # log(1+eˣ) -> softplus(x)
            return ew.unary("log1p", y)  # log(1+x) -> log1p(x)
    if op == "log1p" and is_op(i[0], "exp"):
        return ew.unary("softplus", i[0].inputs[0])  # log1p(eˣ) -> softplus(x)
    if op == "sub" and is_op(i[0], "exp") and is_scalar(i[1], 1) and i[1].ndim == 0:
        return ew.unary("expm1", i[0].inputs[0])  # eˣ - 1 -> expm1(x)
    if (
        op == "div"
        and is_op(i[0], "exp")
        and is_op(i[1], "sum")
        and i[1].attr("keepdims")
        and i[1].inputs[0] is i[0]
        and not _is_shifted(i[0].inputs[0])
    ):
        x = i[0].inputs[0]  # eˣ / Σeˣ -> exp(x - logsumexp(x))   (softmax without overflow)
        return ew.unary("exp", ew.sub(x, _logsumexp(x, i[1].attr("axes"), True)))
    return None


def stabilize_node(n: Node) -> Node:
    for _ in range(8):
        r = _rule(n)
        if r is None:
            return n
        n = r
    return n


def stabilize(outputs: list[Node]) -> list[Node]:
    # Rewritten subgraphs may contain new matches (e.g. log(1+exp) inside a new node), so the
    # transform runs until the graph stops changing (bounded).
    for _ in range(4):
        new = transform(outputs, stabilize_node)
        if all(a is b for a, b in zip(new, outputs)):
            return new
        outputs = new
    return outputs
