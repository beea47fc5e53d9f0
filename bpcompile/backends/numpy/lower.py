"""NumPy lowering table: op name -> Python expression for one node, given operand strings."""

from __future__ import annotations

from ...ir.node import Node
from ..kernel_printer import ArrayExprPrinter, has_literal_branches

PRINTER = ArrayExprPrinter("np")
NP_DTYPE = {"float32": "np.float32", "float64": "np.float64", "int32": "np.int32", "bool": "np.bool_"}

_BIN = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**",
        "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
_UNARY = {"exp": "np.exp", "log": "np.log", "log1p": "np.log1p", "expm1": "np.expm1",
          "sqrt": "np.sqrt", "abs": "np.abs", "sign": "np.sign", "sin": "np.sin", "cos": "np.cos",
          "tanh": "np.tanh", "sigmoid": "sigmoid", "relu": "relu", "softplus": "softplus",
          "floor": "np.floor", "round": "np.round"}


def _axes(t):
    return f"({t[0]},)" if len(t) == 1 else str(tuple(t))


def lower(n: Node, a: list[str]) -> str:
    """The right-hand side computing `n` from operand expressions `a`."""
    op = n.op
    if op in _BIN:
        return f"{a[0]} {_BIN[op]} {a[1]}"
    if op in _UNARY:
        return f"{_UNARY[op]}({a[0]})"
    if op == "neg":
        return f"-{a[0]}"
    if op == "maximum":
        return f"np.maximum({a[0]}, {a[1]})"
    if op == "minimum":
        return f"np.minimum({a[0]}, {a[1]})"
    if op == "where":
        return f"np.where({a[0]}, {a[1]}, {a[2]})"
    if op == "cast":
        return f"np.asarray({a[0]}).astype({NP_DTYPE[n.dtype]})"
    if op == "stop_gradient":
        return a[0]
    if op == "sum":
        dt = f", dtype={NP_DTYPE[n.dtype]}" if n.dtype == "int32" else ""
        return f"np.sum({a[0]}, axis={_axes(n.attr('axes'))}, keepdims={n.attr('keepdims')}{dt})"
    if op == "max":
        return f"np.max({a[0]}, axis={_axes(n.attr('axes'))}, keepdims={n.attr('keepdims')})"
    if op == "reshape":
        return f"np.reshape({a[0]}, {n.shape})"
    if op == "transpose" and n.attr("perm") == (1, 0):
        return f"{a[0]}.T"
    if op == "transpose":
        return f"np.transpose({a[0]}, {n.attr('perm')})"
    if op == "broadcast_to":
        return f"np.broadcast_to({a[0]}, {n.shape})"
    if op == "concatenate":
        return f"np.concatenate([{', '.join(a)}], axis={n.attr('axis')})"
    if op == "slice":
        idx = ", ".join(
            f"{s}:{e}" + (f":{k}" if k != 1 else "")
            for s, e, k in zip(n.attr("starts"), n.attr("stops"), n.attr("steps")))
        return f"{a[0]}[{idx}]"
    if op == "pad":
        return f"pad({a[0]}, {n.attr('lo')}, {n.attr('hi')}, {n.attr('interior')})"
    if op == "matmul":
        return f"{a[0]} @ {a[1]}"
    if op == "take":
        return f"np.take({a[0]}, {a[1]}, axis={n.attr('axis')})"
    if op == "one_hot":
        return f"one_hot({a[0]}, {n.attr('n')}, {NP_DTYPE[n.dtype]})"
    if op == "iota":
        return f"iota({n.shape}, {n.attr('axis')}, {NP_DTYPE[n.dtype]})"
    if op == "kernel":
        expr = n.attr("expr")
        body = PRINTER.print(expr, {f"a{i}": s for i, s in enumerate(a)})
        if has_literal_branches(expr):
            return f"np.asarray({body}, dtype={NP_DTYPE[n.dtype]})"
        return body
    from ...errors import BackendError

    raise BackendError(f"numpy backend: no lowering for op {op!r}")


def lowered_ops() -> set[str]:
    return set(_BIN) | set(_UNARY) | {
        "neg", "maximum", "minimum", "where", "cast", "stop_gradient", "sum", "max", "reshape",
        "transpose", "broadcast_to", "concatenate", "slice", "pad", "matmul", "take", "one_hot",
        "iota", "kernel", "input", "param", "const"}
