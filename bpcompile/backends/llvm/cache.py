"""On-disk cache of optimised object code, keyed by everything that determines it.

A second process compiling the same model loads the object file and skips LLVM's optimiser and
code generator. Loading an object maps and later runs its code, so the cache trusts nothing it
did not write itself (threat model: docs/reliability.md, "Object cache (LLVM)"):

- the directory must be owned by this user and not writable by group/others (it is created
  0700); otherwise the cache is off for it, with one warning per process;
- an entry is read only when it is a regular file owned by this user, below MAX_ENTRY_BYTES,
  opened without following symlinks and without blocking (lstat, then fstat of the open file);
- its header holds the full key (module hash, versions, target, CPU, codegen options) and must
  equal the one being looked up, so another model's entry copied in is a miss;
- an HMAC over header and object, keyed by a per-directory secret (0600, made here), proves
  that this cache wrote it; the ELF is then bounds-checked (elfcheck.py) before LLVM sees it;
- a damaged entry is deleted and recompiled; writes are atomic (0600 temp file, os.replace).
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
import json
import os
import secrets
import stat
import struct
import threading
import warnings
from dataclasses import dataclass

from . import elfcheck

# jit (llvmlite) is imported where an object is keyed, loaded or stored, not here: the NumPy
# backend's compile-cache (warm_cache.py) keeps its blobs here without loading LLVM (~30 ms)

MAGIC = b"BPCOBJ2\n"
SECRET = "hmac.key"
SECRET_BYTES = 32
MAX_ENTRY_BYTES = 256 << 20  # far above any object we emit; bounds what a read may allocate
_LEN = struct.Struct("<I")
_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_refused: dict[str, str] = {}  # directory -> why it is not used (warned once per process)
_refused_lock = threading.Lock()


@dataclass(frozen=True)
class Key:
    """`header`: the canonical text of every input that determines the object; `digest`: its
    sha256, the entry's file name."""

    digest: str
    header: bytes


def cache_dir() -> str:
    return os.environ.get("BPCOMPILE_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "bpcompile")


def key(graph_text: str, ir_text: str, opt: int, codegen: dict | None = None) -> Key:
    """The key of the object compiled from this graph and IR; `codegen`: every option of the
    target machine and optimisation pipeline that is not already visible in the IR."""
    from . import jit

    triple, cpu, features = jit.host()
    module = hashlib.sha256(graph_text.encode() + b"\0" + ir_text.encode()).hexdigest()
    fields = {"format": 2, "module_sha256": module, "bpcompile": _version(),
              "llvm": jit.versions(), "triple": triple, "cpu": cpu, "features": features,
              "opt": opt, "codegen": codegen or {}}
    header = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return Key(hashlib.sha256(header).hexdigest(), header)


def _version() -> str:
    """The installed bpcompile's version (package metadata, so a backend never imports the
    package root above it); "source" when running from an uninstalled tree."""
    try:
        return importlib.metadata.version("bpcompile")
    except importlib.metadata.PackageNotFoundError:
        return "source"


def load(k: Key) -> bytes | None:
    """The object code for `k`, or None (a miss) when absent, refused or damaged."""
    from . import jit

    machine = elfcheck.machine_for(jit.host()[0])
    dfd = _open_dir() if machine is not None else None
    if dfd is None:
        return None
    try:
        secret = _secret(dfd, create=False)
        data = _read(dfd, _name(k), MAX_ENTRY_BYTES)
        if secret is None or data is None:
            return None
        obj = _unpack(data, k, secret)
        if obj is None or elfcheck.check(obj, machine, _resolvable) is not None:
            _unlink(dfd, _name(k))  # ours (checked in _read) and damaged: recompile, rewrite
            return None
        return obj
    finally:
        os.close(dfd)


def store(k: Key, obj: bytes) -> None:
    """Best effort: a read-only or full disk just means no cache."""
    from . import jit

    if elfcheck.machine_for(jit.host()[0]) is not None:
        store_blob(k, obj, ".o")


def discard(k: Key, suffix: str = ".o") -> None:
    """Delete `k`'s entry (LLVM refused to load it, or a warm entry proved unusable)."""
    dfd = _open_dir()
    if dfd is not None:
        _unlink(dfd, _name(k, suffix))
        os.close(dfd)


def blob_key(fields: dict) -> Key:
    """The key of a non-object entry (the compiled-program cache's metadata) whose `fields`
    already name everything that determines it; JSON-serialisable."""
    header = json.dumps({"format": 2, **fields}, sort_keys=True,
                        separators=(",", ":")).encode()
    return Key(hashlib.sha256(header).hexdigest(), header)


def load_blob(k: Key, suffix: str) -> bytes | None:
    """The payload stored under `k` + `suffix` (the same ownership, header and MAC checks as
    object entries; no ELF check: the caller parses it), or None."""
    dfd = _open_dir()
    if dfd is None:
        return None
    try:
        secret = _secret(dfd, create=False)
        data = _read(dfd, _name(k, suffix), MAX_ENTRY_BYTES)
        if secret is None or data is None:
            return None
        blob = _unpack(data, k, secret)
        if blob is None:
            _unlink(dfd, _name(k, suffix))
        return blob
    finally:
        os.close(dfd)


def store_blob(k: Key, blob: bytes, suffix: str) -> None:
    """Best effort, as `store`."""
    if len(blob) > MAX_ENTRY_BYTES // 2:
        return
    dfd = _open_dir()
    if dfd is None:
        return
    try:
        secret = _secret(dfd, create=True)
        if secret is not None:
            head = MAGIC + _LEN.pack(len(k.header)) + k.header
            _write(dfd, _name(k, suffix), head + hmac.digest(secret, head + blob, "sha256")
                   + blob)
    except OSError:
        pass
    finally:
        os.close(dfd)


# -- helpers ----------------------------------------------------------------------------------
def _name(k: Key, suffix: str = ".o") -> str:
    return k.digest + suffix


def _open_dir() -> int | None:
    """A descriptor of the cache directory (every later access is relative to it, so the
    directory checked is the one used), or None when there is none or it is refused."""
    path = cache_dir()
    if path in _refused:
        return None
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None  # cannot be created or opened: simply no cache
    st = os.fstat(dfd)
    uid = os.geteuid()
    why = None
    if st.st_uid != uid:
        why = f"it is owned by uid {st.st_uid}, not by this user (uid {uid})"
    elif st.st_mode & 0o022:
        why = f"it is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    if why is None:
        return dfd
    os.close(dfd)
    with _refused_lock:
        first = path not in _refused
        _refused[path] = why
    if first:
        warnings.warn(f"bpcompile: LLVM object cache {path!r} not used for this process: {why}"
                      f"; anyone who can write there could plant code that we would run. "
                      f"Use a directory of your own (chmod 700) via BPCOMPILE_CACHE_DIR.",
                      RuntimeWarning, stacklevel=4)
    return None


def _read(dfd: int, name: str, limit: int) -> bytes | None:
    """The bytes of `name` when it is a regular file of ours no longer than `limit`; anything
    else (symlink, FIFO, device, directory, foreign or oversize file) is not read."""
    uid = os.geteuid()

    def ours(st):
        return stat.S_ISREG(st.st_mode) and st.st_uid == uid and st.st_size <= limit

    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if not ours(st):
            return None
        fd = os.open(name, _OPEN_READ, dir_fd=dfd)
    except OSError:
        return None
    try:
        st2 = os.fstat(fd)  # the file opened may not be the one lstat saw
        if not ours(st2) or (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino):
            return None
        chunks, left = [], st2.st_size + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        return data if len(data) == st2.st_size else None  # changed while read: a miss
    except OSError:
        return None
    finally:
        os.close(fd)


def _unpack(data: bytes, k: Key, secret: bytes) -> bytes | None:
    """The object in an entry whose header is exactly `k`'s and whose MAC verifies."""
    hl = len(k.header)
    head = len(MAGIC) + _LEN.size + hl
    if (len(data) <= head + 32 or not data.startswith(MAGIC)
            or _LEN.unpack_from(data, len(MAGIC))[0] != hl
            or data[len(MAGIC) + _LEN.size:head] != k.header):
        return None
    mac, obj = data[head:head + 32], data[head + 32:]
    if not hmac.compare_digest(mac, hmac.digest(secret, data[:head] + obj, "sha256")):
        return None
    return obj


def _secret(dfd: int, create: bool) -> bytes | None:
    """This directory's MAC key; made (0600, atomically) when absent or unusable and `create`."""
    s = _read(dfd, SECRET, SECRET_BYTES)
    mode = _mode_of(dfd, SECRET)
    if s is not None and len(s) == SECRET_BYTES and mode is not None and not mode & 0o077:
        return s
    if not create:
        return None
    new = secrets.token_bytes(SECRET_BYTES)
    try:
        tmp = _write_tmp(dfd, new)
        try:
            if mode is None:  # absent: link, so that a key another process just made wins
                os.link(tmp, SECRET, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
            else:  # unusable (damaged, foreign, not a file): replace it; old entries go stale
                os.replace(tmp, SECRET, src_dir_fd=dfd, dst_dir_fd=dfd)
            return new
        except FileExistsError:
            return _secret(dfd, create=False)
        finally:
            _unlink(dfd, tmp)
    except OSError:
        return None


def _mode_of(dfd: int, name: str) -> int | None:
    try:
        return stat.S_IMODE(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return None
    except OSError:
        return 0o777


def _write_tmp(dfd: int, data: bytes) -> str:
    tmp = f".tmp-{os.getpid()}-{secrets.token_hex(8)}"
    fd = os.open(tmp, _OPEN_NEW, 0o600, dir_fd=dfd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        _unlink(dfd, tmp)
        raise
    os.close(fd)
    return tmp


def _write(dfd: int, name: str, data: bytes) -> None:
    tmp = _write_tmp(dfd, data)
    try:
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)  # atomic, replaces any plant
    except OSError:
        _unlink(dfd, tmp)
        raise


def _unlink(dfd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except OSError:
        pass


_engine = None


def _resolvable(symbol: str) -> bool:
    """Whether MCJIT can resolve `symbol` (an unresolved one is a fatal error inside LLVM)."""
    global _engine
    import llvmlite.binding as llvm

    from . import jit

    if _engine is None:  # the first MCJIT engine makes the process's own symbols searchable
        _engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), jit.target_machine())
    return llvm.address_of_symbol(symbol) is not None
