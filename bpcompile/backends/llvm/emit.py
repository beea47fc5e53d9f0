"""Emit LLVM IR for a scheduled, memory-planned graph (schedule.py, memplan.py).

The module gets one compute function

    void bp_main(ptr noalias in0, ..., ptr noalias out0, ..., ptr noalias workspace)

specialised to the graph's static shapes and dtypes: one loop nest per step (lower.py; fused
kernels are single loops, BLAS or inline loops for matmul), constants as private globals, and
`bp_entry(ptr argv)` taking the same pointers as an array (the ctypes / C-ABI route).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from ...errors import BackendError
from ...ir.dtypes import is_float, is_half
from ...ir.node import Node
from . import blas
from .accumulate import lower_accumulate
from .loops import I16, I32, I64, PTR, VOID, Emitter, mem_type, narrow, widen
from .lower import copy, lower
from .memplan import Buffer, View
from .schedule import Schedule, Step

SPLIT_STEPS = 48  # schedules longer than this get one function per step (see emit)
# Each split step function takes every argument, so IR size grows as steps x arguments; past
# this product LLVM needs many GB (300 dense layers of width 2: ~2.2M, out of memory at 6 GB).
MAX_SPLIT_ARGS = 2_000_000


def refuse_too_large(steps: int, nargs: int):
    raise BackendError(
        f"llvm backend: the graph is too large for its code generator (~{steps} steps x "
        f"{nargs} arguments = {steps * nargs:,} > {MAX_SPLIT_ARGS:,}; LLVM would need many GB); "
        "compile it with backend='numpy' or 'jax', or use fewer, wider layers")


class Context:
    """What lowerings see: views of nodes, buffer pointers, loads/stores, entry-block allocas."""

    def __init__(self, em: Emitter, module: ir.Module, views, ptrs, temps, matmul_plan, entry):
        self.em, self.module = em, module
        self.views, self.ptrs, self.temps, self.matmul_plan = views, ptrs, temps, matmul_plan
        self._entry = entry
        self.alias: dict = {}  # ws Buffer -> (alias.scope, noalias) metadata of the current step

    def view(self, n: Node) -> View:
        return self.views[n]

    def ptr(self, buf: Buffer) -> ir.Value:
        p = self.ptrs.get(buf)
        if p is None:  # workspace buffers: a constant offset into ws, made on first use
            ws = self._entry.function.args[-1]
            with self._entry.goto_entry_block():
                p = self._entry.gep(ws, [ir.Constant(I64, buf.offset)], inbounds=True,
                                    source_etype=ir.IntType(8), name=_ident(buf.label))
            self.ptrs[buf] = p
        return p

    def load(self, v: View, strides, idx) -> ir.Value:
        """The element of `v` at `idx` as a register value (16-bit floats widened)."""
        return self.load_at(self.em.addr(self.ptr(v.buf), v.offset, strides, idx,
                                         mem_type(v.dtype)), v.buf, v.dtype)

    def store(self, v: View, strides, idx, value: ir.Value):
        """Store a register value (rounded to nearest-even for 16-bit floats)."""
        self.store_at(value, self.em.addr(self.ptr(v.buf), v.offset, strides, idx,
                                          mem_type(v.dtype)), v.buf, v.dtype)

    def load_at(self, ptr: ir.Value, buf: Buffer, dtype: str) -> ir.Value:
        b = self.em.b
        return widen(b, self.tag(b.load(ptr, typ=mem_type(dtype)), buf), dtype)

    def store_at(self, value: ir.Value, ptr: ir.Value, buf: Buffer, dtype: str):
        b = self.em.b
        self.tag(b.store(narrow(b, value, dtype), ptr), buf)

    def tag(self, instr, buf: Buffer):
        """Attach scoped-noalias metadata to a load/store of a workspace buffer.

        Every workspace buffer is an offset from the one `ws` pointer, so LLVM cannot tell that
        a loop reading one buffer and writing another has no loop-carried dependence, and it
        leaves such loops scalar ("unknown data dependence"). The metadata states what the
        memory plan knows: buffers whose byte ranges are disjoint never alias. Buffers that
        share bytes (reuse across lifetimes) are never declared disjoint.
        """
        md = self.alias.get(buf)
        if md is not None:
            instr.set_metadata("alias.scope", md[0])
            instr.set_metadata("noalias", md[1])
        return instr

    def alloca(self, ty: ir.Type) -> ir.Value:
        with self._entry.goto_entry_block():
            return self._entry.alloca(ty)


def emit(prog: Schedule, module: ir.Module, name: str = "bp_main", with_entry: bool = True):
    """Emit `name` (and bp_entry) for a schedule whose workspace offsets are planned. Long
    schedules get one non-inlined function per step: LLVM's O3 time grows faster than linearly
    with function size (a 50-step unrolled RNN took 98 s as one function)."""
    nargs = len(prog.args) + len(prog.outputs) + 1
    if len(prog.steps) > SPLIT_STEPS and len(prog.steps) * nargs > MAX_SPLIT_ARGS:
        refuse_too_large(len(prog.steps), nargs)  # refuse before LLVM runs out of memory
    consts = {buf: _const_global(module, buf, arr) for buf, arr in prog.consts}
    fn, ctx = _function(prog, module, name, consts)
    b = ctx.em.b
    if ctx.blas_threads:  # restore the caller's BLAS thread count on return
        prev = b.call(ctx.blas_threads[0], [ir.Constant(I32, 1)])
    auto = (with_entry and prog.blas_threads == "auto" and blas.threads_setter()
            and (prog.matmul_plan or prog.scan_plan))
    if auto:
        if not ctx.blas_threads:
            prev = b.call(ctx.em.declare(blas.THREADS_SYMBOL, I32, [I32]),
                          [ir.Constant(I32, 1)])
        controller = blas.AdaptiveThreads(ctx.em, module, prev)
    if len(prog.steps) <= SPLIT_STEPS:
        for s in prog.steps:
            _lower_step(ctx, s)
    else:
        # Each step function takes all (in..., out..., ws) pointers: IR grows as steps x args
        for k, s in enumerate(prog.steps):
            label = _ident(prog.names[s.node] if s.node is not None else "copy")
            sf, sctx = _function(prog, module, f"{name}.{k}.{label}", consts)
            sf.linkage = "internal"
            sf.attributes.add("noinline")
            _lower_step(sctx, s)
            sctx.em.b.ret_void()
            sctx._entry.branch(sf.blocks[1])
            b.call(sf, list(fn.args))
    if auto:
        controller.finish()
    if ctx.blas_threads or auto:
        b.call(ctx.em.declare(blas.THREADS_SYMBOL, I32, [I32]), [prev])
    b.ret_void()
    ctx._entry.branch(fn.blocks[1])
    if not with_entry:
        return fn
    # the flat-array entry point: bp_entry(ptr argv) with argv = [in..., out..., ws]
    ent = ir.Function(module, ir.FunctionType(VOID, [PTR]), "bp_entry")
    bb = ir.IRBuilder(ent.append_basic_block())
    ptrs = [bb.load(bb.gep(ent.args[0], [ir.Constant(I64, k)], source_etype=PTR), typ=PTR)
            for k in range(nargs)]
    bb.call(fn, ptrs)
    bb.ret_void()
    return fn


def _function(prog: Schedule, module: ir.Module, name: str, consts: dict):
    """A function with the (in..., out..., ws) signature and its lowering context."""
    nin, nout = len(prog.args), len(prog.outputs)
    fn = ir.Function(module, ir.FunctionType(VOID, [PTR] * (nin + nout + 1)), name)
    for a in fn.args:
        a.add_attribute("noalias")
    for a, arg in zip(fn.args[:nin], prog.args):
        a.name = f"in_{arg.attr('name')}"
    for a, j in zip(fn.args[nin:nin + nout], range(nout)):
        a.name = f"out{j}"
    fn.args[-1].name = "ws"
    eb = ir.IRBuilder(fn.append_basic_block("entry"))
    b = ir.IRBuilder(fn.append_basic_block("body"))
    em = Emitter(module, b)
    ptrs = dict(consts)
    ptrs.update(zip(prog.arg_bufs, fn.args[:nin]))
    ptrs.update(zip(prog.out_bufs, fn.args[nin:nin + nout]))
    ctx = Context(em, module, prog.views, ptrs, prog.temps, prog.matmul_plan, eb)
    ctx.scan_plan = prog.scan_plan
    ctx.checked = prog.checked
    ctx.index_sites = (module.__dict__.setdefault("_bp_index_sites", [])
                       if prog.index_status else None)
    ctx.blas_threads = None
    if prog.matmul_plan and prog.blas_threads and blas.threads_setter():
        # big products use `blas_threads` BLAS threads, small ones 1 (this thread only);
        # "auto": the count the adaptive controller in bp_main chose for this call
        big = (blas.mode_global(module) if prog.blas_threads == "auto"
               else ir.Constant(I32, prog.blas_threads))
        ctx.blas_threads = (em.declare(blas.THREADS_SYMBOL, I32, [I32]), big)
    return fn, ctx


def _lower_step(ctx: Context, s: Step):
    ctx.alias = _alias_metadata(ctx.module, s.touches)
    if s.fold is not None:
        lower_accumulate(ctx, s.node, s.fold)
    elif s.node is not None:
        lower(ctx, s.node)
    else:
        copy(ctx, s.src, s.dst)
    ctx.alias = {}


def _alias_metadata(module: ir.Module, bufs) -> dict:
    """(alias.scope, noalias) per workspace buffer of one step (see Context.tag): each
    buffer is its own scope, and a buffer's noalias list names the other buffers of the step
    whose byte ranges do not overlap its own. Listing only the step's buffers keeps the
    metadata linear in program size; the claims hold function-wide all the same."""
    ws = list(dict.fromkeys(b for b in bufs if b.kind == "ws" and b.nbytes))
    if len(ws) < 2:
        return {}
    scopes = module.__dict__.setdefault("_bp_alias_scopes", {})
    if "domain" not in scopes:
        scopes["domain"] = module.add_metadata(
            [ir.MetaDataString(module, "bp.workspace")])

    def scope(b):
        md = scopes.get(b)
        if md is None:
            name = f"bp.ws.{len(scopes)}.{_ident(b.label)}"  # unique, and stable for the cache
            md = scopes[b] = module.add_metadata(
                [ir.MetaDataString(module, name), scopes["domain"]])
        return md

    def disjoint(a, b):
        return a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset

    out = {}
    for b in ws:
        others = [scope(o) for o in ws if o is not b and disjoint(o, b)]
        if others:
            out[b] = (module.add_metadata([scope(b)]), module.add_metadata(others))
    return out


def _ident(label: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in label) or "t"


def _const_global(module: ir.Module, buf: Buffer, arr: np.ndarray) -> ir.GlobalVariable:
    ty = mem_type(buf.dtype)
    flat = arr.reshape(-1)
    if buf.dtype == "bool":
        flat = flat.astype(np.int8)
    if is_half(buf.dtype):  # 16-bit floats as their bit patterns (pointers are untyped)
        ty, flat = I16, flat.view(np.uint16)
    arr_ty = ir.ArrayType(ty, max(flat.size, 1))
    vals = [float(v) if is_float(buf.dtype) and not is_half(buf.dtype) else int(v)
            for v in flat] or [0]
    g = ir.GlobalVariable(module, arr_ty, module.get_unique_name(f"const_{_ident(buf.label)}"))
    g.global_constant = True
    g.linkage = "private"
    g.align = 64
    g.initializer = ir.Constant(arr_ty, vals)
    return g
