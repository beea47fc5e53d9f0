"""The table driver of a long split schedule: one loop over a constant table of kernel calls.

A split schedule (emit.py) calls one native kernel per step with the base pointers of the
buffers the step touches. Written as straight-line calls, the driver's code grows with the
number of steps, and code generation for it was half of a deep CNN's LLVM time even unoptimised
(`optnone`). Here the schedule is data instead:

    @bp_main.code = [2 * arity + takes ws, (slot, byte offset) per pointer argument, ...]
    @bp_main.fns  = [kernel of row 0, kernel of row 1, ...]
    loop: switch code[pc] -> call fns[row](pointers), pc += 1 + 2 * arity, row += 1

with a pointer's slot indexing argv (in..., out..., ws) or, past it, the module's constants
(`@bp_main.consts`). The driver's code is O(distinct arities), whatever the number of steps
and kernels; each call costs a few loads and an indirect call. The schedule stays readable:
one comment per table row in the driver's entry block names the kernel, its buffers and the
step (emit.step_note).
"""

from __future__ import annotations

from llvmlite import ir
from llvmlite.ir.instructions import LoadInstr

from .loops import I64, PTR, VOID, i64
from .memplan import Buffer


def table_driver(module: ir.Module, name: str, calls: list[tuple[ir.Function, list[Buffer]]],
                 notes: list[str], slots: dict[Buffer, int], nargs: int,
                 consts: dict[Buffer, ir.GlobalVariable]) -> ir.Function:
    """`void <name>.table(ptr argv)` running `calls` (kernel, buffers) in order; `slots` maps
    argument and output buffers to their argv index, argv[nargs - 1] is the workspace."""
    fn = ir.Function(module, ir.FunctionType(VOID, [PTR]), f"{name}.table")
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    argv = fn.args[0]
    argv.name = "argv"
    const_slot: dict[Buffer, int] = {}
    code: list[int] = []
    shapes: set[tuple[int, int]] = set()  # (pointers from the table, + ws) per row
    rows: list[str] = []

    def operand(buf: Buffer) -> tuple[int, int, str]:
        if buf.kind == "ws":
            return nargs - 1, buf.offset, f"ws+{buf.offset}"
        if buf.kind == "const":
            return const_slot.setdefault(buf, nargs + len(const_slot)), 0, consts[buf].name
        return slots[buf], 0, buf.label

    for (kernel, params), note in zip(calls, notes):
        ws = len(kernel.args) - len(params)  # unshared kernels take the workspace too
        shapes.add((len(params), ws))
        pc = len(code)
        code.append(2 * len(params) + ws)
        shown = []
        for buf in params:
            slot, off, text = operand(buf)
            code += [slot, off]
            shown.append(text)
        rows.append(f"[{pc}] {kernel.name}({', '.join(shown + ['ws'] * ws)})  {note}")
    table = _global(module, f"{name}.code", I64, code)
    fns = _global(module, f"{name}.fns", PTR, [k for k, _ in calls])
    ctab = None
    if const_slot:
        ctab = _global(module, f"{name}.consts", PTR,
                       [consts[buf] for buf in sorted(const_slot, key=const_slot.get)])

    entry = fn.append_basic_block("entry")
    loop = fn.append_basic_block("loop")
    dispatch = fn.append_basic_block("dispatch")
    bad = fn.append_basic_block("bad")
    done = fn.append_basic_block("done")
    b = ir.IRBuilder(entry)
    kernels = len(dict.fromkeys(k for k, _ in calls))
    b.comment(f"the schedule: {len(calls)} calls of {kernels} kernels, one table row each")
    for row in rows:
        b.comment(row)
    wsp = b.load(b.gep(argv, [i64(nargs - 1)], source_etype=PTR), typ=PTR, name="ws")
    b.branch(loop)
    b.position_at_end(loop)
    pc = b.phi(I64, name="pc")
    row = b.phi(I64, name="row")
    pc.add_incoming(i64(0), entry)
    row.add_incoming(i64(0), entry)
    b.cbranch(b.icmp_unsigned("<", pc, i64(len(code))), dispatch, done)
    b.position_at_end(dispatch)
    kernel = b.load(b.gep(fns, [i64(0), row], inbounds=True), typ=PTR, name="kernel")
    switch = b.switch(_word(b, table, pc), bad)
    for nptr, ws in sorted(shapes):
        block = fn.append_basic_block(f"call{nptr}" + "_ws" * ws)
        switch.add_case(i64(2 * nptr + ws), block)
        b.position_at_end(block)
        args = [_pointer(b, table, ctab, argv, nargs, b.add(pc, i64(1 + 2 * j)))
                for j in range(nptr)]
        b.call(_callee(kernel, nptr + ws), args + [wsp] * ws)
        pc.add_incoming(b.add(pc, i64(1 + 2 * nptr)), block)
        row.add_incoming(b.add(row, i64(1)), block)
        b.branch(loop)
    b.position_at_end(bad)
    b.unreachable()
    b.position_at_end(done)
    b.ret_void()
    return fn


class _KernelPointer(LoadInstr):
    """A loaded function pointer that llvmlite can call: it knows the callee's type."""

    @property
    def function_type(self) -> ir.FunctionType:
        return self.bp_function_type


def _callee(pointer: LoadInstr, nargs: int) -> LoadInstr:
    # one load, retyped per call site (llvmlite's call reads the callee's function_type)
    callee = _KernelPointer.__new__(_KernelPointer)
    callee.__dict__.update(pointer.__dict__)
    callee.bp_function_type = ir.FunctionType(VOID, [PTR] * nargs)
    return callee


def _global(module: ir.Module, name: str, ty: ir.Type, values: list) -> ir.GlobalVariable:
    arr = ir.ArrayType(ty, len(values))
    g = ir.GlobalVariable(module, arr, name)
    g.global_constant = True
    g.linkage = "private"
    if ty == I64:  # the table's text in one join (an ir.Constant per word is slow to print)
        g.initializer = ir.FormattedConstant(arr, "[" + ", ".join(f"i64 {v}" for v in values)
                                             + "]")
    else:
        g.initializer = ir.Constant(arr, values)
    return g


def _word(b: ir.IRBuilder, table: ir.GlobalVariable, k: ir.Value) -> ir.Value:
    return b.load(b.gep(table, [i64(0), k], inbounds=True), typ=I64)


def _pointer(b: ir.IRBuilder, table, ctab, argv, nargs: int, k: ir.Value) -> ir.Value:
    """The pointer of the (slot, offset) pair at table[k]: argv[slot] or a constant, + offset."""
    slot = _word(b, table, k)
    where = b.gep(argv, [slot], source_etype=PTR)
    if ctab is not None:
        const = b.gep(ctab, [i64(0), b.sub(slot, i64(nargs))], source_etype=ctab.value_type)
        where = b.select(b.icmp_unsigned("<", slot, i64(nargs)), where, const)
    base = b.load(where, typ=PTR)
    off = _word(b, table, b.add(k, i64(1)))
    return b.gep(base, [off], source_etype=ir.IntType(8))
