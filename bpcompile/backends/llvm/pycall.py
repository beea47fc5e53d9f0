"""The fast call path: a CPython-callable function generated in LLVM IR beside the compute code.

    PyObject *bp_pycall(PyObject *self, PyObject *args, PyObject *kwargs)

For every expected keyword it reads the array straight from the PyArrayObject fields and checks
exact type (ndarray), ndim, every dimension, dtype descriptor identity, C-contiguity and
alignment; int32 index inputs are range-checked element by element, and an input that overlaps
the function's own output/workspace arena is refused. Anything unexpected (a list, a
non-contiguous or byte-swapped array, a missing or extra name, a bad index) goes to the Python
slow path, `Signature.bind` + the ctypes route, which converts by the one rule of
signature.py or raises a clear ArgumentError. Positional arguments are named there in
signature order and come back through the native checks. Native code therefore only ever
sees memory of the planned size.

On success it calls bp_main and returns (loss scalar, {name: gradient}), the gradients being
the preallocated arrays of one arena (backend.Arena), the same every call of one thread (valid
until that thread's next call). Everything the wrapper needs (names, dtype descriptors, the
arena's output arrays and workspace, the slow path) sits in a table of int64 slots that is the
wrapper's `self`, a `_Table` array filled after loading, so cached code holds no addresses and
one function has one table per arena. A table has an owner thread (PyThreadState_GetID, never
reused); a call from any other thread goes to `other`, which finds or makes that thread's own
table and arena. The layout assumptions are verified with ctypes before the wrapper is ever
used; if any fails the ctypes path is used instead.
"""

from __future__ import annotations

import ctypes
import functools
import threading

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

# table slots; C_OWNER: the thread id that may use this table's arena (0: any, the caller
# serialises), C_OTHER: the callable that takes calls from other threads
C_SLOW, C_SCALAR_TYPE, C_TP_ALLOC, C_ARENA_LO, C_ARENA_HI, C_WS, C_ARRAY_TYPE = range(7)
C_OWNER, C_OTHER = 7, 8
C_FIXED = 9
# argument groups of this many of one shape and dtype are checked in a loop (emit_wrapper)
LOOP_MIN_ARGS = 8

PYAPI = ("PyDict_GetItem", "PyDict_Size", "PyDict_New", "PyDict_SetItem", "PyTuple_New",
         "PyTuple_SetItem", "PyObject_Call", "_Py_Dealloc", "PyThreadState_Get",
         "PyThreadState_GetID")


def _slots(nin: int, nout: int) -> dict:
    """Table layout: per input (name, descr), per output (data ptr, array, name)."""
    return {"in": lambda i: C_FIXED + 2 * i, "out": lambda j: C_FIXED + 2 * nin + 3 * j,
            "size": C_FIXED + 2 * nin + 3 * nout}


def emit_wrapper(module: ir.Module, program) -> None:
    """Add @bp_pycall to `module` (only for float scalar losses)."""
    outs, args = program.outputs, program.args
    if outs[0].shape != () or outs[0].dtype not in ("float32", "float64"):
        return
    nin, nout = len(args), len(outs)
    slots = _slots(nin, nout)
    fn = ir.Function(module, ir.FunctionType(PTR, [PTR, PTR, PTR]), "bp_pycall")
    _self, pargs, kwargs = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    em = Emitter(module, b)
    slow = fn.append_basic_block("slow")
    fail = fn.append_basic_block("fail")
    other = fn.append_basic_block("other_thread")

    def field(obj, off, ty):
        return b.load(b.gep(obj, [i64(off)], inbounds=True, source_etype=I8), typ=ty)

    tab = field(_self, AR_DATA, PTR)  # `self` is the _Table array: its data are the slots

    def ctx(k, ty=PTR):
        v = b.load(b.gep(tab, [i64(k)], inbounds=True, source_etype=I64), typ=I64)
        return b.inttoptr(v, PTR) if ty == PTR else v

    def check(cond_ok):
        nxt = fn.append_basic_block("ok")
        b.cbranch(cond_ok, nxt, slow)
        b.position_at_end(nxt)

    api = {n: em.declare(n, *_API_TYPES[n]) for n in PYAPI}
    owner = ctx(C_OWNER, I64)
    with b.if_then(b.icmp_unsigned("!=", owner, i64(0))):  # this arena is one thread's
        tid = b.call(api["PyThreadState_GetID"], [b.call(api["PyThreadState_Get"], [])])
        mine = fn.append_basic_block("own_thread")
        b.cbranch(b.icmp_unsigned("==", tid, owner), mine, other)
        b.position_at_end(mine)
    has_args = b.icmp_unsigned("!=", pargs, ir.Constant(PTR, None))
    with b.if_then(has_args):  # positional arguments: let the slow path raise TypeError
        nxt = fn.append_basic_block("no_positional")
        b.cbranch(b.icmp_signed("==", field(pargs, TUPLE_SIZE, I64), i64(0)), nxt, slow)
        b.position_at_end(nxt)
    check(b.icmp_unsigned("!=", kwargs, ir.Constant(PTR, None)))
    check(b.icmp_signed("==", b.call(api["PyDict_Size"], [kwargs]), i64(nin)))
    lo, hi = ctx(C_ARENA_LO, I64), ctx(C_ARENA_HI, I64)
    array_type = ctx(C_ARRAY_TYPE)
    # Many arguments of one shape and dtype (the layers of a deep model) are checked by one
    # loop over their indices instead of one unrolled block each: the wrapper's IR, and LLVM's
    # time on it, stays proportional to the distinct argument types, not to the arguments.
    groups: dict = {}
    for i, a in enumerate(args):
        if program.bounds.get(a.attr("name")) is None:
            groups.setdefault((a.shape, a.dtype), []).append(i)
    looped = [i for g in groups.values() if len(g) >= LOOP_MIN_ARGS for i in g]
    # a split schedule's driver (emit.py) takes the array [in..., out..., ws] itself
    run = module.globals.get("bp_main.run")
    if run is not None:
        argv = b.alloca(ir.ArrayType(PTR, nin + nout + 1), name="argv")
        at = {i: i for i in range(nin)}
    else:
        argv = b.alloca(ir.ArrayType(PTR, max(len(looped), 1)), name="argv") if looped else None
        at = {i: k for k, i in enumerate(looped)}  # arg -> its slot in argv
    datas = []

    def check_array(a, i, obj, descr):
        check(b.icmp_unsigned("!=", obj, ir.Constant(PTR, None)))
        check(b.icmp_unsigned("==", field(obj, OB_TYPE, PTR), array_type))
        check(b.icmp_signed("==", field(obj, AR_ND, I32), ir.Constant(I32, a.ndim)))
        check(b.icmp_unsigned("==", field(obj, AR_DESCR, PTR), descr))
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
        bound = program.bounds.get(a.attr("name")) if i is not None else None
        if bound is not None and a.size:
            _range_check(em, fn, data, a.size, bound, slow)
        return data

    for g in groups.values():
        if len(g) < LOOP_MIN_ARGS:
            continue
        # per member: (its table slot, its argv slot), a constant array the loop walks
        pairs = ir.ArrayType(I64, 2 * len(g))
        table = ir.GlobalVariable(module, pairs, module.get_unique_name("bp_argloop"))
        table.global_constant, table.linkage = True, "private"
        table.initializer = ir.Constant(pairs, [v for i in g
                                                for v in (slots["in"](i), at[i])])
        with em.loop(len(g), "arg") as k:
            two = b.mul(k, i64(2))
            slot = b.load(b.gep(table, [i64(0), two], inbounds=True), typ=I64)
            pos = b.load(b.gep(table, [i64(0), b.add(two, i64(1))], inbounds=True), typ=I64)
            name = b.load(b.gep(tab, [slot], inbounds=True, source_etype=I64), typ=I64)
            descr = b.load(b.gep(tab, [b.add(slot, i64(1))], inbounds=True,
                                 source_etype=I64), typ=I64)
            obj = b.call(api["PyDict_GetItem"], [kwargs, b.inttoptr(name, PTR)])
            data = check_array(args[g[0]], None, obj, b.inttoptr(descr, PTR))
            b.store(data, b.gep(argv, [i64(0), pos], inbounds=True))
    looped_set = set(looped)
    for i, a in enumerate(args):
        if i in looped_set:
            if run is None:
                datas.append(b.load(b.gep(argv, [i64(0), i64(at[i])], inbounds=True), typ=PTR))
            continue
        obj = b.call(api["PyDict_GetItem"], [kwargs, ctx(slots["in"](i))])
        data = check_array(a, i, obj, ctx(slots["in"](i) + 1))
        if run is not None:
            b.store(data, b.gep(argv, [i64(0), i64(i)], inbounds=True))
        datas.append(data)
    status = module.globals.get(STATUS)

    def call_main():
        if run is not None:
            with em.loop(nout, "outp") as j:  # the outputs' data pointers: slot out(j) each
                s = b.add(i64(slots["out"](0)), b.mul(j, i64(3)))
                p = b.load(b.gep(tab, [s], inbounds=True, source_etype=I64), typ=I64)
                b.store(b.inttoptr(p, PTR),
                        b.gep(argv, [i64(0), b.add(j, i64(nin))], inbounds=True))
            b.store(ctx(C_WS), b.gep(argv, [i64(0), i64(nin + nout)], inbounds=True))
            b.call(run, [b.gep(argv, [i64(0), i64(0)], inbounds=True)])
            return ctx(slots["out"](0))
        out_ptrs = [ctx(slots["out"](j)) for j in range(nout)]
        b.call(module.globals["bp_main"], datas + out_ptrs + [ctx(C_WS)])
        return out_ptrs[0]

    if status is None:
        loss_ptr = call_main()
    else:
        # The word is shared with the slow path, whose holder may be between its call and its
        # read (Python can switch threads there; this path holds the GIL throughout): save the
        # word, run from 0, put it back. A miss of our own sends us to the slow path, which
        # re-runs under the lock and raises.
        words = [b.gep(status, [i64(0), i64(k)], inbounds=True) for k in (0, 1)]
        saved = [b.load(w, typ=I64) for w in words]
        b.store(i64(0), words[0])
        loss_ptr = call_main()
        mine = b.load(words[0], typ=I64)
        for w, v in zip(words, saved):
            b.store(v, w)
        check(b.icmp_signed("==", mine, i64(0)))
    # loss: a fresh numpy scalar of the loss dtype, filled in place
    ty = F32 if outs[0].dtype == "float32" else F64
    alloc = ctx(C_TP_ALLOC)
    alloc_ty = ir.FunctionType(PTR, [PTR, I64])
    scalar = b.call(_callee(alloc, alloc_ty), [ctx(C_SCALAR_TYPE), i64(0)])
    check_fail(b, fn, scalar, fail)
    b.store(b.load(loss_ptr, typ=ty), b.gep(scalar, [i64(SCALAR_VALUE)], source_etype=I8))
    d = b.call(api["PyDict_New"], [])
    b_ok = fn.append_basic_block("dict_ok")
    b_bad = fn.append_basic_block("dict_bad")
    b.cbranch(b.icmp_unsigned("!=", d, ir.Constant(PTR, None)), b_ok, b_bad)
    b.position_at_end(b_bad)
    _decref(b, api, scalar)
    b.ret(ir.Constant(PTR, None))
    b.position_at_end(b_ok)
    if nout > 1:  # {name: gradient}: one loop over the outputs' (data, array, name) slots
        bad = fn.append_basic_block("set_bad")
        with em.loop(nout - 1, "out") as j:
            s = b.add(i64(slots["out"](1)), b.mul(j, i64(3)))
            array = b.load(b.gep(tab, [b.add(s, i64(1))], inbounds=True, source_etype=I64),
                           typ=I64)
            name = b.load(b.gep(tab, [b.add(s, i64(2))], inbounds=True, source_etype=I64),
                          typ=I64)
            r = b.call(api["PyDict_SetItem"], [d, b.inttoptr(name, PTR), b.inttoptr(array, PTR)])
            nxt = fn.append_basic_block("set_ok")
            b.cbranch(b.icmp_signed("==", r, ir.Constant(I32, 0)), nxt, bad)
            b.position_at_end(nxt)
        done = b.block
        b.position_at_end(bad)
        _decref(b, api, scalar)
        _decref(b, api, d)
        b.ret(ir.Constant(PTR, None))
        b.position_at_end(done)
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
    b.position_at_end(other)
    b.ret(b.call(api["PyObject_Call"], [ctx(C_OTHER), pargs, kwargs]))


_API_TYPES = {
    "PyDict_GetItem": (PTR, [PTR, PTR]),
    "PyDict_Size": (I64, [PTR]),
    "PyDict_New": (PTR, []),
    "PyDict_SetItem": (I32, [PTR, PTR, PTR]),
    "PyTuple_New": (PTR, [I64]),
    "PyTuple_SetItem": (I32, [PTR, I64, PTR]),
    "PyObject_Call": (PTR, [PTR, PTR, PTR]),
    "_Py_Dealloc": (ir.VoidType(), [PTR]),
    "PyThreadState_Get": (PTR, []),
    "PyThreadState_GetID": (I64, [PTR]),
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


class _Table(np.ndarray):
    """The wrapper's `self`: int64 slots (read natively through the data pointer at AR_DATA);
    `keep` holds every object whose address sits in a slot."""


@functools.cache
def layout_ok() -> bool:
    """Check every struct offset the wrapper relies on against live objects."""
    try:
        a = np.zeros((3, 5), np.float32)
        t = np.zeros(4, np.int64).view(_Table)
        rd = lambda addr, t: t.from_address(addr).value
        ok = (rd(id(a) + OB_TYPE, ctypes.c_void_p) == id(np.ndarray)
              and rd(id(a) + AR_DATA, ctypes.c_void_p) == a.ctypes.data
              and rd(id(t) + AR_DATA, ctypes.c_void_p) == t.ctypes.data
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
              and rd(id((1, 2, 3)) + TUPLE_SIZE, ctypes.c_ssize_t) == 3
              and thread_id() > 0)
        return bool(ok)
    except Exception:
        return False


def thread_id() -> int:
    """The calling thread's PyThreadState_GetID: unique in the interpreter, never reused (unlike
    threading.get_ident), so a dead thread's table can never match a new thread."""
    api = ctypes.pythonapi
    api.PyThreadState_Get.restype = ctypes.c_void_p
    api.PyThreadState_GetID.restype, api.PyThreadState_GetID.argtypes = (
        ctypes.c_uint64, [ctypes.c_void_p])
    return api.PyThreadState_GetID(api.PyThreadState_Get())


class _Builder:
    """Makes wrapper builtins over arenas of one backend: the table of each, its slow path."""

    def __init__(self, backend, signature, grad_names):
        self.fn_addr = backend.engine.get_function_address("bp_pycall")
        program = backend.program
        args, outs = program.args, program.outputs
        self.nin, self.slots = len(args), _slots(len(args), len(outs))
        self.stype = np.float32 if outs[0].dtype == "float32" else np.float64
        self.inputs = [(_intern(a.attr("name")), np.dtype(a.dtype)) for a in args]
        self.out_names = [_intern("loss")] + [_intern(g) for g in grad_names]
        self.signature, self.grad_names = signature, list(grad_names)
        self.ml = _MethodDef(b"compiled_gradient", self.fn_addr, METH_VARARGS_KEYWORDS,
                             b"bpcompile LLVM gradient function (validated fast path)")

    def builtin(self, arena, owner: int = 0, other=None, keep=()):
        """A builtin calling bp_pycall on `arena`; from a thread other than `owner` (if not 0)
        it calls `other` instead. `keep`: more objects the builtin must keep alive."""
        signature, names = self.signature, self.grad_names

        def slow(**kwargs):
            value, grads = arena.run(signature.bind(kwargs), False)
            return value, dict(zip(names, grads))

        def compiled_gradient(*args, **kwargs):  # the slow path: converts, or raises a clear error
            if args:  # named in signature order (no reference back to the builtin: no cycle)
                return signature.call_positional(slow, args, kwargs)
            return slow(**kwargs)

        slots = self.slots
        table = _Table((slots["size"],), np.int64)  # owns its data (no writable base)
        table[:] = 0
        table[C_SLOW] = id(compiled_gradient)
        table[C_SCALAR_TYPE] = id(self.stype)
        table[C_TP_ALLOC] = ctypes.c_void_p.from_address(id(self.stype) + TP_ALLOC).value
        table[C_ARENA_LO], table[C_ARENA_HI] = arena.lo, arena.hi
        table[C_WS] = arena.ws_addr
        table[C_ARRAY_TYPE] = id(np.ndarray)
        table[C_OWNER] = owner
        table[C_OTHER] = id(other)
        for i, (key, descr) in enumerate(self.inputs):
            table[slots["in"](i)] = id(key)
            table[slots["in"](i) + 1] = id(descr)
        for j, (arr, gname) in enumerate(zip(arena.out_arrays, self.out_names)):
            s = slots["out"](j)
            table[s], table[s + 1], table[s + 2] = arr.ctypes.data, id(arr), id(gname)
        table.keep = (compiled_gradient, arena, other, self.stype, self.inputs, self.out_names,
                      self.ml, *keep)
        table.flags.writeable = False  # reachable as fn.__call__.__self__: no accidents
        new = ctypes.pythonapi.PyCFunction_NewEx
        new.restype, new.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.py_object,
                                                       ctypes.c_void_p]
        return new(ctypes.addressof(self.ml), table, None)


def _usable(backend, signature) -> bool:
    program = backend.program
    try:
        fn_addr = backend.engine.get_function_address("bp_pycall")
    except Exception:
        return False
    if not fn_addr or not layout_ok():
        return False
    # the native range checks must cover every bound the signature enforces
    return all(program.bounds.get(k) == v for k, v in signature.bounds.items())


def make_caller(backend, signature, grad_names, copy: bool = False):
    """A caller wrapping bp_pycall with one arena per calling thread, or None when the fast path
    is unavailable. The calling (compiling) thread's arena is checked natively (owner id); any
    other thread's call is forwarded once, through a Python frame, to that thread's own builtin
    and arena (thread-local, freed when the thread ends). With `copy`, every output is copied."""
    if not _usable(backend, signature):
        return None
    mk = _Builder(backend, signature, grad_names)
    local = threading.local()

    def other(*args, **kwargs):  # a call from a thread that does not own the main table
        try:
            c = local.builtin
        except AttributeError:  # owner 0: only this thread's local reaches it; it holds no
            c = local.builtin = mk.builtin(backend.thread_arena())  # backend: no leak
        return c(*args, **kwargs)

    fn = mk.builtin(backend.thread_arena(), thread_id(), other, keep=(backend, local))
    if not copy:
        return _Native(fn)

    def copied(*args, **kwargs):  # the native result is this thread's arena: copy it
        value, grads = fn(*args, **kwargs)
        for k, g in grads.items():
            grads[k] = g.copy()
        return value, grads

    return copied


def make_pinned_caller(backend, signature, grad_names):
    """A caller over one new arena, from any thread (the caller serialises calls): `.arena`
    holds its output arrays. Used by the train step, which reads them in place."""
    if not _usable(backend, signature):
        return None
    arena = backend.new_arena()
    native = _Native(_Builder(backend, signature, grad_names).builtin(arena, keep=(backend,)))
    native.arena = arena
    return native


def _intern(s: str) -> str:
    import sys

    return sys.intern(s)


class _Native:
    """A native caller; Compiled installs `bp_native` (the builtin) as the class's __call__."""

    def __init__(self, fn):
        self.bp_native = fn

    def __call__(self, **kwargs):
        return self.bp_native(**kwargs)
