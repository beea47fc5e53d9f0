"""Small IRBuilder helpers: IR types per dtype, static loop nests, intrinsic and libm calls.

Every other module of the LLVM backend builds IR through these, so raw block/phi plumbing
lives in one place.
"""

from __future__ import annotations

from contextlib import contextmanager

from llvmlite import ir

I1, I8, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
F32, F64 = ir.FloatType(), ir.DoubleType()
PTR = ir.PointerType()
VOID = ir.VoidType()

HALF, I16 = ir.HalfType(), ir.IntType(16)

# Register types: 16-bit floats compute in float32 registers and are rounded on store.
IR_TYPE = {"float16": F32, "bfloat16": F32, "float32": F32, "float64": F64, "int32": I32,
           "int8": I32, "bool": I8}
# Storage types: LLVM's `half` for float16; llvmlite has no `bfloat`, so bfloat16 is i16 bits
MEM_TYPE = {**IR_TYPE, "float16": HALF, "bfloat16": I16, "int8": I8}  # int8 in i32 registers
# fast-math flags for reductions only: reassociation lets LLVM vectorise the accumulation
REDUCE_FLAGS = ("reassoc", "contract")
# A loop that contains loops, runs more than UNROLL_OUTER_MAX times and whose nest runs more
# than UNROLL_NEST_MIN innermost iterations is never unrolled (issue #14). Inner loops are
# vectorised, then LLVM fully unrolled their outer loop too: a 32x64 `sum` became 780 lines
# for no speed, and a 4-layer MLP spent 45% of its LLVM time on such code (0.19 -> 0.10 s).
# Small outer loops stay unrollable (a conv's 3x3 window: cnn_digits runs 98 us/call with
# every outer loop kept, 81 us with these), and so do small nests (mlp_small's 32x32
# products: 1.1 us/call kept, 1.0 unrolled). None: LLVM decides everywhere.
UNROLL_OUTER_MAX: int | None = 8
UNROLL_NEST_MIN = 1024


def ir_type(dtype: str) -> ir.Type:
    """The type a value of `dtype` has in registers."""
    return IR_TYPE[dtype]


def mem_type(dtype: str) -> ir.Type:
    """The type an element of `dtype` has in memory (addressing, loads, stores)."""
    return MEM_TYPE[dtype]


def widen(b: ir.IRBuilder, v: ir.Value, dtype: str) -> ir.Value:
    """A loaded element as its register value: 16-bit floats become float32 (exactly)."""
    if dtype == "float16":
        return b.fpext(v, F32)
    if dtype == "bfloat16":  # bfloat16 is the high half of a float32
        return b.bitcast(b.shl(b.zext(v, I32), ir.Constant(I32, 16)), F32)
    if dtype == "int8":
        return b.sext(v, I32)
    return v


def narrow(b: ir.IRBuilder, v: ir.Value, dtype: str) -> ir.Value:
    """A register value as the element stored: float32 rounded to nearest-even for 16 bits
    (fptrunc for half; for bfloat16 the integer form of RNE, quieting NaNs), else as is."""
    if dtype == "float16":
        return b.fptrunc(v, HALF)
    if dtype == "bfloat16":
        bits = b.bitcast(v, I32)
        lsb = b.and_(b.lshr(bits, ir.Constant(I32, 16)), ir.Constant(I32, 1))
        rounded = b.lshr(b.add(b.add(bits, ir.Constant(I32, 0x7FFF)), lsb), ir.Constant(I32, 16))
        nan = b.or_(b.lshr(bits, ir.Constant(I32, 16)), ir.Constant(I32, 0x40))
        return b.trunc(b.select(b.fcmp_unordered("uno", v, v), nan, rounded), I16)
    if dtype == "int8":  # values are in range (compress.py rounds |x|/s <= 127)
        return b.trunc(v, I8)
    return v


def i64(v: int) -> ir.Constant:
    return ir.Constant(I64, int(v))


def fconst(ty: ir.Type, v: float) -> ir.Constant:
    return ir.Constant(ty, float(v))


class Emitter:
    """An IRBuilder plus the module-level declarations (intrinsics, libm) it needs."""

    def __init__(self, module: ir.Module, builder: ir.IRBuilder):
        self.module = module
        self.b = builder
        self._decls: dict[str, ir.Function] = {}
        self._inner: list[int] = []  # per open loop: innermost iterations of its inner loops

    # -- calls ------------------------------------------------------------------------------
    def declare(self, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
        fn = self._decls.get(name)
        if fn is None:
            fn = self.module.globals.get(name)
            if fn is None:
                fn = ir.Function(self.module, ir.FunctionType(ret, args), name)
            self._decls[name] = fn
        return fn

    def intrinsic(self, name: str, *args: ir.Value) -> ir.Value:
        """Call llvm.<name>.<f32|f64>(args): the result type is the first argument's type."""
        ty = args[0].type
        suffix = "f32" if ty == F32 else "f64" if ty == F64 else f"i{ty.width}"
        fn = self.declare(f"llvm.{name}.{suffix}", ty, [a.type for a in args])
        return self.b.call(fn, list(args))

    def libm(self, name: str, x: ir.Value) -> ir.Value:
        """Call a C math function (float variant gets the 'f' suffix)."""
        sym = name + ("f" if x.type == F32 else "")
        return self.b.call(self.declare(sym, x.type, [x.type]), [x])

    # -- loops ------------------------------------------------------------------------------
    @contextmanager
    def loop(self, n: int, name: str = "i"):
        """`for i in range(n)` with a static n >= 1, yielding the i64 index (bottom-tested)."""
        b = self.b
        pre = b.block
        body = b.append_basic_block(f"{name}.body")
        done = b.append_basic_block(f"{name}.end")
        b.branch(body)
        b.position_at_end(body)
        idx = b.phi(I64, name)
        idx.add_incoming(i64(0), pre)
        self._inner.append(0)
        try:
            yield idx
        finally:
            inner = self._inner.pop()
        nest = n * max(inner, 1)  # innermost iterations of this loop and the loops in it
        if self._inner:
            self._inner[-1] += nest
        nxt = b.add(idx, i64(1), name=f"{name}.next")
        idx.add_incoming(nxt, b.block)
        latch = b.cbranch(b.icmp_unsigned("<", nxt, i64(n)), body, done)
        if (UNROLL_OUTER_MAX is not None and inner and n > UNROLL_OUTER_MAX
                and nest > UNROLL_NEST_MIN):
            latch.set_metadata("llvm.loop", self.loop_id("llvm.loop.unroll.disable"))
        b.position_at_end(done)

    def loop_id(self, option: str) -> ir.values.MDValue:
        """A new loop ID carrying `option` (LLVM's loop metadata, set on the latch branch)."""
        return LoopID(self.module, self.module.add_metadata([ir.MetaDataString(self.module,
                                                                               option)]))

    @contextmanager
    def nest(self, shape, name: str = "i"):
        """Nested loops over a static shape (outermost first); yields the list of indices.

        Callers skip empty shapes (a zero dimension) before entering.
        """
        with _nest(self, tuple(shape), name, []) as idx:
            yield idx

    # -- addressing -------------------------------------------------------------------------
    def addr(self, base: ir.Value, offset: int, strides, idx, ty: ir.Type) -> ir.Value:
        """Pointer to element `offset + sum(idx[k] * strides[k])` of a buffer of `ty`."""
        b = self.b
        off = i64(offset)
        for s, i in zip(strides, idx):
            if s == 0:
                continue
            term = i if s == 1 else b.mul(i, i64(s))
            off = term if (isinstance(off, ir.Constant) and off.constant == 0) else b.add(off, term)
        return b.gep(base, [off], inbounds=True, source_etype=ty)


@contextmanager
def _nest(em: Emitter, shape, name, acc):
    if not shape:
        yield acc
        return
    with em.loop(shape[0], f"{name}{len(acc)}") as i:
        with _nest(em, shape[1:], name, acc + [i]) as idx:
            yield idx


class LoopID(ir.values.MDValue):
    """A loop's `distinct !{!self, !option}`: LLVM reads loop options only through a node whose
    first operand is itself, which llvmlite's uniqued `add_metadata` cannot make."""

    def __init__(self, module: ir.Module, option: ir.values.MDValue):
        ir.values.NamedValue.__init__(self, module, ir.MetaDataType(),
                                      name=str(len(module.metadata)))
        self.operands = (option,)
        module.metadata.append(self)

    def descr(self, buf):
        buf += (f"distinct !{{ {self.get_reference()}, {self.operands[0].get_reference()} }}",
                "\n")

    def __eq__(self, other):
        return self is other

    def __hash__(self):
        return id(self)
