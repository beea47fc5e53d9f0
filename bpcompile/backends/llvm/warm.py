"""An LLVM program loaded from the compile cache without its graph (the warm path).

`state(backend)` is what a compiled `LLVMBackend` must leave behind for a later process to
run it: the object cache key of its code, the output buffers and workspace size, the fast
path's index bounds, the memory plan, the index-check sites (already described for error
messages) and the kernel counts; all JSON. `WarmLLVM(state, args)` maps the object and runs it
through the same `Arena`, `IndexStatus` and fast call wrapper as a fresh compile. What needs
the scheduled graph itself (the IR text, the memory timeline) comes from `rebuild()`, a full
compile that the front end supplies and runs at most once, on first use.
"""

from __future__ import annotations

import ctypes
import hashlib
import threading
from collections.abc import Callable
from types import SimpleNamespace

import llvmlite.binding as llvm

from ...ir.node import Node
from ...ops.index import describe_site, index_range
from . import blas, cache, jit, pycall
from .backend import Arena, IndexStatus, LLVMBackend
from .lower import STATUS


def environment() -> dict:
    """What a cached program depends on besides its graph and options: LLVM, the CPU, the
    BLAS its code calls (ILP64 NumPy OpenBLAS or LP64 SciPy, thread setter or not)."""
    triple, cpu, features = jit.host()
    lib = blas.library()
    return {"llvm": jit.versions(), "triple": triple, "cpu": cpu, "features": features,
            "blas": [lib.name, lib.int_bits, lib.set_threads is not None]}


def state(backend: LLVMBackend) -> dict | None:
    """The warm state of a compiled backend (None when it was compiled without the cache)."""
    if backend.obj_key is None:
        return None
    p = backend.program
    sites = []
    for n in backend.index_sites:
        _, lo, hi, _ = index_range(n)
        sites.append([describe_site(n), int(lo), int(hi)])
    return {
        "obj_key": backend.obj_key.header.decode(),
        "out_bufs": [[int(b.nbytes), str(b.dtype)] for b in p.out_bufs],
        "outputs": [[list(o.shape), str(o.dtype)] for o in backend.outputs],
        "workspace_bytes": int(p.memory.workspace_bytes),
        "memory": p.memory.as_dict(),
        "bounds": {k: [int(lo), int(hi)] for k, (lo, hi) in p.bounds.items()},
        "index_sites": sites,
        "kernel_stats": dict(backend.kernel_stats),
        "copy_outputs": backend.copy_outputs,
        "opt": backend.opt,
    }


class _WarmStatus(IndexStatus):
    """`IndexStatus` over stored sites: (description, lo, hi) instead of the nodes."""

    def describe(self, k: int) -> tuple[str, int, int]:
        return self.sites[k]


class _Program(SimpleNamespace):
    """What the runtime reads of a `Program` (buffers, bounds, workspace size); anything else
    (steps, buffers, views) comes from the rebuilt program."""

    def __init__(self, full: Callable, **fields):
        super().__init__(**fields)
        self._full_program = full

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._full_program(), name)


class WarmLLVM:
    """The runtime half of an `LLVMBackend`, from a warm state and the object code; whatever
    else an `LLVMBackend` offers comes from the rebuilt backend (`full()`)."""

    name = "llvm"

    def __init__(self, st: dict, args: list[Node], rebuild: Callable[[], LLVMBackend]):
        jit.init()
        blas.register()  # the object's BLAS symbols must resolve before it is checked
        key = cache.Key(hashlib.sha256(st["obj_key"].encode()).hexdigest(),
                        st["obj_key"].encode())
        obj = cache.load(key)
        if obj is None:
            raise LookupError("object entry missing or damaged")
        self.tm = jit.target_machine(jit=True, opt=int(st["opt"]))
        try:
            self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), self.tm)
            self.engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
            self.engine.finalize_object()
            addr = self.engine.get_function_address("bp_entry")
        except RuntimeError as e:  # LLVM refused it: the front end compiles afresh
            cache.discard(key)
            raise LookupError("object refused") from e
        if not addr:
            cache.discard(key)
            raise LookupError("object has no entry point")
        self.args, self._rebuild, self._full = args, rebuild, None
        self.outputs = [SimpleNamespace(shape=tuple(s), dtype=d) for s, d in st["outputs"]]
        self.program = _Program(
            lambda: self.full().program, args=args, outputs=self.outputs,
            bounds={k: (lo, hi) for k, (lo, hi) in st["bounds"].items()},
            out_bufs=[SimpleNamespace(nbytes=n, dtype=d) for n, d in st["out_bufs"]],
            memory=SimpleNamespace(workspace_bytes=st["workspace_bytes"]))
        self._memory = st["memory"]
        self.kernel_stats = st["kernel_stats"]
        self.copy_outputs = bool(st["copy_outputs"])
        self.cache_hit, self.warm_hit = True, True
        self.timings: dict = {}
        self._entry = ctypes.PYFUNCTYPE(None, ctypes.c_void_p)(addr)
        self._local = threading.local()
        self._status = None
        if st["index_sites"]:
            word = (ctypes.c_int64 * 2).from_address(self.engine.get_global_value_address(STATUS))
            self._status = _WarmStatus(word, st["index_sites"])

    # -- running: the same arenas and fast path as LLVMBackend ---------------------------------
    thread_arena = LLVMBackend.thread_arena
    run = LLVMBackend.run

    def new_arena(self) -> Arena:
        return Arena(self.program, self.outputs, len(self.args), self._entry,  # type: ignore
                     self._status)

    def make_caller(self, signature, grad_names, pinned: bool = False):
        if pinned:
            return None if self.copy_outputs else pycall.make_pinned_caller(
                self, signature, grad_names)
        return pycall.make_caller(self, signature, grad_names, copy=self.copy_outputs)

    # -- inspection ---------------------------------------------------------------------------
    def full(self) -> LLVMBackend:
        """The compiled backend this program came from, rebuilt once (its object is cached)."""
        if self._full is None:
            self._full = self._rebuild()
        return self._full

    def source(self, stage: str | None = None) -> str:
        return self.full().source(stage)

    def memory(self) -> dict:
        return dict(self._memory)

    def memory_timeline(self) -> list[dict]:
        return self.full().memory_timeline()

    @property
    def index_sites(self) -> list[Node]:
        return self.full().index_sites

    def __getattr__(self, name: str):
        # only for what an LLVMBackend has and a warm program lacks (the IR, the module,
        # `_optimize`, ...); never for protocol probes (`isinstance(impl, JaxProgram)` asks
        # for `dp`), which must not compile the graph
        if name in _FROM_FULL or (hasattr(LLVMBackend, name) and not name.startswith("__")):
            return getattr(self.full(), name)
        raise AttributeError(name)


# LLVMBackend's instance attributes that a warm program does not have of its own
_FROM_FULL = frozenset(("module", "_ir", "_optimized", "title", "gemm_threshold", "obj_key"))
