"""The LLVM IR names the user's source line of every step (issue #18 item 4): a comment before
each step (inline) or step call (split schedules), with the NumPy backend's provenance text; a
backward step names the forward node it differentiates. Shared kernels stay shared."""

from __future__ import annotations

import gc
import re
from pathlib import Path

import numpy as np
import pytest

import bpcompile as bp
from bpcompile import spec
from bpcompile.backends.llvm import emit
from bpcompile.errors import IndexRangeError

pytest.importorskip("llvmlite")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STEP = re.compile(r"^\s*; (\S+) = (.+?) -> \S+(?: \[.*\])?  \((.*)\)$")


def _step_comments(ir_text: str) -> list[tuple[str, str, str]]:
    return [m.groups() for line in ir_text.splitlines() if (m := STEP.match(line))]


def test_xor_steps_name_toml_lines():
    gc.collect()  # interned nodes keep their first creator's line: drop earlier graphs
    lines = (EXAMPLES / "xor.toml").read_text().splitlines()
    layers = [k + 1 for k, s in enumerate(lines) if s.startswith("[[layers]]")]
    loss_line = next(k + 1 for k, s in enumerate(lines) if s.startswith("[loss]"))
    fn = spec.load(EXAMPLES / "xor.toml").compile("llvm")
    steps = _step_comments(fn.source("llvm-unoptimized"))
    assert len(steps) == len(fn.impl.program.steps)  # one comment per step
    forward = [w for _, _, w in steps if not w.startswith("grad of")]
    backward = [w for _, _, w in steps if w.startswith("grad of")]
    assert forward and backward
    assert set(forward) == {f"xor.toml:{n}" for n in (*layers, loss_line)}
    for w in backward:  # `grad of a1 = sigmoid(...), xor.toml:21`
        assert re.fullmatch(r"grad of .*\(\.\.\.\), xor\.toml:(\d+)", w), w
        assert int(w.rsplit(":", 1)[1]) in layers
    by_name = {name: w for name, _, w in steps}
    assert by_name["dz1"] == f"grad of a1 = sigmoid(...), xor.toml:{layers[0]}"
    assert by_name["dz2"] == f"grad of a2 = sigmoid(...), xor.toml:{layers[1]}"


def _mlp(depth: int, width: int = 4):
    x, y = bp.input("x", (2, width)), bp.input("y", (2, width))
    ps, h = [], x
    for i in range(depth):
        W, b = bp.param(f"W{i}", (width, width)), bp.param(f"b{i}", (width,))
        ps += [W, b]
        h = bp.tanh(h @ W + b)  # LAYER_LINE
    return bp.mean((h - y) ** 2), ps  # LOSS_LINE


def _line_of(tag: str) -> int:
    src = Path(__file__).read_text().splitlines()
    return next(k + 1 for k, s in enumerate(src) if s.rstrip().endswith(f"# {tag}"))


def test_split_schedule_comments_each_call_not_kernels(monkeypatch):
    gc.collect()
    monkeypatch.setattr(emit, "SPLIT_STEPS", 0)
    loss, wrt = _mlp(3)
    fn = bp.compile(loss, wrt, backend="llvm", cache=False)
    ir_text = fn.source("llvm-unoptimized")
    st = fn.impl.kernel_stats
    assert st["llvm_kernels"] < st["llvm_kernel_calls"]  # identical layers still share
    here = Path(__file__).name
    layer, loss_line = f"{here}:{_line_of('LAYER_LINE')}", f"{here}:{_line_of('LOSS_LINE')}"
    body = ir_text.splitlines()
    calls = [k for k, s in enumerate(body) if re.match(r"\s*call void @\"?bp_(k\d+|main\.\d)", s)]
    assert len(calls) == st["llvm_kernel_calls"]
    for k in calls:  # the line before every step call is its provenance
        m = STEP.match(body[k - 1])
        assert m, (body[k - 1], body[k])
        w = m.group(3)
        assert w.endswith((layer, loss_line)), w
    # a shared kernel's body carries no provenance (it is every layer's)
    kernels = re.findall(r"^define [^@]*@\"?bp_k[^\n]*\n(.*?)^}", ir_text, re.M | re.S)
    assert kernels and not any(";" in k for k in kernels)


def test_comments_do_not_enter_the_object_cache_key(monkeypatch, tmp_path):
    monkeypatch.setenv("BPCOMPILE_CACHE_DIR", str(tmp_path))
    x = np.ones((2, 3), np.float32)

    def build_a():
        a = bp.input("a", (2, 3))
        return bp.compile(bp.sum(bp.sin(a) * 3.0), [a], backend="llvm")

    def build_b():  # the same graph, built on another line
        a = bp.input("a", (2, 3))
        return bp.compile(bp.sum(bp.sin(a) * 3.0), [a], backend="llvm")

    gc.collect()
    f1 = build_a()
    v1 = f1(a=x)
    src1 = f1.source("llvm-unoptimized")
    del f1
    gc.collect()
    f2 = build_b()
    assert src1 != f2.source("llvm-unoptimized")  # the comments name different lines
    assert f2.impl.cache_hit
    np.testing.assert_allclose(f2(a=x)[0], v1[0])


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
@pytest.mark.parametrize("forward_op", ["take", "scatter_add"])
def test_backward_index_error_names_the_forward_op(backend, forward_op):
    """Only the backward index op runs (the loss is linear in the gathered values), so the
    run-time error is its: it names the user's take / scatter_add line, not bp.compile's."""
    gc.collect()
    lab = bp.input("lab", (3,), "int32")
    x = bp.param("x", (5,), "float64")
    v = bp.param("v", (3,), "float64")
    if forward_op == "take":
        fwd = bp.take(x, lab - 1)  # TAKE_LINE
        g = bp.grad(bp.sum(fwd), x)
    else:
        fwd = bp.scatter_add(x, lab - 1, v)  # SCATTER_LINE
        g = bp.grad(bp.sum(fwd * x), v)  # d/dv is x gathered at lab - 1: a take
    w = bp.input("w", g.shape, "float64")
    fn = bp.compile(bp.sum(g * w), [w], backend=backend)
    args = {"lab": np.array([1, 7, 2], np.int32), "w": np.ones(g.shape), "x": np.ones(5)}
    names = {a.attr("name") for a in fn.args}
    assert "v" not in names  # the forward scatter_add / take is not computed
    tag = "TAKE_LINE" if forward_op == "take" else "SCATTER_LINE"
    site = f"{Path(__file__).name}:{_line_of(tag)}"
    with pytest.raises(IndexRangeError, match=rf"in the gradient of {forward_op}, made at "
                                              rf"{re.escape(site)}: computed index 6 is out"):
        fn(**{k: a for k, a in args.items() if k in names})


def test_scan_bodies_name_their_lines():
    """A scan body is emitted by the same code, so its steps (and the BPTT body's) carry the
    comments too; every step of the module names the model file."""
    import sys

    gc.collect()
    sys.path.insert(0, str(EXAMPLES.parent / "benchmarks"))
    import models

    loss, wrt, *_ = models.build(["rnn_bptt"])["rnn_bptt"]
    ir_text = bp.compile(loss, wrt, backend="llvm", cache=False).source("llvm-unoptimized")
    steps = _step_comments(ir_text)
    assert steps and all("models.py:" in w for _, _, w in steps), steps
    bodies = re.findall(r"^define [^@]*@\"?bp_scan\d+_(\w+)[^\n]*\n(.*?)^}", ir_text, re.M | re.S)
    assert {name for name, _ in bodies} >= {"step", "step_bptt"}
    for name, text in bodies:
        notes = _step_comments(text)
        assert notes, name
        if name.endswith("bptt"):
            assert all(w.startswith("grad of ") for _, _, w in notes), notes
