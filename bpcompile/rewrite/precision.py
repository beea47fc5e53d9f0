"""Mixed precision as a graph rewrite (the shape of DeepMind's `jmp.Policy`).

Params stay float32 master weights; every float32 op of the forward graph runs in the policy's
compute dtype (bfloat16 or float16) on casts of its operands, except the ops of KEEP_FLOAT32,
whose loss of accuracy in 16 bits matters; the loss is cast to the output dtype. Autodiff then
runs on the rewritten graph, so gradients reach the float32 params through the casts' VJPs
and come back in float32. The casts are ordinary `cast` nodes: visible in `fn.source()`,
counted in `fn.stats()` (rule "precision.cast").
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..errors import DTypeError
from ..ir.dtypes import HALF, canonical
from ..ir.node import Node, make, rebuild
from ..ir.optable import get_op
from ..ir.provenance import RECOMPUTED
from ..ir.traverse import consumers, toposort, transform
from ..ops.scan import Body

# op -> why it stays float32 under a 16-bit policy (one row per op)
KEEP_FLOAT32 = {
    "sum": "sums and means, softmax's normaliser, norms' statistics, reductions of the loss",
    "log": "log-softmax, logsumexp and cross-entropy outputs (x - log(...) cancels)",
    "log1p": "log(1 + x) near 0, binary cross-entropy",
    "softplus": "log(1 + e^x): binary cross-entropy with logits",
    "scan": "loop carries accumulate over steps: carries, xs and ys stay float32; the body runs "
            "under the policy (its matmuls in 16 bits, its outputs cast back to float32)",
}
# Also float32: every rank-0 value (the loss, its mean's 1/N multiply, a scaled loss: a static
# loss scale never meets float16's 65504 there); statistics: an elementwise op on a float32
# result no larger than it (a norm's mean, variance + eps, rsqrt; logsumexp's max + log); and
# the loss head: an elementwise op reading a float32 result with no matmul/loop downstream
# (log-softmax and cross-entropy's terms). A softmax or normalised activation feeding a matmul
# comes back in the compute dtype (flax's attention and LayerNorm do so).
HEAVY = ("matmul", "scan", "take", "scatter_add", "custom_vjp")  # ops a loss head never feeds


@dataclass(frozen=True)
class Policy:
    """param: the params' (master weights') dtype; compute: the dtype ops run in; output: the
    loss's dtype. `Policy.of("bfloat16")` = Policy("float32", "bfloat16", "float32")."""

    param: str = "float32"
    compute: str = "float32"
    output: str = "float32"

    def __post_init__(self):
        for f in ("param", "compute", "output"):
            object.__setattr__(self, f, canonical(getattr(self, f)))
        if self.param != "float32" or self.output != "float32":
            raise DTypeError(f"precision policy {self}: params and output must be float32 "
                             "(float32 master weights)")
        if self.compute not in HALF + ("float32",):
            raise DTypeError(f"precision policy {self}: compute must be float32, float16 or "
                             "bfloat16")

    @staticmethod
    def of(precision: str | Policy | None) -> Policy:
        if precision is None or isinstance(precision, Policy):
            return precision or Policy()
        return Policy(compute=precision)


def apply_policy(loss: Node, policy: Policy, hits: Counter | None = None) -> Node:
    """`loss` with its float32 ops computed in `policy.compute` (see the module docstring)."""
    return apply_policy_all([loss], policy, hits)[0]


def apply_policy_all(outputs: list[Node], policy: Policy,
                     hits: Counter | None = None) -> list[Node]:
    """Every output rewritten by the policy; float32 outputs come back in `policy.output`."""
    if policy.compute == "float32":
        return outputs
    made = [0]

    def to(x: Node, dtype: str) -> Node:
        if x.dtype == dtype:
            return x
        made[0] += 1
        return make("cast", (x,), dtype=dtype)

    head = _loss_head(outputs)

    def build(n: Node, memo: dict[Node, Node]) -> Node:
        if not n.inputs:
            return n  # leaves keep their dtype: float32 params are the master weights
        f32_in = [i.dtype == "float32" for i in n.inputs]
        if n.dtype != "float32" and not (any(f32_in) and n.dtype == "bool"):
            # another dtype (float64, int, a cast out of float32, a scan): operands as they were
            attrs = dict(n.attrs)
            if n.op == "scan":
                attrs["body"] = _policy_body(attrs["body"], policy, made)
            return make(n.op, [to(memo[i], i.dtype) for i in n.inputs], **attrs)
        kept = n.op in KEEP_FLOAT32 or n.shape == () or (
            get_op(n.op).kind in ("elementwise", "kernel") and any(
                f and memo[i].inputs and memo[i].dtype == "float32"
                and (n in head or n.size <= i.size)  # the loss head, or statistics
                for i, f in zip(n.inputs, f32_in)))
        target = "float32" if kept else policy.compute
        ins = [to(memo[i], target) if f else to(memo[i], i.dtype)
               for i, f in zip(n.inputs, f32_in)]
        attrs = dict(n.attrs)
        if attrs.get("dtype") == "float32":  # cast / one_hot / iota to float32
            attrs["dtype"] = target
        return make(n.op, ins, **attrs)

    outs = [to(o, policy.output) if old.dtype == "float32" else o
            for o, old in zip(transform(outputs, build=build), outputs)]
    if hits is not None:
        hits["precision.cast"] += made[0]
    return outs


def _policy_body(body: Body, policy: Policy, made: list[int]) -> Body:
    """A scan body under the policy: its float32 arguments and outputs stay float32 (the
    carries accumulate in float32, KEEP_FLOAT32["scan"]), the ops between them follow the
    table as at top level, nested scans included."""
    hits: Counter = Counter()
    outs = apply_policy_all(list(body.outputs), policy, hits)
    if all(a is b for a, b in zip(outs, body.outputs)):
        return body
    made[0] += hits["precision.cast"]
    nc = len(body.carries)
    return Body(body.carries, body.xs, body.consts, outs[:nc], outs[nc:], body.name)


def _loss_head(outputs: list[Node]) -> set[Node]:
    """Elementwise nodes from which no HEAVY op is reachable (the loss's last ops)."""
    order = toposort(outputs)
    users = consumers(order)
    feeds_heavy: dict[Node, bool] = {}
    for n in reversed(order):
        feeds_heavy[n] = any(u.op in HEAVY or feeds_heavy[u] for u in users[n])
    return {n for n in order if not feeds_heavy[n]
            and get_op(n.op).kind in ("elementwise", "kernel")}


VIEWS = ("transpose", "reshape", "broadcast_to")  # free on every backend with a memory plan


def _cast_chain(n: Node) -> Node | None:
    """The cast under n's views, if n is views of a cast of a leaf; else None."""
    while n.op in VIEWS:
        n = n.inputs[0]
    ok = n.op == "cast" and n.inputs[0].op in ("input", "param")
    return n if ok else None


def recompute_casts(loss: Node, grads: list[Node], hits: Counter | None = None) -> list[Node]:
    """`grads` with every cast of a param or input that the backward pass reads redone there.

    Under a 16-bit policy a matmul's VJP reads its operands: without this the bfloat16 copies
    of x and W made in the forward pass stay alive until the backward pass (saved bytes the
    float32 graph never has: there the backward reads the arguments). The backward reads
    instead `cast(remat_barrier(x, after))`, `after` being another operand of the reading op,
    so the copy is made late, next to its use (ops/checkpoint.py's barrier keeps it distinct
    from the forward cast under interning). The recomputed casts are marked RECOMPUTED.
    """
    forward = set(toposort([loss]))
    made = [0]

    def redo(n: Node, after: Node) -> Node:
        if n.op in VIEWS:
            return make(n.op, (redo(n.inputs[0], after),), **dict(n.attrs))
        new = make("cast", (make("remat_barrier", (n.inputs[0], after)),), **dict(n.attrs))
        RECOMPUTED.setdefault(new, "cast")
        made[0] += 1
        return new

    def build(n: Node, memo: dict[Node, Node]) -> Node:
        ins = [memo[i] for i in n.inputs]
        if n in forward or n.op in VIEWS or n.op == "remat_barrier":
            return rebuild(n, ins)
        saved = [k for k, i in enumerate(n.inputs)
                 if (c := _cast_chain(i)) is not None and c in forward]
        after = next((memo[i] for k, i in enumerate(n.inputs)
                      if k not in saved and i not in forward), None)
        for k in saved if after is not None else ():
            ins[k] = redo(n.inputs[k], after)
        return rebuild(n, ins)

    out = transform([loss] + list(grads), build=build)[1:]
    if hits is not None:
        hits["precision.recompute_cast"] += made[0]
    return [_float32_grad(g, hits) for g in out]


def _float32_grad(g: Node, hits: Counter | None) -> Node:
    """A float32 param's gradient without the round trip through 16 bits that its cast's VJP
    spells: cast(cast(y:f32, half), f32) -> y, and cast(a @ b: half, f32) -> the product of
    float32 copies (the float32 accumulator written straight to the gradient; on LLVM into the
    output buffer, with no float32 temporary and no 16-bit copy). Only more accurate.
    bfloat16 only: it has float32's exponent range, so the round trip loses precision, never
    range; float16's gradients keep its range (underflow, overflow) as loss scaling expects
    (PyTorch's autocast and jmp compute them in float16 too)."""
    if g.op != "cast" or g.dtype != "float32" or g.inputs[0].dtype != "bfloat16":
        return g
    h = g.inputs[0]
    if h.op == "cast" and h.inputs[0].dtype == "float32":
        new = h.inputs[0]
    elif h.op == "matmul":
        new = make("matmul", tuple(make("cast", (x,), dtype="float32") for x in h.inputs))
    else:
        return g
    if hits is not None:
        hits["precision.float32_grad"] += 1
    return new
