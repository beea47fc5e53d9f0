"""The on-disk compile cache: a second process compiling the same model skips LLVM, and a
damaged entry is ignored."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import bpcompile as bp

pytest.importorskip("llvmlite")

SCRIPT = """
import numpy as np, bpcompile as bp
x = bp.input("x", (3, 2)); W = bp.param("W", (2, 2))
fn = bp.compile(bp.sum(bp.tanh(x @ W)), [W], backend="llvm")
v, g = fn(x=np.ones((3, 2), np.float32), W=np.full((2, 2), 0.5, np.float32))
print(fn.impl.cache_hit, float(v), g["W"].sum())
"""


def _run(cache):
    env = dict(os.environ, BPCOMPILE_CACHE_DIR=str(cache))
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    return out[0] == "True", float(out[1]), float(out[2])


def test_second_process_hits_the_cache(tmp_path):
    hit1, v1, g1 = _run(tmp_path)
    hit2, v2, g2 = _run(tmp_path)
    assert (hit1, hit2) == (False, True)
    assert (v1, g1) == (v2, g2)
    assert list(tmp_path.rglob("*.o"))


def _model():
    x = bp.input("x", (4, 3), "float64")
    W = bp.param("W", (3, 2), "float64")
    return bp.sum(bp.sigmoid(x @ W) ** 2), [W]


def test_corrupt_entries_are_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("BPCOMPILE_CACHE_DIR", str(tmp_path))
    loss, wrt = _model()
    vals = {"x": np.arange(12.0).reshape(4, 3) / 10, "W": np.ones((3, 2)) / 3}
    ref = bp.compile(loss, wrt, backend="numpy")(**vals)
    f1 = bp.compile(loss, wrt, backend="llvm")
    assert not f1.impl.cache_hit
    (entry,) = list(tmp_path.rglob("*.o"))
    for damage in (b"", b"garbage", entry.read_bytes()[:-100] + b"x" * 100):
        entry.write_bytes(damage)
        f2 = bp.compile(loss, wrt, backend="llvm")
        assert not f2.impl.cache_hit
        v, g = f2(**vals)
        np.testing.assert_allclose(v, ref[0], rtol=1e-12)
        np.testing.assert_allclose(g["W"], ref[1]["W"], rtol=1e-12)
    f3 = bp.compile(loss, wrt, backend="llvm")
    assert f3.impl.cache_hit  # the last recompilation rewrote a good entry
    np.testing.assert_allclose(f3(**vals)[1]["W"], ref[1]["W"], rtol=1e-12)


def test_cache_can_be_disabled_and_key_depends_on_options(tmp_path, monkeypatch):
    monkeypatch.setenv("BPCOMPILE_CACHE_DIR", str(tmp_path))
    loss, wrt = _model()
    bp.compile(loss, wrt, backend="llvm", cache=False)
    assert not list(tmp_path.rglob("*.o"))
    bp.compile(loss, wrt, backend="llvm")
    f = bp.compile(loss, wrt, backend="llvm", opt=2)
    assert not f.impl.cache_hit
    assert len(list(tmp_path.rglob("*.o"))) == 2


# -- threat model (docs/reliability.md, "Object cache (LLVM)") ----------------------------------
# Each case plants something in the cache, compiles, and must end in a recompilation (no hit)
# with the right answer; where the plant was a file we may replace, the next compile hits.

from bpcompile.backends.llvm import cache, elfcheck  # noqa: E402

VALS = {"x": np.arange(12.0).reshape(4, 3) / 10, "W": np.ones((3, 2)) / 3}


def _model_b():
    """Same signature and arena as _model, another function: its object must never serve A."""
    x = bp.input("x", (4, 3), "float64")
    W = bp.param("W", (3, 2), "float64")
    return bp.sum(bp.tanh(x @ W)), [W]


def _compile_and_check(model=_model, hit=False):
    loss, wrt = model()
    ref = bp.compile(loss, wrt, backend="numpy")(**VALS)
    fn = bp.compile(loss, wrt, backend="llvm")
    assert fn.impl.cache_hit == hit
    v, g = fn(**VALS)
    np.testing.assert_allclose(v, ref[0], rtol=1e-12)
    np.testing.assert_allclose(g["W"], ref[1]["W"], rtol=1e-12)
    return fn


def _entries(d):
    return sorted(d.rglob("*.o"))


@pytest.fixture
def cdir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("BPCOMPILE_CACHE_DIR", str(d))
    return d


def _primed(cdir):
    """The cache with _model's entry in it; returns that entry's path."""
    _compile_and_check()
    (entry,) = _entries(cdir)
    return entry


def test_directory_and_entries_are_private(cdir):
    entry = _primed(cdir)
    assert stat_mode(cdir) == 0o700
    assert stat_mode(entry) == 0o600 and stat_mode(cdir / cache.SECRET) == 0o600
    assert not list(cdir.glob(".tmp-*"))  # atomic writes leave no temporaries behind
    _compile_and_check(hit=True)


def stat_mode(p):
    return os.lstat(p).st_mode & 0o777


def _assert_refused_dir(cdir, why):
    """A planted valid entry (and its secret) in a refused directory is never loaded; one
    warning per process names the reason; nothing is written there."""
    import warnings

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        _compile_and_check()
        _compile_and_check()
    msgs = [str(x.message) for x in w if "object cache" in str(x.message)]
    assert len(msgs) == 1 and why in msgs[0], msgs
    assert issubclass(w[0].category, RuntimeWarning)


def test_group_writable_directory_is_refused(cdir):
    entry = _primed(cdir)
    os.chmod(cdir, 0o770)
    _assert_refused_dir(cdir, "writable by group or others")
    assert _entries(cdir) == [entry]


def test_world_writable_directory_is_refused(cdir):
    cdir.mkdir(mode=0o700)
    os.chmod(cdir, 0o1777)  # a /tmp-like directory: sticky does not make it ours alone
    _assert_refused_dir(cdir, "writable by group or others")
    assert not _entries(cdir)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to another user")
def test_foreign_owned_directory_is_refused(cdir):
    _primed(cdir)
    for p in [cdir, *cdir.iterdir()]:
        os.chown(p, 12345, 12345)
    _assert_refused_dir(cdir, "owned by uid 12345")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to another user")
def test_foreign_owned_entry_is_ignored_and_replaced(cdir):
    entry = _primed(cdir)
    os.chown(entry, 12345, 12345)
    _compile_and_check()
    assert os.lstat(entry).st_uid == os.geteuid()  # rewritten by us
    _compile_and_check(hit=True)


def test_swapped_entry_is_a_miss(cdir):
    entry = _primed(cdir)
    _compile_and_check(_model_b)
    (other,) = [p for p in _entries(cdir) if p != entry]
    entry.write_bytes(other.read_bytes())  # B's valid entry under A's name
    _compile_and_check()
    _compile_and_check(hit=True)
    _compile_and_check(_model_b, hit=True)


def test_truncated_entry_is_deleted_and_recompiled(cdir):
    entry = _primed(cdir)
    data = entry.read_bytes()
    for cut in (len(data) // 2, len(data) - 1, 10):
        entry.write_bytes(data[:cut])
        _compile_and_check()
        _compile_and_check(hit=True)


def test_entry_with_a_plain_checksum_but_no_valid_mac_is_refused(cdir):
    """Someone who can compute a checksum (old format: sha256 of the object) but does not
    hold the directory's secret cannot get an object loaded."""
    import hashlib
    import hmac

    entry = _primed(cdir)
    data = entry.read_bytes()
    hl = cache._LEN.unpack_from(data, len(cache.MAGIC))[0]
    head = data[:len(cache.MAGIC) + cache._LEN.size + hl]
    obj = data[len(head) + 32:]
    for mac in (hashlib.sha256(obj).digest(), hmac.digest(b"\0" * 32, head + obj, "sha256")):
        entry.write_bytes(head + mac + obj)
        _compile_and_check()
    _compile_and_check(hit=True)


def test_symlinked_entry_is_not_followed(cdir):
    entry = _primed(cdir)
    target = cdir.parent / "elsewhere.o"
    target.write_bytes(entry.read_bytes())  # a valid entry: following the link would hit
    entry.unlink()
    entry.symlink_to(target)
    _compile_and_check()
    assert not entry.is_symlink()  # replaced by a regular file of ours
    _compile_and_check(hit=True)


def test_fifo_entry_does_not_hang(cdir):
    import signal

    entry = _primed(cdir)
    entry.unlink()
    os.mkfifo(entry)

    class Blocked(Exception):  # not an OSError: the cache must not swallow it as a miss
        pass

    def timeout(*_):
        raise Blocked("compile blocked on a FIFO planted in the cache")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(10)
    try:
        _compile_and_check()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    _compile_and_check(hit=True)


def test_directory_at_entry_path_is_a_miss(cdir):
    entry = _primed(cdir)
    entry.unlink()
    entry.mkdir()
    _compile_and_check()  # cannot be replaced (os.replace onto a directory): just no cache
    _compile_and_check()


MAX_ENTRY = getattr(cache, "MAX_ENTRY_BYTES", 256 << 20)


def test_oversize_entry_is_not_read(cdir):
    import tracemalloc

    entry = _primed(cdir)
    with open(entry, "r+b") as f:
        f.truncate(MAX_ENTRY + 1)  # sparse: cheap to make, costly to read
    tracemalloc.start()
    try:
        _compile_and_check()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MAX_ENTRY // 4, peak
    assert entry.stat().st_size < 1 << 20
    _compile_and_check(hit=True)


GARBAGE_SCRIPT = r"""
import struct, sys, numpy as np, bpcompile as bp
from pathlib import Path
from bpcompile.backends.llvm import cache, elfcheck
x = bp.input("x", (4, 3), "float64"); W = bp.param("W", (3, 2), "float64")
loss = bp.sum(bp.sigmoid(x @ W) ** 2)
vals = {"x": np.arange(12.0).reshape(4, 3) / 10, "W": np.ones((3, 2)) / 3}
ref = bp.compile(loss, [W], backend="numpy")(**vals)
bp.compile(loss, [W], backend="llvm")
(entry,) = Path(sys.argv[1]).glob("*.o")
data = entry.read_bytes()
hl = cache._LEN.unpack_from(data, len(cache.MAGIC))[0]
k = cache.Key(entry.stem, data[len(cache.MAGIC) + 4:len(cache.MAGIC) + 4 + hl])
good = data[len(cache.MAGIC) + 4 + hl + 32:]
eh = elfcheck.EHDR.unpack_from(good)
shoff, shnum = eh[6], eh[12]
secs = [elfcheck.SHDR.unpack_from(good, shoff + i * 64) for i in range(shnum)]

def patch(fmt, off, *v):
    b = bytearray(good); struct.pack_into(fmt, b, off, *v); return bytes(b)

def sec(t):
    return next(i for i, s in enumerate(secs) if s[1] == t)

tls = next(i for i, s in enumerate(secs) if s[1] == elfcheck.SHT_PROGBITS and s[2] & 2 and s[5])
sym = secs[sec(elfcheck.SHT_SYMTAB)]
rela = secs[sec(elfcheck.SHT_RELA)]
names = {
    "section contents out of bounds": patch("<Q", shoff + 64 + 32, 1 << 52),
    "section table out of bounds": patch("<Q", 0x28, len(good) - 8),
    "symbol section index invalid": patch("<H", sym[4] + sym[5] - 24 + 6, 35011),
    "relocation offset out of bounds": patch("<Q", rela[4], 1 << 40),
    "relocation type unknown": patch("<Q", rela[4] + 8, (1 << 32) | 0x7777),
    "external symbol unresolvable": good.replace(b"\0exp\0", b"\0exq\0"),
    "not ELF": b"garbage!" * 100,
    "section flagged TLS": patch("<Q", shoff + 64 * tls + 8, secs[tls][2] | 0x400),
}
assert names["external symbol unresolvable"] != good
if len(sys.argv) > 2:  # dump them (to check each against LLVM's loader by hand)
    for i, bad in enumerate(names.values()):
        Path(sys.argv[2], f"v{i}.o").write_bytes(bad)
for name, bad in names.items():
    assert elfcheck.check(bad, 62, lambda s: s != "exq") is not None, name
    cache.store(k, bad)  # with a valid MAC: as if our own writer had produced it
    fn = bp.compile(loss, [W], backend="llvm")
    assert not fn.impl.cache_hit, name
    v, g = fn(**vals)
    np.testing.assert_allclose(g["W"], ref[1]["W"], rtol=1e-12, err_msg=name)
    assert bp.compile(loss, [W], backend="llvm").impl.cache_hit, name
print("ok", len(names))
"""


@pytest.mark.skipif(elfcheck.machine_for(__import__("platform").machine()) != 62,
                    reason="the damaged objects are built for x86-64")
def test_garbage_sections_with_valid_mac_never_reach_llvm(tmp_path):
    """Handed to LLVM's loader (LLVM 22), five of these objects abort the process ('LLVM
    ERROR: section ... greater than the file size', 'invalid section index', 'allocation of
    TLS not implemented', an assertion on the relocation type), two crash it (SIGSEGV), and two
    load with a relocation written 1 TiB past its section or an unresolved external. So the
    check runs in a child process, which must recompile every one and get the right answer."""
    env = dict(os.environ, BPCOMPILE_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", GARBAGE_SCRIPT, str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok"), (r.returncode, r.stderr[-2000:])


def test_object_without_entry_point_is_a_miss_and_replaced(cdir):
    """Past every check, an object LLVM maps but that lacks bp_entry (here: a well-formed
    object of an empty module, stored with a valid MAC) is a miss, deleted and rewritten."""
    import llvmlite.binding as llvm

    from bpcompile.backends.llvm import jit

    entry = _primed(cdir)
    data = entry.read_bytes()
    hl = cache._LEN.unpack_from(data, len(cache.MAGIC))[0]
    k = cache.Key(entry.stem, data[len(cache.MAGIC) + 4:len(cache.MAGIC) + 4 + hl])
    empty = jit.target_machine().emit_object(llvm.parse_assembly(""))
    assert elfcheck.check(empty, elfcheck.machine_for(jit.host()[0]), lambda s: True) is None
    cache.store(k, empty)
    _compile_and_check()
    _compile_and_check(hit=True)


def test_elf_check_is_total_on_damaged_objects():
    """The checker itself never raises (a raise would fail the compile instead of missing):
    random byte damage and truncation of a real object give None or a reason."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from bpcompile.backends.llvm import jit

    machine = elfcheck.machine_for(jit.host()[0])
    if machine is None:
        pytest.skip("no ELF check on this host")
    loss, wrt = _model()
    fn = bp.compile(loss, wrt, backend="llvm", cache=False)
    good = fn.impl.tm.emit_object(fn.impl._optimize())
    assert elfcheck.check(good, machine, cache._resolvable) is None

    @settings(max_examples=100, deadline=None, derandomize=True)
    @given(st.lists(st.tuples(st.integers(0, len(good) - 1), st.integers(0, 255)), max_size=8),
           st.integers(0, len(good)))
    def check(edits, cut):
        bad = bytearray(good[:cut])
        for pos, byte in edits:
            if pos < len(bad):
                bad[pos] = byte
        why = elfcheck.check(bytes(bad), machine, cache._resolvable)
        assert why is None or isinstance(why, str)
        if cut < 64:
            assert why is not None

    check()
