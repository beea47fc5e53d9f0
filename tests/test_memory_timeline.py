"""fn.memory(timeline=True): bytes live per schedule step from the LLVM plan, an estimate on
NumPy/JAX; phases forward / recompute / backward; the plot helper draws it."""

from __future__ import annotations

import numpy as np
import pytest

import bpcompile as bp

B, D, L = 64, 16, 4


def mlp(checkpoint):
    x = bp.input("x", (B, D), "float64")
    Ws = [bp.param(f"W{i}", (D, D), "float64") for i in range(L)]
    h = x
    for W in Ws:
        def block(h, W):
            return h + bp.tanh(bp.tanh(h @ W) * h)
        h = bp.checkpoint(block)(h, W) if checkpoint else block(h, W)
    return bp.mean(h * h), Ws


def test_llvm_timeline_matches_the_plan():
    loss, wrt = mlp(False)
    m = bp.compile(loss, wrt, backend="llvm").memory(timeline=True)
    tl = m["timeline"]
    assert [r["step"] for r in tl] == list(range(len(tl)))
    assert max(r["workspace_top"] for r in tl) == m["workspace_bytes"]
    assert max(r["live_bytes"] for r in tl) <= m["peak_bytes"]
    assert {r["phase"] for r in tl} >= {"forward", "backward"}
    # the forward pass accumulates activations: live bytes at the loss exceed those at start
    fwd = [r["live_bytes"] for r in tl if r["phase"] == "forward"]
    assert fwd[-1] > fwd[0]


@pytest.mark.parametrize("backend", ["llvm", "numpy"])
def test_checkpoint_lowers_the_timeline_peak(backend):
    peaks = {}
    for ck in (False, True):
        loss, wrt = mlp(ck)
        m = bp.compile(loss, wrt, backend=backend).memory(timeline=True)
        peaks[ck] = max(r["live_bytes"] for r in m["timeline"])
        if ck:
            assert any(r["phase"] == "recompute" for r in m["timeline"])
        if backend == "numpy":
            assert m["estimate"] is True and m["peak_bytes"] == peaks[ck]
    assert peaks[True] < peaks[False]


def test_numpy_memory_without_timeline_still_refuses():
    loss, wrt = mlp(False)
    with pytest.raises(NotImplementedError, match="numpy"):
        bp.compile(loss, wrt, backend="numpy").memory()


def test_plot_memory(tmp_path):
    pytest.importorskip("matplotlib")
    loss, wrt = mlp(True)
    m = bp.compile(loss, wrt, backend="llvm").memory(timeline=True)
    path = bp.train.plot_memory(m, tmp_path / "mem.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    with pytest.raises(bp.BPError, match="empty"):
        bp.train.plot_memory([], tmp_path / "none.png")
    assert np.isfinite(max(r["live_bytes"] for r in m["timeline"]))
