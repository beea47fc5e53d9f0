"""Multi-process data parallelism: 2 processes on localhost joined by `jax.distributed`.

Each process owns one CPU device; cross-process collectives on CPU go through Gloo
(`jax_cpu_collectives_implementation = "gloo"`). `compile_train_step(..., backend="jax",
data_parallel=True)` shards the batch over both processes' devices, each process feeding its
own rows. Checked: 20 Adam steps give the same params as the single-process step (float64,
rtol 1e-10), and a worker killed mid-run makes the survivor fail with a clear error within
seconds (short heartbeat timeout) instead of hanging in a collective.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

pytest.importorskip("jax")

WORKER = textwrap.dedent("""
    import os, sys
    import numpy as np
    pid, nproc, port, kill_at, out = sys.argv[1:]
    pid, nproc, kill_at = int(pid), int(nproc), int(kill_at)
    import jax
    jax.config.update("jax_enable_x64", True)
    if nproc > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=nproc, process_id=pid,
                                   initialization_timeout=30, heartbeat_timeout_seconds=3,
                                   shutdown_timeout_seconds=5)
        assert jax.process_count() == nproc and len(jax.devices()) == nproc, jax.devices()
    import bpcompile as bp
    from bpcompile import optim

    B = 8
    x, lab = bp.input("x", (B, 5), "float64"), bp.input("lab", (B,), "int32")
    t = bp.input("t", (B, 2), "float64")
    W, b = bp.param("W", (5, 3), "float64"), bp.param("b", (3,), "float64")
    V = bp.param("V", (3, 2), "float64")
    h = bp.tanh(x @ W + b)
    loss = bp.cross_entropy(h, lab) + bp.mean((h @ V - t) ** 2)
    r = np.random.default_rng(0)
    init = {"W": r.standard_normal((5, 3)), "b": r.standard_normal(3),
            "V": r.standard_normal((3, 2))}
    X, T = r.standard_normal((20, B, 5)), r.standard_normal((20, B, 2))
    L = r.integers(0, 3, (20, B)).astype(np.int32)
    if nproc == 0:  # the reference: one process, no sharding
        step = bp.compile_train_step(loss, optimizer=optim.adam(1e-2), backend="jax",
                                     init=init)
        rows = slice(None)
    else:
        step = bp.compile_train_step(loss, optimizer=optim.adam(1e-2), backend="jax",
                                     init=init, data_parallel=True)
        rows = slice(pid * B // nproc, (pid + 1) * B // nproc)  # this process's rows
    for i in range(20):
        if i == kill_at and pid == 1:
            print("killing myself at step", i, flush=True)
            os.kill(os.getpid(), 9)
        step(x=X[i, rows], lab=L[i, rows], t=T[i, rows])
    np.savez(out, **{k: np.asarray(v) for k, v in step.params.items()})
    print("DONE", pid, flush=True)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _launch(tmp_path, nproc: int, kill_at: int = -1) -> list:
    """Start the workers; nproc 0 is the unsharded single-process reference."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(_free_port())
    procs = []
    for pid in range(max(nproc, 1)):
        out = tmp_path / f"params{pid}_{nproc}.npz"
        procs.append(subprocess.Popen(
            [sys.executable, str(script), str(pid), str(nproc), port, str(kill_at), str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env()))
    return procs


def _finish(procs, timeout: float) -> list:
    outs = []
    try:
        for p in procs:
            outs.append((p.wait(timeout=timeout), p.stdout.read()))
    finally:
        for p in procs:  # never leave a worker behind, even when the test fails
            if p.poll() is None:
                p.kill()
                p.wait()
    return outs


def test_two_processes_match_single_process(tmp_path):
    procs = _launch(tmp_path, 0) + _launch(tmp_path, 2)
    outs = _finish(procs, timeout=50)
    for rc, text in outs:
        assert rc == 0 and "DONE" in text, text[-3000:]
    ref = np.load(tmp_path / "params0_0.npz")
    for pid in (0, 1):
        got = np.load(tmp_path / f"params{pid}_2.npz")
        assert sorted(got) == ["V", "W", "b"]
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-10, atol=1e-13, err_msg=k)
    # the run really trained: 20 Adam steps of 1e-2 moved every param
    init = np.random.default_rng(0).standard_normal((5, 3))
    assert np.abs(ref["W"] - init).max() > 0.05


def test_killed_worker_fails_the_other_quickly(tmp_path):
    t0 = time.monotonic()
    (rc0, text0), (rc1, text1) = _finish(_launch(tmp_path, 2, kill_at=5), timeout=45)
    elapsed = time.monotonic() - t0
    assert rc1 == -9 and "killing myself at step 5" in text1, text1[-2000:]
    assert rc0 != 0, text0[-3000:]  # the survivor does not finish as if nothing happened
    assert "DONE" not in text0
    # ...and says why: our error names the lost peer (or JAX's coordination service does,
    # when the heartbeat timeout fires first)
    assert ("another process has probably died" in text0
            or "another task died" in text0), text0[-3000:]
    assert elapsed < 45
