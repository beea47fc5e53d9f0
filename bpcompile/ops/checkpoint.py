"""`checkpoint` (remat): recompute a sub-graph in the backward pass instead of storing it.

`checkpoint(fn)(*args)` traces `fn` as usual, so the forward pass is the ordinary graph, and
marks each output y as `remat(y, frontier...)`: an identity whose inputs also name the region's
frontier (the args, the params and the tensors from outside that `fn` reads). The marks matter
only to autodiff; `canonicalize` drops them once gradients are built, like `stop_gradient`.

The VJP of a mark rebuilds the region between y and its frontier on fresh nodes whose leaves
are `remat_barrier(f, g)` - f behind a dependence on y's cotangent g - and differentiates that
copy. So the backward pass reads only the frontier (what the forward keeps) and the values the
`policy` lets it save; the region's other activations die in the forward pass. The barrier is
what keeps the remat: the copy's nodes differ from the forward ones (interning and CSE cannot
merge them back), every backend schedules them after g exists, and JAX lowers the barrier to
`lax.optimization_barrier`, the dependence `jax.checkpoint` itself uses, so XLA keeps it too.

Policies (JAX's `jax.checkpoint_policies` names): "nothing_saveable" (default: recompute
everything), "dots_saveable" (matmul outputs are saved, read from the forward pass),
"everything_saveable" (no recompute; the plain gradient), or a callable node -> bool. Nested
checkpoints work: the copy holds the inner marks, whose VJPs recompute the inner regions again.
A region with several outputs recomputes, per output, what that output needs.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any

from ..errors import GradientError
from ..ir.node import NAMES, Node, make, next_serial, rebuild
from ..ir.provenance import GRAD_OF, RECOMPUTED
from ..ir.traverse import toposort
from .registry import Op, register
from .sweep import active_rules, backward

Policy = str | Callable[[Node], bool] | None

POLICIES: dict[str, Callable[[Node], bool]] = {
    "nothing_saveable": lambda n: False,
    "dots_saveable": lambda n: n.op == "matmul",
    "everything_saveable": lambda n: True,
}
_SCOPES = itertools.count(1)


def _same(inputs, attrs):
    return inputs[0].shape, inputs[0].dtype


def _vjp_barrier(n: Node, g: Node, needs):
    return (g, None)  # an identity of x; the dependence on `after` carries no gradient


register(Op("remat_barrier", "control", _same, _vjp_barrier,
            "x, computed only after `after`: the leaf of a checkpoint's recomputation "
            "(lax.optimization_barrier in JAX; an alias elsewhere)",
            attrs_doc={"name": "the checkpoint whose recomputation reads it (labels)"}))


def barrier(x: Node, after: Node, name: str | None = None) -> Node:
    """x, read only once `after` exists (keeps recomputed nodes distinct and late); `name`
    labels the recomputation in generated code (ir.provenance.recompute_labels)."""
    return make("remat_barrier", (x, after), name=name)


def _policy(p: Policy) -> Callable[[Node], bool]:
    if p is None:
        return POLICIES["nothing_saveable"]
    if isinstance(p, str):
        return POLICIES[p]
    return p


def _region(y: Node, frontier: set[Node]) -> list[Node]:
    """Nodes between y and its frontier, inputs first (y last); consts are shared, not copied."""
    order: list[Node] = []
    seen: set[Node] = set()
    stack = [(y, False)]
    while stack:
        m, done = stack.pop()
        if done:
            order.append(m)
            continue
        if m in seen or m in frontier or m.op == "const":
            continue
        if m.op in ("input", "param"):
            raise GradientError(
                f"checkpoint: {m!r} is read inside the checkpointed region but is not one of "
                "its inputs (an internal error: the region was rewritten after tracing)")
        seen.add(m)
        stack.append((m, True))
        stack.extend((i, False) for i in reversed(m.inputs))
    return order


def _vjp_remat(n: Node, g: Node, needs):
    y, frontier = n.inputs[0], n.inputs[1:]
    name, saveable = n.attr("name"), _policy(n.attr("policy"))
    since = next_serial()
    scope = next(_SCOPES)
    # the region's copy on placeholders, so the sweep below walks the region only
    ph = [make("input", (), name=f"{name}_in{k}", shape=f.shape, dtype=f.dtype, scope=-scope)
          for k, f in enumerate(frontier)]
    memo: dict[Node, Node] = dict(zip(frontier, ph))
    orig: dict[Node, Node] = {}  # copy -> forward node
    for m in _region(y, set(frontier)):
        c = rebuild(m, [memo.get(i, i) for i in m.inputs])
        memo[m] = c
        orig.setdefault(c, m)
    # the calling sweep's rules (feedback alignment) apply inside the region too
    outer = active_rules()
    inner = None
    if outer is not None:
        enter = getattr(outer, "enter", None)
        if enter is None:
            raise GradientError(f"checkpoint {name!r}: the sweep's VJP rules cannot enter a "
                                "recomputed region (they have no `enter`)")
        inner = enter({**orig, **dict(zip(ph, frontier))})
    cts = backward({memo[y]: g}, ph, rules=inner)
    # back onto the real graph: placeholders -> frontier behind the barrier, saved values
    # (y itself and what the policy allows) -> the forward nodes
    keep_all = n.attr("policy") == "everything_saveable"  # nothing recomputed: no barrier
    subst: dict[Node, Node] = {p: f if keep_all else barrier(f, g, name)
                               for p, f in zip(ph, frontier)}
    for c, m in orig.items():
        if m is y or saveable(m):
            subst[c] = m
    out = _substitute(cts, subst, since, orig, name)
    if inner is not None:
        inner.leave(lambda roots: _substitute(roots, subst, since, orig, name))
    return (None,) + tuple(out)


def _substitute(roots, subst: dict[Node, Node], since: int, orig: dict[Node, Node],
                name: str) -> list[Node | None]:
    """Rebuild `roots` with `subst` applied, descending only into nodes built since `since`
    (older nodes cannot reach the placeholders); recomputed nodes are marked RECOMPUTED."""
    memo: dict[Node, Node] = dict(subst)
    order: list[Node] = []
    seen: set[Node] = set()
    stack = [(r, False) for r in roots if r is not None]
    while stack:
        m, done = stack.pop()
        if done:
            order.append(m)
            continue
        if m in seen or m in memo or m.serial < since:
            continue
        seen.add(m)
        stack.append((m, True))
        stack.extend((i, False) for i in reversed(m.inputs))
    for m in order:
        new = rebuild(m, [memo.get(i, i) for i in m.inputs])
        memo[m] = new
        if new is m:
            continue
        if m in orig:  # a recomputed forward value
            RECOMPUTED[new] = name  # (interned: the latest checkpoint names it)
            fwd_name = NAMES.get(orig[m])
            if fwd_name and new not in NAMES:
                NAMES[new] = fwd_name + "_r"
        elif m in GRAD_OF and new not in GRAD_OF:
            GRAD_OF[new] = orig.get(GRAD_OF[m], GRAD_OF[m])
        if m in NAMES and new not in NAMES:
            NAMES[new] = NAMES[m]
    for m in order:  # "grad of" comments name forward nodes, never the placeholder copy
        new = memo[m]
        if GRAD_OF.get(new) in orig:
            GRAD_OF[new] = orig[GRAD_OF[new]]
    for b in subst.values():
        if b.op == "remat_barrier":
            RECOMPUTED[b] = name
            leaf = b.inputs[0].name
            if leaf and b not in NAMES:
                NAMES[b] = leaf + "_r"
    return [None if r is None else memo.get(r, r) for r in roots]


register(Op("remat", "control", _same, _vjp_remat,
            "y, whose region (between y and the other inputs, its frontier) the backward pass "
            "recomputes instead of storing; dropped once gradients are built",
            attrs_doc={"name": "the checkpoint's name", "policy": "what may still be saved"}))


def _flatten(tree, out: list) -> Any:
    """Nodes of a (nested) tuple/list/dict of outputs, and a function rebuilding the tree."""
    if isinstance(tree, Node):
        out.append(tree)
        return lambda it: next(it)
    if isinstance(tree, (tuple, list)):
        parts = [_flatten(t, out) for t in tree]
        return lambda it: type(tree)(p(it) for p in parts)
    if isinstance(tree, dict):
        parts_d = {k: _flatten(v, out) for k, v in tree.items()}
        return lambda it: {k: p(it) for k, p in parts_d.items()}
    return lambda it: tree


def frontier(outputs: list[Node], args: list[Node]) -> list[Node]:
    """What the region between `args` and `outputs` reads from outside: the args and the
    inputs of region nodes (nodes depending on an arg) that are not region nodes themselves -
    params, tensors computed before - in first-use order; consts are shared, never saved."""
    order = toposort(outputs)
    inside = set(args)
    for m in order:
        if m not in inside and any(i in inside for i in m.inputs):
            inside.add(m)
    found: dict[Node, None] = {}
    for m in order:
        if m in inside and m not in args:
            for i in m.inputs:
                if i.op != "const" and (i in args or i not in inside):
                    found.setdefault(i, None)
    return list(found)


def checkpoint(fn: Callable | None = None, *, policy: Policy = None,
               name: str | None = None) -> Callable:
    """`fn` with its activations recomputed in the backward pass instead of stored
    (`jax.checkpoint`). The forward pass keeps only what `fn` reads from outside (its args,
    the params it uses) and, by `policy`, what may still be saved: "nothing_saveable"
    (default), "dots_saveable" (matmul outputs), "everything_saveable" or a callable
    node -> bool. Use as `bp.checkpoint(block)(x)` or as a decorator, `@bp.checkpoint` or
    `@bp.checkpoint(policy="dots_saveable")`; checkpoints nest."""
    if isinstance(policy, str) and policy not in POLICIES:
        raise ValueError(f"checkpoint: unknown policy {policy!r}; use one of "
                         f"{sorted(POLICIES)} or a callable node -> bool")
    if policy is not None and not isinstance(policy, str) and not callable(policy):
        raise TypeError(f"checkpoint: policy must be a name or a callable, got "
                        f"{type(policy).__name__}")
    if fn is None:
        return functools.partial(checkpoint, policy=policy, name=name)
    if not callable(fn):
        raise TypeError(f"checkpoint: fn must be callable, got {type(fn).__name__}")
    label = name or getattr(fn, "__name__", "block").strip("<>") or "block"
    pol = None if policy in (None, "nothing_saveable") else policy

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        arg_nodes: list[Node] = []
        _flatten((args, kwargs), arg_nodes)
        nodes: list[Node] = []
        unflatten = _flatten(out, nodes)
        front = frontier(nodes, arg_nodes)
        fset = set(front)
        marked = []
        for y in nodes:
            if y in fset or y.op == "const" or y.results is not None or not front:
                marked.append(y)  # nothing of fn's own to recompute
            else:
                marked.append(make("remat", (y, *front), name=label, policy=pol))
        return unflatten(iter(marked))

    return wrapped


remat = checkpoint
