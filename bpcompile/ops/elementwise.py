"""Elementwise primitives with numpy broadcasting: each op's shape rule, VJP and SymPy form.

VJP rules see the output node `y` (so exp, tanh, sigmoid reuse the forward value) and return
cotangents in the broadcast output shape; the reverse sweep un-broadcasts them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import sympy as sp

from ..errors import DTypeError, ShapeError
from ..ir.dtypes import DEFAULT_FLOAT, canonical, is_float, promote_types, weak_type
from ..ir.hints import DTypeLike, TensorLike
from ..ir.node import Node, make
from . import jvp_rules
from . import sympy_funcs as sf
from .leaves import const
from .registry import Op, register, unregister

# --------------------------------------------------------------------------------------------
# operand conversion


def as_node(x: TensorLike, like: Node | None = None) -> Node:
    """Turn a Python/NumPy scalar or array into a const. A scalar is weakly typed: next to
    `like` it takes the promoted dtype (ir/dtypes.promote_types), so 2.0 * x keeps x's dtype;
    an array keeps its own dtype."""
    if isinstance(x, Node):
        return x
    w = weak_type(x)
    if w == "bool":
        return const(x, "bool")
    if w is not None:
        return const(x, promote_types(like.dtype, w)) if like is not None else const(x)
    if isinstance(x, np.ndarray):
        return const(x)
    raise DTypeError(f"cannot use {type(x).__name__} as a tensor operand")


def promoted(op: str, *xs: TensorLike) -> list[Node]:
    """The operands as nodes of one dtype, the promotion of theirs (Python scalars weak), with
    casts inserted where a node's dtype differs, so backends see same-dtype operands."""
    types = [x.dtype if isinstance(x, Node) else weak_type(x) or as_node(x).dtype for x in xs]
    dt = promote_types(*types, op=op)
    return [cast(x, dt) if isinstance(x, Node) else const(x, dt) if weak_type(x) else
            cast(as_node(x), dt) for x in xs]


def _broadcast(op: str, shapes):
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise ShapeError(
            f"{op}: shapes {' and '.join(str(tuple(s)) for s in shapes)} do not broadcast"
        ) from None


def _same_dtype(op: str, inputs):
    dts = {i.dtype for i in inputs}
    if len(dts) != 1:
        raise DTypeError(
            f"{op}: operand dtypes differ ({', '.join(i.dtype for i in inputs)}); "
            "convert one with .astype(...)"
        )
    return dts.pop()


# --------------------------------------------------------------------------------------------
# unary ops


def _unary_infer(op, float_only=True):
    def infer(inputs, attrs):
        (x,) = inputs
        if float_only and not is_float(x.dtype):
            raise DTypeError(f"{op}: needs a float operand, got {x.dtype}{list(x.shape)}")
        return x.shape, x.dtype

    return infer


def _vjp_neg(y, g, needs):
    return (neg(g),)


# vjp column: a rule, None (not differentiable) or DERIVE: the VJP is a kernel computing
# g * d(form)/dx from the SymPy form (ops/kernel.form_vjp), for ops without a hand-written one.
DERIVE = "derive"


def _vjp_rule(vjp):
    if vjp == DERIVE:
        return _form_vjp
    return (lambda f: lambda node, g, needs: f(node, g, needs))(vjp) if vjp else None


def _form_vjp(node, g, needs):
    from .kernel import form_vjp  # kernel builds on this module (same layer)

    return form_vjp(node, g, needs)


UNARY: dict[str, tuple] = {
    # name: (vjp(y, g, needs) -> (dx,) | None | DERIVE, sympy fn, doc)
    "neg": (_vjp_neg, lambda a: -a, "-x"),
    "exp": (lambda y, g, n: (mul(g, y),), sp.exp, "e**x; VJP reuses the output"),
    "log": (lambda y, g, n: (div(g, y.inputs[0]),), sp.log, "natural log"),
    "log1p": (
        lambda y, g, n: (div(g, add(y.inputs[0], 1.0)),),
        sf.log1p,
        "log(1+x), accurate near 0",
    ),
    "expm1": (lambda y, g, n: (mul(g, add(y, 1.0)),), sf.expm1, "exp(x)-1, accurate near 0"),
    "sqrt": (lambda y, g, n: (div(g, mul(y, 2.0)),), sp.sqrt, "square root"),
    "abs": (
        lambda y, g, n: (where(ge(y.inputs[0], 0.0), g, neg(g)),),
        sp.Abs,
        "|x|; d/dx = 1 for x >= 0 else -1 (JAX's choice at 0)",
    ),
    "sign": (lambda y, g, n: (None,), sp.sign, "sign(x); zero derivative"),
    "sin": (lambda y, g, n: (mul(g, unary("cos", y.inputs[0])),), sp.sin, "sine"),
    "cos": (lambda y, g, n: (neg(mul(g, unary("sin", y.inputs[0]))),), sp.cos, "cosine"),
    "tanh": (lambda y, g, n: (mul(g, sub(1.0, mul(y, y))),), sp.tanh, "tanh; d = 1 - y**2"),
    "sigmoid": (
        lambda y, g, n: (mul(g, mul(y, sub(1.0, y))),),
        sf.sigmoid,
        "1/(1+exp(-x)); d = y(1-y)",
    ),
    "relu": (lambda y, g, n: (where(gt(y.inputs[0], 0.0), g, 0.0),), sf.relu, "max(x, 0)"),
    "softplus": (
        lambda y, g, n: (mul(g, unary("sigmoid", y.inputs[0])),),
        sf.softplus,
        "log(1+exp(x)) computed stably; d = sigmoid(x)",
    ),
    "floor": (None, sp.floor, "floor(x); not differentiable (use stop_gradient)"),
    "round": (None, None, "round half to even; not differentiable (use stop_gradient)"),
}



def define_unary(name: str, vjp: Callable | str | None, sympy_fn: Callable | None,
                 doc: str) -> Op:
    """Add a row to UNARY and register the op: all a new float unary op needs besides its SymPy
    class (every backend prints the form; `vjp=DERIVE` differentiates it)."""
    UNARY[name] = (vjp, sympy_fn, doc)
    return register(Op(name, "elementwise", _unary_infer(name), _vjp_rule(vjp), doc,
                       sympy=sympy_fn))


def remove(name: str) -> Op:
    """Unregister an op defined with define_unary/define_binary and drop its row."""
    UNARY.pop(name, None)
    BINARY.pop(name, None)
    sf.forget(name)
    return unregister(name)


for _name, (_vjp, _sym, _doc) in list(UNARY.items()):
    define_unary(_name, _vjp, _sym, _doc)


def unary(op: str, x: TensorLike) -> Node:
    x = as_node(x)
    if x.dtype in ("int32", "bool") and op not in ("neg", "abs", "sign"):
        x = cast(x, DEFAULT_FLOAT)
    return make(op, (x,))


def neg(x: TensorLike) -> Node:
    return make("neg", (as_node(x),))


# --------------------------------------------------------------------------------------------
# binary arithmetic


def _binary_infer(op):
    def infer(inputs, attrs):
        dt = _same_dtype(op, inputs)
        if dt == "bool":
            raise DTypeError(f"{op}: arithmetic on bool operands; cast with .astype first")
        return _broadcast(op, [i.shape for i in inputs]), dt

    return infer


def _vjp_pow(y, g, needs):
    a, b = y.inputs
    da = db = None
    if needs[0]:
        da = mul(g, mul(b, power(a, sub(b, 1.0))))
    if needs[1]:
        # d/db a**b = a**b * log(a); where a == 0 the limit is 0 (JAX does the same select)
        db = mul(g, where(eq(a, 0.0), 0.0, mul(y, unary("log", a))))
    return da, db


def _tie_mask(a: Node, b: Node, strict_op: Callable[[Node, Node], Node]) -> Node:
    """1 where a wins, 0.5 at ties, 0 otherwise (JAX splits ties evenly for max/min)."""
    one, half, zero = (const(v, a.dtype) for v in (1.0, 0.5, 0.0))  # a's dtype, not float32
    return where(strict_op(a, b), one, where(eq(a, b), half, zero))


BINARY: dict[str, tuple] = {
    "add": (lambda y, g, n: (g, g), lambda a, b: a + b, "a + b"),
    "sub": (lambda y, g, n: (g, neg(g) if n[1] else None), lambda a, b: a - b, "a - b"),
    "mul": (
        lambda y, g, n: (
            mul(g, y.inputs[1]) if n[0] else None,
            mul(g, y.inputs[0]) if n[1] else None,
        ),
        lambda a, b: a * b,
        "a * b",
    ),
    "div": (
        lambda y, g, n: (
            div(g, y.inputs[1]) if n[0] else None,
            neg(div(mul(g, y), y.inputs[1])) if n[1] else None,
        ),
        lambda a, b: a / b,
        "a / b; d/db reuses the output: -g*y/b",
    ),
    "pow": (_vjp_pow, lambda a, b: a**b, "a ** b"),
    "maximum": (
        lambda y, g, n: (
            mul(g, _tie_mask(y.inputs[0], y.inputs[1], gt)) if n[0] else None,
            mul(g, _tie_mask(y.inputs[1], y.inputs[0], gt)) if n[1] else None,
        ),
        sp.Max,
        "elementwise max; ties split the gradient evenly",
    ),
    "minimum": (
        lambda y, g, n: (
            mul(g, _tie_mask(y.inputs[0], y.inputs[1], lt)) if n[0] else None,
            mul(g, _tie_mask(y.inputs[1], y.inputs[0], lt)) if n[1] else None,
        ),
        sp.Min,
        "elementwise min; ties split the gradient evenly",
    ),
}



def define_binary(name: str, vjp: Callable | str | None, sympy_fn: Callable | None,
                  doc: str) -> Op:
    """Add a row to BINARY and register the op (see define_unary)."""
    BINARY[name] = (vjp, sympy_fn, doc)
    return register(Op(name, "elementwise", _binary_infer(name), _vjp_rule(vjp), doc,
                       sympy=sympy_fn))


for _name, (_vjp, _sym, _doc) in list(BINARY.items()):
    define_binary(_name, _vjp, _sym, _doc)


def binary(op: str, a: TensorLike, b: TensorLike) -> Node:
    a, b = promoted(op, a, b)
    if op in ("div", "pow") and not is_float(a.dtype):
        a, b = cast(a, DEFAULT_FLOAT), cast(b, DEFAULT_FLOAT)
    return make(op, (a, b))


def add(a: TensorLike, b: TensorLike) -> Node:
    return binary("add", a, b)


def sub(a: TensorLike, b: TensorLike) -> Node:
    return binary("sub", a, b)


def mul(a: TensorLike, b: TensorLike) -> Node:
    return binary("mul", a, b)


def div(a: TensorLike, b: TensorLike) -> Node:
    return binary("div", a, b)


def power(a: TensorLike, b: TensorLike) -> Node:
    return binary("pow", a, b)


def maximum(a: TensorLike, b: TensorLike) -> Node:
    return binary("maximum", a, b)


def minimum(a: TensorLike, b: TensorLike) -> Node:
    return binary("minimum", a, b)


# --------------------------------------------------------------------------------------------
# comparisons (bool results, no gradient), where, cast, stop_gradient


def _compare_infer(op):
    def infer(inputs, attrs):
        _same_dtype(op, inputs)
        return _broadcast(op, [i.shape for i in inputs]), "bool"

    return infer


COMPARE = {
    "lt": (sp.StrictLessThan, "a < b"),
    "le": (sp.LessThan, "a <= b"),
    "gt": (sp.StrictGreaterThan, "a > b"),
    "ge": (sp.GreaterThan, "a >= b"),
    "eq": (sp.Eq, "a == b"),
    "ne": (sp.Ne, "a != b"),
}
for _name, (_sym, _doc) in COMPARE.items():
    register(
        Op(
            _name,
            "elementwise",
            _compare_infer(_name),
            lambda node, g, needs: (None, None),
            _doc + " (bool result; no gradient)",
            sympy=_sym,
        )
    )


def compare(op: str, a: TensorLike, b: TensorLike) -> Node:
    return make(op, tuple(promoted(op, a, b)))


def lt(a: TensorLike, b: TensorLike) -> Node:
    return compare("lt", a, b)


def le(a: TensorLike, b: TensorLike) -> Node:
    return compare("le", a, b)


def gt(a: TensorLike, b: TensorLike) -> Node:
    return compare("gt", a, b)


def ge(a: TensorLike, b: TensorLike) -> Node:
    return compare("ge", a, b)


def eq(a: TensorLike, b: TensorLike) -> Node:
    return compare("eq", a, b)


def ne(a: TensorLike, b: TensorLike) -> Node:
    return compare("ne", a, b)


# logical ops on bool tensors (bool results, no gradient); no SymPy form: they are not fused
# (fusion makes float kernels), every backend lowers them by name


def _logical_infer(op):
    def infer(inputs, attrs):
        if any(i.dtype != "bool" for i in inputs):
            got = " and ".join(f"{i.dtype}{list(i.shape)}" for i in inputs)
            raise DTypeError(f"{op}: needs bool operands, got {got}; compare or .astype(bool)")
        return _broadcast(op, [i.shape for i in inputs]), "bool"

    return infer


LOGICAL = {
    "logical_and": "a & b",
    "logical_or": "a | b",
    "logical_xor": "a ^ b (exactly one)",
    "logical_not": "~a",
}
for _name, _doc in LOGICAL.items():
    register(
        Op(
            _name,
            "elementwise",
            _logical_infer(_name),
            lambda node, g, needs: (None,) * len(node.inputs),
            _doc + " on bool tensors (bool result; no gradient)",
        )
    )


def logical_and(a: TensorLike, b: TensorLike) -> Node:
    """Elementwise a & b of bool tensors (numpy broadcasting; Python bools allowed)."""
    return make("logical_and", (as_node(a), as_node(b)))


def logical_or(a: TensorLike, b: TensorLike) -> Node:
    """Elementwise a | b of bool tensors (numpy broadcasting; Python bools allowed)."""
    return make("logical_or", (as_node(a), as_node(b)))


def logical_xor(a: TensorLike, b: TensorLike) -> Node:
    """Elementwise a ^ b of bool tensors (numpy broadcasting; Python bools allowed)."""
    return make("logical_xor", (as_node(a), as_node(b)))


def logical_not(a: TensorLike) -> Node:
    """Elementwise ~a of a bool tensor."""
    return make("logical_not", (as_node(a),))


def _where_infer(inputs, attrs):
    c, a, b = inputs
    if c.dtype != "bool":
        raise DTypeError(f"where: condition must be bool, got {c.dtype}")
    dt = _same_dtype("where", (a, b))
    return _broadcast("where", [c.shape, a.shape, b.shape]), dt


def _vjp_where(y, g, needs):
    c = y.inputs[0]
    return (
        None,
        where(c, g, 0.0) if needs[1] else None,
        where(c, 0.0, g) if needs[2] else None,
    )


register(
    Op(
        "where",
        "elementwise",
        _where_infer,
        _vjp_where,
        "where(c, a, b): a where c else b",
        sympy=lambda c, a, b: sp.Piecewise((a, c), (b, True)),
    )
)


def where(c: TensorLike, a: TensorLike, b: TensorLike) -> Node:
    c = as_node(c)
    if c.dtype != "bool":
        raise DTypeError(f"where: condition must be bool, got {c.dtype}{list(c.shape)}")
    a, b = promoted("where", a, b)
    return make("where", (c, a, b))


def _vjp_cast(y, g, needs):
    x = y.inputs[0]
    return (cast(g, x.dtype) if is_float(x.dtype) else None,)


register(
    Op(
        "cast",
        "elementwise",
        lambda inputs, attrs: (inputs[0].shape, attrs["dtype"]),
        _vjp_cast,
        "convert dtype; gradient flows only between float types",
        sympy=None,
        jvp=jvp_rules.linear,
    )  # fusion handles cast itself: a bool operand becomes Piecewise((1, c), (0, True))
)


def cast(x: TensorLike, dtype: DTypeLike) -> Node:
    x = as_node(x)
    dtype = canonical(dtype)
    if x.dtype == dtype:
        return x
    return make("cast", (x,), dtype=dtype)


register(
    Op(
        "stop_gradient",
        "elementwise",
        lambda inputs, attrs: (inputs[0].shape, inputs[0].dtype),
        lambda node, g, needs: (None,),
        "identity whose gradient is zero",
        sympy=lambda a: a,
    )
)


def stop_gradient(x: TensorLike) -> Node:
    return make("stop_gradient", (as_node(x),))
