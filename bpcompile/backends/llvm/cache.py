"""On-disk cache of optimised object code, keyed by everything that determines it.

The key hashes the graph text, the unoptimised IR (which already encodes shapes, dtypes and
options such as the GEMM threshold), the optimisation level, bpcompile's version, the
llvmlite/LLVM versions and the host CPU name and features. A second process compiling the same
model loads the object file and skips LLVM's optimiser and code generator. Entries are written
atomically; an unreadable or corrupt entry is ignored (and recompiled), never fatal.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from . import jit

MAGIC = b"BPCOBJ1\n"


def cache_dir() -> str:
    return os.environ.get("BPCOMPILE_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "bpcompile")


def key(graph_text: str, ir_text: str, opt: int) -> str:
    from ... import __version__

    triple, cpu, features = jit.host()
    h = hashlib.sha256()
    for part in (graph_text, ir_text, str(opt), __version__, jit.versions(), triple, cpu,
                 features):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _path(k: str) -> str:
    return os.path.join(cache_dir(), k[:2], k + ".o")


def load(k: str) -> bytes | None:
    """The object code for key `k`, or None when absent or damaged."""
    try:
        with open(_path(k), "rb") as f:
            data = f.read()
    except OSError:
        return None
    head = len(MAGIC) + 32
    if len(data) <= head or not data.startswith(MAGIC):
        return None
    digest, obj = data[len(MAGIC):head], data[head:]
    if hashlib.sha256(obj).digest() != digest or not obj.startswith(b"\x7fELF"):
        return None
    return obj


def store(k: str, obj: bytes) -> None:
    """Best effort: a read-only or full disk just means no cache."""
    path = _path(k)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + hashlib.sha256(obj).digest() + obj)
        os.replace(tmp, path)
    except OSError:
        pass
