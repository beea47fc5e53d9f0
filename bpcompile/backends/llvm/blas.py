"""Matmul through a real BLAS (sgemm/dgemm) for shapes where it beats inline loops.

Preferred: the OpenBLAS that NumPy itself links (its ILP64 Fortran symbols scipy_sgemm_64_,
found in numpy.libs), so the process has ONE BLAS thread pool: two OpenBLAS pools (NumPy's and
SciPy's) spin against each other on a 2-core machine and a threaded gemm then takes 30x longer.
Fallback: SciPy's Fortran BLAS, exported as PyCapsules in
`scipy.linalg.cython_blas.__pyx_capi__` (numba's `call_xxgemm` reaches them the same way).
The generated code calls external symbols bp_sgemm / bp_dgemm that the loader binds to those
addresses, so cached object code holds no process-specific address.
Fortran convention: every argument by pointer, column-major; a row-major C = A @ B is computed
as the column-major Cᵀ = Bᵀ Aᵀ, which needs no data movement.
"""

from __future__ import annotations

import ctypes
import functools
import math
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from .loops import F32, F64, I8, I32, PTR, VOID
from .memplan import View

# M*N*K at or above which the BLAS call wins over inline loops. Measured on this machine
# (benchmarks/bench_llvm.py --gemm-threshold): single 2-d float32 products; the BLAS call has a
# fixed cost of ~1 µs; inline loops win up to ~40³, BLAS from ~64³ on (crossover 48³-64³).
GEMM_THRESHOLD = 48**3
# A batched product goes to BLAS (one call per matrix) when the whole batch does at least
# GEMM_THRESHOLD multiply-adds and each matrix at least BATCHED_MIN: MAML's per-task products
# (25 x 10x40x40), float64, took 30 µs by BLAS against 43 µs inline, and 37 against 90 µs with
# a transposed right operand (the inline j loop is then strided); at 8 x 16³ inline still won
# (15 against 18 µs): `python benchmarks/bench_transforms.py --batched-gemm`. docs/performance.md.
BATCHED_MIN = 8192

# When a BLAS call may use several threads: M*N*K at least PARALLEL_THRESHOLD (below it
# OpenBLAS's thread hand-off costs more than it saves) and an output of at least
# PARALLEL_MIN_OUTPUT elements (OpenBLAS splits the output, not the K sum: a 64x64 weight
# gradient summed over 512 rows gains nothing from a second thread). Measured on this 2-core
# machine with `python benchmarks/bench_llvm.py --gemm-threads`: 512x64x64 went 46 -> 27 us,
# 512x64x128 89 -> 48 us, 128x256x256 170 -> 98 us; 64x512x64 (Aᵀ@B) 49 -> 49 us.
PARALLEL_THRESHOLD = 2**21
PARALLEL_MIN_OUTPUT = 2**14

GLOBALS = {"float32": "bp_sgemm", "float64": "bp_dgemm"}


@dataclass
class MatmulPlan:
    copy_a: bool
    copy_b: bool


def layout(shape, strides):
    """('N' row-major | 'T' column-major, leading dimension) of a matrix view, or None."""
    (r, c), (rs, cs) = shape[-2:], strides[-2:]
    if cs == 1 or c == 1:
        ld = rs if r > 1 else max(c, 1)
        if ld >= max(1, c):
            return "N", ld
    if rs == 1 or r == 1:
        ld = cs if c > 1 else max(r, 1)
        if ld >= max(1, r):
            return "T", ld
    return None


def plan_shape(a_shape, b_shape, threshold: int) -> bool:
    """Whether a product of these operand shapes goes to BLAS (2-d or batched operands)."""
    if len(a_shape) < 2 or len(b_shape) < 2:
        return False
    m, k = a_shape[-2:]
    n = b_shape[-1]
    if not (m > 0 and n > 0 and k > 0):
        return False
    batch = math.prod(np.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2])))
    return m * n * k >= threshold or (batch > 1 and m * n * k >= min(BATCHED_MIN, threshold)
                                      and batch * m * n * k >= threshold)


def plan(node, a: View, b: View, threshold: int) -> MatmulPlan | None:
    if not plan_shape(a.shape, b.shape, threshold):
        return None
    return MatmulPlan(layout(a.shape, a.strides) is None, layout(b.shape, b.strides) is None)


def emit_gemm(ctx, node, a: View, b: View, out: View, p: MatmulPlan, beta: float = 0.0):
    """out = a @ b (beta=0) or out += a @ b (beta=1), batched over out's leading axes."""
    from .lower import broadcast_view, copy

    em, bld = ctx.em, ctx.em.b
    if p.copy_a:
        tmp = ctx.temps[(node, 0)]
        copy(ctx, a, tmp)
        a = broadcast_view(tmp, a.shape)
    if p.copy_b:
        tmp = ctx.temps[(node, 1)]
        copy(ctx, b, tmp)
        b = broadcast_view(tmp, b.shape)
    ty = F32 if node.dtype == "float32" else F64
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    ta, lda = layout(a.shape, a.strides)
    tb, ldb = layout(b.shape, b.strides)
    # an external symbol, bound by the loader with llvm.add_symbol (see `register`)
    gemm = ctx.em.declare(GLOBALS[node.dtype], VOID, [PTR] * 13)

    def cell(ty_, v):
        slot = ctx.alloca(ty_)
        bld.store(ir.Constant(ty_, v) if not isinstance(v, ir.Value) else v, slot)
        return slot

    INT = ir.IntType(library().int_bits)  # Fortran INTEGER of the bound BLAS (LP64 / ILP64)
    args_fixed = dict(
        ta=cell(I8, ord(tb)), tb=cell(I8, ord(ta)), m=cell(INT, N), n=cell(INT, M),
        k=cell(INT, K), alpha=cell(ty, 1.0), lda=cell(INT, ldb), ldb=cell(INT, lda),
        beta=cell(ty, beta), ldc=cell(INT, N))
    with em.nest(out.shape[:-2], "g") as bi:
        zero = [ir.Constant(ir.IntType(64), 0)] * 2
        pa = em.addr(ctx.ptr(a.buf), a.offset, a.strides, list(bi) + zero, ty)
        pb = em.addr(ctx.ptr(b.buf), b.offset, b.strides, list(bi) + zero, ty)
        pc = em.addr(ctx.ptr(out.buf), out.offset, out.strides, list(bi) + zero, ty)
        if ctx.blas_threads:
            setter, big = ctx.blas_threads
            if isinstance(big, ir.GlobalVariable):
                big = bld.load(big, typ=I32)
            one = ir.Constant(I32, 1)
            parallel = M * N * K >= PARALLEL_THRESHOLD and M * N >= PARALLEL_MIN_OUTPUT
            bld.call(setter, [big if parallel else one])
        f = args_fixed
        bld.call(gemm, [f["ta"], f["tb"], f["m"], f["n"], f["k"], f["alpha"], pb, f["lda"], pa,
                      f["ldb"], f["beta"], pc, f["ldc"]])


def capsule_address(name: str) -> int:
    """Address of a routine in scipy.linalg.cython_blas (raises ImportError without SciPy)."""
    from scipy.linalg import cython_blas

    cap = cython_blas.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype, get_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get_ptr(cap, get_name(cap))


@dataclass(frozen=True)
class BlasLibrary:
    name: str
    int_bits: int  # width of the Fortran INTEGER arguments
    sgemm: int
    dgemm: int
    set_threads: int | None  # openblas_set_num_threads_local, if exported


def _numpy_openblas() -> BlasLibrary | None:
    """NumPy's own OpenBLAS (wheels ship it as numpy.libs/libscipy_openblas64_*.so)."""
    import glob
    import os

    import numpy

    root = os.path.dirname(os.path.dirname(numpy.__file__))
    for lib in sorted(glob.glob(os.path.join(root, "numpy.libs", "libscipy_openblas64_*.so*"))):
        try:
            dll = ctypes.CDLL(lib)  # already loaded by numpy: the same handle
            s, d = dll.scipy_sgemm_64_, dll.scipy_dgemm_64_
        except (OSError, AttributeError):
            continue
        setter = getattr(dll, "openblas_set_num_threads_local", None)

        def addr(f):
            return ctypes.cast(f, ctypes.c_void_p).value

        return BlasLibrary(os.path.basename(lib), 64, addr(s), addr(d),
                           addr(setter) if setter is not None else None)
    return None


def _scipy_blas() -> BlasLibrary:
    return BlasLibrary("scipy.linalg.cython_blas", 32, capsule_address("sgemm"),
                       capsule_address("dgemm"), _scipy_threads_setter())


@functools.cache
def library() -> BlasLibrary:
    """The BLAS the generated code calls (see the module docstring for the preference)."""
    return _numpy_openblas() or _scipy_blas()


@functools.cache
def register() -> None:
    """Bind bp_sgemm / bp_dgemm (and the thread-count setter) for MCJIT, once per process."""
    import llvmlite.binding as llvm

    lib = library()
    llvm.add_symbol("bp_sgemm", lib.sgemm)
    llvm.add_symbol("bp_dgemm", lib.dgemm)
    if lib.set_threads:
        llvm.add_symbol(THREADS_SYMBOL, lib.set_threads)


THREADS_SYMBOL = "bp_blas_threads"


def threads_setter() -> int | None:
    """Address of OpenBLAS's `openblas_set_num_threads_local` in the bound BLAS, if any.

    It sets the calling thread's BLAS thread count and returns the previous one, so the
    generated code can pick a count for its own calls without touching anyone else's.
    """
    return library().set_threads


def _scipy_threads_setter() -> int | None:
    import glob
    import os

    try:
        import scipy

        root = os.path.dirname(os.path.dirname(scipy.__file__))
        for lib in glob.glob(os.path.join(root, "scipy.libs", "libscipy_openblas*.so*")):
            fn = getattr(ctypes.CDLL(lib), "openblas_set_num_threads_local", None)
            if fn is not None:
                return ctypes.cast(fn, ctypes.c_void_p).value
    except (ImportError, OSError):
        pass
    return None


def mode_global(module: ir.Module) -> ir.GlobalVariable:
    """i32 @bp_blas_mode: BLAS threads for big products in the current call ("auto")."""
    g = module.globals.get("bp_blas_mode")
    if g is None:
        g = ir.GlobalVariable(module, I32, "bp_blas_mode")
        g.initializer = ir.Constant(I32, 1)
    return g


class AdaptiveThreads:
    """blas_threads="auto": choose 1 or the caller's OpenBLAS thread count per call.

    Threaded OpenBLAS is ~1.6x faster on an idle 2-core machine and 10-100x slower when the
    cores are busy with other work (its workers spin and wait for CPU time). The generated
    code times every call (cycle counter) and keeps a moving average of log(cycles) per mode,
    alpha 1/2, so a mode that was slow during a burst of contention recovers in ~3 probes; it
    runs the faster mode, tries each mode twice first, and re-tries the other one every 16th
    call (bounding the cost of probing a bad mode to ~1/16 of the calls).
    State is per compiled function; calls are serialised by the GIL.
    """

    def __init__(self, em, module, prev):
        b = self.b = em.b
        self.em = em
        f64, i64t = ir.DoubleType(), ir.IntType(64)
        arr_f, arr_i = ir.ArrayType(f64, 2), ir.ArrayType(i64t, 2)
        self.ema = _global(module, "bp_blas_ema", arr_f)
        self.count = _global(module, "bp_blas_count", arr_i)
        self.calls = _global(module, "bp_blas_calls", i64t)
        calls = b.load(self.calls, typ=i64t)
        b.store(b.add(calls, ir.Constant(i64t, 1)), self.calls)

        def at(g, ty, k):
            return b.gep(g, [ir.Constant(I32, 0), k], inbounds=True)

        self.at = at
        zero, one = ir.Constant(I32, 0), ir.Constant(I32, 1)
        n0 = b.load(at(self.count, arr_i, zero), typ=i64t)
        n1 = b.load(at(self.count, arr_i, one), typ=i64t)
        e0 = b.load(at(self.ema, arr_f, zero), typ=f64)
        e1 = b.load(at(self.ema, arr_f, one), typ=f64)
        best = b.select(b.fcmp_ordered("<", e1, e0), one, zero)
        warm = ir.Constant(i64t, 2)
        explore = b.select(b.icmp_unsigned("<", n0, warm), zero,
                           b.select(b.icmp_unsigned("<", n1, warm), one, best))
        probe = b.icmp_unsigned("==", b.and_(calls, ir.Constant(i64t, 15)),
                                ir.Constant(i64t, 15))
        mode = b.select(probe, b.sub(one, explore), explore)
        b.store(b.select(b.icmp_unsigned("==", mode, one), prev, one), mode_global(module))
        self.mode = mode
        self.arr_f, self.arr_i = arr_f, arr_i
        self.t0 = b.call(em.declare("llvm.readcyclecounter", i64t, []), [])

    def finish(self):
        b, em = self.b, self.em
        f64, i64t = ir.DoubleType(), ir.IntType(64)
        t1 = b.call(em.declare("llvm.readcyclecounter", i64t, []), [])
        dt = b.uitofp(b.sub(t1, self.t0), f64)
        x = em.intrinsic("log", b.fadd(dt, ir.Constant(f64, 1.0)))
        pe = self.at(self.ema, self.arr_f, self.mode)
        pn = self.at(self.count, self.arr_i, self.mode)
        n = b.load(pn, typ=i64t)
        e = b.load(pe, typ=f64)
        upd = b.fadd(e, b.fmul(b.fsub(x, e), ir.Constant(f64, 0.5)))
        b.store(b.select(b.icmp_unsigned("==", n, ir.Constant(i64t, 0)), x, upd), pe)
        b.store(b.add(n, ir.Constant(i64t, 1)), pn)


def _global(module, name, ty):
    g = module.globals.get(name)
    if g is None:
        g = ir.GlobalVariable(module, ty, name)
        g.initializer = ir.Constant(ty, None)
    return g
