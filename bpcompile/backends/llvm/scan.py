"""`scan` on the LLVM backend: the body sub-graph becomes its own function, called in a loop.

The body, as the rewrite pipeline simplified it (the pipeline recurses into bodies), is compiled
by a nested `Program` into
`void bp_scan<k>_<name>(carries..., x[t]..., consts..., new carries..., y[t]..., workspace)`.
Each result of the node (final carries, stacked ys, saved carries: ops/scan.py) has its own
buffer (schedule._schedule_tuple). The loop never copies a carry between steps: when every
carry is saved (plain BPTT), step t reads slot t of the saved-carry result and writes slot t+1;
otherwise two workspace buffers swap roles each step. Each y goes straight into its time slice
of its result, and checkpointed scans copy every k-th carry to its slot. The body's own
workspace is a slice of the outer one, live only during the scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from .loops import I1, I64, PTR, VOID, i64
from .memplan import View


@dataclass
class ScanPlan:
    sub: object  # codegen.Program of the body
    fn_name: str
    operands: list  # per scan input: a contiguous temp View to copy into, or None
    carry_in: list
    carry_out: list
    body_ws: View


def plan_scan(prog, n, step: int, flag: bool = False) -> ScanPlan:
    """Plan scan node `n` of schedule `prog` at `step`: its body as a nested Program, and the
    step-local temps for operand copies, the two carry buffers and the body's workspace.
    `flag`: the body also writes a bool after its new carries (while_loop's "go on")."""
    from .codegen import Program

    body = n.attr("body")  # already simplified by the rewrite pipeline, which owns bodies
    sub = Program(list(body.outputs), list(body.params), prog.gemm_threshold, prog.blas_threads,
                  checked_args=False, index_status=prog.index_status)
    label = prog.names[n]
    operands = []
    for k, x in enumerate(n.inputs):
        v = prog.views[x]
        operands.append(None if v.is_contiguous() else prog.temp(x.shape, x.dtype,
                                                                   f"{label}.in{k}", step))
    carry_in = [prog.temp(c.shape, c.dtype, f"{label}.c{i}", step)
                for i, c in enumerate(body.carries)]
    carry_out = [prog.temp(c.shape, c.dtype, f"{label}.n{i}", step)
                 for i, c in enumerate(body.carries)]
    if flag:
        carry_out.append(prog.temp((), "bool", f"{label}.go", step))
    ws = prog.temp((max(sub.memory.workspace_bytes, 1),), "bool", f"{label}.ws", step)
    name = f"{''.join(ch if ch.isalnum() else '_' for ch in body.name)}"
    return ScanPlan(sub, name, operands, carry_in, carry_out, ws)


def _memcpy(ctx, dst, src, nbytes: int):
    if nbytes:
        fn = ctx.em.declare("llvm.memcpy.p0.p0.i64", VOID, [PTR, PTR, I64, I1])
        ctx.em.b.call(fn, [dst, src, i64(nbytes), ir.Constant(I1, 0)])


def _ptr(ctx, v: View, extra_bytes=None):
    """Byte pointer to the first element of a contiguous view (+ a dynamic byte offset)."""
    b = ctx.em.b
    isz = np.dtype(v.dtype).itemsize
    off = i64(v.offset * isz)
    if extra_bytes is not None:
        off = b.add(off, extra_bytes)
    return b.gep(ctx.ptr(v.buf), [off], source_etype=ir.IntType(8))


def body_function(ctx, plan: ScanPlan, prefix: str):
    """The body's native function, emitted once per plan and module, numbered in emission
    order across scans and while loops (deterministic names keep the IR, and so the
    compile-cache key, identical between processes)."""
    emitted = ctx.module.__dict__.setdefault("_bp_scans", {})
    fn = emitted.get(id(plan))
    if fn is None:
        b = ctx.em.b
        saved_block = b.block
        fn = plan.sub.emit(ctx.module, f"{prefix}{len(emitted) + 1}_{plan.fn_name}",
                           with_entry=False)
        emitted[id(plan)] = fn
        fn.linkage = "internal"
        b.position_at_end(saved_block)
    return fn


def operand_views(ctx, n, plan: ScanPlan) -> list:
    """Views of the loop node's operands, non-contiguous ones copied to the plan's temps."""
    from .lower import copy

    views = []
    for x, tmp in zip(n.inputs, plan.operands):
        v = ctx.view(x)
        if tmp is not None:
            copy(ctx, v, tmp)
            v = tmp
        views.append(v)
    return views


def lower_scan(ctx, n):

    plan: ScanPlan = ctx.scan_plan[n]
    em, b = ctx.em, ctx.em.b
    body = n.attr("body")
    T, rev, save = n.attr("length"), n.attr("reverse"), n.attr("save")
    fn = body_function(ctx, plan, "bp_scan")
    views = operand_views(ctx, n, plan)
    nc, nx = len(body.carries), len(body.xs)
    inits, xs, consts = views[:nc], views[nc:nc + nx], views[nc + nx:]
    for ci, v in zip(plan.carry_in, inits):
        _memcpy(ctx, _ptr(ctx, ci), _ptr(ctx, v), v.size * np.dtype(v.dtype).itemsize)
    outs = ctx.view(n)  # one contiguous View per result
    ny = len(body.ys)
    finals, ys, saved = outs[:nc], outs[nc:nc + ny], outs[nc + ny:]
    cbytes = [c.size * np.dtype(c.dtype).itemsize for c in plan.carry_in]

    def slot(v: View, idx):  # element idx along the leading axis of a stacked result
        step_bytes = int(np.prod(v.shape[1:], dtype=np.int64)) * np.dtype(v.dtype).itemsize
        return _ptr(ctx, v, b.mul(idx, i64(step_bytes)))

    # Carries are never copied between steps. With every carry saved (save=1) step t reads
    # its carry from saved slot t and writes the next one straight into slot t+1 (mirrored for
    # reverse scans); otherwise the two workspace buffers swap roles every step (ping-pong).
    first, last = (T, 0) if rev else (0, T)
    if save == 1:
        for sv, v, nb in zip(saved, inits, cbytes):
            _memcpy(ctx, slot(sv, i64(first)), _ptr(ctx, v), nb)
    else:
        for ci, v, nb in zip(plan.carry_in, inits, cbytes):
            _memcpy(ctx, _ptr(ctx, ci), _ptr(ctx, v), nb)
    if T:
        with em.loop(T, "t") as k:
            t = b.sub(i64(T - 1), k) if rev else k
            if save == 1:
                at_in, at_out = (b.add(t, i64(1)), t) if rev else (t, b.add(t, i64(1)))
                c_in = [slot(sv, at_in) for sv in saved]
                c_out = [slot(sv, at_out) for sv in saved]
            else:
                odd = b.trunc(k, I1)
                pa = [_ptr(ctx, ci) for ci in plan.carry_in]
                pb = [_ptr(ctx, co) for co in plan.carry_out]
                c_in = [b.select(odd, y, x) for x, y in zip(pa, pb)]
                c_out = [b.select(odd, x, y) for x, y in zip(pa, pb)]
            if save > 1:
                hit = b.icmp_unsigned("==", b.urem(t, i64(save)), i64(0))
                with b.if_then(hit):
                    for sv, ci, nb in zip(saved, c_in, cbytes):
                        _memcpy(ctx, slot(sv, b.udiv(t, i64(save))), ci, nb)
            args = list(c_in)
            for x in xs:
                step_bytes = int(np.prod(x.shape[1:], dtype=np.int64)) * np.dtype(x.dtype).itemsize
                args.append(_ptr(ctx, x, b.mul(t, i64(step_bytes))))
            args += [_ptr(ctx, c) for c in consts]
            args += c_out
            args += [slot(yv, t) for yv in ys]
            args.append(_ptr(ctx, plan.body_ws))
            b.call(fn, args)
    if save == 1:
        final = [slot(sv, i64(last)) for sv in saved]
    else:
        final = [_ptr(ctx, c) for c in (plan.carry_in if T % 2 == 0 else plan.carry_out)]
    for fv, src, nb in zip(finals, final, cbytes):
        _memcpy(ctx, _ptr(ctx, fv), src, nb)
