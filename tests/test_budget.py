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
    cuts = [c for c, _ in segments(loss)]
    # the last L cuts are the block outputs h + tanh(...); inside the first block the input x
    # is an argument (kept anyway), so its chain of ops is cut too
    assert len(cuts) > L
    assert all(c.op == "add" and any(i.op == "tanh" for i in c.inputs) for c in cuts[-L:])
    assert not any(any(i.op == "tanh" for i in c.inputs) for c in cuts[:-L])


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
    loss, _, vals = _deep_mlp(blocks=6, batch=64)
    init = {k: v for k, v in vals.items() if k != "x"}
    kw = dict(optimizer=bp.optim.adam(0.01), backend="llvm", init=init)
    a = bp.compile_train_step(loss, **kw)
    budget = _peak(a.fn) - 1  # the step's own plan (tests/test_memory_train.py has more)
    b = bp.compile_train_step(loss, memory_budget=budget, **kw)
    assert b.remat_report["recomputed_segments"] >= 1 and _peak(b.fn) <= budget
    for _ in range(3):
        assert b(x=vals["x"]) == pytest.approx(a(x=vals["x"]), rel=1e-12)
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


def _chain(depth=6, width=8, batch=32):
    """A plain tanh chain (no residual): every layer output is a cut."""
    x = bp.input("x", (batch, width), "float64")
    h, wrt = x, []
    for i in range(depth):
        W = bp.param(f"W{i}", (width, width), "float64")
        wrt.append(W)
        h = bp.tanh(h @ W)
    r = np.random.default_rng(5)
    vals = {"x": r.standard_normal((batch, width))}
    vals.update({f"W{i}": 0.5 * r.standard_normal((width, width)) for i in range(depth)})
    return bp.sum(h * h), wrt, vals


def _attention(depth=2, B=2, T=4, D=8):
    """Pre-norm attention + MLP blocks (bench_compile_scale's transformer, small)."""
    x = bp.input("x", (B, T, D), "float64")
    r = np.random.default_rng(6)
    h, wrt, vals = x, [], {"x": r.standard_normal((B, T, D))}
    for i in range(depth):
        p = {k: bp.param(f"{k}{i}", s, "float64") for k, s in
             (("Wq", (D, D)), ("Wk", (D, D)), ("Wv", (D, D)), ("Wo", (D, D)), ("W1", (D, 2 * D)),
              ("W2", (2 * D, D)))}
        wrt += list(p.values())
        vals.update({n.attr("name"): 0.3 * r.standard_normal(n.shape) for n in p.values()})
        h = h + bp.multi_head_attention(bp.layer_norm(h), p["Wq"], p["Wk"], p["Wv"], p["Wo"],
                                        heads=2, causal=True)
        h = h + bp.tanh(bp.layer_norm(h) @ p["W1"]) @ p["W2"]
    return bp.mean(h * h), wrt, vals


def _residual():
    loss, wrt = mlp(None)
    return loss, wrt, VALS


def _branches(k=2, depth=3, width=8, batch=16, checkpointed=False):
    """k parallel tanh branches from one input, their means summed into the loss: no single
    cut separates them, only the scalar terms cross from one branch to the next."""
    x = bp.input("x", (batch, width), "float64")
    r = np.random.default_rng(7)
    loss, wrt, vals = None, [], {"x": r.standard_normal((batch, width))}

    def branch(h, *Ws):
        for W in Ws:
            h = bp.tanh(h @ W)
        return h

    for j in range(k):
        Ws = [bp.param(f"W{j}_{i}", (width, width), "float64") for i in range(depth)]
        wrt += Ws
        vals.update({W.attr("name"): 0.5 * r.standard_normal((width, width)) for W in Ws})
        term = bp.mean((bp.checkpoint(branch) if checkpointed else branch)(x, *Ws))
        loss = term if loss is None else loss + term
    return loss, wrt, vals


MODELS = {"residual": _residual, "chain": _chain, "attention": _attention,
          "branches": _branches}


def test_parallel_branches_form_one_chain():
    """Every branch's layers are segments, so the search reaches at least what bp.checkpoint
    on each branch plans (before, the later branch was one region nothing recomputed)."""
    loss, wrt, _ = _branches()
    assert len(segments(loss)) == 2 * 3  # was 3: the second branch was one tail region
    by_hand, _, _ = _branches(checkpointed=True)
    assert _smallest(loss, wrt, "llvm") <= _peak(bp.compile(by_hand, wrt, backend="llvm"))


def _smallest(loss, wrt, backend):
    with pytest.raises(bp.BPError, match="infeasible") as e:
        bp.compile(loss, wrt, backend=backend, memory_budget=1)
    return int(re.search(r"memory_budget >= (\d+)", str(e.value)).group(1))


@pytest.mark.parametrize("model,backend", [(m, b) for m in MODELS for b in ("numpy", "llvm")]
                         + [("residual", "jax")])
def test_every_budget_gives_the_plain_gradients(model, backend):
    """Budgets from the smallest feasible to unlimited: the plan fits, the gradients are the
    plain build's (float64, rtol 1e-10)."""
    if backend == "jax":
        jax = pytest.importorskip("jax")
        jax.config.update("jax_enable_x64", True)
    loss, wrt, vals = MODELS[model]()
    plain = bp.compile(loss, wrt, backend=backend)
    v0, g0 = plain(**vals)
    if (model, backend) == ("attention", "llvm"):  # (each LLVM trial compiles: one budget)
        budgets = [int(0.7 * _peak(plain))]
    else:
        least = _smallest(loss, wrt, backend)
        budgets = [least, None, (least + _peak(plain)) // 2][:1 if backend == "jax" else 3]
    for b in budgets:
        fn = bp.compile(loss, wrt, backend=backend, memory_budget=b)
        if b is not None:
            assert _peak(fn) <= b
            assert b >= _peak(plain) or fn.memory(timeline=True)["remat"]["recomputed_segments"]
        v, g = fn(**vals)
        assert float(v) == pytest.approx(float(v0), rel=1e-12)
        for k in g0:
            np.testing.assert_allclose(np.asarray(g[k]), np.asarray(g0[k]), rtol=1e-10,
                                       atol=1e-13, err_msg=f"{k} at budget {b}")


def _workspace_written(fn, vals) -> int:
    """Bytes of the LLVM workspace a call writes, up to the highest one: the arena is filled
    with a pattern first, and the last changed byte is found after the call."""
    arena = fn.impl.thread_arena()
    ws = arena.block[arena.ws_addr - arena.lo:]
    ws[:] = 0xA5
    fn(**vals)
    changed = np.flatnonzero(ws != 0xA5)
    return int(changed[-1]) + 1 if changed.size else 0


def test_planned_peak_against_measured():
    """LLVM: the workspace a call really writes stays within the planned workspace, and the
    budgeted arena is smaller. NumPy: tracemalloc's peak over a call shrinks with the budget
    too (on a model whose activations dominate NumPy's own temporaries)."""
    import tracemalloc

    loss, wrt, vals = _deep_mlp()
    arenas, traced = [], []
    for b in (None, _peak(bp.compile(loss, wrt, backend="llvm")) // 2):
        fn = bp.compile(loss, wrt, backend="llvm", memory_budget=b)
        m = fn.memory()
        written = _workspace_written(fn, vals)
        assert 0 < written <= m["workspace_bytes"], (written, m["workspace_bytes"])
        arenas.append(fn.impl.thread_arena().block.nbytes)
        assert arenas[-1] >= m["peak_bytes"]
        nfn = bp.compile(loss, wrt, backend="numpy", memory_budget=b)
        nfn(**vals)
        tracemalloc.start()
        nfn(**vals)
        traced.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert arenas[1] < arenas[0] and traced[1] < traced[0], (arenas, traced)


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_a_generous_budget_saves_matmul_outputs_instead(backend, monkeypatch):
    """Where the dots_saveable twin of a fitting plan fits too, it recomputes only the cheap
    elementwise ops: far fewer FLOPs than any all-recomputing plan, the same gradients."""
    import bpcompile.budget as budget_mod

    loss, wrt, vals = _deep_mlp(blocks=8, width=32, batch=128)
    plain = bp.compile(loss, wrt, backend=backend)
    v0, g0 = plain(**vals)
    budget = int(0.8 * _peak(plain))
    fn = bp.compile(loss, wrt, backend=backend, memory_budget=budget)
    m = fn.memory(timeline=True)
    assert m["remat"]["policy"] == "dots_saveable" and _peak(fn) <= budget
    monkeypatch.setattr(budget_mod, "DOTS_TRIALS", 0)  # the search without the twins
    m0 = bp.compile(loss, wrt, backend=backend, memory_budget=budget).memory(timeline=True)
    assert m0["remat"]["policy"] == "nothing_saveable"
    assert 10 * m["recompute_flops"] < m0["recompute_flops"]
    v, g = fn(**vals)
    assert float(v) == pytest.approx(float(v0), rel=1e-12)
    for k in g0:
        np.testing.assert_allclose(np.asarray(g[k]), np.asarray(g0[k]), rtol=1e-10, err_msg=k)
