"""Gradient accumulation: the loss and gradients of a batch as k micro-batches in one graph.

The loss is declared at the micro-batch size. `accumulated(loss, wrt, k)` declares each batched
input (ndim >= 1) at k times its leading axis, views it as (k, micro, ...) and runs a `scan` over
the k micro-batches whose step is the micro-batch loss and its gradient, summed into carries;
the result is their mean (`reduce="mean"`, for a loss that averages over the batch: then it
equals the full-batch gradient) or sum (`reduce="sum"`, for a summed loss). One micro-batch's
activations are alive at a time: the scan body's workspace is the only place they live.
With `compress=` those saved activations are stored compressed inside the body
(rewrite/compress.py), so the two remedies multiply.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..compiled import grad as _grad
from ..errors import ArgumentError
from ..ir.dtypes import is_half
from ..ir.node import Node
from ..ir.traverse import leaves, transform
from ..ops.elementwise import add, cast, div, mul
from ..ops.leaves import const
from ..ops.leaves import input as _input
from ..ops.movement import broadcast_to, reshape
from ..ops.results import result
from ..ops.scan import scan
from ..rewrite import pipeline
from ..rewrite.compress import compress_saved

REDUCTIONS = ("mean", "sum")


def batched_inputs(loss: Node) -> list[Node]:
    """The inputs split into micro-batches: every input with a leading (batch) axis."""
    return [x for x in leaves([loss], ops=("input",)) if x.ndim >= 1]


def accumulated(loss: Node, wrt: Sequence[Node], k: int, reduce: str = "mean",
                scale: Node | None = None, compress: str | None = None,
                report: dict | None = None) -> tuple[dict[str, Node], Node, list[Node]]:
    """({input name: full-batch input}, loss, gradients) over k micro-batches of `loss`.

    `scale` (a float32 scalar node: loss scaling, loss_scale.py): each micro-batch
    differentiates `loss * scale`, the scaled gradients are summed in the carries and divided
    by `scale` in float32 once, after the loop; a non-finite micro-batch gradient leaves the
    total non-finite, so the step's finiteness check sees it.

    `compress` ("bfloat16" / "int8"): each micro-batch's saved activations are stored
    compressed inside the scan body; `report` (a dict) receives compress_saved's report."""
    if not isinstance(k, int) or k < 1:
        raise ArgumentError(f"accumulate must be a positive int, got {k!r}")
    if reduce not in REDUCTIONS:
        raise ArgumentError(f"accumulate_reduce must be one of {REDUCTIONS}, got {reduce!r}")
    micro = batched_inputs(loss)
    if not micro:
        raise ArgumentError("accumulate: the loss has no input with a batch axis to split")
    full = {x.attr("name"): _input(x.attr("name"), (k * x.shape[0],) + x.shape[1:], x.dtype)
            for x in micro}
    xs = [reshape(full[x.attr("name")], (k,) + x.shape) for x in micro]

    def micro_step(carry, xb):
        xb = list(xb) if isinstance(xb, (tuple, list)) else [xb]
        sub = dict(zip(micro, xb))
        (loss_b,) = transform([loss], lambda n: sub.get(n, n))
        seed = loss_b if scale is None else mul(
            cast(loss_b, "float32") if is_half(loss_b.dtype) else loss_b, scale)
        grads_b = _grad(seed, list(wrt))
        grads_b = grads_b if isinstance(grads_b, list) else [grads_b]
        if compress is not None:  # one micro-batch's saved activations, stored smaller
            (loss_b, *grads_b), rep = compress_saved([loss_b, *grads_b], compress)
            if report is not None:
                report.update(rep)
        return tuple(add(c, v) for c, v in zip(carry, [loss_b, *grads_b])), None

    zeros = tuple(broadcast_to(const(0.0, n.dtype), n.shape) for n in [loss, *wrt])
    totals, _ = scan(micro_step, zeros, tuple(xs), name="micro_batch")
    # bp.function forward-stabilises each scalar output on its own: the loss would get its own
    # rewritten copy of the loop (two loops). So take loss and gradients from one loop that is
    # already at that fixpoint.
    loop = totals[0].inputs[0]
    for _ in range(8):
        again = pipeline.run_forward(result(loop, 0)).inputs[0]
        if again is loop:
            break
        loop = again
    totals = tuple(result(loop, i) for i in range(len(zeros)))
    if scale is not None:  # unscale the summed gradients in float32, once
        totals = totals[:1] + tuple(_unscale(g, scale) for g in totals[1:])
    if reduce == "mean":
        totals = tuple(mul(t, const(1.0 / k, t.dtype)) for t in totals)
    return full, totals[0], list(totals[1:])


def _unscale(g: Node, scale: Node) -> Node:
    wide = cast(g, "float32") if is_half(g.dtype) else g
    out = div(wide, scale)
    return cast(out, g.dtype) if out.dtype != g.dtype else out
