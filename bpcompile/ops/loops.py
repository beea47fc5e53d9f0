"""`fori_loop`: JAX's counted loop, built on `scan` (ops/scan.py).

`fori_loop(lower, upper, body, init)` is a scan with no carried counter: the index runs as the
scan's xs, an int32 iota `lower..upper-1`, and the ys are empty. Reusing scan gives the loop,
without new code, everything scan has: the body traced once into a sub-graph, lowering on every
backend (a real loop: NumPy `for`, LLVM loop, `lax.scan`), reverse mode by BPTT through the
stored (or `checkpoint=`ed) carries, forward mode through the transposed VJP, the rewrite
pipeline recursing into the body, and nested derivatives (a body that calls `bp.grad`: MAML).
The index is an xs rather than a carry because carries are float tensors that the backward pass
differentiates; an int xs gets no cotangent and costs one int per step.

Carries may be pytrees: a tensor, or tuples/lists/dicts of them, nested (dicts in sorted key
order, as JAX flattens them); a dict's keys name the body's arguments in generated code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ShapeError
from ..ir.node import Node
from .elementwise import as_node
from .leaves import iota
from .scan import scan

__all__ = ["fori_loop", "tree_flatten", "tree_unflatten"]

# a flattened pytree's structure: "leaf", or (container type, keys or length, child defs)
TreeDef = Any


def tree_flatten(tree: Any, what: str = "carry", path: str = "") -> tuple[list[Node], TreeDef,
                                                                            list[str]]:
    """(leaves as nodes, structure, a name per leaf) of a tensor/tuple/list/dict pytree."""
    if isinstance(tree, dict):
        leaves, defs, names = [], [], []
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
        leaves, defs, names = [], [], []
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


def _index_name(fn: Callable) -> str:
    try:
        ps = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        ps = []
    return ps[0] if ps and ps[0].isidentifier() else "i"


def _static_int(v: Any, what: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"fori_loop: {what} must be a Python int (a static trip count), got "
                        f"{type(v).__name__}; for a data-dependent count use bp.while_loop")
    return int(v)


def fori_loop(lower: int, upper: int, body: Callable[[Node, Any], Any], init: Any,
              checkpoint: bool | int | None = None, name: str | None = None) -> Any:
    """`carry = body(i, carry)` for i in lower..upper-1, like `jax.lax.fori_loop`.

    lower/upper: static Python ints (the trip count is upper - lower, 0 if negative); the index
    `i` is an int32 scalar tensor. init: the carry, a float tensor or a tuple/list/dict pytree
    of them; body returns a carry of the same structure, shapes and dtypes. Differentiable in
    reverse mode (BPTT through the stored carries) and forward mode, to any order.
    checkpoint: as `scan`'s - None stores every carry for the backward pass, an int k >= 2
    every k-th (the rest recomputed), True k ~ sqrt(trip count).
    """
    lo, hi = _static_int(lower, "lower"), _static_int(upper, "upper")
    leaves, treedef, names = tree_flatten(init, "init")
    if not leaves:
        raise ShapeError("fori_loop: init has no tensors")
    T = max(hi - lo, 0)
    if T == 0:
        return tree_unflatten(leaves, treedef)
    fname = name or getattr(body, "__name__", None) or "body"
    if not fname.isidentifier() or fname == "<lambda>":
        fname = "body"

    def step(carry, i):
        out = body(i, tree_unflatten(list(carry), treedef))
        try:
            new, d, _ = tree_flatten(out, f"fori_loop body {fname}'s result")
        except TypeError as e:
            raise TypeError(str(e)) from None
        if d != treedef:
            raise ShapeError(f"fori_loop: body {fname} returns a carry of structure "
                             f"{_structure(d)}; init has {_structure(treedef)}")
        for k, (a, b) in enumerate(zip(new, leaves)):
            if a.shape != b.shape and not (a.ndim <= b.ndim):
                raise ShapeError(f"fori_loop: body {fname} returns carry {names[k]} of shape "
                                 f"{list(a.shape)}; init has {list(b.shape)}")
        return tuple(new), None

    # the step's argument names name the index in generated code (scan reads them)
    step.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        inspect.Parameter("carry", inspect.Parameter.POSITIONAL_ONLY),
        inspect.Parameter(_index_name(body), inspect.Parameter.POSITIONAL_ONLY)])
    idx = iota((T,), 0, "int32")
    if lo:
        idx = idx + lo
    final, _ = scan(step, tuple(leaves), idx, checkpoint=checkpoint, name=fname,
                    carry_names=names)
    return tree_unflatten(list(final), treedef)
