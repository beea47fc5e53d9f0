"""LLVM backend: the graph compiled with llvmlite to native code for this CPU.

Compile: schedule + memory plan (codegen.Program) -> IR -> verify -> O3 for the host CPU ->
object code (cached on disk, see cache.py) -> loaded into an MCJIT engine. One arena per
compiled function and calling thread (`Arena`) holds the outputs and the planned workspace,
allocated on the thread's first call. Calls go through a CPython-callable wrapper generated in
the same module (pycall.py) when possible and through ctypes otherwise.

Returned arrays are views of the calling thread's arena and are overwritten by that thread's
next call of the same function, never by another thread's (copy them to keep them, or compile
with `copy_outputs=True`).
"""

from __future__ import annotations

import ctypes
import re
import threading
import time

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir

from ...errors import ArgumentError
from ...ir.node import Node
from ...ir.printer import format_graph
from ...ops.custom import inline as inline_custom
from ...ops.index import describe_site, index_range, range_error
from ...rewrite.engine import BackendRules
from . import blas, cache, jit, pycall, rules
from .codegen import Program
from .emit import UNROLL_STEPS
from .lower import STATUS
from .memplan import ALIGN
from .timeline import timeline

OPTIONS = ("gemm_threshold", "blas_threads", "copy_outputs", "fast_call", "cache", "opt")
# OpenBLAS threads for big BLAS calls (>= blas.PARALLEL_THRESHOLD): an int, None (OpenBLAS's
# own count), or "auto" (per call, whichever of 1 / OpenBLAS's count has been faster; see
# blas.AdaptiveThreads). "auto" by default: threaded OpenBLAS roughly halves the MNIST step on
# an idle 2-core machine (~0.9 ms vs ~1.6 ms), but when the cores are busy with other work its
# spinning workers make a step 10-100x slower; "auto" measures both and keeps the faster.
# (Threaded calls were catastrophic with SciPy's BLAS while NumPy's pool also spun: blas.py
# now binds NumPy's own OpenBLAS, so the process has one pool.)
BLAS_THREADS = "auto"
_IR_COMMENT = re.compile(r"^[ \t]*;.*\n", re.M)  # a whole-line IR comment (emit.step_note)


def _gemm_threshold(options: dict) -> int:
    return int(options.get("gemm_threshold", blas.GEMM_THRESHOLD))


class LLVMBackend:
    name = "llvm"

    @classmethod
    def backend_rules(cls, options: dict) -> BackendRules:
        """rules.py's rule list for these options (the pipeline applies it, protocol.Rewrites)."""
        return rules.backend_rules(_gemm_threshold(options))

    def __init__(self, outputs: list[Node], args: list[Node], title: str = "", **options):
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise TypeError(f"llvm backend: unknown options {sorted(unknown)}; "
                            f"choose from {OPTIONS}")
        jit.init()
        outputs = inline_custom(outputs)  # custom_vjp nodes the pipeline left (lower.INLINED)
        self.outputs, self.args, self.title = outputs, args, title
        self.gemm_threshold = _gemm_threshold(options)
        self.copy_outputs = bool(options.get("copy_outputs", False))
        self.opt = int(options.get("opt", 3))
        t0 = time.perf_counter()
        self.program = Program(outputs, args, self.gemm_threshold,
                               options.get("blas_threads", BLAS_THREADS))
        t1 = time.perf_counter()
        self.module = build_module(self.program, title, with_pycall=options.get("fast_call", True))
        t2 = time.perf_counter()
        self._ir = str(self.module)
        # schedules split into step functions (> emit.SPLIT_STEPS): distinct kernels vs calls
        self.kernel_stats = {"llvm_kernels": len(self.module.__dict__.get("_bp_kernels", ())),
                             "llvm_kernel_calls":
                                 self.module.__dict__.get("_bp_kernel_calls", [0])[0]}
        # seconds per stage of this compile (benchmarks/bench_compile_scale.py prints them)
        self.timings = {"schedule": t1 - t0, "ir build": t2 - t1,
                        "ir text": time.perf_counter() - t2}
        self.tm = jit.target_machine(jit=True, opt=self.opt)
        # bound before a cached object is checked: its external symbols must all resolve
        blas.register()  # nested scan bodies may call BLAS too; binding is once per process
        # keyed on the code without its comments: the same graph built on another source line
        # (a comment naming `model.py:12`) is the same object file
        key = cache.key(format_graph(outputs), _IR_COMMENT.sub("", self._ir), self.opt,
                        self._codegen()) if (
            options.get("cache", True)) else None
        self.obj_key = key  # the warm cache (warm.py) refers to this object entry
        obj = cache.load(key) if key else None
        self.cache_hit = obj is not None
        self._optimized = None
        t3 = time.perf_counter()
        try:
            addr = self._load(obj) if obj is not None else 0
        except RuntimeError:  # LLVM refused the cached object: a miss, never an error
            addr = 0
        if not addr:
            if obj is not None:
                cache.discard(key)
                # that engine owns self.tm (llvmlite): a second engine needs a TM of its own
                self.tm = jit.target_machine(jit=True, opt=self.opt)
            self.cache_hit = False
            t4 = time.perf_counter()
            self._optimized = self._optimize()
            t5 = time.perf_counter()
            obj = self.tm.emit_object(self._optimized)
            self.timings.update(optimize=t5 - t4, emit=time.perf_counter() - t5)
            if key:
                cache.store(key, obj)
            addr = self._load(obj)
        self.timings["cache+load"] = (time.perf_counter() - t3 - self.timings.get("optimize", 0)
                                      - self.timings.get("emit", 0))
        self.timings["llvm"] = time.perf_counter() - t0
        self._entry = ctypes.PYFUNCTYPE(None, ctypes.c_void_p)(addr)
        self._local = threading.local()  # .arena: the calling thread's Arena, made lazily
        # computed indices out of range: the kernels record the first one in a status word of
        # the module (lower.py), shared by every arena of this function; `IndexStatus` resets,
        # calls and reads it under one lock, so no thread sees another's miss or loses its own
        self.index_sites = self.module.__dict__.get("_bp_index_sites", [])
        self._status = None
        if self.index_sites:
            st = self.engine.get_global_value_address(STATUS)
            self._status = IndexStatus((ctypes.c_int64 * 2).from_address(st), self.index_sites)

    # -- setup --------------------------------------------------------------------------------
    def _codegen(self) -> dict:
        """Codegen settings not visible in the IR (part of the object cache's key)."""
        return {"tm": "mcjit-jitdefault", "speed": min(self.opt, 3),
                "unroll": len(self.program.steps) <= UNROLL_STEPS}

    def _load(self, obj: bytes) -> int:
        """Map `obj` into a fresh MCJIT engine; the address of bp_entry (0 if absent)."""
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), self.tm)
        self.engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self.engine.finalize_object()
        return self.engine.get_function_address("bp_entry")

    # -- running ------------------------------------------------------------------------------
    def thread_arena(self) -> Arena:
        """The calling thread's arena (made on its first call; freed with the thread, or later
        while arrays it returned are alive): concurrent calls never share output buffers."""
        arena = getattr(self._local, "arena", None)
        if arena is None:
            arena = self._local.arena = self.new_arena()
        return arena

    def new_arena(self) -> Arena:
        """An arena owned by nobody but the caller (the train step pins one per instance)."""
        return Arena(self.program, self.outputs, len(self.args), self._entry, self._status)

    def run(self, arrays: list[np.ndarray]):
        return self.thread_arena().run(arrays, self.copy_outputs)

    def _optimize(self):
        cg = self._codegen()
        return jit.optimize(self._ir, self.tm, speed=cg["speed"], unroll=cg["unroll"])

    def make_caller(self, signature, grad_names, pinned: bool = False):
        """The fast validated call path (pycall.py), or None to use the default one.

        Default: the calling thread's arena, per thread. `pinned=True`: one new arena used from
        whichever thread calls (the caller serialises the calls; None with copy_outputs)."""
        if pinned:
            return None if self.copy_outputs else pycall.make_pinned_caller(
                self, signature, grad_names)
        return pycall.make_caller(self, signature, grad_names, copy=self.copy_outputs)

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

    def memory_timeline(self) -> list[dict]:
        """Bytes live at each step of the schedule (timeline.py)."""
        return timeline(self.program)


class IndexStatus:
    """The module's index status word ([site + 1, bad index], 0 when all computed indices were
    in range) and the nodes of its sites. Native code holds the GIL, but Python may switch
    threads between a call and reading the word: the lock makes reset, call and read one step.
    (The native fast path saves the word, runs from 0 and puts it back while it holds the GIL,
    so it never disturbs a holder of the lock; on a miss of its own it retries here.)"""

    def __init__(self, word, sites: list[Node]):
        self.word, self.sites, self.lock = word, sites, threading.Lock()

    def call(self, entry, argv):
        with self.lock:
            self.word[0] = 0
            entry(argv)
            site, bad = int(self.word[0]), int(self.word[1])
            self.word[0] = 0
        if site:
            raise range_error(*self.describe(site - 1), bad)

    def describe(self, k: int) -> tuple[str, int, int]:
        """(what, lo, hi) of index site k, for the error."""
        node = self.sites[k]
        _, lo, hi, _ = index_range(node)
        return describe_site(node), lo, hi


class Arena:
    """Output buffers + workspace in one block (each 64-byte aligned), and the ctypes argv that
    points at them. Used by one thread at a time: its own (LLVMBackend.thread_arena), or the
    train step's under the step's lock. References no backend, so a thread-local arena never
    keeps a compiled function alive."""

    def __init__(self, program: Program, outputs: list[Node], nargs: int, entry,
                 status: IndexStatus | None = None):
        def up(n):
            return (n + ALIGN - 1) // ALIGN * ALIGN

        offs, top = [], 0
        for b in program.out_bufs:
            offs.append(top)
            top += up(max(b.nbytes, 1))
        ws_off = top
        top += max(program.memory.workspace_bytes, ALIGN)
        raw = np.zeros(top + ALIGN, np.uint8)
        start = (-raw.ctypes.data) % ALIGN
        self.block = raw[start:start + top]
        self.out_arrays = []
        for b, off, o in zip(program.out_bufs, offs, outputs):
            arr = self.block[off:off + b.nbytes].view(np.dtype(b.dtype)).reshape(o.shape)
            self.out_arrays.append(arr)
        self.ws_addr = self.block.ctypes.data + ws_off
        self.lo = self.block.ctypes.data
        self.hi = self.lo + top
        # PYFUNCTYPE keeps the GIL held while native code runs; argv and the outputs are this
        # arena's own, so Python around the call needs no lock.
        self.entry, self.status = entry, status
        self.argv = (ctypes.c_void_p * (nargs + len(outputs) + 1))()
        for j, a in enumerate(self.out_arrays):
            self.argv[nargs + j] = a.ctypes.data
        self.argv[-1] = self.ws_addr

    def run(self, arrays: list[np.ndarray], copy: bool):
        argv = self.argv
        for k, a in enumerate(arrays):
            p = a.ctypes.data
            if a.nbytes and p < self.hi and p + a.nbytes > self.lo:
                a = a.copy()  # an earlier result fed back in: never read what we write
                arrays[k] = a
                p = a.ctypes.data
            argv[k] = p
        if self.status is None:
            self.entry(argv)
        else:
            self.status.call(self.entry, argv)
        first, rest = self.out_arrays[0], self.out_arrays[1:]
        if copy:  # every output, the first one too when it is an array (bp.function)
            return first[()] if first.ndim == 0 else first.copy(), [g.copy() for g in rest]
        return first[()], list(rest)


def build_module(program: Program, title: str = "", with_pycall: bool = True,
                 name: str = "bpcompile") -> ir.Module:
    module = ir.Module(name)
    triple, _, _ = jit.host()
    module.triple = triple
    main = program.emit(module)
    if "bp_main.run" in module.globals:  # split: callers use run(argv); drop the wide bp_main
        main.linkage = "internal"
    if with_pycall:
        pycall.emit_wrapper(module, program)
    if title:
        module.name = title[:200]
    return module

