"""`fori_loop` and `while_loop`: JAX's counted and conditional loops.

`fori_loop` is built on `scan` (ops/scan.py).

`fori_loop(lower, upper, body, init)` is a scan with no carried counter: the index runs as the
scan's xs, an int32 iota `lower..upper-1`, and the ys are empty. Reusing scan gives the loop,
without new code, everything scan has: the body traced once into a sub-graph, lowering on every
backend (a real loop: NumPy `for`, LLVM loop, `lax.scan`), reverse mode by BPTT through the
stored (or `checkpoint=`ed) carries, forward mode through the transposed VJP, the rewrite
pipeline recursing into the body, and nested derivatives (a body that calls `bp.grad`: MAML).
The index is an xs rather than a carry because a carry is stored at every step for the
backward pass and is carried again by the reverse scan; an xs is only read (one int per step),
and the scan_outputs pass drops it when the body ignores the index.

`while_loop(cond, body, init)` is its own op, `while_loop`, because its trip count is data:
    while_loop(init carries..., consts..., go; body) -> final carries...
runs `carries, go = body(carries, consts)` while `go`, where the body sub-graph is the user's
body followed by their cond on the new carries, and the operand `go` is cond(init), traced in
the outer graph: one sub-graph per loop (the rewrite pipeline and backends handle it as a scan
body with carries and consts, no xs, and one y, the bool flag). Backends lower it to a real
loop (NumPy `while`, an LLVM loop with a conditional branch, `lax.while_loop`). Carries may be
any dtype (an int counter), as a scan's may. It has no reverse-mode derivative: the backward
pass would need every carry, and their number is unknown when the program is built. With
`max_steps=k` the loop is instead a k-step scan whose step applies the body where cond holds and
keeps the carry where it does not (`where(cond(c), body(c), c)`: once cond fails the carry,
hence cond, stays fixed), which is differentiable like any scan. Masked steps still run the
body, so it must be valid (indices in range) one step past the point where cond fails. Forward
mode through the unbounded loop is autodiff/loop_jvp.py (a loop carrying the tangents, as
JAX's rule).

Carries may be pytrees: a tensor, or tuples/lists/dicts of them, nested (dicts in sorted key
order, as JAX flattens them); a dict's keys name the body's arguments in generated code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import DTypeError, GradientError, ShapeError
from ..ir.dtypes import is_float
from ..ir.node import Node, make
from .elementwise import as_node, cast, where
from .leaves import iota
from .movement import broadcast_to
from .registry import Op, register
from .results import results
from .scan import _SCOPES, Body, _capture, placeholder, scan

__all__ = ["fori_loop", "tree_flatten", "tree_unflatten", "while_loop"]

# a flattened pytree's structure: "leaf", or (container type, keys or length, child defs)
TreeDef = Any


def tree_flatten(tree: Any, what: str = "carry", path: str = "") -> tuple[list[Node], TreeDef,
                                                                            list[str]]:
    """(leaves as nodes, structure, a name per leaf) of a tensor/tuple/list/dict pytree."""
    leaves: list[Node] = []
    defs: list[TreeDef] = []
    names: list[str] = []
    if isinstance(tree, dict):
        keys = sorted(tree)
        for k in keys:
            key = str(k)
            sub = key if key.isidentifier() else f"{path or what}_{len(defs)}"
            lv, d, nm = tree_flatten(tree[k], what, sub)
            leaves += lv
            defs.append(d)
            names += nm
        return leaves, (dict, tuple(keys), tuple(defs)), names
    if isinstance(tree, (tuple, list)):
        base = path or what
        for i, t in enumerate(tree):
            lv, d, nm = tree_flatten(t, what, f"{base}{i}")
            leaves += lv
            defs.append(d)
            names += nm
        return leaves, (type(tree), len(tree), tuple(defs)), names
    if isinstance(tree, (Node, np.ndarray, np.generic, int, float)) and not isinstance(
            tree, bool):
        return [as_node(tree)], "leaf", [path or what]
    raise TypeError(f"{what} must be a tensor or a tuple/list/dict of tensors, "
                    f"got {type(tree).__name__}")


def tree_unflatten(leaves: list[Node], treedef: TreeDef) -> Any:
    """Rebuild the pytree `treedef` (from tree_flatten) around `leaves` (consumed in order)."""
    it = iter(leaves)

    def build(d):
        if d == "leaf":
            return next(it)
        kind, keys, subs = d
        parts = [build(s) for s in subs]
        if kind is dict:
            return dict(zip(keys, parts))
        return kind(parts)

    return build(treedef)


def _structure(d: TreeDef) -> str:
    if d == "leaf":
        return "*"
    kind, keys, subs = d
    inner = ", ".join(_structure(s) for s in subs)
    if kind is dict:
        return "{" + ", ".join(f"{k!r}: {_structure(s)}" for k, s in zip(keys, subs)) + "}"
    return f"[{inner}]" if kind is list else f"({inner})"


def _arg_name(fn: Callable, k: int, default: str) -> str:
    """The name of fn's k-th parameter (it names loop arguments in generated code)."""
    try:
        ps = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        ps = []
    return ps[k] if len(ps) > k and ps[k].isidentifier() else default


def _static_int(v: Any, what: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        loop = "while_loop" if what == "max_steps" else "fori_loop"
        raise TypeError(f"{loop}: {what} must be a Python int (a static trip count), got "
                        f"{type(v).__name__}; for a data-dependent count use bp.while_loop")
    return int(v)


def fori_loop(lower: int, upper: int, body: Callable[[Node, Any], Any], init: Any,
              checkpoint: bool | int | None = None, name: str | None = None) -> Any:
    """`carry = body(i, carry)` for i in lower..upper-1, like `jax.lax.fori_loop`.

    lower/upper: static Python ints (the trip count is upper - lower, 0 if negative); the index
    `i` is an int32 scalar tensor. init: the carry, a tensor or a tuple/list/dict pytree of
    them; body returns a carry of the same structure, shapes and dtypes. Differentiable in
    reverse mode (BPTT through the stored carries) and forward mode, to any order.
    checkpoint: as `scan`'s - None stores every carry for the backward pass, an int k >= 2
    every k-th (the rest recomputed), True k ~ sqrt(trip count).
    A bound given as an int scalar tensor makes the trip count data: then, as in JAX, the loop
    is a `while_loop` over (i, carry), evaluated on every backend but not differentiable.
    """
    if isinstance(lower, Node) or isinstance(upper, Node):
        return _dynamic_fori(lower, upper, body, init, checkpoint, name)
    lo, hi = _static_int(lower, "lower"), _static_int(upper, "upper")
    leaves, treedef, names = tree_flatten(init, "init", _arg_name(body, 1, "carry"))
    if not leaves:
        raise ShapeError("fori_loop: init has no tensors")
    T = max(hi - lo, 0)
    if T == 0:
        return tree_unflatten(leaves, treedef)
    fname = name or _fn_name(body, "body")

    def step(carry, i):
        out = body(i, tree_unflatten(list(carry), treedef))
        new, d, _ = tree_flatten(out, f"fori_loop body {fname}'s result")
        if d != treedef:
            raise ShapeError(f"fori_loop: body {fname} returns a carry of structure "
                             f"{_structure(d)}; init has {_structure(treedef)}")
        return tuple(_fit_carries(new, leaves, names, fname, "fori_loop")), None

    # the step's argument names name the index in generated code (scan reads them)
    step.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        inspect.Parameter("carry", inspect.Parameter.POSITIONAL_ONLY),
        inspect.Parameter(_arg_name(body, 0, "i"), inspect.Parameter.POSITIONAL_ONLY)])
    idx = iota((T,), 0, "int32")
    if lo:
        idx = idx + lo
    final, _ = scan(step, tuple(leaves), idx, checkpoint=checkpoint, name=fname,
                    carry_names=names)
    return tree_unflatten(list(final), treedef)


def _dynamic_fori(lower, upper, body, init, checkpoint, name):
    if checkpoint:
        raise ValueError("fori_loop: checkpoint= needs static bounds (Python ints); with a "
                         "tensor bound the loop is a while_loop, which stores no carries")
    lo, hi = (_index_bound(v, what) for v, what in ((lower, "lower"), (upper, "upper")))
    fname = name or _fn_name(body, "body")

    def step(c):  # the index is the first carry
        return (c[0] + 1, body(c[0], c[1]))

    return while_loop(lambda c: c[0] < hi, step, (lo, init), name=fname)[1]


def _index_bound(v: Any, what: str) -> Node:
    if isinstance(v, Node):
        if v.shape != () or v.dtype not in ("int32",):
            raise TypeError(f"fori_loop: {what} must be a Python int or an int32 scalar "
                            f"tensor, got {v.dtype}{list(v.shape)}")
        return v
    from .leaves import const

    return const(_static_int(v, what), "int32")


# ---------------------------------------------------------------------------------------------
# while_loop


def _infer_while(inputs, attrs):
    body = attrs["body"]
    nc = len(body.carries)
    if len(inputs) != len(body.params) + 1:
        raise ShapeError(f"while_loop {body.name}: {len(inputs)} operands for "
                         f"{len(body.params)} body arguments and the flag")
    for i, (v, p) in enumerate(zip(inputs, body.params)):
        if v.shape != p.shape or v.dtype != p.dtype:
            role = "init" if i < nc else "const"
            raise ShapeError(f"while_loop {body.name}: {role} operand {i} is {v.dtype}"
                             f"{list(v.shape)}, the body expects {p.dtype}{list(p.shape)}")
    go, flag = inputs[-1], body.ys
    if go.shape != () or go.dtype != "bool" or len(flag) != 1 or flag[0].shape != () \
            or flag[0].dtype != "bool":
        raise ShapeError(f"while_loop {body.name}: the loop flag must be a bool scalar")
    for c, n in zip(body.carries, body.new_carries):
        if c.shape != n.shape or c.dtype != n.dtype:
            raise ShapeError(f"while_loop {body.name}: the body returns a carry {n.dtype}"
                             f"{list(n.shape)} for a carry {c.dtype}{list(c.shape)}")
    return [(c.shape, c.dtype) for c in body.carries]


def _vjp_while(y: Node, g, needs):
    if not any(needs) or all(v is None for v in g):
        return (None,) * len(y.inputs)
    where = f", created at {y.where}" if y.where else ""
    raise GradientError(
        f"bp.while_loop (body {y.attr('body').name}{where}) is not differentiable in reverse "
        "mode (forward mode, bp.jvp, is): its trip count is data, so the carries a backward "
        "pass needs are not known when the program is built. Give bp.while_loop max_steps=N "
        "(a bounded, differentiable loop) or use bp.fori_loop with a static trip count")


register(Op("while_loop", "control", _infer_while, _vjp_while,
            "run a body sub-graph while a bool flag holds: carries, go = body(carries, "
            "consts), starting from operand go = cond(init); attrs: body (its one y is the "
            "flag); results: final carries; forward mode only (max_steps= makes a scan)",
            multiple_results=True))


def _fit_carries(new: list[Node], like: list[Node], names: list[str], fn: str,
                 loop: str = "while_loop") -> list[Node]:
    """The body's new carries in init's float dtypes and shapes (a float64 expression for a
    float32 carry is cast back, as scan does); any other mismatch is an error naming it."""
    out = []
    for n, c, nm in zip(new, like, names):
        if n.dtype != c.dtype and is_float(n.dtype) and is_float(c.dtype):
            n = cast(n, c.dtype)
        if n.dtype != c.dtype:
            raise DTypeError(f"{loop}: body {fn} returns carry {nm} as {n.dtype}; init "
                             f"has {c.dtype}")
        if n.shape != c.shape and _broadcasts(n.shape, c.shape):
            n = broadcast_to(n, c.shape)
        if n.shape != c.shape:
            raise ShapeError(f"{loop}: body {fn} returns carry {nm} of shape "
                             f"{list(n.shape)}; init has {list(c.shape)}")
        out.append(n)
    return out


def _broadcasts(src: tuple, dst: tuple) -> bool:
    try:
        return np.broadcast_shapes(src, dst) == dst
    except ValueError:
        return False


def _flag(v: Any, fn: str) -> Node:
    n = as_node(v) if not isinstance(v, Node) else v
    if n.shape != () or n.dtype != "bool":
        raise ShapeError(f"while_loop: cond {fn} must return a bool scalar, got "
                         f"{n.dtype}{list(n.shape)}")
    return n


def _fn_name(f: Callable, default: str) -> str:
    nm = getattr(f, "__name__", None) or default
    return nm if nm.isidentifier() and nm != "<lambda>" else default


def while_loop(cond_fun: Callable[[Any], Any], body_fun: Callable[[Any], Any], init: Any,
               max_steps: int | None = None, checkpoint: bool | int | None = None,
               name: str | None = None) -> Any:
    """`while cond_fun(carry): carry = body_fun(carry)`, like `jax.lax.while_loop`.

    init: a tensor or a tuple/list/dict pytree of tensors of any dtype (an int counter too);
    body_fun returns a carry of the same structure, shapes and dtypes; cond_fun returns a bool
    scalar. Evaluated as a real loop on every backend; forward mode (bp.jvp) works, reverse
    mode raises a GradientError. max_steps=N (a static int): run at most N steps, as a
    differentiable N-step scan that stops changing the carry once cond_fun is false (the
    body still runs its N steps, masked, as in JAX users' bounded while loops).
    checkpoint (with max_steps): as `scan`'s, store every k-th carry for the backward pass.
    """
    leaves, treedef, names = tree_flatten(init, "init", _arg_name(body_fun, 0, "carry"))
    if not leaves:
        raise ShapeError("while_loop: init has no tensors")
    bname = name or _fn_name(body_fun, "body")
    cname = _fn_name(cond_fun, "cond")
    if max_steps is not None:
        return _bounded(cond_fun, body_fun, leaves, treedef, names, max_steps, bname, cname,
                        checkpoint)
    if checkpoint:
        raise ValueError("while_loop: checkpoint= needs max_steps= (an unbounded while_loop "
                         "stores no carries: it is not differentiable in reverse mode)")
    scope = next(_SCOPES)
    c_ph = [placeholder(nm, c.shape, c.dtype, scope) for nm, c in zip(names, leaves)]
    new, d, _ = tree_flatten(body_fun(tree_unflatten(c_ph, treedef)),
                             f"while_loop body {bname}'s result")
    if d != treedef:
        raise ShapeError(f"while_loop: body {bname} returns a carry of structure "
                         f"{_structure(d)}; init has {_structure(treedef)}")
    new = _fit_carries(new, leaves, names, bname)
    go = _flag(cond_fun(tree_unflatten(new, treedef)), cname)
    outs, consts, k_ph = _capture(new + [go], set(c_ph), scope, set(names))
    body = Body(c_ph, (), k_ph, outs[:-1], outs[-1:], bname)
    go0 = _flag(cond_fun(tree_unflatten(leaves, treedef)), cname)
    node = make("while_loop", list(leaves) + list(consts) + [go0], body=body)
    return tree_unflatten(list(results(node)), treedef)


def _bounded(cond_fun, body_fun, leaves, treedef, names, max_steps, bname, cname, checkpoint):
    T = _static_int(max_steps, "max_steps")
    if T < 0:
        raise ValueError(f"while_loop: max_steps must be >= 0, got {T}")
    if T == 0:
        return tree_unflatten(leaves, treedef)

    def step(carry, _):
        c = tree_unflatten(list(carry), treedef)
        go = _flag(cond_fun(c), cname)
        new, d, _n = tree_flatten(body_fun(c), f"while_loop body {bname}'s result")
        if d != treedef:
            raise ShapeError(f"while_loop: body {bname} returns a carry of structure "
                             f"{_structure(d)}; init has {_structure(treedef)}")
        new = _fit_carries(new, leaves, names, bname)
        return tuple(where(go, n, o) for n, o in zip(new, carry)), None

    final, _ = scan(step, tuple(leaves), None, length=T, name=bname, carry_names=names,
                    checkpoint=checkpoint)
    return tree_unflatten(list(final), treedef)
