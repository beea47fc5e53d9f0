"""bp.compile(..., memory_budget=...) (budget.py): the compiler recomputes forward segments
until the planned peak fits; gradients are unchanged; an impossible budget names the
smallest feasible one."""

from __future__ import annotations

import re

import numpy as np
import pytest
from test_checkpoint import VALS, L, mlp

import bpcompile as bp
from bpcompile.budget import parse_budget, segments, with_groups
from bpcompile.ir.traverse import leaves


def test_parse_budget():
    assert parse_budget(1000) == 1000
    assert parse_budget("64MB") == 64 * 10**6
    assert parse_budget("1.5GiB") == int(1.5 * 2**30)
    assert parse_budget(" 300 kB ") == 300_000
    for bad in ("lots", "-3MB", 0, "5 parsecs", True):
        with pytest.raises(ValueError, match="memory_budget"):
            parse_budget(bad)


def test_segments_of_a_residual_mlp_are_its_blocks():
    loss, _ = mlp(None)
    cuts = segments(loss)
    assert len(cuts) == L and all(c.op == "add" for c, _ in cuts)


def _peak(fn):
    return fn.memory(timeline=True)["peak_bytes"]


@pytest.mark.parametrize("backend", ["numpy", "llvm", "jax"])
def test_budget_fits_and_gradients_are_unchanged(backend):
    if backend == "jax":
        jax = pytest.importorskip("jax")
        jax.config.update("jax_enable_x64", True)
    loss, wrt = mlp(None)
    plain = bp.compile(loss, wrt, backend=backend)
    v0, g0 = plain(**VALS)
    budget = int(0.9 * _peak(plain))
    fn = bp.compile(loss, wrt, backend=backend, memory_budget=budget)
    rep = fn.memory(timeline=True)["remat"]
    assert _peak(fn) <= budget and rep["planned_peak_bytes"] <= budget
    assert rep["recomputed_segments"] >= 1 and rep["recomputed_bytes"] > 0
    v, g = fn(**VALS)
    assert float(v) == pytest.approx(float(v0), rel=1e-12)
    for k in g0:
        np.testing.assert_allclose(np.asarray(g[k]), np.asarray(g0[k]), rtol=1e-10, atol=1e-14,
                                   err_msg=k)


def test_generous_budget_recomputes_nothing():
    loss, wrt = mlp(None)
    fn = bp.compile(loss, wrt, backend="llvm", memory_budget="1GB")
    assert fn.memory()["remat"]["recomputed_segments"] == 0


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_impossible_budget_names_the_smallest_feasible(backend):
    loss, wrt = mlp(None)
    with pytest.raises(bp.BPError, match="infeasible") as e:
        bp.compile(loss, wrt, backend=backend, memory_budget=1000)
    need = int(re.search(r"memory_budget >= (\d+)", str(e.value)).group(1))
    fn = bp.compile(loss, wrt, backend=backend, memory_budget=need)  # that one fits
    assert _peak(fn) <= need


def test_train_step_with_a_budget_takes_the_same_steps():
    loss, wrt = mlp(None)
    init = {k: v for k, v in VALS.items() if k != "x"}
    # the step differentiates w.r.t. every param in graph order; the peak depends on it
    plain = bp.compile(loss, leaves([loss], ops=("param",)), backend="numpy")
    budget = _peak(plain) - 1  # anything under the plain peak recomputes a segment
    kw = dict(optimizer=bp.optim.adam(0.01), backend="llvm", init=init)
    a = bp.compile_train_step(loss, **kw)
    b = bp.compile_train_step(loss, memory_budget=budget, **kw)
    assert b.remat_report["recomputed_segments"] >= 1
    for _ in range(3):
        assert b(x=VALS["x"]) == pytest.approx(a(x=VALS["x"]), rel=1e-12)
    for k in a.params:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=1e-10, err_msg=k)


def test_cli_memory_budget(tmp_path, capsys):
    from pathlib import Path

    from bpcompile.cli import main

    spec = Path(__file__).resolve().parent.parent / "examples" / "mnist_mlp.toml"
    assert main(["compile", str(spec), "--memory-budget", "1GB"]) == 0
    assert "def " in capsys.readouterr().out
    assert main(["compile", str(spec), "--memory-budget", "lots"]) != 0
    assert "--memory-budget" in capsys.readouterr().err
    assert main(["compile", str(spec), "--memory-budget", "1kB"]) != 0
    assert "memory_budget >=" in capsys.readouterr().err


def _all_plans(n, s=0):
    """Every split of segments s..n-1 into groups, each stored, recomputed or nested."""
    if s == n:
        yield ()
        return
    for e in range(s, n):
        for kind in ("store", "remat", "nested"):
            if kind == "nested" and e == s:
                continue
            for rest in _all_plans(n, e + 1):
                yield ((s, e, kind),) + rest


@pytest.mark.parametrize("seed", [0, 1])
def test_dp_plan_is_the_brute_force_optimum(seed):
    from bpcompile.budget_dp import Chain, Planner

    r = np.random.default_rng(seed)
    n = 6
    ch = Chain(tuple(r.integers(50, 200, n).astype(float)),
               tuple(r.integers(10, 60, n).astype(float)),
               tuple(r.integers(1, 9, n).astype(float)), 30.0)
    planner = Planner(ch, caps=10**6, front_cap=10**6)  # no thinning: exact
    plans = list(_all_plans(n))
    for budget in np.linspace(planner.least_peak(), planner.peak(((0, n - 1, "store"),)), 7):
        ok = [(planner.flops(p), planner.peak(p)) for p in plans if planner.peak(p) <= budget]
        got = planner.plan(budget)
        assert got is not None and planner.peak(got) <= budget
        assert planner.flops(got) == min(f for f, _ in ok)
    assert planner.plan(planner.least_peak() - 1) is None


def _deep_mlp(blocks=12, width=16, batch=256):
    x = bp.input("x", (batch, width), "float64")
    h, wrt = x, []
    for i in range(blocks):
        W = bp.param(f"W{i}", (width, width), "float64")
        wrt.append(W)
        h = h + bp.tanh(h @ W)
    r = np.random.default_rng(3)
    vals = {"x": r.standard_normal((batch, width))}
    vals.update({f"W{i}": 0.2 * r.standard_normal((width, width)) for i in range(blocks)})
    return bp.mean(h * h), wrt, vals


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_a_third_of_the_peak_fits_by_recomputing_groups(backend):
    """Per-block checkpoints keep every block's input (over half the plain peak here); a third
    needs groups of blocks (one kept input per group, nested), which the DP finds; gradients
    are unchanged."""
    loss, wrt, vals = _deep_mlp()
    plain = bp.compile(loss, wrt, backend=backend)
    v0, g0 = plain(**vals)
    budget = _peak(plain) // 3
    every = bp.compile(with_groups(loss, [(i - 1, i) for i in range(12)],
                                   [c for c, _ in segments(loss)]), wrt, backend=backend)
    assert _peak(every) > budget
    fn = bp.compile(loss, wrt, backend=backend, memory_budget=budget)
    rep = fn.memory(timeline=True)["remat"]
    assert _peak(fn) <= budget and rep["recompute_groups"] < rep["segments"]
    v, g = fn(**vals)
    assert float(v) == pytest.approx(float(v0), rel=1e-12)
    for k in g0:
        np.testing.assert_allclose(g[k], g0[k], rtol=1e-10, atol=1e-14, err_msg=k)
