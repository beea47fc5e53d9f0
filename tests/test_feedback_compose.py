"""Feedback alignment composed with the rest of the compiler: checkpointed regions and
memory_budget= (the rules apply inside the recomputed region's sweep), fn.report."""

import re

import numpy as np
import pytest

import bpcompile as bp

N, D, H, H2, O = 8, 5, 7, 6, 3


def _mlp(ck: bool, nested: bool = False, top_inside: bool = False):
    """2-hidden-layer tanh MLP, float64; `ck` checkpoints the hidden block (nested: its second
    layer again; top_inside: the output layer too, so DFA finds its error inside a region)."""
    x, labels = bp.input("x", (N, D), "float64"), bp.input("labels", (N,), "int32")
    sizes = [(D, H), (H, H2), (H2, O)]
    W = [bp.param(f"W{i + 1}", s, "float64") for i, s in enumerate(sizes)]
    b = [bp.param(f"b{i + 1}", (s[1],), "float64") for i, s in enumerate(sizes)]

    def second(a):
        return bp.tanh(a @ W[1] + b[1])

    def block(h):
        h2 = (bp.checkpoint(second) if nested else second)(bp.tanh(h @ W[0] + b[0]))
        return h2 @ W[2] + b[2] if top_inside else h2

    y = (bp.checkpoint(block) if ck else block)(x)
    if not top_inside:
        y = y @ W[2] + b[2]
    return bp.cross_entropy(y, labels), [*W, *b]


def _values(wrt, seed=0):
    rng = np.random.default_rng(seed)
    vals = {"x": rng.standard_normal((N, D)), "labels": rng.integers(0, O, N).astype(np.int32)}
    vals.update({w.name: rng.standard_normal(w.shape) * 0.5 for w in wrt})
    return vals


def assert_same_updates(a, b, vals, rtol=1e-12):
    ga, gb = a(**vals)[1], b(**vals)[1]
    assert set(ga) == set(gb)
    for k in ga:
        np.testing.assert_allclose(gb[k], ga[k], rtol=rtol, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("mode,shape", [("alignment", {}), ("direct", {}),
                                        ("alignment", {"nested": True}),
                                        ("direct", {"nested": True, "top_inside": True})])
def test_feedback_through_checkpoint_equals_without(mode, shape):
    plain, wrt = _mlp(False, **shape)
    marked, _ = _mlp(True, **shape)
    fa = bp.compile(plain, wrt, feedback=mode, feedback_seed=4)
    fa_ck = bp.compile(marked, wrt, feedback=mode, feedback_seed=4)
    assert "recompute (checkpoint block)" in fa_ck.source("function")
    assert fa_ck.feedback_values.keys() == fa.feedback_values.keys() == {"B_W2", "B_W3"}
    vals = _values(wrt)
    assert_same_updates(fa, fa_ck, vals)
    exact = bp.compile(plain, wrt)(**vals)[1]  # and it is not the exact gradient
    assert not np.allclose(fa_ck(**vals)[1]["W1"], exact["W1"])


def test_feedback_with_memory_budget():
    """memory_budget= adds checkpoints; with feedback= the updates are the unbudgeted ones."""
    x, labels = bp.input("x", (32, 16), "float64"), bp.input("labels", (32,), "int32")
    h, wrt = x, []
    for i in range(6):
        wrt.append(bp.param(f"W{i}", (16, 16 if i < 5 else O), "float64"))
        h = h @ wrt[-1]
        h = bp.tanh(h) if i < 5 else h
    loss = bp.cross_entropy(h, labels)
    rng = np.random.default_rng(1)
    vals = {"x": rng.standard_normal((32, 16)), "labels": rng.integers(0, O, 32).astype("int32")}
    vals.update({w.name: rng.standard_normal(w.shape) * 0.4 for w in wrt})
    for mode in ("alignment", "direct"):
        full = bp.compile(loss, wrt, feedback=mode)
        peak = full.memory(timeline=True)["peak_bytes"]
        fit = bp.compile(loss, wrt, feedback=mode, memory_budget=int(peak * 0.85))
        assert fit.remat_report["recompute_groups"] > 0
        assert fit.memory(timeline=True)["peak_bytes"] < peak
        assert_same_updates(full, fit, vals)


def test_feedback_through_checkpoint_on_llvm():
    plain, wrt = _mlp(False)
    marked, _ = _mlp(True, nested=True)
    vals = _values(wrt, 2)
    assert_same_updates(bp.compile(plain, wrt, feedback="direct"),
                        bp.compile(marked, wrt, "llvm", feedback="direct"), vals)


def test_report_uses_the_functions_own_feedback_matrices(tmp_path):
    from bpcompile.inspect.report import example_values

    loss, wrt = _mlp(False)
    fn = bp.compile(loss, wrt, "llvm", feedback="alignment", feedback_seed=5)
    vals = example_values(fn)
    for k, B in fn.feedback_values.items():
        np.testing.assert_array_equal(vals[k], B)
    text = fn.report(tmp_path / "fa.html", backends=("numpy",)).read_text()
    assert "Gradient check: JAX" not in text and "does not apply" in text
    assert "numpy reference" in text and "PASS" in text and "FAIL" not in text
    updates = fn(**{k: v for k, v in vals.items() if k not in fn.feedback_values})[1]
    rows = dict(re.findall(r"<tr><td>(\w+)</td><td>\[[\d, ]*\]</td><td>[^<]*</td>"
                           r"<td>([^<]*)</td>", text))
    for k in ("W1", "W3"):  # the table's ‖update‖ is fn's update with its own B
        assert float(rows[k]) == pytest.approx(np.linalg.norm(updates[k]), rel=1e-3)
    angle = re.search(r"<tr><td>W3</td>(?:<td>[^<]*</td>){4}<td>([^<]*)</td>", text)
    assert float(angle.group(1)) == pytest.approx(0.0, abs=0.1)  # the top layer's is exact
    assert "B_W2" in text  # the code section shows the FA backward pass
