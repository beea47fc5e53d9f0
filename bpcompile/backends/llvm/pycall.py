"""The fast call path: a CPython-callable function generated in LLVM IR beside the compute code.

    PyObject *bp_pycall(PyObject *self, PyObject *args, PyObject *kwargs)

For every expected keyword it reads the array straight from the PyArrayObject fields and checks
exact type (ndarray), ndim, every dimension, dtype descriptor identity, C-contiguity and
alignment; int32 index inputs are range-checked element by element, and an input that overlaps
the function's own output/workspace arena is refused. Anything unexpected (a list, a
non-contiguous or byte-swapped array, a missing or extra name, a bad index) goes to the Python
slow path, `Signature.bind` + the ctypes route, which converts or raises a clear
ArgumentError. Native code therefore only ever sees memory of the planned size.

On success it calls bp_main and returns (loss scalar, {name: gradient}), the gradients being
the same preallocated arrays every call (valid until the next call). Object pointers the
wrapper needs (names, dtype descriptors, output arrays, the slow path) sit in a global table
that the loader fills after the object code is loaded, so cached code holds no addresses.
The layout assumptions are verified with ctypes before the wrapper is ever used; if any fails
the ctypes path is used instead.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np
from llvmlite import ir

from .loops import F32, F64, I8, I32, I64, PTR, Emitter, i64
from .lower import STATUS

# PyObject / PyArrayObject field offsets (CPython >= 3.8 default build, NumPy 1.x and 2.x)
OB_REFCNT, OB_TYPE = 0, 8
AR_DATA, AR_ND, AR_DIMS, AR_DESCR, AR_FLAGS = 16, 24, 32, 56, 64
SCALAR_VALUE = 16  # obval of numpy float scalars
TUPLE_SIZE = 16  # ob_size of a tuple
NPY_C_CONTIGUOUS, NPY_ALIGNED = 0x1, 0x100
TP_ALLOC = 304  # offsetof(PyTypeObject, tp_alloc) on 64-bit CPython 3.8-3.13
TP_BASE = 256

# ctx table slots
C_SLOW, C_SCALAR_TYPE, C_TP_ALLOC, C_ARENA_LO, C_ARENA_HI, C_WS, C_ARRAY_TYPE = range(7)
C_FIXED = 7

PYAPI = ("PyDict_GetItem", "PyDict_Size", "PyDict_New", "PyDict_SetItem", "PyTuple_New",
         "PyTuple_SetItem", "PyObject_Call", "_Py_Dealloc")


def _slots(nin: int, nout: int) -> dict:
    """Table layout: per input (name, descr), per output (data ptr, array, name)."""
    return {"in": lambda i: C_FIXED + 2 * i, "out": lambda j: C_FIXED + 2 * nin + 3 * j,
            "size": C_FIXED + 2 * nin + 3 * nout}


def emit_wrapper(module: ir.Module, program) -> None:
    """Add @bp_ctx and @bp_pycall to `module` (only for float scalar losses)."""
    outs, args = program.outputs, program.args
    if outs[0].shape != () or outs[0].dtype not in ("float32", "float64"):
        return
    nin, nout = len(args), len(outs)
    slots = _slots(nin, nout)
    tab_ty = ir.ArrayType(I64, slots["size"])
    tab = ir.GlobalVariable(module, tab_ty, "bp_ctx")
    tab.initializer = ir.Constant(tab_ty, None)
    fn = ir.Function(module, ir.FunctionType(PTR, [PTR, PTR, PTR]), "bp_pycall")
    _self, pargs, kwargs = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    em = Emitter(module, b)
    slow = fn.append_basic_block("slow")
    fail = fn.append_basic_block("fail")

    def ctx(k, ty=PTR):
        v = b.load(b.gep(tab, [i64(0), i64(k)], inbounds=True, source_etype=tab_ty), typ=I64)
        return b.inttoptr(v, PTR) if ty == PTR else v

    def field(obj, off, ty):
        return b.load(b.gep(obj, [i64(off)], inbounds=True, source_etype=I8), typ=ty)

    def check(cond_ok):
        nxt = fn.append_basic_block("ok")
        b.cbranch(cond_ok, nxt, slow)
        b.position_at_end(nxt)

    api = {n: em.declare(n, *_API_TYPES[n]) for n in PYAPI}
    has_args = b.icmp_unsigned("!=", pargs, ir.Constant(PTR, None))
    with b.if_then(has_args):  # positional arguments: let the slow path raise TypeError
        nxt = fn.append_basic_block("no_positional")
        b.cbranch(b.icmp_signed("==", field(pargs, TUPLE_SIZE, I64), i64(0)), nxt, slow)
        b.position_at_end(nxt)
    check(b.icmp_unsigned("!=", kwargs, ir.Constant(PTR, None)))
    check(b.icmp_signed("==", b.call(api["PyDict_Size"], [kwargs]), i64(nin)))
    lo, hi = ctx(C_ARENA_LO, I64), ctx(C_ARENA_HI, I64)
    array_type = ctx(C_ARRAY_TYPE)
    datas = []
    for i, a in enumerate(args):
        obj = b.call(api["PyDict_GetItem"], [kwargs, ctx(slots["in"](i))])
        check(b.icmp_unsigned("!=", obj, ir.Constant(PTR, None)))
        check(b.icmp_unsigned("==", field(obj, OB_TYPE, PTR), array_type))
        check(b.icmp_signed("==", field(obj, AR_ND, I32), ir.Constant(I32, a.ndim)))
        check(b.icmp_unsigned("==", field(obj, AR_DESCR, PTR), ctx(slots["in"](i) + 1)))
        flags = field(obj, AR_FLAGS, I32)
        want = ir.Constant(I32, NPY_C_CONTIGUOUS | NPY_ALIGNED)
        check(b.icmp_unsigned("==", b.and_(flags, want), want))
        if a.ndim:
            dims = field(obj, AR_DIMS, PTR)
            ok = None
            for d, n in enumerate(a.shape):
                dv = b.load(b.gep(dims, [i64(d)], inbounds=True, source_etype=I64), typ=I64)
                c = b.icmp_signed("==", dv, i64(n))
                ok = c if ok is None else b.and_(ok, c)
            check(ok)
        data = field(obj, AR_DATA, PTR)
        nbytes = a.size * np.dtype(a.dtype).itemsize
        if nbytes:
            p = b.ptrtoint(data, I64)
            overlap = b.and_(b.icmp_unsigned("<", p, hi),
                             b.icmp_unsigned(">", b.add(p, i64(nbytes)), lo))
            check(b.not_(overlap))
        bound = program.bounds.get(a.attr("name"))
        if bound is not None and a.size:
            _range_check(em, fn, data, a.size, bound, slow)
        datas.append(data)
    out_ptrs = [ctx(slots["out"](j)) for j in range(nout)]
    main = module.globals["bp_main"]
    b.call(main, datas + out_ptrs + [ctx(C_WS)])
    status = module.globals.get(STATUS)
    if status is not None:  # a computed index was out of range: the slow path re-runs, raises
        check(b.icmp_signed("==", b.load(status, typ=I64), i64(0)))
    # loss: a fresh numpy scalar of the loss dtype, filled in place
    ty = F32 if outs[0].dtype == "float32" else F64
    alloc = ctx(C_TP_ALLOC)
    alloc_ty = ir.FunctionType(PTR, [PTR, I64])
    scalar = b.call(_callee(alloc, alloc_ty), [ctx(C_SCALAR_TYPE), i64(0)])
    check_fail(b, fn, scalar, fail)
    b.store(b.load(out_ptrs[0], typ=ty), b.gep(scalar, [i64(SCALAR_VALUE)], source_etype=I8))
    d = b.call(api["PyDict_New"], [])
    b_ok = fn.append_basic_block("dict_ok")
    b_bad = fn.append_basic_block("dict_bad")
    b.cbranch(b.icmp_unsigned("!=", d, ir.Constant(PTR, None)), b_ok, b_bad)
    b.position_at_end(b_bad)
    _decref(b, api, scalar)
    b.ret(ir.Constant(PTR, None))
    b.position_at_end(b_ok)
    for j in range(1, nout):
        s = slots["out"](j)
        r = b.call(api["PyDict_SetItem"], [d, ctx(s + 2), ctx(s + 1)])
        nxt = fn.append_basic_block("set_ok")
        bad = fn.append_basic_block("set_bad")
        b.cbranch(b.icmp_signed("==", r, ir.Constant(I32, 0)), nxt, bad)
        b.position_at_end(bad)
        _decref(b, api, scalar)
        _decref(b, api, d)
        b.ret(ir.Constant(PTR, None))
        b.position_at_end(nxt)
    t = b.call(api["PyTuple_New"], [i64(2)])
    t_ok = fn.append_basic_block("tuple_ok")
    t_bad = fn.append_basic_block("tuple_bad")
    b.cbranch(b.icmp_unsigned("!=", t, ir.Constant(PTR, None)), t_ok, t_bad)
    b.position_at_end(t_bad)
    _decref(b, api, scalar)
    _decref(b, api, d)
    b.ret(ir.Constant(PTR, None))
    b.position_at_end(t_ok)
    b.call(api["PyTuple_SetItem"], [t, i64(0), scalar])  # steals the references
    b.call(api["PyTuple_SetItem"], [t, i64(1), d])
    b.ret(t)
    b.position_at_end(fail)
    b.ret(ir.Constant(PTR, None))
    b.position_at_end(slow)
    b.ret(b.call(api["PyObject_Call"], [ctx(C_SLOW), pargs, kwargs]))


_API_TYPES = {
    "PyDict_GetItem": (PTR, [PTR, PTR]),
    "PyDict_Size": (I64, [PTR]),
    "PyDict_New": (PTR, []),
    "PyDict_SetItem": (I32, [PTR, PTR, PTR]),
    "PyTuple_New": (PTR, [I64]),
    "PyTuple_SetItem": (I32, [PTR, I64, PTR]),
    "PyObject_Call": (PTR, [PTR, PTR, PTR]),
    "_Py_Dealloc": (ir.VoidType(), [PTR]),
}


def check_fail(b, fn, value, fail):
    nxt = fn.append_basic_block("alloc_ok")
    b.cbranch(b.icmp_unsigned("!=", value, ir.Constant(PTR, None)), nxt, fail)
    b.position_at_end(nxt)


def _decref(b, api, obj):
    cnt = b.load(obj, typ=I64)
    new = b.sub(cnt, i64(1))
    b.store(new, obj)
    with b.if_then(b.icmp_signed("==", new, i64(0))):
        b.call(api["_Py_Dealloc"], [obj])


def _range_check(em: Emitter, fn, data, size: int, bound, slow):
    """Every int32 index in [lo, hi) (`bound` = (lo, hi), or hi for [0, hi)); otherwise take
    the slow path (which raises)."""
    b = em.b
    lo, hi = bound if isinstance(bound, tuple) else (0, bound)
    bad = b.alloca(ir.IntType(1))
    b.store(ir.Constant(ir.IntType(1), 0), bad)
    with em.loop(size, "chk") as i:
        v = b.load(b.gep(data, [i], inbounds=True, source_etype=I32), typ=I32)
        # v - lo >= hi - lo unsigned: below lo wraps to huge, so one compare tests both ends
        if lo:
            v = b.sub(v, ir.Constant(I32, lo))
        out = b.icmp_unsigned(">=", v, ir.Constant(I32, hi - lo))
        b.store(b.or_(b.load(bad, typ=ir.IntType(1)), out), bad)
    nxt = fn.append_basic_block("range_ok")
    b.cbranch(b.load(bad, typ=ir.IntType(1)), slow, nxt)
    b.position_at_end(nxt)


class _FnPtr(ir.values.Value):
    """An indirect callee for IRBuilder.call: a pointer value with a known function type."""

    def __init__(self, ptr, fnty):
        self.ptr, self.function_type, self.type = ptr, fnty, PTR

    def get_reference(self):
        return self.ptr.get_reference()

    def __str__(self):
        return str(self.ptr)


def _callee(ptr, fnty):
    return _FnPtr(ptr, fnty)


# ---------------------------------------------------------------------------------------------
# loading


class _MethodDef(ctypes.Structure):
    _fields_ = [("ml_name", ctypes.c_char_p), ("ml_meth", ctypes.c_void_p),
                ("ml_flags", ctypes.c_int), ("ml_doc", ctypes.c_char_p)]


METH_VARARGS_KEYWORDS = 0x0001 | 0x0002


@functools.cache
def layout_ok() -> bool:
    """Check every struct offset the wrapper relies on against live objects."""
    try:
        a = np.zeros((3, 5), np.float32)
        rd = lambda addr, t: t.from_address(addr).value
        ok = (rd(id(a) + OB_TYPE, ctypes.c_void_p) == id(np.ndarray)
              and rd(id(a) + AR_DATA, ctypes.c_void_p) == a.ctypes.data
              and rd(id(a) + AR_ND, ctypes.c_int) == 2
              and rd(rd(id(a) + AR_DIMS, ctypes.c_void_p) + 8, ctypes.c_ssize_t) == 5
              and rd(id(a) + AR_DESCR, ctypes.c_void_p) == id(a.dtype)
              and id(a.dtype) == id(np.dtype(np.float32))
              and rd(id(a) + AR_FLAGS, ctypes.c_int) & NPY_C_CONTIGUOUS
              and not rd(id(a[:, ::2]) + AR_FLAGS, ctypes.c_int) & NPY_C_CONTIGUOUS
              and rd(id(np.float32(1.5)) + SCALAR_VALUE, ctypes.c_float) == 1.5
              and rd(id(np.float64(2.5)) + SCALAR_VALUE, ctypes.c_double) == 2.5
              and rd(id(np.float32) + TP_BASE, ctypes.c_void_p) == id(np.float32.__base__)
              and rd(id(np.float32) + TP_ALLOC, ctypes.c_void_p)
              and rd(id((1, 2, 3)) + TUPLE_SIZE, ctypes.c_ssize_t) == 3)
        return bool(ok)
    except Exception:
        return False


def make_caller(backend, signature, grad_names):
    """A builtin function object wrapping bp_pycall, or None when the fast path is unavailable."""
    program = backend.program
    try:
        table_addr = backend.engine.get_global_value_address("bp_ctx")
        fn_addr = backend.engine.get_function_address("bp_pycall")
    except Exception:
        return None
    if not table_addr or not fn_addr or not layout_ok():
        return None
    if any(program.bounds.get(k) != v for k, v in signature.bounds.items()):
        return None  # the native range checks must cover every bound the signature enforces
    args, outs = program.args, program.outputs
    slots = _slots(len(args), len(outs))
    names = [a.attr("name") for a in args]

    def compiled_gradient(**kwargs):  # the slow path: converts, or raises a clear error
        arrays = signature.bind(kwargs)
        value, grads = backend.run(arrays)
        return value, dict(zip(grad_names, grads))

    keep = [compiled_gradient, backend]
    table = (ctypes.c_int64 * slots["size"]).from_address(table_addr)
    stype = np.float32 if outs[0].dtype == "float32" else np.float64
    table[C_SLOW] = id(compiled_gradient)
    table[C_SCALAR_TYPE] = id(stype)
    table[C_TP_ALLOC] = ctypes.c_void_p.from_address(id(stype) + TP_ALLOC).value
    table[C_ARENA_LO], table[C_ARENA_HI] = backend.arena_lo, backend.arena_hi
    table[C_WS] = backend.ws_addr
    table[C_ARRAY_TYPE] = id(np.ndarray)
    for i, (name, a) in enumerate(zip(names, args)):
        key = _intern(name)
        descr = np.dtype(a.dtype)
        keep += [key, descr]
        table[slots["in"](i)] = id(key)
        table[slots["in"](i) + 1] = id(descr)
    for j, arr in enumerate(backend.out_arrays):
        gname = _intern(grad_names[j - 1]) if j else _intern("loss")
        keep += [arr, gname]
        s = slots["out"](j)
        table[s], table[s + 1], table[s + 2] = arr.ctypes.data, id(arr), id(gname)
    ml = _MethodDef(b"compiled_gradient", fn_addr, METH_VARARGS_KEYWORDS,
                    b"bpcompile LLVM gradient function (validated fast path)")
    keep.append(ml)
    new = ctypes.pythonapi.PyCFunction_NewEx
    new.restype, new.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.py_object,
                                                   ctypes.c_void_p]
    owner = tuple(keep)  # the function's `self`: keeps every object in the table alive
    fn = new(ctypes.addressof(ml), owner, None)
    backend._pycall_keep = owner
    return _Native(fn)


def _intern(s: str) -> str:
    import sys

    return sys.intern(s)


class _Native:
    """A native caller; Compiled installs `bp_native` (the builtin) as the class's __call__."""

    def __init__(self, fn):
        self.bp_native = fn

    def __call__(self, **kwargs):
        return self.bp_native(**kwargs)
