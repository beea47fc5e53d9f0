"""The LLVM memory timeline: bytes live at each step of the schedule, from the memory plan.

A workspace buffer is live from the step that writes it to the last step that reads it
(memplan.liveness, which the plan's offsets come from); output buffers are live for the whole
call. `workspace_top` is the highest planned byte in use at that step, so its maximum is the
plan's workspace size; `live_bytes` can be lower where first-fit leaves gaps.
"""

from __future__ import annotations

from ...ir.provenance import RECOMPUTED
from .memplan import _align


def timeline(program) -> list[dict]:
    """One entry per step of `program` (a codegen.Program): step, op, name, phase (forward,
    recompute, backward, output copy), live_bytes (outputs + live workspace), workspace_top."""
    ws = [b for b in program.buffers if b.kind == "ws"]
    outs = sum(_align(max(b.nbytes, 1)) for b in program.buffers if b.kind == "out")
    rows = []
    for k, s in enumerate(program.steps):
        live = [b for b in ws if b.first <= k <= max(b.last, b.first)]
        n = s.node
        if n is None:
            ph, op, name = "output copy", "copy", s.writes.label
        else:
            ph = ("recompute" if n in RECOMPUTED else "forward" if s.writes.forward
                  else "backward")
            op, name = n.op, program.names.get(n, n.op)
        rows.append({"step": k, "op": op, "name": name, "phase": ph,
                     "live_bytes": outs + sum(_align(max(b.nbytes, 1)) for b in live),
                     "workspace_top": max((b.offset + _align(max(b.nbytes, 1)) for b in live),
                                          default=0)})
    return rows
