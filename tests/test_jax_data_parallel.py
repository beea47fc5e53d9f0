"""Data parallel on the JAX backend: the batch axis sharded over 4 (forced host) CPU devices.

XLA_FLAGS must be set before JAX is imported, so the check runs in a subprocess. It compares
the sharded run with the single-device run of the same compiled program, for a mean loss and a
sum loss (the all-reduce must respect whichever the graph defines), in float64.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("jax")

SCRIPT = textwrap.dedent("""
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    import bpcompile as bp

    assert len(jax.devices()) == 4, jax.devices()
    r = np.random.default_rng(0)
    B = 8
    x, lab = bp.input("x", (B, 5), "float64"), bp.input("lab", (B,), "int32")
    t = bp.input("t", (3, B), "float64")          # batch on axis 1
    W, b = bp.param("W", (5, 3), "float64"), bp.param("b", (3,), "float64")
    logits = bp.tanh(x @ W + b)
    losses = {
        "mean": bp.cross_entropy(logits, lab) + bp.mean((logits.T - t) ** 2),
        "sum": bp.sum(bp.softplus(logits) * bp.one_hot(lab, 3, "float64"))
        + bp.sum((logits.T - t) ** 2),
    }
    vals = {"x": r.standard_normal((B, 5)), "lab": r.integers(0, 3, B).astype(np.int32),
            "t": r.standard_normal((3, B)), "W": r.standard_normal((5, 3)),
            "b": r.standard_normal(3)}
    for kind, loss in losses.items():
        single = bp.compile(loss, [W, b], backend="jax")
        v1, g1 = single(**vals)
        dp = single.data_parallel(batch_inputs={"x": 0, "lab": 0, "t": 1})
        v4, g4 = dp(**vals)
        assert len(v4.sharding.device_set) == 4 and v4.sharding.is_fully_replicated
        np.testing.assert_allclose(float(v4), float(v1), rtol=1e-13)
        for k in g1:
            np.testing.assert_allclose(np.asarray(g4[k]), np.asarray(g1[k]), rtol=1e-12,
                                       atol=1e-14)
        # the batch inputs really are split: each device holds B/4 rows of x
        sx = dp.shard(**vals)["x"]
        assert {s.data.shape for s in sx.addressable_shards} == {(B // 4, 5)}
        assert "all-reduce" in dp.lowered().compile().as_text()
        # pre-sharded inputs give the same answer
        v5, _ = dp(**dp.shard(**vals))
        np.testing.assert_allclose(float(v5), float(v1), rtol=1e-13)
        # bp.compile(..., data_parallel=True): every input sharded on axis 0 by default
        # (t has its batch on axis 1 here, so name the axes)
        fn = bp.compile(loss, [W, b], backend="jax", data_parallel=True,
                        batch_inputs={"x": 0, "lab": 0, "t": 1})
        v6, g6 = fn(**vals)
        np.testing.assert_allclose(float(v6), float(v1), rtol=1e-13)
        assert "mhlo.num_partitions = 4" in fn.source("stablehlo")
        print(kind, "ok", float(v1), float(v4))
    try:
        x3 = bp.input("x3", (6, 5), "float64")
        bp.compile(bp.sum(x3 @ W), [W], backend="jax", data_parallel=True)
    except bp.BackendError as e:
        print("ERR", e)
""")


def test_data_parallel_matches_single_device():
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "mean ok" in out.stdout and "sum ok" in out.stdout
    assert "ERR jax data parallel: batch input 'x3'" in out.stdout
    assert "not divisible by 4 devices" in out.stdout
