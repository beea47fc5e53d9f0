"""The rewrite engine (rewrite/engine.py): patterns, rule order, hit counts, the fixpoint bound;
the SymPy twins of the stabilisation rules; source lines kept through every rebuild."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import bpcompile as bp
from bpcompile import spec
from bpcompile.ir.node import make
from bpcompile.ir.retype import retype
from bpcompile.ir.traverse import toposort
from bpcompile.ops import elementwise as ew
from bpcompile.ops.sympy_funcs import sigmoid
from bpcompile.rewrite import algebraic, engine, stabilize
from bpcompile.rewrite.engine import C, Pat, Rules, X, counting, rule

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_pattern_binds_predicates_and_repeated_names():
    x = bp.param("x", (3,), "float64")
    y = bp.param("y", (3,), "float64")
    same = Pat("add", X(), X())  # a name bound twice must bind the same node
    b: dict = {}
    assert same.match(ew.add(x, x), b) and b == {"x": x}
    assert not same.match(ew.add(x, y), {})
    p = Pat(("mul", "div"), X("a"), C(2.0, name="c"), where=lambda n: n.shape == (3,))
    b = {}
    assert p.match(ew.mul(x, 2.0), b) and b["a"] is x and b["c"].op == "const"
    assert p.match(ew.div(x, 2.0), {}) and not p.match(ew.mul(x, 3.0), {})
    assert not p.match(ew.add(x, 2.0), {})


def test_first_rule_that_rewrites_wins_and_hits_are_counted():
    x = bp.param("x", (3,), "float64")
    rules = Rules("t", [
        rule("declines", Pat("neg"), lambda n: None),  # None: the next rule is tried
        rule("neg_to_exp", Pat("neg", X()), lambda n, x: ew.unary("exp", x)),
        rule("never", Pat("neg", X()), lambda n, x: ew.unary("log", x)),
    ])
    with counting() as hits:
        (out,) = rules([ew.neg(ew.neg(x))])
    assert [n.op for n in toposort([out]) if n.op != "param"] == ["exp", "exp"]
    assert hits == {"t.neg_to_exp": 2}
    with pytest.raises(ValueError, match="duplicate rule names"):
        Rules("t", [rule("a", Pat("neg"), lambda n: None)] * 2)


def test_fixpoint_is_bounded():
    x = bp.param("x", (3,), "float64")
    toggle = Rules("t", [  # never converges: neg(x) -> abs(x) -> neg(x) -> ...
        rule("to_abs", Pat("neg", X()), lambda n, x: ew.unary("abs", x)),
        rule("to_neg", Pat("abs", X()), lambda n, x: ew.neg(x)),
    ])
    with counting() as hits:
        (out,) = toggle([ew.neg(x)])
    assert hits == {"t.to_abs": engine.FIXPOINT // 2, "t.to_neg": engine.FIXPOINT // 2}
    assert out.op == "neg"


def test_stats_report_hits_per_named_rule():
    x = bp.param("x", (4,), "float64")
    fn = bp.compile(bp.sum(bp.log(bp.sigmoid(x)) * 1.0), wrt=[x])
    text = fn.stats()
    assert "rule hits per stage:" in text
    forward = next(line for line in text.splitlines() if line.startswith("  forward "))
    assert "stabilize.log_sigmoid:1" in forward and "algebraic.mul_one:1" in forward
    assert sum(s.hits["stabilize.log_sigmoid"] for s in fn.stages) == 1


def test_rule_names_are_unique_and_rules_have_their_algebra_in_a_comment():
    for mod in (algebraic, stabilize):
        names = [r.name for r in mod.RULES.rules]
        assert len(set(names)) == len(names)
        src = Path(mod.__file__).read_text()
        for r in mod.RULES.rules:  # each rule(...) call is followed by a comment on its lines
            m = re.search(rf'rule\("{r.name}",(.*?)\n    rule\(|rule\("{r.name}",(.*?)\n\]\)',
                          src, flags=re.S)
            assert m and "#" in (m.group(1) or m.group(2)), r.name


# ---- the SymPy twins of the stabilisation rules --------------------------------------------

A = sp.Symbol("a")
# name: (graph form, SymPy body form, inputs: ordinary values and extremes, reference)
TWINS = {
    "log_sigmoid": (lambda x: bp.log(bp.sigmoid(x)), sp.log(sigmoid(A)),
                    [-800.0, -30.0, -1.0, 0.0, 2.0, 800.0], lambda v: -np.logaddexp(0, -v)),
    "log1p_exp": (lambda x: bp.log(1.0 + bp.exp(x)), sp.log(1 + sp.exp(A)),
                  [-800.0, -40.0, 0.0, 3.0, 800.0], lambda v: np.logaddexp(0, v)),
    "log1p": (lambda x: bp.log(1.0 + x), sp.log(1 + A),
              [-0.5, 1e-30, 1e-12, 3.0, 1e30], np.log1p),
    "expm1": (lambda x: bp.exp(x) - 1.0, sp.exp(A) - 1,
              [-800.0, -1e-12, 1e-30, 0.5, 50.0], np.expm1),
}


def test_every_twin_pair_has_a_case():
    graph = {r.name for r in stabilize.RULES.rules}
    paired = {name for name, _ in stabilize.SYMPY_RULES if name in graph}
    assert paired == set(TWINS)


@pytest.mark.parametrize("name", sorted(TWINS))
def test_twin_rules_agree_at_ordinary_and_extreme_inputs(name):
    graph_form, body, values, reference = TWINS[name]
    x = bp.input("x", (len(values),), "float64")
    as_kernel = bp.elementwise(body, A, name="k")(x)
    fn = bp.function({"graph": graph_form(x), "kernel": as_kernel})
    hits = sum((s.hits for s in fn.stages), start=type(fn.stages[0].hits)())
    assert hits[f"stabilize.{name}"] >= 1 and hits[f"stabilize.body.{name}"] >= 1, hits
    xv = np.array(values)
    out = fn(x=xv)
    np.testing.assert_allclose(out["graph"], reference(xv), rtol=1e-12, atol=0)
    np.testing.assert_allclose(out["kernel"], reference(xv), rtol=1e-12, atol=0)


# ---- one traversal keeps source locations ---------------------------------------------------


def test_every_forward_statement_keeps_the_users_line_after_fusion():
    src = spec.load(EXAMPLES / "xor.toml").compile("numpy").source()
    forward = src.split("---- forward ----")[1].split("---- backward ----")[0]
    stmts = [line for line in forward.splitlines() if " = " in line]
    assert len(stmts) >= 6 and any("kernel" in s for s in stmts)
    for s in stmts:
        assert re.search(r"\(xor\.toml:\d+\)$", s), s


def test_retype_goes_through_transform_and_keeps_where():
    x = bp.param("x", (3,), "float32")
    y = bp.tanh(x * 2.0)
    (y64,) = retype([y])
    assert y64.dtype == "float64" and y64.op == "tanh"
    assert y64.where == y.where and y64 is not y
    assert make("tanh", (y64.inputs[0],)) is y64  # interned like any other node
