"""LLVM backend: the graph compiled with llvmlite to native code for this CPU.

Compile: schedule + memory plan (codegen.Program) -> IR -> verify -> O3 for the host CPU ->
object code (cached on disk, see cache.py) -> loaded into an MCJIT engine. One arena per
compiled function holds the outputs and the planned workspace, allocated once. Calls go
through a CPython-callable wrapper generated in the same module (pycall.py) when possible and
through ctypes otherwise.

Returned gradients are views of the arena and are overwritten by the next call of the same
function (copy them to keep them, or compile with `copy_outputs=True`).
"""

from __future__ import annotations

import ctypes
import threading
import time

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir

from ...errors import ArgumentError
from ...ir.node import Node
from ...ir.printer import format_graph
from . import blas, cache, jit, pycall
from .codegen import SPLIT_STEPS, Program
from .memplan import ALIGN

OPTIONS = ("gemm_threshold", "blas_threads", "copy_outputs", "fast_call", "cache", "opt")
# OpenBLAS threads for big BLAS calls (>= blas.PARALLEL_THRESHOLD): an int, None (OpenBLAS's
# own count), or "auto" (per call, whichever of 1 / OpenBLAS's count has been faster; see
# blas.AdaptiveThreads). "auto" by default: threaded OpenBLAS roughly halves the MNIST step on
# an idle 2-core machine (~0.9 ms vs ~1.6 ms), but when the cores are busy with other work its
# spinning workers make a step 10-100x slower; "auto" measures both and keeps the faster.
# (Threaded calls were catastrophic with SciPy's BLAS while NumPy's pool also spun: blas.py
# now binds NumPy's own OpenBLAS, so the process has one pool.)
BLAS_THREADS = "auto"


class LLVMBackend:
    name = "llvm"

    def __init__(self, outputs: list[Node], args: list[Node], title: str = "", **options):
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise TypeError(f"llvm backend: unknown options {sorted(unknown)}; "
                            f"choose from {OPTIONS}")
        jit.init()
        self.outputs, self.args, self.title = outputs, args, title
        self.gemm_threshold = int(options.get("gemm_threshold", blas.GEMM_THRESHOLD))
        self.copy_outputs = bool(options.get("copy_outputs", False))
        self.opt = int(options.get("opt", 3))
        t0 = time.perf_counter()
        self.program = Program(outputs, args, self.gemm_threshold,
                               options.get("blas_threads", BLAS_THREADS))
        self.module = build_module(self.program, title, with_pycall=options.get("fast_call", True))
        self._ir = str(self.module)
        self.tm = jit.target_machine(jit=True, opt=self.opt)
        key = cache.key(format_graph(outputs), self._ir, self.opt) if options.get(
            "cache", True) else None
        obj = cache.load(key) if key else None
        self.cache_hit = obj is not None
        self._optimized = None
        if obj is None:
            self._optimized = self._optimize()
            obj = self.tm.emit_object(self._optimized)
            if key:
                cache.store(key, obj)
        self.timings = {"llvm": time.perf_counter() - t0}
        blas.register()  # nested scan bodies may call BLAS too; binding is once per process
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), self.tm)
        self.engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self.engine.finalize_object()
        self._alloc_arena()
        addr = self.engine.get_function_address("bp_entry")
        # PYFUNCTYPE keeps the GIL held, so the native code of two calls never overlaps; the
        # Python around it in `run` (filling argv, copying results out of the shared arena)
        # can be interleaved by another thread, hence the lock. (The fast path, pycall.py,
        # runs entirely in native code under the GIL.)
        self._entry = ctypes.PYFUNCTYPE(None, ctypes.c_void_p)(addr)
        self._lock = threading.Lock()
        self._argv = (ctypes.c_void_p * (len(args) + len(outputs) + 1))()
        for j, a in enumerate(self.out_arrays):
            self._argv[len(args) + j] = a.ctypes.data
        self._argv[-1] = self.ws_addr

    # -- setup --------------------------------------------------------------------------------
    def _alloc_arena(self):
        """Outputs then workspace in one block, each 64-byte aligned, allocated once."""
        def up(n):
            return (n + ALIGN - 1) // ALIGN * ALIGN

        offs, top = [], 0
        for b in self.program.out_bufs:
            offs.append(top)
            top += up(max(b.nbytes, 1))
        ws_off = top
        top += max(self.program.memory.workspace_bytes, ALIGN)
        raw = np.zeros(top + ALIGN, np.uint8)
        start = (-raw.ctypes.data) % ALIGN
        self.arena = raw[start:start + top]
        self.out_arrays = []
        for b, off, o in zip(self.program.out_bufs, offs, self.outputs):
            arr = self.arena[off:off + b.nbytes].view(np.dtype(b.dtype)).reshape(o.shape)
            self.out_arrays.append(arr)
        self.ws_addr = self.arena.ctypes.data + ws_off
        self.arena_lo = self.arena.ctypes.data
        self.arena_hi = self.arena_lo + top

    # -- running ------------------------------------------------------------------------------
    def run(self, arrays: list[np.ndarray]):
        with self._lock:  # one call at a time owns argv, the arena and the result copies
            argv = self._argv
            for k, a in enumerate(arrays):
                p = a.ctypes.data
                if a.nbytes and p < self.arena_hi and p + a.nbytes > self.arena_lo:
                    a = a.copy()  # an earlier result fed back in: never read what we write
                    arrays[k] = a
                    p = a.ctypes.data
                argv[k] = p
            self._entry(argv)
            return self._results()

    def _results(self):
        value = self.out_arrays[0][()]
        grads = self.out_arrays[1:]
        if self.copy_outputs:
            grads = [g.copy() for g in grads]
        return value, list(grads)

    def _optimize(self):
        small = len(self.program.steps) <= SPLIT_STEPS
        return jit.optimize(self._ir, self.tm, speed=min(self.opt, 3), unroll=small)

    def make_caller(self, signature, grad_names):
        """The fast validated call path (pycall.py), or None to use the default one."""
        if self.copy_outputs:
            return None
        return pycall.make_caller(self, signature, grad_names)

    # -- inspection ---------------------------------------------------------------------------
    def source(self, stage: str | None = None) -> str:
        stage = stage or "llvm"
        if stage == "llvm-unoptimized":
            return self._ir
        if stage in ("llvm", "asm"):
            if self._optimized is None:  # loaded from the cache: redo the (deterministic) work
                self._optimized = self._optimize()
            return str(self._optimized) if stage == "llvm" else self.tm.emit_assembly(
                self._optimized)
        raise ArgumentError(f"llvm backend: unknown source stage {stage!r}; choose from None, "
                            "'llvm', 'llvm-unoptimized', 'asm'")

    def memory(self) -> dict:
        return self.program.memory.as_dict()


def build_module(program: Program, title: str = "", with_pycall: bool = True,
                 name: str = "bpcompile") -> ir.Module:
    module = ir.Module(name)
    triple, _, _ = jit.host()
    module.triple = triple
    program.emit(module)
    if with_pycall:
        pycall.emit_wrapper(module, program)
    if title:
        module.name = title[:200]
    return module

