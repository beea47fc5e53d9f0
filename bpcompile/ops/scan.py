"""`scan`: a loop primitive holding a sub-graph; its VJP is a reverse scan (BPTT).

Everything about the op sits here: the traced body (`Body`), the shape rule, the VJP (plain,
truncated and checkpointed backpropagation through time) and the user function `scan`.
Backends lower it in their own tables (backends/pyscan.py for numpy and jax).

The node
    scan(init carries..., xs..., consts...; body, length, reverse, save)
        -> final carries..., ys..., saved carries...
runs `carries, ys = body(carries, xs[t], consts)` for t = 0..T-1 (T-1..0 when reverse).
It has several results (ir/node.py: a tuple node, read through `result` projections,
`scan_results`), each with its own shape and dtype: the final carries, each y stacked over
time, (T, ...), and, when `save` > 0, each carry's saved values. Its VJP gets one cotangent
per result (None where nothing reads that result).

Saved carries (attr `save`) are what the backward pass reads:
    save = 0: none (the VJP reruns the loop once, saving every carry);
    save = 1: every carry: T+1 of them, indexed by element position - saved[t] is the carry
              entering element t and saved[T] the final one (reverse scans: saved[t+1]
              enters element t, saved[0] is final);
    save = k > 1 (checkpointing, forward scans): the carries entering elements 0, k, 2k, ...
              The VJP recomputes each k-step segment from its checkpoint and runs BPTT on it,
              so ~T/k + k carries are alive instead of T+1, for one extra forward pass.

The VJP builds a reverse scan whose body is the VJP of the step (built with the ordinary VJP
rules, so nested scans, fused kernels and second derivatives work) and whose carries are the
carry cotangent plus one accumulator per constant (the per-step parameter gradients summed
over time). Values the step's VJP needs that the forward already stored - the carry leaving
the step and the ys - are read from the saved outputs instead of being recomputed.

Carries, ys, xs and consts may be any dtype (an int step counter, int token ids); values of
int or bool dtype get no gradient.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from ..errors import ShapeError
from ..ir.dtypes import is_float
from ..ir.node import LOCATION_OVERRIDE, NAMES, Node, make, rebuild
from ..ir.provenance import GRAD_OF
from ..ir.traverse import consumers, toposort, transform
from .elementwise import add, as_node, cast, stop_gradient, where
from .leaves import const
from .movement import broadcast_to, concatenate, pad, reshape, slice_
from .registry import Op, register
from .results import result, results
from .sweep import backward

if TYPE_CHECKING:
    from ..ir.hints import TensorLike

_SCOPES = itertools.count(1)
# a carry or xs argument: a tensor (or array/scalar) or a tuple/list of them
Tree = Union["TensorLike", tuple, list]
# (d init carries, d xs, d consts), None where no gradient is needed
Grads = tuple[list[Node | None], list[Node | None], list[Node | None]]


def placeholder(name: str, shape: Sequence[int], dtype: str, scope: int) -> Node:
    """A body argument: an `input` leaf made unique to one body by its `scope` attribute."""
    return make("input", (), name=name, shape=tuple(int(s) for s in shape), dtype=dtype,
                scope=scope)


class Body:
    """A step function as a graph: params (carries, xs, consts) -> outputs (new carries, ys).

    Hashable by identity, so scan nodes that hold it are interned per trace. Backends cache
    their generated code for it in `cache`.
    """

    def __init__(self, carries: Iterable[Node], xs: Iterable[Node], consts: Iterable[Node],
                 new_carries: Iterable[Node], ys: Iterable[Node], name: str = "step"):
        self.carries, self.xs, self.consts = tuple(carries), tuple(xs), tuple(consts)
        self.new_carries, self.ys = tuple(new_carries), tuple(ys)
        self.name = name
        self.cache: dict = {}
        params = set(self.params)
        if len(params) != len(self.params):
            raise ValueError(f"scan body {name}: a node is bound to two arguments")
        stray = [n for n in toposort(self.outputs) if n.op in ("input", "param")
                 and n not in params]
        if stray:  # an internal invariant: every leaf of a body is one of its arguments
            raise ValueError(f"scan body {name}: leaves {stray} are not body arguments")

    @property
    def params(self) -> tuple:
        return self.carries + self.xs + self.consts

    @property
    def outputs(self) -> tuple:
        return self.new_carries + self.ys

    def __repr__(self):
        return (f"{self.name}({len(self.carries)} carries, {len(self.xs)} xs, "
                f"{len(self.consts)} consts -> {len(self.ys)} ys)")

    def retype(self, src: str, dst: str) -> Body:
        """The same body in another float precision (for float64 finite-difference checks)."""
        from ..ir.retype import retype

        nodes = retype(list(self.params) + list(self.outputs), src, dst)
        c, x, k = len(self.carries), len(self.xs), len(self.consts)
        p, o = nodes[:c + x + k], nodes[c + x + k:]
        return Body(p[:c], p[c:c + x], p[c + x:], o[:c], o[c:], self.name)


# ---------------------------------------------------------------------------------------------
# results


def n_saved(length: int, save: int) -> int:
    """How many carries a scan with this `save` attribute stores."""
    if save == 0:
        return 0
    if save == 1:
        return length + 1
    return -(-length // save)


def _infer(inputs, attrs):
    body, length, save = attrs["body"], attrs["length"], attrs["save"]
    nc, nx = len(body.carries), len(body.xs)
    if len(inputs) != len(body.params):
        raise ShapeError(f"scan {body.name}: {len(inputs)} operands for {len(body.params)} "
                         "body arguments")
    for i, (v, p) in enumerate(zip(inputs, body.params)):
        want = ((length,) + p.shape) if nc <= i < nc + nx else p.shape
        if v.shape != want or v.dtype != p.dtype:
            role = "init" if i < nc else "xs" if i < nc + nx else "const"
            raise ShapeError(f"scan {body.name}: {role} operand {i} is {v.dtype}{list(v.shape)}, "
                             f"the body expects {p.dtype}{list(want)}")
    for c, nc_ in zip(body.carries, body.new_carries):
        if c.shape != nc_.shape or c.dtype != nc_.dtype:
            raise ShapeError(f"scan {body.name}: the step returns a carry {nc_.dtype}"
                             f"{list(nc_.shape)} for a carry {c.dtype}{list(c.shape)}")
    if save > 1 and attrs["reverse"]:
        raise ShapeError("scan: checkpointing (save > 1) is only for forward scans")
    k = n_saved(length, save)
    return ([(c.shape, c.dtype) for c in body.carries]
            + [((length,) + y.shape, y.dtype) for y in body.ys]
            + ([((k,) + c.shape, c.dtype) for c in body.carries] if save else []))


def scan_results(node: Node) -> tuple[list[Node], list[Node], list[Node]]:
    """(final carries, stacked ys, saved carries) of a scan node, as `result` projections.

    Unnamed projections get readable names for generated code: carry `h` ends as `h_final`
    (not `h_T`, which reads as a transpose) and is saved as `h_saved`; a y named `h` is
    stacked as `hs`.
    """
    body = node.attr("body")
    nc, ny = len(body.carries), len(body.ys)
    rs = results(node)
    fin, ys, saved = rs[:nc], rs[nc:nc + ny], rs[nc + ny:]
    for r, c in zip(fin, body.carries):
        NAMES.setdefault(r, f"{c.attr('name')}_final")
    for j, (r, y) in enumerate(zip(ys, body.ys)):
        NAMES.setdefault(r, f"{y.name}s" if y.name else "ys" if ny == 1 else f"ys{j}")
    for r, c in zip(saved, body.carries):
        NAMES.setdefault(r, f"{c.attr('name')}_saved")
    return fin, ys, saved


def zeros(shape: Sequence[int], dtype: str) -> Node:
    return broadcast_to(const(0.0, dtype), shape)


# ---------------------------------------------------------------------------------------------
# the VJP


def _tslice(x: Node, a: int, b: int) -> Node:
    """x[a:b] along axis 0."""
    return slice_(x, (a,) + (0,) * (x.ndim - 1), (b,) + x.shape[1:], (1,) * x.ndim)


def _vjp_scan(y: Node, g: list, needs):
    body, T, rev, save = (y.attr(k) for k in ("body", "length", "reverse", "save"))
    nc, nx, ny = len(body.carries), len(body.xs), len(body.ys)
    init, xs, consts = y.inputs[:nc], y.inputs[nc:nc + nx], y.inputs[nc + nx:]
    g_final, g_ys, g_saved = list(g[:nc]), list(g[nc:nc + ny]), list(g[nc + ny:])
    if all(v is None for v in g):
        return (None,) * len(y.inputs)
    extra = None  # cotangent reaching the carry entering each step through saved outputs
    if any(v is not None for v in g_saved):
        g_saved = [zeros(shape, dt) if v is None else v
                   for v, (shape, dt) in zip(g_saved, (y.results or ())[nc + ny:])]
        if save == 1:
            extra = [_tslice(v, 1, T + 1) if rev else _tslice(v, 0, T) for v in g_saved]
            last = [_tslice(v, 0, 1) if rev else _tslice(v, T, T + 1) for v in g_saved]
            g_final = [reshape(lv, c.shape) if gf is None else add(gf, reshape(lv, c.shape))
                       for gf, lv, c in zip(g_final, last, body.carries)]
        else:  # checkpoints enter steps 0, k, 2k...: spread them over a (T, ...) zero array
            extra = []
            for v in g_saved:
                z = pad(v, (0,) * v.ndim, (0,) * v.ndim, (save - 1,) + (0,) * (v.ndim - 1))
                extra.append(pad(z, (0,) * v.ndim, (T - z.shape[0],) + (0,) * (v.ndim - 1)))
    nk = len(consts)
    need_c, need_x, need_k = needs[:nc], needs[nc:nc + nx], needs[nc + nx:]
    if save > 1 and extra is None:
        d_init, d_xs, d_k = _checkpointed(body, T, y, init, xs, consts, g_final, g_ys,
                                          need_x, need_k)
    else:
        src = y if save == 1 else make("scan", y.inputs, **dict(y.attrs, save=1))
        _, stored_ys, saved = scan_results(src)
        d_init, d_xs, d_k = bptt(body, T, rev, saved, stored_ys, xs, consts, g_final, g_ys,
                                 need_x, need_k, extra=extra)
    return (tuple(d if n else None for d, n in zip(d_init, need_c))
            + tuple(d if n else None for d, n in zip(d_xs, need_x))
            + tuple(d if n else None for d, n in zip(d_k, need_k[:nk])))


def bptt(body: Body, T: int, rev: bool, saved: Sequence[Node], stored_ys: Sequence[Node],
         xs: Sequence[Node], consts: Sequence[Node], g_final: Sequence[Node | None],
         g_ys: Sequence[Node | None], need_x: Sequence[bool], need_k: Sequence[bool],
         acc_init: Sequence[Node | None] | None = None,
         extra: Sequence[Node] | None = None) -> Grads:
    """Backpropagation through time as a reverse scan, from all T+1 saved carries.

    Returns (d init carries, d xs, d consts) lists (None where not needed). `acc_init` seeds
    the constant-gradient accumulators (checkpoint segments chain them); `extra` adds a
    per-step cotangent to the carry entering each step.
    """
    nc = len(body.carries)
    scope = next(_SCOPES)
    taken = {p.attr("name") for p in body.params}

    def ph(base, shape, dt):
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return placeholder(name, shape, dt, scope)

    k_idx = [i for i, (k, need) in enumerate(zip(body.consts, need_k))
             if need and is_float(k.dtype)]
    x_idx = [i for i, (x, need) in enumerate(zip(body.xs, need_x)) if need and is_float(x.dtype)]
    dc = [ph(f"d{c.attr('name')}", c.shape, c.dtype) for c in body.carries]
    acc = [ph(f"d{body.consts[i].attr('name')}", body.consts[i].shape, body.consts[i].dtype)
           for i in k_idx]
    c_next = [ph(f"{c.attr('name')}_next", c.shape, c.dtype) for c in body.carries]
    dy_ph = [None if gy is None else ph(f"d{y_.attr('name') if y_.op == 'input' else 'y'}{j}",
                                        y_.shape, y_.dtype)
             for j, (y_, gy) in enumerate(zip(body.ys, g_ys))]
    ys_ph = [ph(f"y{j}_out", y_.shape, y_.dtype) for j, y_ in enumerate(body.ys)]
    ex_ph = [ph(f"d{c.attr('name')}_saved", c.shape, c.dtype) for c in body.carries] \
        if extra is not None else []

    seeds: dict[Node, Node] = {}
    for n, d in zip(list(body.new_carries) + list(body.ys), dc + dy_ph):
        if d is not None and n in seeds:  # a carry also read out as a y: its two cotangents
            seeds[n] = add(seeds[n], d)
            GRAD_OF.setdefault(seeds[n], n)
        elif d is not None:
            seeds[n] = d
    wrt = list(body.carries) + [body.xs[i] for i in x_idx] + [body.consts[i] for i in k_idx]
    cts = backward(seeds, wrt)
    d_c, d_x, d_kc = cts[:nc], cts[nc:nc + len(x_idx)], cts[nc + len(x_idx):]
    if extra is not None:
        d_c = [e if d is None else add(d, e) for d, e in zip(d_c, ex_ph)]
    new_dc = [zeros(c.shape, c.dtype) if d is None else d for d, c in zip(d_c, body.carries)]
    new_acc = [a if d is None else add(a, d) for a, d in zip(acc, d_kc)]
    dxs = [zeros(body.xs[i].shape, body.xs[i].dtype) if d is None else d
           for i, d in zip(x_idx, d_x)]
    # Read what the forward pass stored instead of recomputing it: the carry leaving the step
    # and the ys (only where the step's VJP uses those nodes).
    subst: dict[Node, Node] = {}
    for n, p in zip(body.new_carries, c_next):
        if n.op not in ("input", "param", "const"):
            subst.setdefault(n, p)
    for n, p in zip(body.ys, ys_ph):
        if n.op not in ("input", "param", "const"):
            subst.setdefault(n, p)
    outs = _substitute(new_dc + new_acc + dxs, subst)
    new_dc, new_acc, dxs = outs[:nc], outs[nc:nc + len(acc)], outs[nc + len(acc):]

    # per-step inputs of the reverse scan, dropped when the reverse body does not read them
    c_in_all = [_tslice(s, 1, T + 1) if rev else _tslice(s, 0, T) for s in saved]
    c_out_all = [_tslice(s, 0, T) if rev else _tslice(s, 1, T + 1) for s in saved]
    used = set(toposort(outs))
    xs_pairs = [(p, v) for p, v in zip(body.carries, c_in_all) if p in used]
    xs_pairs += [(p, v) for p, v in zip(c_next, c_out_all) if p in used]
    xs_pairs += [(p, v) for p, v in zip(body.xs, xs) if p in used]
    xs_pairs += [(p, v) for p, v in zip(ys_ph, stored_ys) if p in used]
    xs_pairs += [(p, gy) for p, gy in zip(dy_ph, g_ys)
                 if p is not None and gy is not None and p in used]
    xs_pairs += [(p, v) for p, v in zip(ex_ph, extra or []) if p in used]
    k_pairs = [(p, v) for p, v in zip(body.consts, consts) if p in used]
    rbody = Body(dc + acc, [p for p, _ in xs_pairs], [p for p, _ in k_pairs], new_dc + new_acc,
                 dxs, name=f"{body.name}_bptt")
    g0 = [zeros(c.shape, c.dtype) if g is None else g for g, c in zip(g_final, body.carries)]
    a0 = [zeros(body.consts[i].shape, body.consts[i].dtype) for i in k_idx] \
        if acc_init is None else [a if a is not None else zeros(body.consts[i].shape,
                                                                  body.consts[i].dtype)
                                  for a, i in zip(acc_init, k_idx)]
    r = make("scan", g0 + a0 + [v for _, v in xs_pairs] + [v for _, v in k_pairs],
             body=rbody, length=T, reverse=not rev, save=0)
    fin, dx_stacked, _ = scan_results(r)
    d_init: list[Node | None] = list(fin[:nc])
    d_k: list[Node | None] = [None] * len(body.consts)
    for i, a in zip(k_idx, fin[nc:]):
        d_k[i] = a
    d_xs: list[Node | None] = [None] * len(body.xs)
    for i, d in zip(x_idx, dx_stacked):
        d_xs[i] = d
    return d_init, d_xs, d_k


def _substitute(outputs, mapping: dict):
    """Rebuild `outputs` with nodes in `mapping` replaced (their subgraphs become dead)."""
    if not mapping:
        return list(outputs)
    memo: dict[Node, Node] = {}
    for n in toposort(outputs):
        if n in mapping:
            memo[n] = mapping[n]
            continue
        LOCATION_OVERRIDE.append(n.where)  # a rebuilt forward node keeps the user's line
        try:
            memo[n] = rebuild(n, [memo[i] for i in n.inputs])
        finally:
            LOCATION_OVERRIDE.pop()
        if memo[n] is not n and n in GRAD_OF:  # the rebuilt adjoint keeps its forward node
            GRAD_OF.setdefault(memo[n], GRAD_OF[n])
    return [memo[o] for o in outputs]


def _checkpointed(body: Body, T: int, y: Node, init, xs, consts, g_final, g_ys, need_x,
                  need_k):
    """BPTT from checkpoints every k steps: recompute each segment, then reverse it.

    The segments are visited last to first by an outer reverse scan whose body runs a k-step
    forward scan (saving every carry) from the segment's checkpoint and the plain BPTT of that
    segment; a shorter tail segment (T % k steps) is handled first, outside the loop.
    """
    k = y.attr("save")
    nc = len(body.carries)
    full, r = divmod(T, k)
    _, _, ckpts = scan_results(y)
    k_idx = [i for i, (c, need) in enumerate(zip(body.consts, need_k))
             if need and is_float(c.dtype)]
    dc = [zeros(c.shape, c.dtype) if g is None else g for g, c in zip(g_final, body.carries)]
    acc = [zeros(body.consts[i].shape, body.consts[i].dtype) for i in k_idx]
    dx_parts: list[list[Node]] = [[] for _ in body.xs]

    def segment(length, ck, seg_xs, seg_gys, seg_consts, dc, acc):
        fwd = make("scan", list(ck) + list(seg_xs) + list(seg_consts), body=body, length=length,
                   reverse=False, save=1)
        _, st_ys, saved = scan_results(fwd)
        d_init, d_xs, d_k = bptt(body, length, False, saved, st_ys, seg_xs, seg_consts, dc,
                                 seg_gys, need_x, need_k, acc_init=list(acc))
        return d_init, d_xs, [d_k[i] for i in k_idx]

    if r:  # the tail segment, last in time, first in the backward pass
        start = full * k
        ck = [reshape(_tslice(c, full, full + 1), c.shape[1:]) for c in ckpts]
        seg_xs = [_tslice(x, start, T) for x in xs]
        seg_gys = [None if gy is None else _tslice(gy, start, T) for gy in g_ys]
        dc, tail_dxs, acc = segment(r, ck, seg_xs, seg_gys, consts, dc, acc)
        for i, d in enumerate(tail_dxs):
            if d is not None:
                dx_parts[i].append(d)
    if full:
        scope = next(_SCOPES)

        def ph(name, shape, dt):
            return placeholder(name, shape, dt, scope)

        p_dc = [ph(f"d{c.attr('name')}", c.shape, c.dtype) for c in body.carries]
        p_acc = [ph(f"d{body.consts[i].attr('name')}", body.consts[i].shape,
                    body.consts[i].dtype) for i in k_idx]
        p_ck = [ph(f"{c.attr('name')}_ckpt", c.shape, c.dtype) for c in body.carries]
        p_xs = [ph(f"{x.attr('name')}_seg", (k,) + x.shape, x.dtype) for x in body.xs]
        p_gy = [None if gy is None else ph(f"dy{j}_seg", (k,) + y_.shape, y_.dtype)
                for j, (gy, y_) in enumerate(zip(g_ys, body.ys))]
        p_k = [ph(f"{c.attr('name')}_c", c.shape, c.dtype) for c in body.consts]
        s_dc, s_dxs, s_acc = segment(k, p_ck, p_xs, p_gy, p_k, p_dc, p_acc)
        x_idx = [i for i, d in enumerate(s_dxs) if d is not None]
        seg_xs_vals = [reshape(_tslice(x, 0, full * k), (full, k) + x.shape[1:]) for x in xs]
        seg_gy_vals = [None if gy is None else
                       reshape(_tslice(gy, 0, full * k), (full, k) + gy.shape[1:]) for gy in g_ys]
        ck_vals = [_tslice(c, 0, full) for c in ckpts]
        xs_pairs = list(zip(p_ck, ck_vals)) + list(zip(p_xs, seg_xs_vals)) + [
            (p, v) for p, v in zip(p_gy, seg_gy_vals) if p is not None]
        used = set(toposort(list(s_dc) + list(s_acc) + [s_dxs[i] for i in x_idx]))
        xs_pairs = [(p, v) for p, v in xs_pairs if p in used]
        k_pairs = [(p, v) for p, v in zip(p_k, consts) if p in used]
        obody = Body(p_dc + p_acc, [p for p, _ in xs_pairs], [p for p, _ in k_pairs],
                     list(s_dc) + list(s_acc), [s_dxs[i] for i in x_idx],
                     name=f"{body.name}_ckpt_bptt")
        outer = make("scan", list(dc) + list(acc) + [v for _, v in xs_pairs]
                     + [v for _, v in k_pairs], body=obody, length=full, reverse=True, save=0)
        fin, dxs, _ = scan_results(outer)
        dc, acc = fin[:nc], fin[nc:]
        for i, d in zip(x_idx, dxs):
            dx_parts[i].insert(0, reshape(d, (full * k,) + d.shape[2:]))
    d_xs: list[Node | None] = [None] * len(body.xs)
    for i, parts in enumerate(dx_parts):
        if parts:
            d_xs[i] = concatenate(parts, 0) if len(parts) > 1 else parts[0]
    d_k: list[Node | None] = [None] * len(body.consts)
    for i, a in zip(k_idx, acc):
        d_k[i] = a
    return dc, d_xs, d_k


register(Op("scan", "control", _infer, _vjp_scan,
            "loop a body sub-graph over the leading axis of xs, threading carries; "
            "attrs: body, length, reverse, save (0 none / 1 every carry / k checkpoints); "
            "results: final carries, stacked ys, saved carries", multiple_results=True))


# ---------------------------------------------------------------------------------------------
# the user function


def _flatten(tree, what):
    if tree is None:
        return [], None
    if isinstance(tree, (tuple, list)):
        return [as_node(t) for t in tree], type(tree)
    if isinstance(tree, Node) or np.isscalar(tree) or isinstance(tree, np.ndarray):
        return [as_node(tree)], "leaf"
    raise TypeError(f"scan: {what} must be a tensor, a tuple/list of tensors or None, "
                    f"got {type(tree).__name__}")


def _unflatten(nodes, kind):
    if kind is None:
        return None
    if kind == "leaf":
        return nodes[0]
    return kind(nodes)


def scan(step: Callable[[Any, Any], tuple[Any, Any]], init: Tree, xs: Tree | None = None,
         length: int | None = None, reverse: bool = False, truncate: int | None = None,
         checkpoint: bool | int | None = None, name: str | None = None,
         carry_names: Sequence[str] | None = None) -> tuple[Any, Any]:
    """Loop `carry, y = step(carry, x)` over the leading axis of `xs`, like jax.lax.scan.

    init: a tensor or tuple/list of tensors (the carry); xs: a tensor, tuple/list or None
    (then give `length`). Returns (final carry, ys) with ys stacked over time, (T, ...).
    The step is traced ONCE into a sub-graph, so code size and compile time do not grow
    with T; tensors it uses from outside (weights) become loop constants whose gradients
    are accumulated over the steps.

    truncate=k: truncated BPTT - the carry's gradient is cut every k steps (at elements
      k, 2k, ... in iteration order), as `stop_gradient` on the carry there would.
    checkpoint: None/False saves every carry for the backward pass; an int k >= 2 saves every
      k-th and recomputes the rest in the backward pass; True picks k = ceil(sqrt(T)).
    carry_names: one name per carry leaf for the body's arguments (fori_loop passes a dict
      carry's keys), instead of the step's first argument name numbered.
    """
    init_nodes, init_kind = _flatten(init, "init")
    if not init_nodes:
        raise ShapeError("scan: needs at least one carry (init)")
    xs_nodes, xs_kind = _flatten(xs, "xs")
    if length is None:
        if not xs_nodes or xs_nodes[0].ndim == 0:
            raise ShapeError("scan: give xs (with a leading time axis) or length")
        length = xs_nodes[0].shape[0]
    T = int(length)
    for x in xs_nodes:
        if x.ndim == 0 or x.shape[0] != T:
            raise ShapeError(f"scan: every xs must have leading axis {T}, got {x.shape}")
    name = name or getattr(step, "__name__", None) or "step"
    if not name.isidentifier() or name == "<lambda>":
        name = "step"
    scope = next(_SCOPES)
    argnames = _arg_names(step)
    c_names = list(carry_names) if carry_names is not None else [
        f"{argnames[0]}{i}" if len(init_nodes) > 1 else argnames[0]
        for i in range(len(init_nodes))]
    c_ph = [placeholder(nm, c.shape, c.dtype, scope) for nm, c in zip(c_names, init_nodes)]
    x_ph = [placeholder(f"{argnames[1]}{i}" if len(xs_nodes) > 1 else argnames[1],
                        x.shape[1:], x.dtype, scope) for i, x in enumerate(xs_nodes)]
    reset_ph = None
    if truncate is not None:
        truncate = int(truncate)
        if truncate < 1:
            raise ValueError(f"scan: truncate must be >= 1, got {truncate}")
        it = np.arange(T)
        cut = (it % truncate == 0) & (it > 0)
        reset_val = const(cut[::-1].copy() if reverse else cut)
        reset_ph = placeholder("cut_gradient", (), "bool", scope)
    carries = c_ph
    if reset_ph is not None:  # truncated BPTT: the carry's gradient stops at segment starts
        carries = [where(reset_ph, stop_gradient(c), c) for c in c_ph]
    out = step(_unflatten(carries, init_kind), _unflatten(x_ph, xs_kind))
    if not isinstance(out, tuple) or len(out) != 2:
        raise TypeError(f"scan: step {name} must return (new_carry, y) (y may be None)")
    new_c, _ = _flatten(out[0], "the new carry")
    ys, ys_kind = _flatten(out[1], "y")
    if len(new_c) != len(init_nodes):
        raise ShapeError(f"scan: step {name} returns {len(new_c)} carries for {len(init_nodes)}")
    new_c = [cast(n, c.dtype) if is_float(n.dtype) and n.dtype != c.dtype else n
             for n, c in zip(new_c, init_nodes)]
    new_c = [broadcast_to(n, c.shape) if n.shape != c.shape and n.ndim <= c.ndim else n
             for n, c in zip(new_c, init_nodes)]
    # traced as written: the rewrite pipeline simplifies bodies (rewrite/pipeline.py)
    outs = list(new_c) + list(ys)
    params = set(c_ph) | set(x_ph) | ({reset_ph} if reset_ph is not None else set())
    outs, consts, k_ph = _capture(outs, params, scope, {p.attr("name") for p in params})
    body_xs = list(x_ph) + ([reset_ph] if reset_ph is not None else [])
    body = Body(c_ph, body_xs, k_ph, outs[:len(new_c)], outs[len(new_c):], name)
    xs_in = list(xs_nodes) + ([reset_val] if reset_ph is not None else [])
    save = 1
    if checkpoint:
        save = sqrt_segment(T) if checkpoint is True else int(checkpoint)
        if save < 1:
            raise ValueError(f"scan: checkpoint must be True or an int >= 1, got {checkpoint}")
        if reverse:
            raise ValueError("scan: checkpoint is supported for forward scans only")
        save = min(save, max(T, 1))
    node = make("scan", list(init_nodes) + xs_in + consts, body=body, length=T,
                reverse=bool(reverse), save=save)
    fin, stacked, _ = scan_results(node)
    return _unflatten(fin, init_kind), _unflatten(stacked, ys_kind)


def sqrt_segment(T: int) -> int:
    """Checkpoint spacing for checkpoint=True: a divisor of T near sqrt(T) when there is one
    within a factor 1.5 (no ragged tail segment), else ceil(sqrt(T))."""
    r = math.sqrt(T)
    divs = [d for d in range(2, T + 1) if T % d == 0 and r / 1.5 <= d <= r * 1.5]
    return min(divs, key=lambda d: abs(d - r)) if divs else max(1, int(math.ceil(r)))


def prune_outputs(outputs: list[Node]) -> list[Node]:
    """Rewrite pass: drop the ys no one reads, the saved carries no backward pass reads, and
    the xs and consts the body does not use.

    Dropping a y removes it from the body (its computation becomes dead code); unread saved
    carries turn `save` off (forward-only use of a scan built for training); an unused xs is
    e.g. the index of a `fori_loop` whose body ignores it.
    """
    order = toposort(outputs)
    users = consumers(order)
    # scan -> (attrs, old -> new result index, which operands stay)
    plans: dict[Node, tuple[dict, dict[int, int], list[bool]]] = {}
    for n in order:
        if n.op != "scan":
            continue
        body = n.attr("body")
        nc, ny = len(body.carries), len(body.ys)
        read = {u.attr("index") for u in users[n]}
        keep_y = [nc + j in read for j in range(ny)]
        keep_saved = any(i >= nc + ny for i in read)
        ys = [y for y, k in zip(body.ys, keep_y) if k]
        used = set(toposort(list(body.new_carries) + ys))
        keep_x = [p in used for p in body.xs]
        keep_k = [p in used for p in body.consts]
        if all(keep_y) and (keep_saved or n.attr("save") == 0) and all(keep_x) \
                and all(keep_k):
            continue
        nb = Body(body.carries, [p for p, k in zip(body.xs, keep_x) if k],
                  [p for p, k in zip(body.consts, keep_k) if k], body.new_carries, ys,
                  body.name)
        kept = list(range(nc)) + [nc + j for j in range(ny) if keep_y[j]]
        if keep_saved:
            kept += list(range(nc + ny, len(n.results or ())))
        plans[n] = (dict(n.attrs, body=nb, save=n.attr("save") if keep_saved else 0),
                    {old: new for new, old in enumerate(kept)}, [True] * nc + keep_x + keep_k)
    if not plans:
        return outputs

    def build(n: Node, memo: dict[Node, Node]) -> Node:
        ins = [memo[i] for i in n.inputs]
        if n in plans:
            return make("scan", [i for i, k in zip(ins, plans[n][2]) if k], **plans[n][0])
        if n.op == "result" and n.inputs[0] in plans:
            return result(ins[0], plans[n.inputs[0]][1][n.attr("index")])
        return rebuild(n, ins)

    return transform(outputs, build=build)


def _arg_names(step):
    try:
        ps = [p.name for p in inspect.signature(step).parameters.values()]
    except (TypeError, ValueError):
        ps = []
    ps = [p for p in ps if p.isidentifier()] + ["carry", "x"]
    return ps[0], ps[1] if ps[1] != ps[0] else "x"


def _capture(outs, params: set, scope: int, taken: set):
    """Turn tensors the step used from outside into loop constants.

    Nodes that do not depend on the step's arguments and are not pure constants are the
    step's free variables; the maximal ones become const operands of the scan, bound inside
    the body to a placeholder (leaves keep their own name where it is free).
    """
    order = toposort(outs)
    dep = set(params)
    constant = set()
    for n in order:
        if n in params:
            continue
        if any(i in dep for i in n.inputs):
            dep.add(n)
        elif n.op == "cast" and n.inputs[0] not in constant:
            # capture x, not cast(x): a captured const's gradient accumulates in x's dtype
            # (the f32 copy of a bfloat16 weight is made inside; scan_hoist lifts it again)
            dep.add(n)
        elif n.op in ("const", "iota") or (n.inputs and all(i in constant for i in n.inputs)):
            constant.add(n)
    free = []
    seen = set()
    for n in order:
        if n not in dep:
            continue
        for i in n.inputs:
            if i not in dep and i not in constant and i not in seen:
                seen.add(i)
                free.append(i)
    for o in outs:
        if o not in dep and o not in constant and o not in seen:
            seen.add(o)
            free.append(o)
    mapping, k_ph = {}, []
    for j, f in enumerate(free):
        nm = f.attr("name") if f.op in ("input", "param") else None
        if nm is not None and nm not in taken and f.attr("scope") is None:
            p = f  # an outer leaf keeps its own name inside the body
        else:
            base = nm or f"k{j}"
            nm2, c = base, 0
            while nm2 in taken:
                c += 1
                nm2 = f"{base}_{c}"
            p = placeholder(nm2, f.shape, f.dtype, scope)
        taken.add(p.attr("name"))
        mapping[f] = p
        k_ph.append(p)
    return _substitute(outs, mapping), free, k_ph


def scan_stats(outputs: Node | Iterable[Node], _depth: int = 0) -> list[dict]:
    """One row per scan node reachable from `outputs`, then those nested in its body
    (depth + 1): body name, length, direction, and how many carries (and float elements) it
    stores for the backward pass. Nested scans run one at a time, so the peak number of stored
    carries is a top-level scan's plus the largest of its nested ones."""
    outputs = [outputs] if isinstance(outputs, Node) else list(outputs)
    rows = []
    for n in toposort(outputs):
        if n.op != "scan":
            continue
        body, T, save = n.attr("body"), n.attr("length"), n.attr("save")
        per = sum(c.size for c in body.carries)
        rows.append({"body": body.name, "depth": _depth, "length": T,
                     "reverse": n.attr("reverse"), "save": save,
                     "saved_carries": n_saved(T, save), "saved_elements": n_saved(T, save) * per})
        rows += scan_stats(list(body.outputs), _depth + 1)
    return rows
