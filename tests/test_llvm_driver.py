"""The LLVM table driver (backends/llvm/driver.py): a long split schedule runs as a loop over a
constant table of kernel calls, with results bit-identical to the straight-line driver."""

from __future__ import annotations

import re

import numpy as np
import pytest

import bpcompile as bp
from bpcompile.backends.llvm import emit

pytest.importorskip("llvmlite")

STRAIGHT = 10**9  # emit.TABLE_STEPS for which every split schedule stays straight-line


def residual_mlp(depth: int, width: int = 8, batch: int = 4):
    x, y = bp.input("x", (batch, width)), bp.input("y", (batch, width))
    ps, h = [], x
    for i in range(depth):
        W, b = bp.param(f"W{i}", (width, width)), bp.param(f"b{i}", (width,))
        ps += [W, b]
        h = h + bp.tanh(h @ W + b)
    loss = bp.mean((h - y) ** 2)
    r = np.random.default_rng(depth)
    args = {p.attr("name"): (r.standard_normal(p.shape) * 0.3).astype(np.float32) for p in ps}
    args.update(x=r.standard_normal((batch, width)).astype(np.float32),
                y=r.standard_normal((batch, width)).astype(np.float32))
    return loss, ps, args


def compile_with(monkeypatch, loss, wrt, table_steps: int, split_steps: int | None = None):
    monkeypatch.setattr(emit, "TABLE_STEPS", table_steps)
    if split_steps is not None:
        monkeypatch.setattr(emit, "SPLIT_STEPS", split_steps)
    return bp.compile(loss, wrt, backend="llvm", cache=False)


def assert_same_results(a, b, args):
    va, ga = a(**args)
    vb, gb = b(**args)
    assert float(va) == float(vb)
    assert sorted(ga) == sorted(gb)
    for k in ga:
        np.testing.assert_array_equal(ga[k], gb[k], err_msg=k)


def check_against_numpy(fn, loss, wrt, args, rtol=2e-4):
    v, g = fn(**args)
    rv, rg = bp.compile(loss, wrt, backend="numpy")(**args)
    np.testing.assert_allclose(float(v), float(rv), rtol=rtol)
    for k in rg:
        np.testing.assert_allclose(g[k], rg[k], rtol=rtol, atol=1e-5, err_msg=k)


def test_long_schedule_uses_the_table(monkeypatch):
    loss, wrt, args = residual_mlp(12)
    table = compile_with(monkeypatch, loss, wrt, emit.TABLE_STEPS)
    nsteps = len(table.impl.program.steps)
    assert nsteps > emit.TABLE_STEPS > emit.SPLIT_STEPS
    ir_text = table.source("llvm-unoptimized")
    assert '@"bp_main.table"' in ir_text and '@"bp_main.code"' in ir_text
    assert "bp_main.part" not in ir_text
    # the driver's code grows with neither steps nor kernels: one call per kernel arity
    driver = ir_text[ir_text.index('define internal void @"bp_main.table"'):]
    driver = driver[:driver.index("\n}\n")]
    st = table.impl.kernel_stats
    heads = re.findall(r'^define internal void @"?bp_k[\w.]+"?\(([^)]*)\)', ir_text, re.M)
    arities = {h.count("ptr") for h in heads}
    assert len(re.findall(r"^\s+call void %", driver, re.M)) == len(arities) < st["llvm_kernels"]
    # ...and the schedule stays readable: one comment row per step, naming kernel and step
    rows = re.findall(r"^\s+; \[\d+\] (bp_k\d+\.\w+)\((.*?)\)  (\S+) = ", driver, re.M)
    assert len(rows) == nsteps == st["llvm_kernel_calls"]
    assert rows[0][0].startswith("bp_k0.") and "W0" in rows[0][1]
    straight = compile_with(monkeypatch, loss, wrt, STRAIGHT)
    assert "bp_main.part0" in straight.source("llvm-unoptimized")
    assert_same_results(table, straight, args)
    check_against_numpy(table, loss, wrt, args)


def test_short_split_schedule_stays_straight_line(monkeypatch):
    """At most TABLE_STEPS steps: direct calls (an indirect call per step costs a little)."""
    loss, wrt, _ = residual_mlp(3)
    fn = compile_with(monkeypatch, loss, wrt, emit.TABLE_STEPS)
    assert emit.SPLIT_STEPS < len(fn.impl.program.steps) <= emit.TABLE_STEPS
    ir_text = fn.source("llvm-unoptimized")
    assert "bp_main.part0" in ir_text and "bp_main.table" not in ir_text


def classifier_with_everything():
    """Constants, index ops (unshared kernels taking the workspace), a scan, float64."""
    x = bp.input("x", (6, 5, 3), "float64")
    lab = bp.input("labels", (6,), "int32")
    W, U = bp.param("W", (3, 4), "float64"), bp.param("U", (4, 4), "float64")
    E = bp.param("E", (7, 4), "float64")
    scale = bp.const(np.linspace(0.5, 1.5, 4))

    def step(h, xt):
        h = bp.tanh(xt @ W + h @ U) * scale
        return h, h

    h, _ = bp.scan(step, bp.take(E, lab), xs=bp.transpose(x, (1, 0, 2)))
    loss = bp.cross_entropy(h @ bp.transpose(E), lab) + 0.1 * bp.sum(h * h)
    r = np.random.default_rng(1)
    args = {"x": r.standard_normal((6, 5, 3)), "labels": r.integers(0, 7, 6).astype(np.int32),
            "W": r.standard_normal((3, 4)) * 0.5, "U": r.standard_normal((4, 4)) * 0.5,
            "E": r.standard_normal((7, 4)) * 0.5}
    return loss, [W, U, E], args


def test_table_with_constants_index_ops_and_scan_bodies(monkeypatch):
    """Every schedule (scan bodies too) through the table: constants come from the table's
    pointer array, unshared kernels get the workspace, bad indices are still reported."""
    loss, wrt, args = classifier_with_everything()
    table = compile_with(monkeypatch, loss, wrt, 0, split_steps=0)
    ir_text = table.source("llvm-unoptimized")
    assert '@"bp_main.consts"' in ir_text
    assert len(re.findall(r"^define internal void @\"[\w.]+\.table\"", ir_text, re.M)) >= 2
    straight = compile_with(monkeypatch, loss, wrt, STRAIGHT, split_steps=0)
    assert_same_results(table, straight, args)
    check_against_numpy(table, loss, wrt, args, rtol=1e-10)
    bad = dict(args, labels=np.array([0, 1, 2, 3, 4, 9], np.int32))
    with pytest.raises(bp.ArgumentError, match="labels"):
        table(**bad)


def test_exported_library_through_the_table(monkeypatch, tmp_path):
    """bp.export (position-independent code, the C ABI) runs a table-driven schedule."""
    export_test = pytest.importorskip("test_llvm_export")
    if export_test.CC is None:
        pytest.skip("no C compiler")
    monkeypatch.setattr(emit, "TABLE_STEPS", 0)
    monkeypatch.setattr(emit, "SPLIT_STEPS", 0)
    built = []
    real = emit.table_driver
    monkeypatch.setattr(emit, "table_driver", lambda *a: built.append(a[1]) or real(*a))
    export_test.test_exported_library_matches_numpy(tmp_path)
    assert built  # the library's schedule went through the table


def test_noalias_follows_byte_overlap():
    """Kernel parameters are noalias unless the memory plan gave two workspace buffers shared
    bytes (an empty one counts when it lies strictly inside another)."""
    from bpcompile.backends.llvm.memplan import Buffer

    def ws(offset, size):
        b = Buffer("ws", 0, size, "float32")
        b.offset = offset
        return b

    arg = Buffer("arg", 0, 4, "float32")
    cases = [
        ([ws(0, 4), ws(16, 4), arg], [True, True, True]),  # disjoint, touching at 16
        ([ws(0, 4), ws(8, 4), arg], [False, False, True]),  # bytes 8..16 shared
        ([ws(0, 4), ws(8, 0), ws(16, 0)], [True, False, True]),  # empty inside / at the end
        ([ws(0, 0), ws(0, 0)], [True, True]),
    ]
    for params, expect in cases:
        assert emit._noalias(params) == expect
