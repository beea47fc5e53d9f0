"""Loop-invariant code motion for `scan`: work that does not change from step to step leaves
the loop body.

A body node that depends on loop constants only (never on a carry or an `xs` element) has the
same value at every step. It is computed once before the loop and enters the body as a new
constant; constants the body no longer reads are dropped, and the node's output layout is
untouched. The typical case is the BPTT body's `Wh.T`: outside the loop it becomes one
contiguous transposed copy, so the per-step product δ·Whᵀ is a plain row-major GEMM instead of
a transposed one (OpenBLAS runs that form through its slow packing path; rnn_bptt on the LLVM
backend went from 700 to 560 µs). Broadcasts stay inside: materialising them would only add
memory traffic.

Not done, by measurement: hoisting the per-step products `x[t] @ W` of a sequence element and
a constant into one (T·B, K) @ (K, N) GEMM before the loop (cuDNN's input projection). It
stores T of them - on rnn_bptt at T = 1000 the plain-BPTT workspace went from 8 to 16 MiB - and
gained nothing at T = 50 on the LLVM backend, 3% at T = 1000, and nothing on the JAX backend.
"""

from __future__ import annotations

import itertools

from ..ir.node import NAMES, Node, make
from ..ir.traverse import toposort, transform
from ..ops.scan import Body, _substitute, placeholder

_SCOPES = itertools.count(1_000_000)  # fresh scopes for placeholders this pass creates

# frontier nodes left inside the body: materialising them outside buys nothing
_KEEP_INSIDE = ("broadcast_to",)


def hoist_scans(outputs: list[Node]) -> list[Node]:
    """Rewrite pass: hoist the loop invariants of every scan reachable from `outputs`."""
    return transform(outputs, lambda n: _hoist(n, list(n.inputs)) if n.op == "scan" else n)


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

    if not mapping:
        return n
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
    """`Wh_T` for a transposed leaf, else the op name."""
    if m.op == "transpose" and m.inputs[0].name:
        return f"{m.inputs[0].name}_T"
    return m.op
