"""Share a `while_loop`'s primal with the loop that extends it (forward mode's tangent loop).

The JVP of a while_loop (autodiff/loop_jvp.py) is a second loop over (carries, tangents) whose
first carries, body and flag are the primal loop's own, so it computes the primal too. When a
program asks for both (`y` and `y_t`), this pass reads `y` from the tangent loop and the
primal loop becomes dead code: the loop runs once, as JAX's jvp of a while_loop does. The match
is structural (same init, consts and body as a prefix), so it holds for any loop that extends
another, and it is skipped where the extending loop depends on the one it would replace.
"""

from __future__ import annotations

from ..ir.node import Node
from ..ir.traverse import toposort
from ..ops.results import result
from ..ops.scan import _substitute

__all__ = ["share_while_loops"]

SHARE = True  # False: each loop runs as built (benchmarks/bench_while_jvp.py compares)


def _same(a, b) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def _extends(big: Node, small: Node) -> bool:
    """`big` runs `small`'s loop (same init, consts, first flag, body) with more carries or
    consts appended, so its first results are `small`'s."""
    a, b = small.attr("body"), big.attr("body")
    nc, nk, NC = len(a.carries), len(a.consts), len(b.carries)
    if big is small or NC < nc or len(b.consts) < nk or (NC, len(b.consts)) == (nc, nk):
        return False
    return (_same(b.carries[:nc], a.carries) and _same(b.new_carries[:nc], a.new_carries)
            and _same(b.consts[:nk], a.consts) and _same(b.ys, a.ys)
            and _same(big.inputs[:nc], small.inputs[:nc])
            and _same(big.inputs[NC:NC + nk], small.inputs[nc:nc + nk])
            and big.inputs[-1] is small.inputs[-1])


def share_while_loops(outputs: list[Node]) -> list[Node]:
    """Read every while_loop's results from the largest loop that extends it, if any."""
    if not SHARE:
        return outputs
    order = toposort(outputs)
    loops = [n for n in order if n.op == "while_loop"]
    if len(loops) < 2:
        return outputs
    target: dict[Node, Node] = {}
    for small in loops:
        bigs = [b for b in loops if _extends(b, small) and small not in toposort(b.inputs)]
        if bigs:
            target[small] = max(bigs, key=lambda b: len(b.attr("body").params))
    mapping = {n: result(target[n.inputs[0]], n.attr("index")) for n in order
               if n.op == "result" and n.inputs[0] in target}
    return _substitute(outputs, mapping)
