"""Compile cost grows linearly with depth (issue #14): a 1000-layer residual MLP compiles on
the NumPy backend in bounded time, and 4x the layers cost well under 6x the time."""

from __future__ import annotations

import time

import numpy as np

import bpcompile as bp


def residual_mlp(depth: int, width: int = 8, batch: int = 4):
    h = x = bp.input("x", (batch, width))
    ps = []
    for i in range(depth):
        W, b = bp.param(f"W{i}", (width, width)), bp.param(f"b{i}", (width,))
        ps += [W, b]
        h = h + bp.tanh(h @ W + b)
    return bp.mean(h * h), ps, x


def compile_seconds(depth: int) -> float:
    """CPU seconds of this process (other processes' load does not count) to build, compile
    and call the model once."""
    t0 = time.process_time()
    loss, ps, x = residual_mlp(depth)
    fn = bp.compile(loss, ps, backend="numpy")
    args = {p.attr("name"): np.full(p.shape, 0.01, np.float32) for p in ps}
    value, grads = fn(x=np.ones(x.shape, np.float32), **args)
    assert np.isfinite(value) and len(grads) == 2 * depth
    return time.process_time() - t0


def test_1000_layers_compile_in_bounded_linear_time():
    small = compile_seconds(250)
    big = compile_seconds(1000)
    assert big < 60.0
    assert big < 6 * small, f"250 layers {small:.2f} s, 1000 layers {big:.2f} s"
