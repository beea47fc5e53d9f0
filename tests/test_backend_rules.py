"""Backend rule lists (backends/<name>/rules.py): a backend's own rewrites are rules that the
shared engine runs after the shared passes, recorded as the stage "backend" with hits per rule
in fn.stats(). Each rule fires where it should and nowhere else, and the rewritten program
computes what the unrewritten one does. Also the engine's forms these rules use: commuted
inputs, alternatives and `used_once`."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import bpcompile as bp
from bpcompile.backends import protocol
from bpcompile.backends.llvm import rules as llvm_rules
from bpcompile.backends.llvm.backend import LLVMBackend
from bpcompile.backends.llvm.codegen import Program
from bpcompile.backends.numpy.codegen import NumpyBackend
from bpcompile.ir.node import make
from bpcompile.ir.traverse import toposort
from bpcompile.ops import elementwise as ew
from bpcompile.rewrite.engine import Pat, Rules, X, rule, used_once
from bpcompile.rewrite.pipeline import run_backend


def _hits(fn) -> dict:
    (stage,) = [s for s in fn.stages if s.name == "backend"]
    return dict(stage.hits)


def _marks(outputs, key: str) -> list:
    return [n for n in toposort(outputs) if n.attr(key) is not None]


# ---- the engine's forms ----------------------------------------------------------------------


def test_commuted_inputs_try_the_given_order_first_and_leave_no_stale_bindings():
    x, y = bp.param("x", (3,), "float64"), bp.param("y", (3,), "float64")
    p = Pat("add", Pat("neg", X("a")), Pat("neg", X("c"), where=lambda n: n.inputs[0] is y),
            commute=True)
    b: dict = {}
    # given order: a=y binds, then the second input fails; swapped: a=x, c=y
    assert p.match(make("add", [ew.neg(y), ew.neg(x)]), b) and b == {"a": x, "c": y}
    b = {}
    assert p.match(make("add", [ew.neg(x), ew.neg(y)]), b) and b == {"a": x, "c": y}
    assert not p.match(make("add", [ew.neg(x), ew.neg(x)]), {})
    first = Pat("add", Pat("neg", X("a")), X("b"), commute=True)
    b = {}
    assert first.match(make("add", [ew.neg(x), ew.neg(y)]), b) and b["a"] is x
    with pytest.raises(ValueError, match="two input patterns"):
        Pat("add", X("a"), commute=True)


def test_alternatives_match_the_first_that_fits():
    x = bp.param("x", (3,), "float64")
    p = Pat("exp", X("a"), name="e") | Pat("neg", Pat("exp", X("a"), name="e"), name="m")
    assert set(p.ops) == {"exp", "neg"}  # Rules index rules by their root's ops
    e = ew.unary("exp", x)
    b: dict = {}
    assert p.match(e, b) and b == {"a": x, "e": e}
    b = {}
    assert p.match(ew.neg(e), b) and b["e"] is e and b["m"].op == "neg"
    assert not p.match(ew.neg(x), {}) and not p.match(ew.unary("log", x), {})


def test_used_once_counts_readers_in_the_graph_being_rewritten():
    x = bp.param("x", (3,), "float64")
    once, shared, output = ew.unary("exp", x), ew.unary("log", x), ew.unary("sin", x)
    rebuilt = ew.unary("cos", ew.unary("abs", x))  # rebuilt on sqrt below: a new node
    seen: dict = {}

    def look(n, v):
        seen[v.inputs[0].op if v.op == "cos" else v.op] = used_once(v)

    rules = Rules("t", [
        rule("abs_to_sqrt", Pat("abs", X()), lambda n, x: ew.unary("sqrt", x)),
        rule("look", Pat("neg", X("v")), lambda n, v: look(n, v)),
    ])
    outs = [ew.neg(once), ew.neg(shared), ew.mul(shared, shared), ew.neg(output), output,
            ew.neg(rebuilt)]
    rules(outs)
    assert seen == {"exp": True, "log": False, "sin": False, "sqrt": True}
    assert not used_once(once)  # outside a Rules call nobody knows


def test_used_once_answers_for_the_calling_threads_rewrite_only():
    x = bp.param("x", (3,), "float64")
    seen: list = []

    def look(n, v):
        other = threading.Thread(target=lambda: seen.append(used_once(v)))
        other.start()
        other.join()
        seen.append(used_once(v))

    Rules("t", [rule("look", Pat("neg", X("v")), look)])([ew.neg(ew.unary("exp", x))])
    assert seen == [False, True]  # another thread is in no Rules call


# ---- the pipeline hook and the protocol ------------------------------------------------------


def test_backends_declare_rules_through_the_protocol():
    assert isinstance(LLVMBackend, protocol.Rewrites)
    assert not isinstance(NumpyBackend, protocol.Rewrites)
    x, W = bp.input("x", (4, 3)), bp.param("W", (3, 2))
    fn = bp.compile(bp.sum((x @ W) ** 2), [W], backend="numpy")
    assert "backend" not in [s.name for s in fn.stages]  # no rules, no stage


# ---- llvm: x + A@B accumulates into the add's buffer ---------------------------------------


def _llvm_and_numpy(outputs: dict, values: dict, **options):
    fl = bp.function(outputs, backend="llvm", cache=False, **options)
    fnp = bp.function(outputs, backend="numpy")
    values = {a.attr("name"): values[a.attr("name")] for a in fl.args}
    got, want = fl(**values), fnp(**values)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-12, err_msg=k)
    return fl


def _acc_values(r, **shapes):
    return {k: r.standard_normal(s) for k, s in shapes.items()}


def test_llvm_rule_fires_at_the_gemm_threshold_and_not_below():
    r = np.random.default_rng(0)
    x, A, B = (bp.input("x", (16, 8), "float64"), bp.input("A", (16, 8), "float64"),
               bp.input("B", (8, 8), "float64"))
    vals = _acc_values(r, x=(16, 8), A=(16, 8), B=(8, 8))
    for out in (x + A @ B, A @ B + x):  # the product on either side
        at = _llvm_and_numpy({"y": out}, vals, gemm_threshold=16 * 8 * 8)
        assert _hits(at) == {"llvm.accumulate_matmul": 1}
        assert "  backend        llvm.accumulate_matmul:1" in at.stats().splitlines()
        (add,) = _marks(at.outputs, "accumulate")
        assert add.inputs[add.attr("accumulate")].op == "matmul"
        assert "accumulate=" in at.graph("backend") and at.graph("final") == at.graph("backend")
        assert len(at.impl.program.accumulate) == 1
        below = _llvm_and_numpy({"y": out}, vals, gemm_threshold=16 * 8 * 8 + 1)
        assert _hits(below) == {} and not below.impl.program.accumulate


def test_llvm_rule_leaves_products_that_others_read_outputs_and_broadcasts():
    r = np.random.default_rng(1)
    x, A, B = (bp.input("x", (16, 8), "float64"), bp.input("A", (16, 8), "float64"),
               bp.input("B", (8, 8), "float64"))
    b = bp.input("b", (8,), "float64")
    vals = _acc_values(r, x=(16, 8), A=(16, 8), B=(8, 8), b=(8,))
    p = A @ B
    cases = [
        {"y": x + p, "p": p},  # the product is an output
        {"y": x + p, "s": bp.sum(p, axis=0)},  # another node reads it
        {"y": p + b},  # the add broadcasts
    ]
    for outputs in cases:
        fn = _llvm_and_numpy(outputs, vals, gemm_threshold=0)
        assert _hits(fn) == {} and not _marks(fn.outputs, "accumulate"), list(outputs)


def test_llvm_rule_takes_the_flattened_product_and_scan_bodies():
    r = np.random.default_rng(2)
    x, W = bp.input("x", (2, 4, 8), "float64"), bp.param("W", (8, 8), "float64")
    h = x + bp.tanh(x) @ W  # (2,4,8)@(8,8): reshape(matmul((8,8)@(8,8)))
    fn = _llvm_and_numpy({"h": h}, _acc_values(r, x=(2, 4, 8), W=(8, 8)), gemm_threshold=0)
    (add,) = _marks(fn.outputs, "accumulate")
    assert add.inputs[add.attr("accumulate")].op == "reshape"
    xs = bp.input("xs", (3, 2, 4), "float64")
    Wx, Wh = bp.param("Wx", (4, 4), "float64"), bp.param("Wh", (4, 4), "float64")
    hT, _ = bp.rnn(xs, bp.broadcast_to(bp.const(0.0, "float64"), (2, 4)), Wx, Wh)
    loss = bp.mean(hT**2)
    vals = {"xs": r.standard_normal((3, 2, 4)), "Wx": r.standard_normal((4, 4)) * 0.3,
            "Wh": r.standard_normal((4, 4)) * 0.3}
    fl = bp.compile(loss, [Wx, Wh], backend="llvm", gemm_threshold=0, cache=False)
    top = _marks(fl.outputs, "accumulate")
    assert _hits(fl)["llvm.accumulate_matmul"] > len(top)  # the BPTT body's dW + hᵀδ too
    v, g = fl(**vals)
    v0, g0 = bp.compile(loss, [Wx, Wh], backend="numpy")(**vals)
    np.testing.assert_allclose(v, v0, rtol=1e-12)
    for k in g0:
        np.testing.assert_allclose(g[k], g0[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_llvm_marked_program_equals_the_unrewritten_one():
    """Same graph, scheduled with and without the rule's marks: equal results; a mark the
    schedule cannot honour (another threshold) is lowered as a plain add, also equal."""
    r = np.random.default_rng(3)
    x, W = bp.input("x", (2, 4, 8), "float64"), bp.param("W", (8, 8), "float64")
    V = bp.param("V", (8, 8), "float64")
    h = x + bp.tanh(x) @ W
    loss = bp.mean(bp.tanh(bp.reshape(h, (8, 8)) @ V + bp.reshape(h, (8, 8))) ** 2)
    plain = bp.compile(loss, [W, V], backend="numpy")
    marked = run_backend(plain.outputs, llvm_rules.backend_rules(0), [])
    assert _marks(marked, "accumulate") and not _marks(plain.outputs, "accumulate")
    assert not Program(marked, plain.args, 10**9).accumulate  # not BLAS there: plain adds
    vals = {"x": r.standard_normal((2, 4, 8)), "W": r.standard_normal((8, 8)),
            "V": r.standard_normal((8, 8))}
    arrays = [vals[a.attr("name")] for a in plain.args]
    results = [LLVMBackend(outs, plain.args, gemm_threshold=thr, cache=False).run(arrays)
               for outs, thr in ((plain.outputs, 0), (marked, 0), (marked, 10**9))]
    for first, rest in results[1:]:
        np.testing.assert_allclose(first, results[0][0], rtol=1e-12)
        for a, b in zip(rest, results[0][1]):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# ---- jax: small products and reductions unrolled -------------------------------------------


@pytest.fixture
def jax_rules():
    pytest.importorskip("jax")
    from bpcompile.backends.jax import rules
    from bpcompile.backends.jax.backend import JaxBackend

    assert isinstance(JaxBackend, protocol.Rewrites)
    return rules


def _jax_and_numpy(outputs: dict, values: dict):
    fj = bp.function(outputs, backend="jax")
    fnp = bp.function(outputs, backend="numpy")
    got, want = fj(**values), fnp(**values)
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-12, atol=1e-12)
    return fj


@pytest.mark.parametrize("k, rows, fires", [(8, 32, True), (9, 4, False), (8, 33, False)])
def test_jax_rule_unrolls_matmuls_within_its_bounds(jax_rules, k, rows, fires):
    """K <= SMALL_MATMUL_K terms and at most SMALL_MATMUL_WORK multiply-adds (32*16*8 = 4096)."""
    assert (jax_rules.SMALL_MATMUL_K, jax_rules.SMALL_MATMUL_WORK) == (8, 4096)
    r = np.random.default_rng(4)
    a, b = bp.input("a", (rows, k), "float64"), bp.input("b", (k, 16), "float64")
    fj = _jax_and_numpy({"y": a @ b}, {"a": r.standard_normal((rows, k)),
                                       "b": r.standard_normal((k, 16))})
    assert _hits(fj) == ({"jax.unroll_matmul": 1} if fires else {})
    assert ("matmul_unrolled(" in fj.source()) == fires
    assert bool(_marks(fj.outputs, "unroll")) == fires


@pytest.mark.parametrize("n, fires", [(8, True), (9, False), (1, False)])
def test_jax_rule_unrolls_small_float_reductions(jax_rules, n, fires):
    r = np.random.default_rng(5)
    x = bp.input("x", (5, n), "float64")
    fj = _jax_and_numpy({"s": bp.sum(x, axis=1), "m": bp.max(x, axis=1)},
                        {"x": r.standard_normal((5, n))})
    assert _hits(fj) == ({"jax.unroll_sum": 1, "jax.unroll_max": 1} if fires else {})
    assert ("sum_unrolled(" in fj.source()) == fires


def test_jax_rules_leave_scan_bodies_and_the_oracle_alone(jax_rules):
    r = np.random.default_rng(6)
    xs = bp.input("xs", (3, 2, 4), "float64")
    Wx, Wh = bp.param("Wx", (4, 4), "float64"), bp.param("Wh", (4, 4), "float64")
    hT, _ = bp.rnn(xs, bp.broadcast_to(bp.const(0.0, "float64"), (2, 4)), Wx, Wh)
    loss = bp.mean(hT**2)
    fj = bp.compile(loss, [Wx, Wh], backend="jax")
    bodies = {n.attr("body") for n in toposort(fj.outputs) if n.op == "scan"}
    assert bodies and _marks(fj.outputs, "unroll")  # the top level's (4,2)@(2,4) products
    for body in bodies:  # bodies run inside lax.scan with the oracle's op-for-op table
        assert not _marks(list(body.outputs), "unroll")
    vals = {"xs": r.standard_normal((3, 2, 4)), "Wx": r.standard_normal((4, 4)) * 0.3,
            "Wh": r.standard_normal((4, 4)) * 0.3}
    (v, g), (v0, g0) = fj(**vals), bp.compile(loss, [Wx, Wh], backend="numpy")(**vals)
    np.testing.assert_allclose(np.asarray(v), v0, rtol=1e-12)
    for k in g0:
        np.testing.assert_allclose(np.asarray(g[k]), g0[k], rtol=1e-10, atol=1e-12)
