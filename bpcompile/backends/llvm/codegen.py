"""Schedule, plan memory for, and emit LLVM IR for a (loss, grads...) graph.

The generated module has one compute function

    void bp_main(ptr noalias in0, ..., ptr noalias out0, ..., ptr noalias workspace)

specialised to the graph's static shapes and dtypes: one loop nest per scheduled node (fused
kernels are single loops), views for pure index movement, BLAS or inline loops for matmul,
and constants as private globals. `bp_entry(ptr argv)` takes the same pointers as an array
(the ctypes / C-ABI route).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from ...errors import BackendError
from ...ir.naming import assign_names
from ...ir.node import Node
from ...ir.traverse import toposort
from ...ops.index import input_ranges
from ...ops.leaves import const_value
from . import blas
from .loops import I32, I64, PTR, VOID, Emitter, ir_type
from .lower import VIEWS, copy, lower
from .memplan import Buffer, MemoryPlan, View, contiguous, plan

SPLIT_STEPS = 48  # schedules longer than this get one function per step (see Program.emit)
# Each split step function takes every argument, so IR size grows as steps x arguments; past
# this product LLVM needs many GB (300 dense layers of width 2: ~2.2M, out of memory at 6 GB).
MAX_SPLIT_ARGS = 2_000_000


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
        ty = ir_type(v.dtype)
        return self.tag(self.em.b.load(self.em.addr(self.ptr(v.buf), v.offset, strides, idx, ty),
                                       typ=ty), v.buf)

    def store(self, v: View, strides, idx, value: ir.Value):
        ty = ir_type(v.dtype)
        self.tag(self.em.b.store(value, self.em.addr(self.ptr(v.buf), v.offset, strides, idx, ty)),
                 v.buf)

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


def _too_large(steps: int, nargs: int):
    raise BackendError(
        f"llvm backend: the graph is too large for its code generator (~{steps} steps x "
        f"{nargs} arguments = {steps * nargs:,} > {MAX_SPLIT_ARGS:,}; LLVM would need many GB); "
        "compile it with backend='numpy' or 'jax', or use fewer, wider layers")


class Program:
    """The scheduled graph: steps, buffers, views and the memory plan (no IR yet)."""

    def __init__(self, outputs: list[Node], args: list[Node], gemm_threshold: int,
                 blas_threads: int | None = None, checked_args: bool = True,
                 index_status: bool = True):
        self.outputs, self.args = outputs, args
        # int32 args whose index range the caller checks (a scan body's are computed values),
        # and whether out-of-range computed indices are reported (`lower._index_guard`)
        self.checked = {a for a in args if a.op == "input"} if checked_args else set()
        self.index_status = index_status
        self.blas_threads = blas_threads
        self.order = toposort(outputs)
        nodes = sum(n.op not in ("input", "param", "const") for n in self.order)
        if nodes * (len(args) + len(outputs) + 1) > 2 * MAX_SPLIT_ARGS:  # far past: fail fast
            _too_large(nodes, len(args) + len(outputs) + 1)
        self.names = assign_names(self.order)
        forward = set(toposort(outputs[:1]))
        self.buffers: list[Buffer] = []
        self.views: dict[Node, View] = {}
        self.steps: list[tuple] = []  # ("node", n) | ("copy", src View, dst View)
        self.consts: list[tuple[Buffer, np.ndarray]] = []
        self.temps: dict = {}
        self.matmul_plan: dict = {}
        self.scan_plan: dict = {}
        self.accumulate: dict = {}  # add -> (product, addend, operand): see _fold_candidates
        self.gemm_threshold = gemm_threshold
        self.arg_bufs = []
        for i, a in enumerate(args):
            buf = self._buf("arg", i, a.size, a.dtype, a.attr("name"))
            self.arg_bufs.append(buf)
            self.views[a] = contiguous(buf, a.shape)
        self.out_bufs = [self._buf("out", j, o.size, o.dtype, f"out{j}")
                         for j, o in enumerate(outputs)]
        owner: dict[Node, Buffer] = {}
        for j, o in enumerate(outputs):  # computed outputs write straight into their out buffer
            if o not in owner and o.op not in ("input", "param", "const"):
                owner[o] = self.out_bufs[j]
        ws_count = 0
        folds = self._fold_candidates(owner)
        for n in self.order:
            if n in self.views or n in folds:  # a folded product is emitted by its add
                continue
            if n.op not in ("input", "param") and n in args:
                raise BackendError(f"llvm backend: leaf {n!r} is not an argument")
            if n.op in ("input", "param"):
                raise BackendError(f"llvm backend: leaf {n!r} missing from the argument list")
            if n.op == "const":
                buf = self._buf("const", len(self.consts), n.size, n.dtype, self.names[n])
                self.consts.append((buf, np.ascontiguousarray(const_value(n))))
                self.views[n] = contiguous(buf, n.shape)
                continue
            rule = VIEWS.get(n.op)
            if rule is not None and n not in owner:
                v = rule(n, self.views[n.inputs[0]])
                if v is not None:
                    self.views[n] = v
                    continue
            buf = owner.get(n)
            if buf is None:
                buf = self._buf("ws", ws_count, n.size, n.dtype, self.names[n])
                ws_count += 1
            buf.forward = n in forward
            self.views[n] = contiguous(buf, n.shape)
            step = len(self.steps)
            if n in self.accumulate:  # the product (or its reshape) is the add's output
                prod, _x, m = self.accumulate[n]
                self.views[m] = self.views[n]
                self.views[prod] = contiguous(buf, prod.shape)
                self._plan_matmul(prod, step, gemm_threshold)
            elif n.op == "matmul":
                self._plan_matmul(n, step, gemm_threshold)
            elif n.op == "scan":
                from .scan import plan_scan

                self.scan_plan[n] = plan_scan(self, n, step)
            self.steps.append(("node", n))
        for j, o in enumerate(outputs):
            if self.views[o].buf is not self.out_bufs[j]:
                self.steps.append(("copy", self.views[o], contiguous(self.out_bufs[j], o.shape)))
        # int32 inputs used directly as indices: (lo, hi) the fast call path range-checks
        self.bounds: dict[str, tuple[int, int]] = input_ranges(self.order)
        self.backward_start = next((k for k, s in enumerate(self.steps)
                                    if s[0] == "node" and s[1] not in forward), len(self.steps))
        self._liveness()
        self.memory: MemoryPlan = plan(self.buffers, self.backward_start)

    def _fold_candidates(self, owner) -> set:
        """Products to fold into their add: `x + A @ B` becomes copy x -> out, then one GEMM
        with beta = 1 into out (no product buffer, one pass less over the result). For BPTT's
        gradient accumulations dW + hᵀδ and residual connections x + f(x) W. Only a BLAS
        product whose one consumer is a same-shape add qualifies."""
        from ...ir.traverse import consumers

        users = consumers(self.order)
        folds, owned = set(), set(owner)
        for n in self.order:
            if n.op != "add" or n.dtype not in blas.GLOBALS or n in self.views:
                continue
            for m, x in (n.inputs, reversed(n.inputs)):
                # the product itself, or a reshape of it (the flattened (B·M,K)@(K,N) form)
                prod = m.inputs[0] if m.op == "reshape" else m
                chain = {m, prod}
                if (prod.op == "matmul" and m is not x and x.shape == n.shape == m.shape
                        and x.dtype == n.dtype and not chain & (folds | owned)
                        and all(len(users[c]) == 1 for c in chain)
                        and self._blas_product(prod)):
                    self.accumulate[n] = (prod, x, m)
                    folds |= chain
                    break
        return folds

    def _blas_product(self, m: Node) -> bool:
        """Will this product be a BLAS call? (its operands' views are not built yet: decide on
        shapes, as blas.plan does)."""
        a, b = m.inputs
        return blas.plan_shape(a.shape, b.shape, self.gemm_threshold)

    def temp(self, shape, dtype: str, label: str, step: int) -> View:
        """A workspace buffer live during one step only (operand copies, loop state)."""
        buf = self._buf("ws", -1, int(np.prod(shape, dtype=np.int64)), dtype, label)
        buf.first = buf.last = step
        return contiguous(buf, tuple(shape))

    def _buf(self, kind, index, size, dtype, label) -> Buffer:
        b = Buffer(kind, index, size, dtype, label)
        self.buffers.append(b)
        return b

    def _plan_matmul(self, n: Node, step: int, threshold: int):
        a, b = self.views[n.inputs[0]], self.views[n.inputs[1]]
        p = blas.plan(n, a, b, threshold) if n.dtype in blas.GLOBALS else None
        if p is None:
            return
        self.matmul_plan[n] = p
        batch = n.shape[:-2]
        for k, (need, v) in enumerate(((p.copy_a, a), (p.copy_b, b))):
            if need:
                self.temps[(n, k)] = self.temp(batch + v.shape[-2:], n.dtype,
                                               f"{self.names[n]}.op{k}", step)

    def _liveness(self):
        for k, s in enumerate(self.steps):
            if s[0] == "node":
                n = s[1]
                out = self.views[n].buf
                if out.first < 0:
                    out.first = k
                reads = [self.views[i].buf for i in n.inputs]
                if n in self.accumulate:
                    reads += [self.views[i].buf for i in self.accumulate[n][0].inputs]
            else:
                reads = [s[1].buf]
                s[2].buf.first = k if s[2].buf.first < 0 else s[2].buf.first
            for b in reads:
                b.last = max(b.last, k)

    # -- IR -----------------------------------------------------------------------------------
    def _function(self, module: ir.Module, name: str, consts: dict):
        """A function with the (in..., out..., ws) signature and its lowering context."""
        nin, nout = len(self.args), len(self.outputs)
        fn = ir.Function(module, ir.FunctionType(VOID, [PTR] * (nin + nout + 1)), name)
        for a in fn.args:
            a.add_attribute("noalias")
        for a, arg in zip(fn.args[:nin], self.args):
            a.name = f"in_{arg.attr('name')}"
        for a, j in zip(fn.args[nin:nin + nout], range(nout)):
            a.name = f"out{j}"
        fn.args[-1].name = "ws"
        eb = ir.IRBuilder(fn.append_basic_block("entry"))
        b = ir.IRBuilder(fn.append_basic_block("body"))
        em = Emitter(module, b)
        ptrs = dict(consts)
        ptrs.update(zip(self.arg_bufs, fn.args[:nin]))
        ptrs.update(zip(self.out_bufs, fn.args[nin:nin + nout]))
        ctx = Context(em, module, self.views, ptrs, self.temps, self.matmul_plan, eb)
        ctx.scan_plan = self.scan_plan
        ctx.checked = self.checked
        ctx.index_sites = (module.__dict__.setdefault("_bp_index_sites", [])
                           if self.index_status else None)
        ctx.blas_threads = None
        if self.matmul_plan and self.blas_threads and blas.threads_setter():
            # big products use `blas_threads` BLAS threads, small ones 1 (this thread only);
            # "auto": the count the adaptive controller in bp_main chose for this call
            big = (blas.mode_global(module) if self.blas_threads == "auto"
                   else ir.Constant(I32, self.blas_threads))
            ctx.blas_threads = (em.declare(blas.THREADS_SYMBOL, I32, [I32]), big)
        return fn, ctx

    def _lower_step(self, ctx, s):
        if s[0] == "node":
            n = s[1]
            prod = self.accumulate[n][0] if n in self.accumulate else None
            bufs = [self.views[n].buf] + [self.views[i].buf for i in n.inputs] + [
                v.buf for (m, _k), v in self.temps.items() if m is n or m is prod]
            if prod is not None:
                bufs += [self.views[i].buf for i in prod.inputs]
        else:
            bufs = [s[1].buf, s[2].buf]
        ctx.alias = self._alias_metadata(ctx.module, bufs)
        if s[0] == "node" and s[1] in self.accumulate:
            self._lower_accumulate(ctx, s[1])
        elif s[0] == "node":
            lower(ctx, s[1])
        else:
            copy(ctx, s[1], s[2])
        ctx.alias = {}

    def _lower_accumulate(self, ctx, n: Node):
        from .lower import broadcast_view

        m, x, _ = self.accumulate[n]
        out = self.views[m]  # the add's buffer, in the product's shape
        copy(ctx, self.views[x], self.views[n])
        if out.size == 0:
            return
        batch = out.shape[:-2]
        a, b = (broadcast_view(self.views[i], batch + i.shape[-2:]) for i in m.inputs)
        blas.emit_gemm(ctx, m, a, b, out, self.matmul_plan[m], beta=1.0)

    def _alias_metadata(self, module: ir.Module, bufs) -> dict:
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

    def emit(self, module: ir.Module, name: str = "bp_main", with_entry: bool = True):
        """Emit `name` (and bp_entry). Long schedules get one non-inlined function per step:
        LLVM's O3 time grows faster than linearly with function size (a 50-step unrolled RNN
        took 98 s as one function)."""
        nargs = len(self.args) + len(self.outputs) + 1
        if len(self.steps) > SPLIT_STEPS and len(self.steps) * nargs > MAX_SPLIT_ARGS:
            _too_large(len(self.steps), nargs)  # refuse before LLVM runs out of memory
        consts = {buf: _const_global(module, buf, arr) for buf, arr in self.consts}
        fn, ctx = self._function(module, name, consts)
        b = ctx.em.b
        if ctx.blas_threads:  # restore the caller's BLAS thread count on return
            prev = b.call(ctx.blas_threads[0], [ir.Constant(I32, 1)])
        auto = (with_entry and self.blas_threads == "auto" and blas.threads_setter()
                and (self.matmul_plan or self.scan_plan))
        if auto:
            if not ctx.blas_threads:
                prev = b.call(ctx.em.declare(blas.THREADS_SYMBOL, I32, [I32]),
                              [ir.Constant(I32, 1)])
            controller = blas.AdaptiveThreads(ctx.em, module, prev)
        if len(self.steps) <= SPLIT_STEPS:
            for s in self.steps:
                self._lower_step(ctx, s)
        else:
            for k, s in enumerate(self.steps):
                label = _ident(self.names[s[1]] if s[0] == "node" else "copy")
                sf, sctx = self._function(module, f"{name}.{k}.{label}", consts)
                sf.linkage = "internal"
                sf.attributes.add("noinline")
                self._lower_step(sctx, s)
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
        nargs = len(self.args) + len(self.outputs) + 1
        ent = ir.Function(module, ir.FunctionType(VOID, [PTR]), "bp_entry")
        bb = ir.IRBuilder(ent.append_basic_block())
        ptrs = [bb.load(bb.gep(ent.args[0], [ir.Constant(I64, k)], source_etype=PTR), typ=PTR)
                for k in range(nargs)]
        bb.call(fn, ptrs)
        bb.ret_void()
        return fn


def _ident(label: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in label) or "t"


def _const_global(module: ir.Module, buf: Buffer, arr: np.ndarray) -> ir.GlobalVariable:
    ty = ir_type(buf.dtype)
    flat = arr.reshape(-1)
    if buf.dtype == "bool":
        flat = flat.astype(np.int8)
    arr_ty = ir.ArrayType(ty, max(flat.size, 1))
    vals = [float(v) if buf.dtype in ("float32", "float64") else int(v) for v in flat] or [0]
    g = ir.GlobalVariable(module, arr_ty, module.get_unique_name(f"const_{_ident(buf.label)}"))
    g.global_constant = True
    g.linkage = "private"
    g.align = 64
    g.initializer = ir.Constant(arr_ty, vals)
    return g
