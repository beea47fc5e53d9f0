"""Identical layers share one native kernel on the LLVM backend (issue #14), with results
equal to the build that emits one function per step, and the NumPy reference."""

from __future__ import annotations

import re

import numpy as np
import pytest

import bpcompile as bp
from bpcompile.backends.llvm import emit

pytest.importorskip("llvmlite")


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


def compile_split(monkeypatch, loss, wrt, share: bool):
    """Compile with every schedule split into step functions (as deep models are)."""
    monkeypatch.setattr(emit, "SPLIT_STEPS", 0)
    monkeypatch.setattr(emit, "SHARE_KERNELS", share)
    return bp.compile(loss, wrt, backend="llvm", cache=False)


def defined_functions(ir_text: str) -> list[str]:
    return re.findall(r"^define [^@]*@\"?([\w.]+)\"?\(", ir_text, re.M)


def test_two_identical_layers_share_kernels(monkeypatch):
    loss, wrt, args = residual_mlp(2)
    shared = compile_split(monkeypatch, loss, wrt, share=True)
    st = shared.impl.kernel_stats
    # every step is a call site; the second layer's steps reuse the first layer's kernels
    assert st["llvm_kernels"] < st["llvm_kernel_calls"]
    assert (f"native kernels {st['llvm_kernels']} for {st['llvm_kernel_calls']} steps"
            in shared.stats())
    unshared = compile_split(monkeypatch, loss, wrt, share=False)
    su = unshared.impl.kernel_stats
    assert su["llvm_kernels"] == su["llvm_kernel_calls"] == st["llvm_kernel_calls"]
    # what the module defines follows the counts
    kernels = [f for f in defined_functions(shared.source("llvm-unoptimized"))
               if f.startswith("bp_k")]
    assert len(kernels) == st["llvm_kernels"]
    v1, g1 = shared(**args)
    v2, g2 = unshared(**args)
    ref_v, ref_g = bp.compile(loss, wrt, backend="numpy")(**args)
    assert float(v1) == float(v2)
    for k in g2:
        np.testing.assert_array_equal(g1[k], g2[k])
        np.testing.assert_allclose(g1[k], ref_g[k], rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(float(v1), float(ref_v), rtol=1e-5)


def test_kernel_count_does_not_grow_with_depth(monkeypatch):
    """Deeper identical stacks add call sites, not kernels (past the first and last layers,
    whose neighbours differ)."""
    counts = {}
    for depth in (3, 6):
        loss, wrt, _ = residual_mlp(depth)
        counts[depth] = compile_split(monkeypatch, loss, wrt, share=True).impl.kernel_stats
    assert counts[6]["llvm_kernels"] == counts[3]["llvm_kernels"]
    assert counts[6]["llvm_kernel_calls"] > counts[3]["llvm_kernel_calls"]


def test_layers_of_different_shape_do_not_share(monkeypatch):
    x = bp.input("x", (4, 8))
    W1, W2 = bp.param("W1", (8, 8)), bp.param("W2", (8, 6))
    h = bp.tanh(x @ W1)
    loss = bp.sum(bp.tanh(h @ W2) ** 2)
    fn = compile_split(monkeypatch, loss, [W1, W2], share=True)
    st = fn.impl.kernel_stats
    names = defined_functions(fn.source("llvm-unoptimized"))
    # both tanh kernels exist: (4, 8) and (4, 6) outputs cannot share code
    assert st["llvm_kernels"] == st["llvm_kernel_calls"]
    assert len([n for n in names if n.startswith("bp_k")]) == st["llvm_kernels"]
    r = np.random.default_rng(0)
    args = dict(x=r.standard_normal((4, 8)).astype(np.float32),
                W1=r.standard_normal((8, 8)).astype(np.float32),
                W2=r.standard_normal((8, 6)).astype(np.float32))
    _, g = fn(**args)
    _, ref = bp.compile(loss, [W1, W2], backend="numpy")(**args)
    for k in ref:
        np.testing.assert_allclose(g[k], ref[k], rtol=2e-4, atol=1e-5)


def test_shared_kernel_keeps_noalias_on_its_buffers(monkeypatch):
    loss, wrt, _ = residual_mlp(2)
    ir_text = compile_split(monkeypatch, loss, wrt, share=True).source("llvm-unoptimized")
    heads = [line for line in ir_text.splitlines()
             if line.startswith("define") and "@\"bp_k" in line]
    assert heads and all("noalias" in h for h in heads)


def test_many_arguments_of_one_type_take_the_native_path(monkeypatch):
    """The fast call path checks same-shaped arguments in a loop (pycall.LOOP_MIN_ARGS); it
    must still accept exactly the right arrays natively and send anything else to the slow
    path, which names the argument."""
    from bpcompile.backends.llvm import pycall

    loss, wrt, args = residual_mlp(pycall.LOOP_MIN_ARGS + 2)
    fn = compile_split(monkeypatch, loss, wrt, share=True)
    assert "bp_argloop" in fn.source("llvm-unoptimized")
    value, grads = fn(**args)
    calls = []
    bind = fn.signature.bind
    monkeypatch.setattr(fn.signature, "bind", lambda *a: calls.append(a) or bind(*a))
    v2, g2 = fn(**args)  # native: the slow path's bind is never reached
    assert calls == [] and float(v2) == float(value)
    bad = dict(args, W7=np.zeros((8, 7), np.float32))
    with pytest.raises(bp.ArgumentError, match="W7"):
        fn(**bad)
    assert calls  # the mismatch went to the slow path
    wide = dict(args, W7=args["W7"].astype(np.float64))  # converted by the slow path
    assert float(fn(**wide)[0]) == float(value)
    _, ref = bp.compile(loss, wrt, backend="numpy")(**args)
    for k in ref:
        np.testing.assert_allclose(g2[k], ref[k], rtol=2e-4, atol=1e-6)
