"""LLVM lowering table: op name -> function(ctx, node) emitting IR that fills the node's buffer.

`VIEWS` lists the movement ops that are pure index arithmetic: when their operand allows it they
become a strided `View` and emit no code (a copy lowering in `LOWERINGS` covers the other
cases). Every registered op needs an entry in `LOWERINGS`, except float elementwise ops, which
without one are printed from their SymPy form (tests check `lowered_ops()`).
"""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

from ...errors import BackendError
from ...ir.dtypes import is_float, is_half
from ...ir.node import Node
from ...ops import sympy_funcs as sf
from ...ops.registry import all_ops, get_op
from . import blas, loops
from .kernels import KernelPrinter
from .loops import F32, F64, HALF, I8, I32, REDUCE_FLAGS, fconst, i64, ir_type, mem_type
from .memplan import View, contiguous_strides

LOWERINGS: dict[str, Callable] = {}
VIEWS: dict[str, Callable[[Node, View], View | None]] = {}

# ---------------------------------------------------------------------------------------------
# views


def _view_reshape(n: Node, v: View) -> View | None:
    if not v.is_contiguous():
        return None
    return View(v.buf, v.offset, n.shape, contiguous_strides(n.shape))


def _view_transpose(n: Node, v: View) -> View:
    perm = n.attr("perm")
    return View(v.buf, v.offset, n.shape, tuple(v.strides[p] for p in perm))


def _view_broadcast(n: Node, v: View) -> View:
    return broadcast_view(v, n.shape)


def _view_slice(n: Node, v: View) -> View:
    off = v.offset + sum(a * s for a, s in zip(n.attr("starts"), v.strides))
    return View(v.buf, off, n.shape, tuple(s * k for s, k in zip(v.strides, n.attr("steps"))))


VIEWS.update({"reshape": _view_reshape, "transpose": _view_transpose,
              "broadcast_to": _view_broadcast, "slice": _view_slice,
              "stop_gradient": lambda n, v: v,
              # checkpoint marks and recomputation leaves are aliases (ops/checkpoint.py)
              "remat": lambda n, v: v, "remat_barrier": lambda n, v: v,
              # a scan's view is the tuple of its results' views (schedule._schedule_tuple)
              "result": lambda n, vs: vs[n.attr("index")]})


def broadcast_view(v: View, shape) -> View:
    """numpy broadcasting as strides: new leading dims and stretched size-1 dims get stride 0."""
    lead = len(shape) - len(v.shape)
    strides = [0] * lead + [0 if (m == 1 and s != 1) else st
                            for m, s, st in zip(v.shape, shape[lead:], v.strides)]
    return View(v.buf, v.offset, tuple(shape), tuple(strides))


def collapse(shape, stride_lists):
    """Merge adjacent dims that are contiguous in every view and drop size-1 dims."""
    dims = [(n, [s[d] for s in stride_lists]) for d, n in enumerate(shape) if n != 1]
    out: list = []
    for n, st in dims:
        if out:
            pn, pst = out[-1]
            if all(a == b * n for a, b in zip(pst, st)):
                out[-1] = (pn * n, st)
                continue
        out.append((n, st))
    return [n for n, _ in out], [[st[k] for _, st in out] for k in range(len(stride_lists))]


# ---------------------------------------------------------------------------------------------
# elementwise ops


def elementwise(ctx, n: Node, operands: list[View], scalar, out: View | None = None):
    """out[idx] = scalar([operand[idx] ...]) over the broadcast output shape."""
    out = out or ctx.view(n)
    if out.size == 0:
        return
    ops = [broadcast_view(v, out.shape) for v in operands]
    shape, strides = collapse(out.shape, [out.strides] + [v.strides for v in ops])
    em = ctx.em
    with em.nest(shape) as idx:
        vals = [ctx.load(v, st, idx) for v, st in zip(ops, strides[1:])]
        ctx.store(out, strides[0], idx, scalar(vals))


def copy(ctx, src: View, dst: View):
    elementwise(ctx, None, [src], lambda v: v[0], out=dst)


def _float_scalar(ctx, op: str, ty):
    b, em = ctx.em.b, ctx.em
    binary = {"add": b.fadd, "sub": b.fsub, "mul": b.fmul, "div": b.fdiv}
    if op in binary:
        return lambda v: binary[op](v[0], v[1])
    table = {
        "pow": lambda v: em.intrinsic("pow", v[0], v[1]),
        "neg": lambda v: b.fneg(v[0]),
        "round": lambda v: em.intrinsic("roundeven", v[0]),
    }
    if op in table:
        return table[op]
    # the rest print their SymPy form: exp -> the kernel printer's exp, Max -> maximum, ...
    expr, p = sf.form(get_op(op)), KernelPrinter(em, ty)
    return lambda v: p.emit_form(expr, {f"a{i}": x for i, x in enumerate(v)})


OWN_SCALAR = ("add", "sub", "mul", "div", "pow", "neg", "round")  # not from a SymPy form


_DERIVABLE: dict[str, tuple] = {}


def _derivable(name: str) -> bool:
    """A float elementwise op `_float_scalar` prints from its SymPy form (cached per record)."""
    op = get_op(name)
    hit = _DERIVABLE.get(name)
    if hit is None or hit[0] is not op:
        f = sf.form(op)
        hit = _DERIVABLE[name] = (op, f is not None and not sf.unprintable(f, KernelPrinter.knows))
    return hit[1]


def _int_scalar(ctx, op: str, ty):
    b, em = ctx.em.b, ctx.em
    zero = ir.Constant(ty, 0)
    table = {
        "add": lambda v: b.add(v[0], v[1]),
        "sub": lambda v: b.sub(v[0], v[1]),
        "mul": lambda v: b.mul(v[0], v[1]),
        "neg": lambda v: b.sub(zero, v[0]),
        "maximum": lambda v: em.intrinsic("smax", v[0], v[1]),
        "minimum": lambda v: em.intrinsic("smin", v[0], v[1]),
        "abs": lambda v: b.select(b.icmp_signed("<", v[0], zero), b.sub(zero, v[0]), v[0]),
        "sign": lambda v: b.select(
            b.icmp_signed(">", v[0], zero), ir.Constant(ty, 1),
            b.select(b.icmp_signed("<", v[0], zero), ir.Constant(ty, -1), zero)),
    }
    if op not in table:
        raise BackendError(f"llvm backend: op {op!r} on integer operands is not supported")
    return table[op]


def _arith(ctx, n: Node):
    ty = ir_type(n.dtype)
    scalar = (_float_scalar if is_float(n.dtype) else _int_scalar)(ctx, n.op, ty)
    elementwise(ctx, n, [ctx.view(i) for i in n.inputs], scalar)


_CMP = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


def _compare(ctx, n: Node):
    b, op = ctx.em.b, _CMP[n.op]
    dt = n.inputs[0].dtype
    if is_float(dt):
        # != is the unordered compare (NaN != NaN), the rest ordered: NumPy semantics
        cmp = (lambda x, y: b.fcmp_unordered(op, x, y)) if op == "!=" else \
            (lambda x, y: b.fcmp_ordered(op, x, y))
    elif dt == "bool":
        cmp = (lambda x, y: b.icmp_unsigned(op, x, y))
    else:
        cmp = (lambda x, y: b.icmp_signed(op, x, y))
    elementwise(ctx, n, [ctx.view(i) for i in n.inputs], lambda v: b.zext(cmp(v[0], v[1]), I8))


_LOGICAL = {"logical_and": "and_", "logical_or": "or_", "logical_xor": "xor"}


def _logical(ctx, n: Node):
    """bool is i8 holding 0 or 1, so and/or/xor act bitwise and `not` is xor with 1."""
    b = ctx.em.b
    if n.op == "logical_not":
        scalar = (lambda v: b.xor(v[0], ir.Constant(I8, 1)))
    else:
        scalar = (lambda f: lambda v: f(v[0], v[1]))(getattr(b, _LOGICAL[n.op]))
    elementwise(ctx, n, [ctx.view(i) for i in n.inputs], scalar)


def _where(ctx, n: Node):
    b = ctx.em.b
    elementwise(ctx, n, [ctx.view(i) for i in n.inputs],
                lambda v: b.select(b.icmp_unsigned("!=", v[0], ir.Constant(I8, 0)), v[1], v[2]))


def convert(em, v: ir.Value, src: str, dst: str) -> ir.Value:
    """Scalar dtype conversion with NumPy's meaning (float->int saturates instead of UB)."""
    b = em.b
    if src == dst:
        return v
    ty = ir_type(dst)
    isf = is_float(src)
    if is_float(dst):
        if isf:
            if v.type == ty:  # a 16-bit float and float32 share the float32 register type
                return v
            if dst == "float16":  # float64 -> half rounds once, not via float32
                return b.fpext(b.fptrunc(v, HALF), F32)
            return b.fpext(v, ty) if ty == F64 else b.fptrunc(v, ty)
        return b.uitofp(v, ty) if src == "bool" else b.sitofp(v, ty)
    if dst == "bool":
        zero = ir.Constant(v.type, 0.0 if isf else 0)
        c = b.fcmp_unordered("!=", v, zero) if isf else b.icmp_unsigned("!=", v, zero)
        return b.zext(c, I8)
    # dst int32
    if isf:
        fn = em.declare(f"llvm.fptosi.sat.i32.{'f32' if v.type == F32 else 'f64'}", I32, [v.type])
        return b.call(fn, [v])
    return b.zext(v, I32) if src == "bool" else v


def _cast(ctx, n: Node):
    src, via = n.inputs[0].dtype, n.attr("via")  # via: rounded to that 16-bit dtype (widen.py)
    if via is not None:
        b = ctx.em.b

        def rounded(v):
            return loops.widen(b, loops.narrow(b, convert(ctx.em, v[0], src, via), via), via)

        elementwise(ctx, n, [ctx.view(n.inputs[0])], rounded)
        return
    elementwise(ctx, n, [ctx.view(n.inputs[0])], lambda v: convert(ctx.em, v[0], src, n.dtype))


def _kernel(ctx, n: Node):
    ty = ir_type(n.dtype)
    expr = n.attr("expr")
    printer = KernelPrinter(ctx.em, ty)
    dts = [i.dtype for i in n.inputs]

    def scalar(vals):
        vals = [convert(ctx.em, v, d, n.dtype) for v, d in zip(vals, dts)]
        return printer.emit(expr, {f"a{k}": v for k, v in enumerate(vals)})

    elementwise(ctx, n, [ctx.view(i) for i in n.inputs], scalar)


def _copy_op(ctx, n: Node):
    """reshape / transpose / broadcast_to / slice / stop_gradient when no view is possible."""
    src = ctx.view(n.inputs[0])
    if n.op == "reshape":  # same row-major order: write out as if it had the input's shape
        out = ctx.view(n)
        copy(ctx, src, View(out.buf, out.offset, src.shape, contiguous_strides(src.shape)))
    else:
        copy(ctx, VIEWS[n.op](n, src), ctx.view(n))


# ---------------------------------------------------------------------------------------------
# reductions


def _reduce(ctx, n: Node):
    em, b = ctx.em, ctx.em.b
    x, out = ctx.view(n.inputs[0]), ctx.view(n)
    axes = n.attr("axes")
    isf = is_float(n.dtype)
    ty = ir_type(n.dtype)
    if n.op == "max":
        ident = fconst(ty, float("-inf")) if isf else ir.Constant(ty, -2**31)
        comb = (lambda a, v: em.intrinsic("maximum", a, v)) if isf else \
            (lambda a, v: em.intrinsic("smax", a, v))
    elif n.op == "min":  # llvm.minimum propagates NaN, as np.min does
        ident = fconst(ty, float("inf")) if isf else ir.Constant(ty, 2**31 - 1)
        comb = (lambda a, v: em.intrinsic("minimum", a, v)) if isf else \
            (lambda a, v: em.intrinsic("smin", a, v))
    else:
        ident = fconst(ty, 0.0) if isf else ir.Constant(ty, 0)
        comb = (lambda a, v: b.fadd(a, v, flags=REDUCE_FLAGS)) if isf else b.add
    if out.size == 0:
        return
    # strides of the output indexed by x's dims (0 on reduced axes)
    ostr, k = [], 0
    kept_out = ([s for i, s in enumerate(out.strides) if i not in axes]
                if n.attr("keepdims") else list(out.strides))
    for d in range(len(x.shape)):
        if d in axes:
            ostr.append(0)
        else:
            ostr.append(kept_out[k])
            k += 1
    inner_reduced = len(x.shape) > 0 and (len(x.shape) - 1) in axes and x.shape[-1] > 1
    if inner_reduced or x.size == 0 or is_half(n.dtype):  # 16 bits: a float32 accumulator
        # out-major: one register accumulator per output element
        kept = [d for d in range(len(x.shape)) if d not in axes]
        red = list(axes)
        acc = ctx.alloca(ty)
        with em.nest([x.shape[d] for d in kept], "o") as oi:
            b.store(ident, acc)
            if x.size:
                with em.nest([x.shape[d] for d in red], "r") as ri:
                    idx = [None] * len(x.shape)
                    for d, i in zip(kept, oi):
                        idx[d] = i
                    for d, i in zip(red, ri):
                        idx[d] = i
                    v = ctx.load(x, x.strides, idx)
                    b.store(comb(b.load(acc, typ=ty), v), acc)
            oaddr = em.addr(ctx.ptr(out.buf), out.offset,
                            [ostr[d] for d in kept], oi, mem_type(n.dtype))
            ctx.store_at(b.load(acc, typ=ty), oaddr, out.buf, n.dtype)
    else:
        # input-major: walk x in memory order and accumulate into the (small) output
        elementwise(ctx, None, [], lambda v: ident, out=out)
        shape, strides = collapse(x.shape, [x.strides, ostr])
        with em.nest(shape) as idx:
            v = ctx.load(x, strides[0], idx)
            p = em.addr(ctx.ptr(out.buf), out.offset, strides[1], idx, mem_type(n.dtype))
            ctx.store_at(comb(ctx.load_at(p, out.buf, n.dtype), v), p, out.buf, n.dtype)


# ---------------------------------------------------------------------------------------------
# movement ops that always copy


def _concatenate(ctx, n: Node):
    out, axis, off = ctx.view(n), n.attr("axis"), 0
    for x in n.inputs:
        k = x.shape[axis]
        shape = list(out.shape)
        shape[axis] = k
        sub = View(out.buf, out.offset + off * out.strides[axis], tuple(shape), out.strides)
        copy(ctx, ctx.view(x), sub)
        off += k


def _pad(ctx, n: Node):
    out = ctx.view(n)
    elementwise(ctx, None, [], lambda v: ir.Constant(ir_type(n.dtype), 0), out=out)
    x = ctx.view(n.inputs[0])
    lo, it = n.attr("lo"), n.attr("interior")
    sub = View(out.buf, out.offset + sum(a * s for a, s in zip(lo, out.strides)), x.shape,
               tuple(s * (i + 1) for s, i in zip(out.strides, it)))
    copy(ctx, x, sub)


# ---------------------------------------------------------------------------------------------
# indexing


STATUS = "bp_index_status"  # [site + 1, bad index]: the first out-of-range computed index


def _index_guard(ctx, n: Node, j, lo: int, hi: int):
    """`ok` = lo <= j < hi for an index computed in the graph; None for an int32 input, which
    was range-checked at call time (so no per-element test is emitted). A miss is recorded in
    the module's status global, which the caller turns into an IndexRangeError (backend.py);
    the kernel itself only ever reads and writes in bounds and poisons the value (NaN)."""
    b = ctx.em.b
    if n.inputs[-1] in ctx.checked:
        return None
    ok = b.and_(b.icmp_signed(">=", j, i64(lo)), b.icmp_signed("<", j, i64(hi)))
    if ctx.index_sites is None:  # no status word (the exported library): poison only
        return ok
    sites = ctx.index_sites
    if n not in sites:
        sites.append(n)
    g = ctx.module.globals.get(STATUS)
    if g is None:
        ty = ir.ArrayType(ir.IntType(64), 2)
        g = ir.GlobalVariable(ctx.module, ty, STATUS)
        g.initializer = ir.Constant(ty, None)
    with b.if_then(b.not_(ok), likely=False):
        first = b.gep(g, [i64(0), i64(0)], inbounds=True)
        with b.if_then(b.icmp_signed("==", b.load(first, typ=ir.IntType(64)), i64(0))):
            b.store(i64(sites.index(n) + 1), first)
            b.store(j, b.gep(g, [i64(0), i64(1)], inbounds=True))
    return ok


def _take(ctx, n: Node):
    em, b = ctx.em, ctx.em.b
    x, idxv, out = ctx.view(n.inputs[0]), ctx.view(n.inputs[1]), ctx.view(n)
    axis, k = n.attr("axis"), n.inputs[1].ndim
    bound = x.shape[axis]
    ty = ir_type(n.dtype)
    if out.size == 0:
        return
    with em.nest(out.shape) as oi:
        j = ctx.load(idxv, idxv.strides, oi[axis:axis + k])
        j = b.sext(j, ir.IntType(64))
        ok = _index_guard(ctx, n, j, -bound, bound)
        # negative indices wrap once (jnp.take); a bad one reads row 0 and yields NaN / 0
        j = b.select(b.icmp_signed("<", j, i64(0)), b.add(j, i64(bound)), j)
        if ok is None:  # a checked input: clamp anyway, so no value can address out of bounds
            ok = b.icmp_unsigned("<", j, i64(bound))
        safe = b.select(ok, j, i64(0))
        xi = list(oi[:axis]) + [safe] + list(oi[axis + k:])
        v = ctx.load(x, x.strides, xi)
        bad = fconst(ty, float("nan")) if is_float(n.dtype) else ir.Constant(ty, 0)
        ctx.store(out, out.strides, oi, b.select(ok, v, bad))


def _scatter_add(ctx, n: Node):
    """out = x, then out[..., wrap(idx[j]), ...] += v[..., j, ...] in v's order (duplicates
    accumulate). A bad computed index adds NaN to slice 0 and is reported, as take does."""
    em, b = ctx.em, ctx.em.b
    x, vv, idxv = (ctx.view(i) for i in n.inputs)
    out = ctx.view(n)
    axis, k = n.attr("axis"), n.inputs[2].ndim
    bound, ty = x.shape[axis], ir_type(n.dtype)
    if out.size == 0:
        return
    copy(ctx, x, out)
    if vv.size == 0:
        return
    with em.nest(vv.shape) as vi:
        j = b.sext(ctx.load(idxv, idxv.strides, vi[axis:axis + k]), ir.IntType(64))
        ok = _index_guard(ctx, n, j, -bound, bound)
        j = b.select(b.icmp_signed("<", j, i64(0)), b.add(j, i64(bound)), j)
        if ok is None:  # a checked input: clamp anyway, so no value can address out of bounds
            ok = b.icmp_unsigned("<", j, i64(bound))
        oi = list(vi[:axis]) + [b.select(ok, j, i64(0))] + list(vi[axis + k:])
        v = b.select(ok, ctx.load(vv, vv.strides, vi), fconst(ty, float("nan")))
        p = em.addr(ctx.ptr(out.buf), out.offset, out.strides, oi, mem_type(n.dtype))
        ctx.store_at(b.fadd(ctx.load_at(p, out.buf, n.dtype), v), p, out.buf, n.dtype)


def _one_hot(ctx, n: Node):
    em, b = ctx.em, ctx.em.b
    idxv, out = ctx.view(n.inputs[0]), ctx.view(n)
    ty, size = ir_type(n.dtype), n.attr("n")
    if out.size == 0:
        return
    with em.nest(out.shape) as oi:
        j = b.sext(ctx.load(idxv, idxv.strides, oi[:-1]), ir.IntType(64))
        ok = _index_guard(ctx, n, j, -size if n.attr("wrap") else 0, size)
        if n.attr("wrap"):
            j = b.select(b.icmp_signed("<", j, i64(0)), b.add(j, i64(size)), j)
        hit = b.select(b.icmp_signed("==", j, oi[-1]), fconst(ty, 1.0), fconst(ty, 0.0))
        if ok is not None:
            hit = b.select(ok, hit, fconst(ty, float("nan")))
        ctx.store(out, out.strides, oi, hit)


def _iota(ctx, n: Node):
    em, b = ctx.em, ctx.em.b
    out, axis = ctx.view(n), n.attr("axis")
    if out.size == 0:
        return
    with em.nest(out.shape) as oi:
        v = oi[axis]
        if is_float(n.dtype):
            v = b.sitofp(v, ir_type(n.dtype))
        elif n.dtype == "int32":
            v = b.trunc(v, I32)
        else:
            v = b.zext(b.icmp_unsigned("!=", v, i64(0)), I8)
        ctx.store(out, out.strides, oi, v)


# ---------------------------------------------------------------------------------------------
# matmul


def _matmul(ctx, n: Node):
    a, bv, out = ctx.view(n.inputs[0]), ctx.view(n.inputs[1]), ctx.view(n)
    if out.size == 0:
        return
    batch = out.shape[:-2]
    a = broadcast_view(a, batch + a.shape[-2:])
    bv = broadcast_view(bv, batch + bv.shape[-2:])
    plan = ctx.matmul_plan.get(n)
    if plan is not None:
        blas.emit_gemm(ctx, n, a, bv, out, plan)
    else:
        _matmul_loops(ctx, a, bv, out, n.dtype)


def _matmul_loops(ctx, a: View, bv: View, out: View, dtype: str):
    """Fully specialised i-k-j loops: the j loop is unit stride in B and C and vectorises."""
    em, b = ctx.em, ctx.em.b
    ty = ir_type(dtype)
    M, K, N = a.shape[-2], a.shape[-1], bv.shape[-1]
    with em.nest(out.shape[:-2], "b") as bi:
        with em.loop(M, "m") as i:
            with em.loop(N, "n0") as j:
                ctx.store(out, out.strides, list(bi) + [i, j], fconst(ty, 0.0))
            if K:
                with em.loop(K, "k") as k:
                    av = ctx.load(a, a.strides, list(bi) + [i, k])
                    with em.loop(N, "n") as j:
                        bval = ctx.load(bv, bv.strides, list(bi) + [k, j])
                        p = em.addr(ctx.ptr(out.buf), out.offset, out.strides,
                                    list(bi) + [i, j], mem_type(dtype))
                        acc = ctx.load_at(p, out.buf, dtype)
                        ctx.store_at(b.fadd(acc, b.fmul(av, bval), flags=("contract",)), p,
                                     out.buf, dtype)


# ---------------------------------------------------------------------------------------------
# table

for _op in OWN_SCALAR:
    LOWERINGS[_op] = _arith
for _op in _CMP:
    LOWERINGS[_op] = _compare
for _op in VIEWS:
    LOWERINGS[_op] = _copy_op
LOWERINGS.update({
    "where": _where, "cast": _cast, "kernel": _kernel, "sum": _reduce, "max": _reduce,
    "min": _reduce, "logical_and": _logical, "logical_or": _logical, "logical_xor": _logical,
    "logical_not": _logical,
    "concatenate": _concatenate, "pad": _pad, "take": _take, "one_hot": _one_hot,
    "scatter_add": _scatter_add,
    "iota": _iota, "matmul": _matmul,
})


def _scan(ctx, n: Node):
    from .scan import lower_scan  # scan compiles its body with codegen, which imports us

    lower_scan(ctx, n)


LOWERINGS["scan"] = _scan


def _while(ctx, n: Node):
    from .while_loop import lower_while  # compiles its body with codegen, which imports us

    lower_while(ctx, n)


LOWERINGS["while_loop"] = _while
LEAVES = ("input", "param", "const")
# ops the backend replaces by their definition before scheduling (backend.py): custom_vjp's
# primal is ordinary graph (the pipeline has normally inlined it already)
INLINED = ("custom_vjp", "custom_jvp")


def lowered_ops() -> set[str]:
    """Table entries, leaves, and the elementwise ops `_arith` derives from SymPy forms."""
    return set(LOWERINGS) | set(LEAVES) | set(INLINED) | {
        name for name, op in all_ops().items()
        if name not in LOWERINGS and op.kind == "elementwise" and _derivable(name)}


def lower(ctx, n: Node):
    fn = LOWERINGS.get(n.op)
    if fn is None and get_op(n.op).kind == "elementwise" and _derivable(n.op):
        fn = _arith
    if fn is None:
        raise BackendError(f"llvm backend: no lowering for op {n.op!r} ({n!r})")
    fn(ctx, n)

