"""The compiled-program cache: a graph as the user built it -> its compiled program on disk.

The first level of the compile cache (issue #14: warm compile under 50 ms at any depth). Its
key is the structural hash of the user's graph (`ir/fingerprint.py`, before stabilisation,
autodiff and the passes) plus everything else that changes the program: what is compiled
(loss and gradients w.r.t. which leaves, or named outputs), the arguments' declared order,
backend, passes, options, precision, and the environment — package version and a hash of the
compiler's own source, every module tunable (`UPPER_CASE` settings such as `SPLIT_STEPS`),
BPCOMPILE_* variables, Python and NumPy versions, and the backend's own (LLVM version, CPU and
its features, the BLAS the code links). A hit loads the backend's stored program without
running autodiff, the passes or codegen; what needs the graph (`fn.graph()`, `fn.source()`,
`fn.outputs`) compiles it once on first use. The second level stays the LLVM object cache
keyed by the IR (backends/llvm/cache.py), so graphs that simplify to the same program share
their object code; a warm entry names the object entry it runs.

Entries are stored by the object cache's secure store (the same directory, ownership checks,
header and HMAC; suffix `.warm`). A graph that cannot be keyed (a `custom_vjp` or a callable
checkpoint policy: Python functions) or a pass list holding functions skips this level.
Monkeypatching a function of the compiler is not seen by the key: compile with cache=False.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from .ir.fingerprint import Unkeyable, fingerprint_and_size
from .ir.node import Node
from .version import __version__

SUFFIX = ".warm"
# NumPy compiles of smaller graphs take a few ms: below this many nodes the key, a file read
# and a file per graph would cost about what they save (a 2-block transformer has ~130)
NUMPY_MIN_NODES = 64
_SIMPLE = (bool, int, float, str, type(None))


@functools.cache
def _py_files() -> tuple[tuple[tuple[str, ...], int, int], ...]:
    """(path parts below the package, size, mtime_ns) of every .py file of the compiler, sorted;
    os.scandir, not pathlib.rglob: 3-5x faster, and a fresh process pays it on its first key."""
    root = os.path.dirname(os.path.abspath(__file__))
    out = []
    stack = [((), root)]
    while stack:
        parts, path = stack.pop()
        with os.scandir(path) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    if e.name != "__pycache__":
                        stack.append((parts + (e.name,), e.path))
                elif e.name.endswith(".py"):
                    st = e.stat()
                    out.append((parts + (e.name,), st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


@functools.cache
def source_hash() -> str:
    """sha256 over the compiler's own source files (a changed rule or lowering is a miss): each
    file's path, size and modification time (reading them all cost ~6 ms per process)."""
    h = hashlib.sha256()
    for parts, size, mtime in _py_files():
        h.update(f"{'/'.join(parts)}:{size}:{mtime};".encode())
    return h.hexdigest()


def _plain(v: Any) -> Any:
    """`v` as JSON, or Unkeyable: options and tunables must be plain data to be keyed."""
    if isinstance(v, _SIMPLE):
        return [type(v).__name__, v]
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return [v.dtype.str, v.item()]
    raise Unkeyable(f"{type(v).__name__} value")


# the packages whose settings shape a compiled program (train/, inspect/, cli do not), less
# modules that run before the key is taken (their effect is in the graph) or never in a compile
_COMPILER = ("ir", "ops", "autodiff", "rewrite", "layers", "nn", "budget", "compiled")
_NOT_COMPILER = ("bpcompile.autodiff.batched", "bpcompile.autodiff.jacobian",
                 "bpcompile.backends.llvm.export")


@functools.cache
def _compiler_module_names(backend: str) -> tuple[str, ...]:
    """Every module of the compiler proper and of `backend` (whose settings are keyed)."""
    names = []
    for parts, _, _ in _py_files():
        parts = tuple(p[:-3] if p.endswith(".py") else p for p in parts)
        top = parts[0]
        if (top in _COMPILER or (top == "backends" and (len(parts) == 2 or parts[1] == backend))):
            name = ".".join(("bpcompile",) + (parts[:-1] if parts[-1] == "__init__" else parts))
            if name not in _NOT_COMPILER:
                names.append(name)
    return tuple(names)


def _settings_digest(mod: Any) -> str:
    """Digest of a module's plain UPPER_CASE settings, as they are now."""
    h = hashlib.blake2b(digest_size=16)
    for k, v in vars(mod).items():
        if k.isupper() and isinstance(v, _SIMPLE + (tuple,)):
            try:
                h.update(f"{k}={json.dumps(_plain(v))};".encode())
            except Unkeyable:
                continue
    return h.hexdigest()


# backend -> {module: its settings' digest right after a process imported it (None: no such
# module)}, kept on disk per source and environment, so a warm hit in a fresh process need not
# import modules the program never uses (4 such imports were ~15 ms of a 40-55 ms warm hit):
# a module nobody imported has the settings its source gives it
_DEFAULTS: dict[str, dict[str, str | None]] = {}


def tunables(backend: str) -> str:
    """Digest of every plain UPPER_CASE module setting of the compiler and the backend (tests
    and users set `emit.SPLIT_STEPS`, `blas.GEMM_THRESHOLD`, ... to change codegen): live values
    of imported modules, import-time values of the others."""
    import importlib

    names = _compiler_module_names(backend)
    defaults = _DEFAULTS.get(backend)
    if defaults is None:
        defaults = _DEFAULTS[backend] = _load_defaults(backend)
    fresh: dict[str, str | None] = {}
    for n in names:
        if n not in sys.modules and n not in defaults:
            try:
                fresh[n] = _settings_digest(importlib.import_module(n))
            except ImportError:
                fresh[n] = None
    if fresh:
        defaults.update(fresh)
        _store_defaults(backend, defaults)
    h = hashlib.blake2b(digest_size=16)
    for n in names:
        mod = sys.modules.get(n)
        h.update(f"{n}:{_settings_digest(mod) if mod is not None else defaults[n]};".encode())
    return h.hexdigest()


def _defaults_key(backend: str) -> str:
    from .backends.llvm import cache

    return cache.blob_key({"module-settings": _base_environment(backend)})


def _load_defaults(backend: str) -> dict:
    from .backends.llvm import cache

    blob = cache.load_blob(_defaults_key(backend), SUFFIX)
    try:
        d = json.loads(blob) if blob else {}
    except ValueError:
        return {}
    ok = isinstance(d, dict) and all(isinstance(v, (str, type(None))) for v in d.values())
    return d if ok else {}


def _store_defaults(backend: str, defaults: dict) -> None:
    from .backends.llvm import cache

    cache.store_blob(_defaults_key(backend), json.dumps(defaults).encode(), SUFFIX)


def _base_environment(backend: str) -> dict:
    """What the compiled program depends on besides the graph, options and module settings."""
    env = {"bpcompile": __version__, "source": source_hash(), "python": sys.version,
           "numpy": np.__version__,
           "vars": sorted((k, v) for k, v in os.environ.items()
                          if k.startswith("BPCOMPILE_") and k != "BPCOMPILE_CACHE_DIR")}
    if backend == "llvm":
        from .backends.llvm import warm

        env["llvm"] = warm.environment()
    return env


def environment(backend: str) -> dict:
    return {**_base_environment(backend), "tunables": tunables(backend)}


class Entry:
    """One program's key; `load` returns its stored payload, `store` writes one."""

    def __init__(self, fields: dict):
        from .backends.llvm import cache

        self.cache = cache
        self.key = cache.blob_key({"warm": fields})

    @classmethod
    def of(cls, kind: str, outputs: Sequence[Node], extra: Sequence[Node], args: Sequence[Node],
           labels: Sequence[str], backend: str, passes, options: dict,
           precision: Any) -> Entry | str:
        """The entry for this compile, or why it is not cached at the graph level."""
        if backend not in ("llvm", "numpy"):
            return f"no compile-cache for the {backend} backend"
        if not options.get("cache", True):
            return "cache=False"
        try:
            if passes is not None and not all(isinstance(p, str) for p in passes):
                return "passes given as functions"  # (name, function) pairs: nothing to key
            graph, size = fingerprint_and_size(outputs, extra, labels)
            if backend == "numpy" and size < NUMPY_MIN_NODES:
                return f"small graph ({size} nodes < NUMPY_MIN_NODES = {NUMPY_MIN_NODES})"
            fields = {
                "kind": kind, "graph": graph,
                "args": [a.attr("name") for a in args], "labels": list(labels),
                "backend": backend, "passes": None if passes is None else list(passes),
                "options": {k: _plain(v) for k, v in sorted(options.items())},
                "precision": repr(precision), "env": environment(backend),
            }
            return cls(fields)
        except (Unkeyable, ImportError) as e:
            return f"not keyed: {e}"

    def load(self) -> tuple[dict, dict[str, np.ndarray]] | None:
        """(payload, arrays) of the stored entry, or None."""
        blob = self.cache.load_blob(self.key, SUFFIX)
        if blob is None:
            return None
        try:
            return _unpack(blob)
        except (ValueError, KeyError, TypeError):
            self.discard()
            return None

    def store(self, payload: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
        self.cache.store_blob(self.key, _pack(payload, arrays or {}), SUFFIX)

    def discard(self) -> None:
        self.cache.discard(self.key, SUFFIX)


def _pack(payload: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """JSON (with each array's name, dtype and shape) + the arrays' bytes, in that order."""
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    payload = dict(payload, arrays=[[k, str(v.dtype), list(v.shape)] for k, v in arrays.items()])
    head = json.dumps(payload).encode()
    return b"".join([len(head).to_bytes(8, "little"), head] + [v.tobytes()
                                                               for v in arrays.values()])


def _unpack(blob: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    n = int.from_bytes(blob[:8], "little")
    payload = json.loads(blob[8:8 + n])
    arrays, off = {}, 8 + n
    for name, dtype, shape in payload["arrays"]:
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if off + count * dt.itemsize > len(blob):
            raise ValueError("truncated arrays")
        a = np.frombuffer(blob, dt, count, off).reshape(shape).copy()
        a.flags.writeable = False  # constants are read-only, as in a fresh compile
        arrays[name] = a
        off += count * dt.itemsize
    if off != len(blob):
        raise ValueError("trailing bytes")
    return payload, arrays


def open_program(backend: str, payload: dict, arrays: dict[str, np.ndarray], args: list[Node],
                 rebuild) -> Any:
    """The backend program a payload describes (LookupError when its object entry is gone or
    refused: the caller compiles afresh)."""
    if backend == "numpy":
        from .backends.numpy.warm import WarmNumpy

        return WarmNumpy(payload["backend"], arrays, rebuild)
    from .backends.llvm.warm import WarmLLVM

    return WarmLLVM(payload["backend"], args, rebuild)


def backend_state(backend: str, impl: Any,
                  tag: str) -> tuple[dict, dict[str, np.ndarray]] | None:
    """What to store for a compiled backend program: (JSON state, arrays), or None; `tag`:
    a name unique to the entry."""
    if backend == "numpy":
        from .backends.numpy import warm as numpy_warm

        return numpy_warm.state(impl, tag)
    from .backends.llvm import warm

    st = warm.state(impl)
    return None if st is None else (st, {})

