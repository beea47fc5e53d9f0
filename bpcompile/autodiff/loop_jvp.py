"""Forward mode through `while_loop` (ops/loops.py): the loop, carrying the tangents too.

JAX's rule: the JVP of `while cond(c): c = body(c)` is the loop over (c, ċ) whose body is
(body(c), J_body(c) ċ) and whose cond reads c alone, so the tangents follow the primal trip
count, whatever it is. The tangent body is this module's `jvp` of the user's body graph
w.r.t. its carries and the consts that have a tangent (their tangents enter as loop
constants). Float carries get a tangent carry (zeros where init's tangent is a symbolic
zero: a const can still move it); int and bool carries do not. The tangent loop's first
results are the primal's: the rule stays local (the primal loop is still built), and the
pipeline reads the primal from the tangent loop (rewrite/loop_share.py), so a program asking
for both runs one loop.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..ir.dtypes import is_float
from ..ir.node import Node, make
from ..ops.leaves import const
from ..ops.movement import broadcast_to
from ..ops.results import results
from ..ops.scan import _SCOPES, Body, placeholder


def while_jvp(n: Node, ts: Sequence[Node | None], batch: int | None = None
              ) -> list[Node | None]:
    """One tangent (or None) per result of while_loop node `n`, given its inputs' tangents.

    batch=b: every tangent has a leading batch axis of size b (autodiff/batched.py, a forward
    Jacobian's seeds at once), the body's tangent is `batched_jvp` of it, and so the loop
    carries all b tangents in one pass (raises NotBatched where the body has an op without a
    batched rule)."""
    from .batched import batched_jvp
    from .forward import jvp

    body = n.attr("body")
    nc, nk = len(body.carries), len(body.consts)
    init, consts, go0 = n.inputs[:nc], n.inputs[nc:nc + nk], n.inputs[-1]
    c_idx = [i for i, c in enumerate(body.carries) if is_float(c.dtype)]
    k_idx = [j for j in range(nk) if ts[nc + j] is not None]
    if not c_idx:
        return [None] * nc
    scope = next(_SCOPES)
    taken = {p.attr("name") for p in body.params}
    lead = () if batch is None else (batch,)

    def ph(p: Node) -> Node:
        name, k = f"{p.attr('name')}_t", 0
        while name in taken:
            k += 1
            name = f"{p.attr('name')}_t{k}"
        taken.add(name)
        return placeholder(name, lead + p.shape, p.dtype, scope)

    tc = [ph(body.carries[i]) for i in c_idx]
    tk = [ph(body.consts[j]) for j in k_idx]
    primals = [body.carries[i] for i in c_idx] + [body.consts[j] for j in k_idx]
    new = [body.new_carries[i] for i in c_idx]
    if batch is None:
        _, t_new = jvp(new, primals, tc + tk)
    else:
        t_new = batched_jvp(new, primals, tc + tk)
    tbody = Body(list(body.carries) + tc, (), list(body.consts) + tk,
                 list(body.new_carries) + list(t_new), body.ys, f"{body.name}_jvp")
    t_init = [ts[i] if ts[i] is not None else
              broadcast_to(const(0.0, init[i].dtype), lead + init[i].shape) for i in c_idx]
    loop = make("while_loop", list(init) + t_init + list(consts)
                + [ts[nc + j] for j in k_idx] + [go0], body=tbody)
    out = results(loop)[nc:]
    tangents: list[Node | None] = [None] * nc
    for pos, i in enumerate(c_idx):
        tangents[i] = out[pos]
    return tangents
