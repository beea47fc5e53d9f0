"""Batched reverse-mode Jacobians (autodiff/batched.batched_vjp: jax.vmap over jax.vjp) against
jax.jacrev: op-table rows whose every op has a batched rule (elementwise, kernels, movement,
2-d and batched matmul), chunked into a scan of row blocks or one pass, and the fallback to
the row scan where an op has none (max, scan)."""

from __future__ import annotations

import numpy as np
import op_table as T
import pytest

import bpcompile as bp
from bpcompile.autodiff import jacobian as jm
from bpcompile.backends.numpy.codegen import evaluate
from bpcompile.ir.traverse import toposort

jax = pytest.importorskip("jax")
jnp = jax.numpy
jax.config.update("jax_enable_x64", True)

BATCHED = ["mul_broadcast_mid", "matmul_batch_broadcast", "broadcast_to", "pad_interior",
           "sum_axes_keepdims", "dense_sigmoid_2layer"]
FALLBACK = ["max_axis"]


def check_against_jacrev(name, batched_expected, elements=None, monkeypatch=None):
    row = T.BY_NAME[name]
    P, I, f, loss, values = T.build(row, "float64")
    if elements is not None:
        monkeypatch.setattr(jm, "BATCH_ELEMENTS", elements)
    J = jm.jacobian_rev(f, list(P.values()), batched=True)
    # the batched pass leaves no per-row scan; a fallback is the scan named jacobian_row
    scans = {n.attr("body").name for n in toposort(J) if n.op == "scan"}
    assert ("jacobian_row" not in scans) == batched_expected, (name, scans)
    ours = evaluate(J, values)
    Pj = {k: jnp.asarray(values[k]) for k in row.params}
    Ij = {k: jnp.asarray(v) for k, v in values.items() if k not in row.params}
    ref = jax.jacrev(lambda p: row.jf(p, Ij))(Pj)
    for k, j in zip(row.params, ours):
        np.testing.assert_allclose(j, ref[k], rtol=1e-9, atol=1e-12, err_msg=f"{name} d/d{k}")


@pytest.mark.parametrize("name", [n for n in BATCHED if n in T.BY_NAME])
def test_batched_reverse_jacobian_matches_jacrev(name):
    check_against_jacrev(name, True)


@pytest.mark.parametrize("name", FALLBACK)
def test_ops_without_batched_rule_fall_back_to_the_row_scan(name):
    check_against_jacrev(name, False)


def test_chunks_of_rows_pad_the_last_chunk(monkeypatch):
    """7 output rows in chunks of 2 (seeds padded to 8 with a zero row, then sliced off)."""
    x = bp.param("x", (7,), "float64")
    W = bp.param("W", (7, 3), "float64")
    y = bp.tanh(x) * bp.sum(W * W, axis=1)
    monkeypatch.setattr(jm, "BATCH_ELEMENTS", 2 * 21)
    Jx, JW = jm.jacobian_rev(y, [x, W], batched=True)
    assert {n.attr("body").name for n in toposort([Jx]) if n.op == "scan"} == {
        "jacobian_rows"}
    xv, Wv = np.linspace(-1, 1, 7), np.arange(21.0).reshape(7, 3) / 10
    got = bp.function({"Jx": Jx, "JW": JW}, backend="llvm")(x=xv, W=Wv)
    ref = jax.jacrev(lambda x, W: jnp.tanh(x) * jnp.sum(W * W, axis=1), argnums=(0, 1))(xv, Wv)
    np.testing.assert_allclose(got["Jx"], ref[0], rtol=1e-12)
    np.testing.assert_allclose(got["JW"], ref[1], rtol=1e-12)
