"""Fusion of elementwise chains into kernels whose body is one SymPy expression.

A float elementwise node is inlined into its consumer when it has exactly one consumer, that
consumer is elementwise too, and both have the same shape (inlining across a broadcast would
recompute the producer per broadcast element). Comparisons inline into where/cast. Each
remaining root of two or more ops becomes a `kernel` node; single ops stay primitives.
A kernel body is at most MAX_BODY_DEPTH ops deep: SymPy and the printers recurse over it, so a
chain of 3000 tanh becomes a chain of bounded kernels instead of a RecursionError.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ..ir.dtypes import is_float, is_half
from ..ir.node import NAMES, Node, rebuild
from ..ir.traverse import consumers, toposort, transform
from ..ops import sympy_funcs as sf
from ..ops.kernel import kernel, sym
from ..ops.registry import get_op

COMPARISONS = ("lt", "le", "gt", "ge", "eq", "ne")
# SymPy truth values: a comparison, or one SymPy decided (a0 > a0 is false). A Symbol is a
# sympy Boolean too, so that class is too wide.
TRUTH = (sp.logic.boolalg.BooleanAtom, sp.core.relational.Relational)
MAX_BODY_DEPTH = 48


def fusable(n: Node) -> bool:
    if n.op == "kernel":
        return True
    if get_op(n.op).kind != "elementwise":
        return False
    if n.op == "cast":  # int/bool -> float, float -> float; a cast to or from a 16-bit
        # float stays its own op: inside a body it would be the identity and skip the rounding
        # (and int8 -> float too: NumPy would do the body's arithmetic in int8 and wrap)
        return is_float(n.dtype) and not (is_half(n.dtype) or is_half(n.inputs[0].dtype)
                                          or n.inputs[0].dtype == "int8")
    if n.op in COMPARISONS:
        return True
    return is_float(n.dtype) and get_op(n.op).sympy is not None


def _inline_plan(order: list[Node], outputs: list[Node]) -> set[Node]:
    users = consumers(order)
    outs = set(outputs)
    inlined = set()
    depth: dict[Node, int] = {}  # depth of the body rooted at n, counting inlined inputs
    for n in order:
        if not fusable(n):
            continue
        own = _expr_depth(n.attr("expr")) if n.op == "kernel" else 1
        depth[n] = own + max((depth[i] for i in n.inputs if i in inlined), default=0)
        if n in outs or depth[n] >= MAX_BODY_DEPTH:
            continue
        us = set(users[n])
        if len(us) != 1:
            continue
        (u,) = us
        if not fusable(u) or u.dtype == "bool" or u.shape != n.shape:
            continue
        if n.op in COMPARISONS and u.op not in ("where", "cast"):
            continue
        inlined.add(n)
    return inlined


def _expr_depth(e) -> int:
    """Nesting depth of a SymPy expression (iterative: bodies are bounded, but be safe)."""
    best, stack = 0, [(e, 1)]
    while stack:
        e, d = stack.pop()
        best = max(best, d)
        stack.extend((a, d + 1) for a in e.args)
    return best


def _expr(n: Node, inlined: set[Node], args: list[Node], root: bool = False):
    """SymPy expression of n over kernel arguments `args` (appended as discovered)."""
    if not root and n not in inlined:
        return _arg(n, args)
    if n.op in ("add", "sub"):
        terms: list = []
        _sum_terms(n, inlined, args, terms)
        if not any(t.has(sp.Float) for t in terms):
            return sp.Add(*terms)  # a float's rounding depends on the order: built pairwise
    ins = [_expr(i, inlined, args) for i in n.inputs]  # depth <= MAX_BODY_DEPTH: see plan
    if n.op == "kernel":
        return n.attr("expr").xreplace({sym(k): e for k, e in enumerate(ins)})
    if n.op == "cast":
        x = n.inputs[0]
        return (
            sp.Piecewise((1, ins[0]), (0, True))
            if x.dtype == "bool" and isinstance(ins[0], TRUTH)
            else ins[0]
        )
    return get_op(n.op).sympy(*ins)


def _sum_terms(n: Node, inlined: set[Node], args: list[Node], terms: list) -> None:
    """The terms of a chain of inlined add/sub nodes, operands in `_expr`'s order: SymPy
    builds one n-ary sum as it would build the chain pairwise, without re-sorting the sum so
    far at every step (quadratic in the chain's length)."""
    a, b = n.inputs
    for x, plus in ((a, True), (b, n.op == "add")):
        if plus and x in inlined and x.op in ("add", "sub"):
            _sum_terms(x, inlined, args, terms)
        else:
            e = _expr(x, inlined, args)
            terms.append(e if plus else -e)


def _arg(n: Node, args: list[Node]):
    if _literal(n):
        v = float(n.attr("value").array.item())  # finite scalar constants become numbers
        r = sp.Rational(v).limit_denominator(1 << 12)
        return r if float(r) == v else sp.Float(v)
    if n not in args:
        args.append(n)
    s = sym(args.index(n))
    return sp.Ne(s, 0) if n.dtype == "bool" else s


def _literal(n: Node) -> bool:
    """Whether `n` enters a kernel body as a number: a finite scalar constant (inf/nan stay
    operands: SymPy would fold x - oo to -oo where IEEE gives NaN - inf)."""
    return (n.op == "const" and n.ndim == 0 and n.dtype != "bool"
            and bool(np.isfinite(n.attr("value").array.item())))


def _template(n: Node, inlined: set[Node], args: list[Node], root: bool = False) -> tuple:
    """A key that determines `_expr(n, inlined, args, root)`, collecting `args` in the same
    order: graphs of many scalar ops repeat a few body shapes over different operands, and
    building a key from plain tuples is far cheaper than building the SymPy body again."""
    if not root and n not in inlined:
        if _literal(n):
            return ("c", n.attr("value"))
        if n not in args:
            args.append(n)
        return ("a", args.index(n), n.dtype == "bool")
    ins = tuple(_template(i, inlined, args) for i in n.inputs)
    return (n.op, n.attrs, n.dtype, tuple(i.dtype for i in n.inputs), ins)


class _Bodies:
    """Kernel bodies by template (`_template`), each built with SymPy once per fuse() call."""

    def __init__(self) -> None:
        self.exprs: dict[tuple, tuple] = {}  # template -> (expr, its non-finite atoms)

    def build(self, n: Node, inlined: set[Node]) -> tuple:
        """(expr, args, whether expr has non-finite atoms) of the body rooted at n."""
        args: list[Node] = []
        key = _template(n, inlined, args, root=True)
        hit = self.exprs.get(key)
        if hit is None:
            expr = _expr(n, inlined, [], root=True)
            hit = self.exprs[key] = (expr, bool(sf.nonfinite_atoms(expr)))
        return hit[0], args, hit[1]


def fuse(outputs: list[Node]) -> list[Node]:
    order = toposort(outputs)
    inlined = _inline_plan(order, outputs)
    replaced = _plan_kernels(order, inlined)

    def build(n: Node, memo: dict[Node, Node]) -> Node:
        if n in replaced:  # a root becomes a kernel over the (rebuilt) argument nodes
            expr, args, name = replaced[n]
            return kernel(expr, [memo[a] for a in args], name=name, dtype=n.dtype)
        if n in inlined:
            return n  # lives on only inside its consumer's kernel body
        return rebuild(n, [memo[i] for i in n.inputs])

    return transform(outputs, build=build)


def _plan_kernels(order: list[Node], inlined: set[Node]) -> dict:
    """{root: (expr, args, name)}. SymPy evaluates constant branches as it builds a body
    (1/where(c, x, 0) -> Piecewise((1/x, c), (zoo, True))), and zoo/oo/nan have no IEEE
    meaning; a group whose body gets one stays unfused (its ops keep IEEE semantics), so
    kernel construction never fails on a valid graph. `inlined` is fuse()'s own set."""
    bodies = _Bodies()
    while True:  # each retry un-inlines at least one node, so this ends
        replaced, split = {}, None
        for n in order:
            if n in inlined or not fusable(n) or n.dtype == "bool":
                continue
            if _count(n, inlined) < 2 and n.op != "kernel":
                continue
            expr, args, nonfinite = bodies.build(n, inlined)
            if nonfinite:
                split = _members(n, inlined)
                if split:
                    break
                continue  # a kernel whose repeated operands merged to a0/0: keep it as it is
            replaced[n] = (expr, args, _kernel_name(n, inlined))
        if not split:
            return replaced
        inlined -= split


def _members(n: Node, inlined: set[Node]) -> set[Node]:
    out, stack = set(), [n]
    while stack:
        m = stack.pop()
        for i in m.inputs:
            if i in inlined and i not in out:
                out.add(i)
                stack.append(i)
    return out


def _count(n: Node, inlined: set[Node]) -> int:
    total, stack = 0, [n]
    while stack:
        m = stack.pop()
        total += 1
        stack.extend(i for i in m.inputs if i in inlined)
    return total


def _kernel_name(n: Node, inlined: set[Node]) -> str:
    if n in NAMES:
        return NAMES[n]
    if n.op == "kernel":
        return n.attr("name")
    ops = []
    stack = [n]
    while stack:
        m = stack.pop()
        skip = ("add", "sub", "mul", "div", "neg", "cast", "where") + COMPARISONS
        if m.op not in skip and m.op not in ops:
            ops.append(m.op if m.op != "kernel" else m.attr("name"))
        stack.extend(i for i in m.inputs if i in inlined)
    return "_".join(reversed(ops[:3])) or "fused"
