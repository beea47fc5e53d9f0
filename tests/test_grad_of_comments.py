"""Backward statements name the forward node they are the gradient of (Tangent's "Grad of"),
through every rewrite pass and inside scan bodies; `fn.stats()` counts scan bodies' nodes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import bpcompile as bp
from bpcompile import spec
from bpcompile.autodiff.reverse import grad
from bpcompile.ir.provenance import GRAD_OF
from bpcompile.ir.traverse import toposort, transform
from bpcompile.ops import elementwise as ew

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
GRAD_OF_LINE = r"\(grad of .+\(\.\.\.\), {file}:\d+\)$"


def _section(src: str, name: str, start: str = "") -> list[str]:
    """Statements of one section (forward/backward) of the function starting at `start`."""
    text = src[src.index(start):] if start else src
    text = text.split(f"---- {name} ----")[1].split("# ----")[0].split("    return ")[0]
    return [ln for ln in text.splitlines() if " = " in ln]


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_every_xor_backward_statement_names_its_forward_node(backend):
    if backend == "jax":
        pytest.importorskip("jax")
    src = spec.load(EXAMPLES / "xor.toml").compile(backend).source()
    back = _section(src, "backward")
    assert len(back) >= 8
    for s in back:
        assert re.search(GRAD_OF_LINE.format(file=r"xor\.toml"), s), s
    # the fused delta of the hidden layer is the gradient of its sigmoid, a1 (the spec's name)
    (dz1,) = [s for s in back if s.lstrip().startswith("dz1 = ")]
    assert "(grad of a1 = sigmoid(...), xor.toml:" in dz1
    assert not any("grad of" in s for s in _section(src, "forward"))


def _rnn():
    xs, y = bp.input("xs", (4, 2, 3), "float64"), bp.input("y", (2, 4), "float64")
    W, U = bp.param("W", (3, 4), "float64"), bp.param("U", (4, 4), "float64")

    def step(h, x):
        return bp.tanh(x @ W + h @ U), None

    hT, _ = bp.scan(step, bp.broadcast_to(bp.const(0.0, "float64"), (2, 4)), xs)
    return bp.sum((hT - y) ** 2), [W, U]


def test_scan_body_backward_statements_name_their_forward_node():
    loss, wrt = _rnn()
    fn = bp.compile(loss, wrt, backend="numpy")
    src = fn.source()
    back = _section(src, "backward", start="def step_bptt_body(")
    assert len(back) >= 4
    for s in back:  # the step's ops, or the scan itself for the per-step accumulators
        assert re.search(GRAD_OF_LINE.format(file=r"test_grad_of_comments\.py"), s), s
    assert any("(grad of scan(...)" in s for s in back)
    assert any("(grad of matmul(...)" in s for s in back)


def test_stats_counts_every_scan_body():
    loss, wrt = _rnn()
    fn = bp.compile(loss, wrt, backend="numpy")
    rows = fn.stats().split("scan bodies (final):\n")[1].splitlines()
    counted = {}
    for n in toposort(fn.stages[-1].outputs):
        if n.op == "scan":
            body = n.attr("body")
            counted[body.name] = sum(
                m.op not in ("input", "param", "const") for m in toposort(list(body.outputs)))
    assert set(counted) == {"step", "step_bptt"}
    for name, count in counted.items():
        assert any(re.match(rf"  {name} +{count}  \w+:\d", r) for r in rows), (name, rows)
    x = bp.param("x", (3,), "float64")
    assert "scan bodies" not in bp.compile(bp.sum(x * x), [x]).stats()


def test_provenance_reaches_only_new_nodes_and_survives_rebuilds():
    x = bp.param("x", (3,), "float64")
    s = bp.sin(x)
    loss = bp.sum(s * s)
    (g,) = grad(loss, [x])
    back = [n for n in toposort([g]) if n not in set(toposort([loss]))]
    assert back and all(GRAD_OF.get(n) is not None for n in back if n.inputs)
    assert not any(n in GRAD_OF for n in toposort([loss]))  # forward nodes stay unmarked
    cos = next(n for n in back if n.op == "cos")
    assert GRAD_OF[cos] is s

    def swap(n):  # a pass that builds a new node in place of cos(x)
        return ew.mul(bp.cos(x), 1.0) if n is cos else n

    (g2,) = transform([g], swap)
    new = next(n for n in toposort([g2]) if n.op == "mul" and n.inputs[0] is cos)
    assert GRAD_OF[new] is s

    (g3,) = transform([g], lambda n: s if n is cos else n)  # an old (forward) node stays
    assert s in toposort([g3]) and s not in GRAD_OF
