"""`while_loop` (ops/loops.py) on the LLVM backend: a real loop with a conditional branch.

The body (the user's body followed by their cond) is compiled by a nested `Program`, as a scan
body is (scan.py), into `void bp_while<k>_<name>(carries..., consts..., new carries..., go,
workspace)`. The loop reads the flag before each step:
    carry = init; go = cond(init)
    while go: new, go = body(carry); carry = new
and the final carry is copied to the node's results. One memcpy of the carries per step keeps
the body's outputs from aliasing its inputs (it is compiled with noalias arguments).
"""

from __future__ import annotations

import numpy as np

from .loops import I8
from .scan import ScanPlan, _memcpy, _ptr, body_function, operand_views, plan_scan


def plan_while(prog, n, step: int) -> ScanPlan:
    """Plan while_loop node `n`: as a scan body (scan.plan_scan), whose outputs are the new
    carries and then the flag."""
    return plan_scan(prog, n, step, flag=True)


def lower_while(ctx, n):

    plan: ScanPlan = ctx.scan_plan[n]
    b = ctx.em.b
    body = n.attr("body")
    fn = body_function(ctx, plan, "bp_while")
    views = operand_views(ctx, n, plan)
    nc = len(body.carries)
    inits, consts, go0 = views[:nc], views[nc:-1], views[-1]
    cbytes = [c.size * np.dtype(c.dtype).itemsize for c in plan.carry_in]
    for ci, v, nb in zip(plan.carry_in, inits, cbytes):
        _memcpy(ctx, _ptr(ctx, ci), _ptr(ctx, v), nb)
    go = plan.carry_out[-1]
    _memcpy(ctx, _ptr(ctx, go), _ptr(ctx, go0), 1)
    test = b.append_basic_block("while.test")
    step = b.append_basic_block("while.body")
    done = b.append_basic_block("while.end")
    b.branch(test)
    b.position_at_end(test)
    flag = b.load(_ptr(ctx, go), typ=I8)
    b.cbranch(b.icmp_unsigned("!=", flag, ir_i8(0)), step, done)
    b.position_at_end(step)
    args = [_ptr(ctx, c) for c in plan.carry_in] + [_ptr(ctx, c) for c in consts]
    args += [_ptr(ctx, c) for c in plan.carry_out]
    args.append(_ptr(ctx, plan.body_ws))
    b.call(fn, args)
    for ci, co, nb in zip(plan.carry_in, plan.carry_out, cbytes):
        _memcpy(ctx, _ptr(ctx, ci), _ptr(ctx, co), nb)
    b.branch(test)
    b.position_at_end(done)
    for fv, ci, nb in zip(ctx.view(n), plan.carry_in, cbytes):
        _memcpy(ctx, _ptr(ctx, fv), _ptr(ctx, ci), nb)


def ir_i8(v: int):
    from llvmlite import ir

    return ir.Constant(I8, v)
