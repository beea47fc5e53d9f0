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
