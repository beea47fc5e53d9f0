"""Loop-invariant code motion for `scan`: work that does not change from step to step leaves
the loop body.

Two rewrites of a scan node, both leaving its output layout untouched:

invariant hoisting
    A body node that depends on loop constants only (never on a carry or an `xs` element) has
    the same value at every step. It is computed once before the loop and enters the body as a
    new constant. The typical case is the BPTT body's `Wh.T`: outside the loop it becomes one
    contiguous transposed copy, so the per-step product δ·Whᵀ is a plain row-major GEMM
    instead of a transposed one (OpenBLAS runs the transposed form through its slow packing
    path). Broadcasts stay inside: materialising them would only add memory traffic.

per-step map hoisting
    A product `x[t] @ W` of a sequence element and a loop constant depends on no carry, so all T
    of them are one (T·B, K) @ (K, N) GEMM before the loop (the "input projection" of an RNN,
    as cuDNN does it); the body reads its row block as a new sequence input. It costs T times
    the product's size in memory, so it is applied only where the scan keeps every carry anyway
    (save = 1, plain BPTT) or keeps none (save = 0), never to a checkpointed scan (save > 1)
    whose point is to hold less.

Constants and sequences the body no longer reads are dropped from the node.
"""

from __future__ import annotations

import itertools

from ..ir.node import NAMES, Node, make, rebuild
from ..ir.traverse import toposort
from ..ops.scan import Body, _substitute, placeholder

_SCOPES = itertools.count(1_000_000)  # fresh scopes for placeholders this pass creates

# frontier nodes left inside the body: materialising them outside buys nothing
_KEEP_INSIDE = ("broadcast_to",)


def hoist_scans(outputs: list[Node]) -> list[Node]:
    """Rewrite pass: apply both hoists to every scan reachable from `outputs`."""
    memo: dict[Node, Node] = {}
    for n in toposort(outputs):
        ins = [memo[i] for i in n.inputs]
        memo[n] = _hoist(n, ins) if n.op == "scan" else rebuild(n, ins)
    return [memo[o] for o in outputs]


def _hoist(n: Node, ins: list[Node]) -> Node:
    body = n.attr("body")
    nc, nx = len(body.carries), len(body.xs)
    inits, xs, ks = list(ins[:nc]), list(ins[nc:nc + nx]), list(ins[nc + nx:])
    b_xs, b_ks = list(body.xs), list(body.consts)
    outs = list(body.outputs)
    taken = {p.attr("name") for p in body.params}

    # -- invariant hoisting ------------------------------------------------------------------
    varying = set(body.carries) | set(body.xs)
    consts = set(body.consts)
    order = toposort(outs)
    dep, inv = set(varying), set()
    for m in order:
        if m in varying or m in consts:
            continue
        if any(i in dep for i in m.inputs):
            dep.add(m)
        elif any(i in inv or i in consts for i in m.inputs):
            inv.add(m)
    frontier = []
    for m in order:
        if m in dep:
            for i in m.inputs:
                while i in inv and i.op in _KEEP_INSIDE:
                    i = i.inputs[0]
                if i in inv and i not in frontier:
                    frontier.append(i)
    outer = dict(zip(body.consts, ks))
    mapping = {}
    for f in frontier:
        (val,) = _substitute([f], outer)
        p = _placeholder(f, taken)
        mapping[f] = p
        b_ks.append(p)
        ks.append(val)
    if mapping:
        outs = _substitute(outs, mapping)

    # -- per-step map hoisting ---------------------------------------------------------------
    maps = {}
    if n.attr("save") in (0, 1) and n.attr("length") > 1:
        xs_of = dict(zip(b_xs, xs))
        k_of = dict(zip(b_ks, ks))
        for m in toposort(outs):
            if (m.op == "matmul" and m.inputs[0] in xs_of and m.inputs[1] in k_of
                    and m.inputs[0].ndim >= 1 and m.inputs[1].ndim == 2 and m not in maps):
                seq = make("matmul", (xs_of[m.inputs[0]], k_of[m.inputs[1]]), **dict(m.attrs))
                if seq.shape[1:] != m.shape:
                    continue
                p = _placeholder(m, taken)
                maps[m] = p
                b_xs.append(p)
                xs.append(seq)
        if maps:
            outs = _substitute(outs, maps)

    if not mapping and not maps:
        return rebuild(n, ins)
    # -- drop what the body no longer reads --------------------------------------------------
    live = set(toposort(outs))
    keep_x = [i for i, p in enumerate(b_xs) if p in live]
    keep_k = [i for i, p in enumerate(b_ks) if p in live]
    nb = Body(body.carries, [b_xs[i] for i in keep_x], [b_ks[i] for i in keep_k],
              outs[:nc], outs[nc:], body.name)
    operands = inits + [xs[i] for i in keep_x] + [ks[i] for i in keep_k]
    return make("scan", operands, **dict(n.attrs, body=nb))


def _placeholder(m: Node, taken: set) -> Node:
    base = NAMES.get(m) or _auto_name(m)
    name, c = base, 0
    while name in taken:
        c += 1
        name = f"{base}_{c}"
    taken.add(name)
    return placeholder(name, m.shape, m.dtype, next(_SCOPES))


def _auto_name(m: Node) -> str:
    """`Wh_T` for a transposed leaf, `x_Wx` for a product of two leaves, else the op name."""
    names = [i.name for i in m.inputs]
    if m.op == "transpose" and names[0]:
        return f"{names[0]}_T"
    if m.op == "matmul" and all(names):
        return f"{names[0]}_{names[1]}"
    return m.op
