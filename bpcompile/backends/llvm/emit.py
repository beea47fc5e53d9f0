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
from ...ir.printer import type_str
from ...ir.provenance import RECOMPUTED
from ..pysource import comment, provenance
from . import blas
from .accumulate import lower_accumulate
from .driver import table_driver
from .loops import I16, I32, I64, PTR, VOID, Emitter, i64, mem_type, narrow, widen
from .lower import copy, lower
from .memplan import Buffer, View
from .schedule import Schedule, Step

# Schedules longer than this get one function per distinct step (see emit): O3 on one big
# function grows faster than its size, and a 4-layer MLP's 31 steps compiled in 0.29-0.39 s
# split against 0.44-0.60 s whole, at the same speed per call (issue #14).
SPLIT_STEPS = 24
UNROLL_STEPS = 48  # LLVM may unroll loops in schedules up to this long (backend._codegen)
DRIVER_CALLS = 64  # step calls per driver part (emit)
# Split schedules longer than this are driven by a table walked by a loop (driver.py), whose
# code is O(distinct kernels); shorter ones by straight-line `optnone` parts of calls.
TABLE_STEPS = 64


class Context:
    """What lowerings see: views of nodes, buffer pointers, loads/stores, entry-block allocas."""

    def __init__(self, em: Emitter, module: ir.Module, views, ptrs, temps, matmul_plan, entry):
        self.em, self.module = em, module
        self.views, self.ptrs, self.temps, self.matmul_plan = views, ptrs, temps, matmul_plan
        self._entry = entry
        self.alias: dict = {}  # ws Buffer -> (alias.scope, noalias) metadata of the current step
        self.sealed = False  # a shared kernel: every buffer must be one of its parameters
        self.ws: ir.Value | None = None  # the workspace pointer (default: the last argument)

    def view(self, n: Node) -> View:
        return self.views[n]

    def ptr(self, buf: Buffer) -> ir.Value:
        p = self.ptrs.get(buf)
        if p is None and (self.sealed or buf.kind != "ws"):
            raise BackendError(f"llvm backend: step code addresses buffer {buf.label!r} "
                               "that is not among the buffers its step touches (Step.touches)")
        if p is None:  # workspace buffers: a constant offset into ws, made on first use
            ws = self.ws if self.ws is not None else self._entry.function.args[-1]
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
    schedules get one non-inlined function per distinct step: LLVM's O3 time grows faster than
    linearly with function size (a 50-step unrolled RNN took 98 s as one function)."""
    nargs = len(prog.args) + len(prog.outputs) + 1
    consts = {buf: _const_global(module, buf, arr) for buf, arr in prog.consts}
    fn, ctx = _function(prog, module, name, consts)
    split = len(prog.steps) > SPLIT_STEPS
    if split:
        # One function per distinct step, called with the buffers the step touches, from
        # `<name>.run(ptr argv)` through driver parts of DRIVER_CALLS calls that read the
        # pointers from argv = [in..., out..., ws]: a straight line of calls needs no
        # optimisation, and code generation for one block of thousands of calls, or for a
        # function of thousands of parameters, is slow. bp_entry and the fast call path
        # (pycall.py) call `run` with their own array; `name` stores its arguments into one.
        run = ir.Function(module, ir.FunctionType(VOID, [PTR]), f"{name}.run")
        run.linkage = "internal"
        body = _driver_context(prog, module, run, consts)
        body.blas_threads = ctx.blas_threads and _blas_threads(prog, module, body.em)
    else:
        body = ctx
    b = body.em.b
    if body.blas_threads:  # restore the caller's BLAS thread count on return
        prev = b.call(body.blas_threads[0], [ir.Constant(I32, 1)])
    auto = (with_entry and prog.blas_threads == "auto" and blas.threads_setter()
            and (prog.matmul_plan or prog.scan_plan))
    if auto:
        if not body.blas_threads:
            prev = b.call(body.em.declare(blas.THREADS_SYMBOL, I32, [I32]),
                          [ir.Constant(I32, 1)])
        controller = blas.AdaptiveThreads(body.em, module, prev)
    if not split:
        for s in prog.steps:
            ctx.em.b.comment(step_note(prog, s))
            _lower_step(ctx, s)
    elif len(prog.steps) > TABLE_STEPS:
        calls = [_step_call(prog, module, name, k, s) for k, s in enumerate(prog.steps)]
        notes = [step_note(prog, s) for s in prog.steps]
        slots = {buf: k for k, buf in enumerate(prog.arg_bufs + prog.out_bufs)}
        b.call(table_driver(module, name, calls, notes, slots, nargs, consts), [run.args[0]])
    else:
        for start in range(0, len(prog.steps), DRIVER_CALLS):
            part = ir.Function(module, ir.FunctionType(VOID, [PTR]),
                               f"{name}.part{start // DRIVER_CALLS}")
            part.linkage = "internal"
            part.attributes.add("noinline")
            part.attributes.add("optnone")
            pctx = _driver_context(prog, module, part, consts)
            for k in range(start, min(start + DRIVER_CALLS, len(prog.steps))):
                _call_step(prog, module, name, pctx, k, prog.steps[k])
            pctx.em.b.ret_void()
            pctx._entry.branch(part.blocks[1])
            b.call(part, [run.args[0]])
    if auto:
        controller.finish()
    if body.blas_threads or auto:
        b.call(body.em.declare(blas.THREADS_SYMBOL, I32, [I32]), [prev])
    b.ret_void()
    body._entry.branch(b.function.blocks[1])
    if split:  # name(in..., out..., ws): the pointers into one array for run
        fb = ctx.em.b
        argv = fb.alloca(ir.ArrayType(PTR, nargs), name="argv")
        for k, a in enumerate(fn.args):
            fb.store(a, fb.gep(argv, [i64(0), i64(k)], inbounds=True))
        fb.call(run, [fb.gep(argv, [i64(0), i64(0)], inbounds=True)])
        fb.ret_void()
        ctx._entry.branch(fn.blocks[1])
    if not with_entry:
        return fn
    # the flat-array entry point: bp_entry(ptr argv) with argv = [in..., out..., ws]
    ent = ir.Function(module, ir.FunctionType(VOID, [PTR]), "bp_entry")
    bb = ir.IRBuilder(ent.append_basic_block())
    if split:
        bb.call(run, [ent.args[0]])
    else:
        ptrs = [bb.load(bb.gep(ent.args[0], [ir.Constant(I64, k)], source_etype=PTR),
                        typ=PTR) for k in range(nargs)]
        bb.call(fn, ptrs)
    bb.ret_void()
    return fn


def _driver_context(prog: Schedule, module: ir.Module, part: ir.Function, consts: dict):
    """The context of a driver part `void part(ptr argv)`: argument, output and workspace
    pointers are loaded from argv (in..., out..., ws) when first used."""
    eb = ir.IRBuilder(part.append_basic_block("entry"))
    b = ir.IRBuilder(part.append_basic_block("body"))
    bufs = prog.arg_bufs + prog.out_bufs
    ptrs = _LoadedPointers(eb, part.args[0], {buf: k for k, buf in enumerate(bufs)})
    ptrs.update(consts)
    ctx = Context(Emitter(module, b), module, prog.views, ptrs, prog.temps, prog.matmul_plan,
                  eb)
    ctx.ws = ptrs.load(len(bufs), "ws")
    return ctx


class _LoadedPointers(dict):
    """Buffer -> pointer, loading argument/output pointers from argv on first use."""

    def __init__(self, entry: ir.IRBuilder, argv: ir.Value, slots: dict):
        super().__init__()
        self.entry, self.argv, self.slots = entry, argv, slots

    def load(self, k: int, label: str) -> ir.Value:
        with self.entry.goto_entry_block():
            return self.entry.load(self.entry.gep(self.argv, [i64(k)], source_etype=PTR),
                                   typ=PTR, name=_ident(label))

    def get(self, buf, default=None):
        p = super().get(buf)
        if p is None and buf in self.slots:
            p = self[buf] = self.load(self.slots[buf], buf.label)
        return p if p is not None else default


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
    ctx.blas_threads = _blas_threads(prog, module, em)
    return fn, ctx


# Steps whose code depends on more than their views, node and BLAS plan: a scan's nested body
# and loop state, and take/one_hot's index-status site numbers. Emitted once per call site.
UNSHARED_OPS = frozenset({"scan", "while_loop", "take", "one_hot"})
SHARE_KERNELS = True  # tests turn it off to compare with one function per step


def _step_call(prog: Schedule, module: ir.Module, name: str, k: int, s: Step):
    """(kernel, buffers) of step `s`: a function of the buffers it touches (`void f(ptr
    noalias b0, ...)`, base pointers, views' offsets baked in), emitted the first time its key
    is seen in this module, so identical layers call one native kernel. An unshared kernel
    (UNSHARED_OPS) takes the workspace pointer as one more argument."""
    params = list(dict.fromkeys(s.touches))
    key = _step_key(prog, s, params) if SHARE_KERNELS else None
    kernels = module.__dict__.setdefault("_bp_kernels", {})
    calls = module.__dict__.setdefault("_bp_kernel_calls", [0])
    calls[0] += 1
    sf = kernels.get(key) if key is not None else None
    if sf is None:
        label = _ident(prog.names[s.node] if s.node is not None else "copy")
        unshared = key is None
        fname = (f"{name}.{k}.{label}" if unshared
                 else f"bp_k{len(kernels)}.{label}")
        sf = _step_function(prog, module, fname, s, params, with_ws=unshared)
        kernels[key if key is not None else ("step", fname)] = sf
    return sf, params


def _call_step(prog: Schedule, module: ir.Module, name: str, ctx: Context, k: int, s: Step):
    """Call step `s` from `ctx`'s function (a driver part) through its kernel (_step_call)."""
    sf, params = _step_call(prog, module, name, k, s)
    args = [ctx.ptr(b) for b in params]
    if len(sf.args) > len(params):  # unshared: loop state and scan bodies live in ws
        args.append(ctx.ws)
    # provenance at the call site, never in a kernel (identical layers share its body)
    ctx.em.b.comment(step_note(prog, s))
    ctx.em.b.call(sf, args)


def step_note(prog: Schedule, s: Step) -> str:
    """The IR comment before a step: `z1 = matmul(x, W1) -> f32[4,8]  (xor.toml:26)`, or for
    an adjoint `(grad of z1 = matmul(...), xor.toml:26)`: the NumPy backend's provenance."""
    n = s.node
    if n is None:
        return comment(f"copy {s.src.buf.label} -> {s.dst.buf.label}")
    names = prog.names
    op = f"kernel {n.attr('name')}" if n.op == "kernel" else n.op
    operands = ", ".join(names.get(i) or i.op for i in n.inputs)
    text = f"{names.get(n) or n.op} = {op}({operands}) -> {type_str(n)}"
    if s.fold is not None:  # the product is computed into this add's buffer (one GEMM)
        text += f" [+= {names.get(s.fold.product) or 'matmul'} in one GEMM]"
    where = provenance(n, names, recompute=n in RECOMPUTED)
    return comment(f"{text}  ({where})" if where else text)


def _step_function(prog: Schedule, module: ir.Module, fname: str, s: Step,
                   params: list[Buffer], with_ws: bool) -> ir.Function:
    fn = ir.Function(module, ir.FunctionType(VOID, [PTR] * (len(params) + with_ws)), fname)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    noalias = _noalias(params)
    for j, (a, buf, na) in enumerate(zip(fn.args, params, noalias)):
        a.name = f"b{j}"
        if na:
            a.add_attribute("noalias")
        if buf.kind == "const":  # module constants are 64-byte aligned globals
            a.attributes.align = 64
    if with_ws:
        fn.args[-1].name = "ws"
        fn.args[-1].add_attribute("noalias")
    eb = ir.IRBuilder(fn.append_basic_block("entry"))
    b = ir.IRBuilder(fn.append_basic_block("body"))
    ctx = Context(Emitter(module, b), module, prog.views, dict(zip(params, fn.args)),
                  prog.temps, prog.matmul_plan, eb)
    ctx.sealed = not with_ws
    ctx.scan_plan = prog.scan_plan
    ctx.checked = prog.checked
    ctx.index_sites = (module.__dict__.setdefault("_bp_index_sites", [])
                       if prog.index_status else None)
    ctx.blas_threads = _blas_threads(prog, module, ctx.em)
    _dispatch(ctx, s)
    b.ret_void()
    eb.branch(fn.blocks[1])
    return fn


def _noalias(params: list[Buffer]) -> list[bool]:
    """Per parameter, whether it may be declared noalias: distinct buffers never share bytes,
    except workspace buffers the memory plan overlapped (never two live in one step; checked)."""
    # byte spans computed once (a scalar graph asks this for thousands of steps)
    spans = [(b.offset, b.offset + b.nbytes) if b.kind == "ws" else None for b in params]
    full = [(sp[0], sp[1], b) for b, sp in zip(params, spans) if sp and sp[1] > sp[0]]
    out = []
    for b, sp in zip(params, spans):
        if sp is None:
            out.append(True)
        elif sp[1] > sp[0]:
            out.append(all(o is b or hi <= sp[0] or sp[1] <= lo for lo, hi, o in full))
        else:  # an empty buffer shares bytes with a buffer it lies strictly inside
            out.append(all(not lo < sp[0] < hi for lo, hi, _ in full))
    return out


def _step_key(prog: Schedule, s: Step, params: list[Buffer]):
    """Everything a step's code depends on, with buffers as parameter positions: equal keys
    emit identical functions. None for steps that cannot be shared (UNSHARED_OPS)."""
    pos = {b: k for k, b in enumerate(params)}

    def view(v: View):
        return (pos[v.buf], v.offset, v.shape, v.strides, v.dtype)

    def node(n: Node):
        return (n.op, _exact(n.attrs), n.shape, n.dtype, view(prog.views[n]),
                tuple((i.shape, i.dtype, view(prog.views[i]), i in prog.checked)
                      for i in n.inputs))

    def matmul(m: Node):
        p = prog.matmul_plan.get(m)
        temps = tuple(view(prog.temps[(m, j)]) if (m, j) in prog.temps else None
                      for j in (0, 1))
        return None if p is None else (p.copy_a, p.copy_b, temps)

    try:
        if s.node is None:
            body = ("copy", view(s.src), view(s.dst))
        elif s.node.op in UNSHARED_OPS:
            return None
        elif s.fold is not None:
            f = s.fold
            # the add's inputs are (addend, operand) in some order; the product computes into
            # the add's buffer through the operand (itself or its reshape)
            body = ("fold", node(s.node), node(f.product), s.node.inputs.index(f.addend),
                    f.operand.op, view(prog.views[f.operand]), matmul(f.product))
        else:
            body = ("node", node(s.node), matmul(s.node) if s.node.op == "matmul" else None)
    except KeyError:  # a buffer outside Step.touches: not a self-contained kernel
        return None
    sig = tuple((b.dtype, b.kind == "const", b.nbytes) for b in params)
    return (body, sig, tuple(_noalias(params)), prog.blas_threads, prog.index_status)


def _exact(v):
    """`v` as a key in which equal means identical: Python's == merges 0.0 with -0.0 and 1
    with 1.0 and True, so numbers are keyed by type and repr. (SymPy bodies compare exactly.)"""
    if isinstance(v, (bool, int, float, np.number)):
        return (type(v).__name__, repr(v))
    if isinstance(v, tuple):
        return tuple(_exact(x) for x in v)
    return v


def _blas_threads(prog: Schedule, module: ir.Module, em: Emitter):
    if prog.matmul_plan and prog.blas_threads and blas.threads_setter():
        # big products use `blas_threads` BLAS threads, small ones 1 (this thread only);
        # "auto": the count the adaptive controller in bp_main chose for this call
        big = (blas.mode_global(module) if prog.blas_threads == "auto"
               else ir.Constant(I32, prog.blas_threads))
        return (em.declare(blas.THREADS_SYMBOL, I32, [I32]), big)
    return None


def _dispatch(ctx: Context, s: Step):
    """Emit one step's code: a GEMM with its accumulated add, a node's lowering, or a copy."""
    if s.fold is not None:
        lower_accumulate(ctx, s.node, s.fold)
    elif s.node is not None:
        lower(ctx, s.node)
    else:
        copy(ctx, s.src, s.dst)


def _lower_step(ctx: Context, s: Step):
    ctx.alias = _alias_metadata(ctx.module, s.touches)
    _dispatch(ctx, s)
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
